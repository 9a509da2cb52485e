"""`specbench profile`: latency of one target forward beside the roofline (issue 20, deliverable 3).

A speculative step costs one target forward of q tokens per row over the context so far. Whether q = 8
costs about what q = 1 costs (memory-bound: weights and KV cache are read once either way) or eight times
more (compute-bound) decides whether drafting can pay at a batch size; how far one forward sits above the
time the hardware needs decides whether a speedup measures the method or Python launch overhead.

For each (batch b, q) this times exactly that forward through the project's own path: `Target.forward`
over a `RowKVCache` prefilled with `--context` random tokens, its write discarded after every call
(`commit_prefix([0] * b)`), so every timed forward sees the same context. Beside it:

* memory roofline = bytes the forward must read (weights + KV cache) / memory bandwidth; the bandwidth
  is the data-sheet figure on A100/H100/H200, else a copy kernel measured here (both are stored,
  `hardware.bandwidth_used` says which the ratios use);
* compute roofline = its FLOPs / peak matmul rate (data sheet for bf16/fp16 on those GPUs, else a
  measured matmul); `roofline_ms` is the larger of the two.

Timers are the decode loop's (`StepTimer`: CUDA events on GPU, perf_counter on CPU), with a device sync
after every call, as a decode step ends by reading its logits back (DESIGN.md §4, latency per step).
Medians over `--repeats` after `--warmup` untimed calls. Points that do not fit in memory are recorded
as skipped, with the reason. Beside the latency, `host_ms`: the time until the call returned, before the
sync. On a GPU that is the host work the device waits for (dynamo's guard checks, the eager preamble, the
graph launch): the part of a compiled step above its device time that no kernel can remove. A compiled
profile also records `compiled_guards`, the guards each graph re-checks per call (`specbench.compiled`).
"""

from __future__ import annotations

import importlib
import json
import re
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from specbench.errors import SpecbenchError
from specbench.provenance import collect, cpu_model
from specbench.timing import StepTimer

GIB = 2**30
PREFILL_CHUNK = 256  # tokens per prefill forward: bounds activation memory at large batch and context

#: (substrings the device name must contain, label, memory bytes/s, dense bf16/fp16 FLOP/s): NVIDIA data
#: sheets; the first match wins, so the more specific variants come first
DATASHEETS = (
    (("H200",), "H200", 4.8e12, 989e12),
    (("H100", "NVL"), "H100 NVL", 3.9e12, 835e12),
    (("H100", "PCIE"), "H100 PCIe", 2.0e12, 756e12),
    (("H100",), "H100 SXM", 3.35e12, 989e12),
    (("A100", "80GB", "PCIE"), "A100 80GB PCIe", 1.935e12, 312e12),
    (("A100", "80GB"), "A100 80GB SXM", 2.039e12, 312e12),
    (("A100",), "A100 40GB", 1.555e12, 312e12),
)


def parse_sizes(text: str, option: str) -> list[int]:
    """`1,4,16` -> [1, 4, 16]; a one-line error for anything but positive integers."""
    try:
        values = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise SpecbenchError(f"{option} must be comma-separated positive integers, e.g. 1,4,16 (got {text!r})")
    return sorted(set(values))


def compiled_regime():
    """`specbench.compiled.compile_target` (issue 20, deliverable 2), or a one-line refusal if absent."""
    try:
        module = importlib.import_module("specbench.compiled")
    except ModuleNotFoundError as e:
        if e.name != "specbench.compiled":
            raise SpecbenchError(f"the compiled regime needs the {e.name!r} package") from None
        module = None
    fn = getattr(module, "compile_target", None)
    if fn is None:
        raise SpecbenchError("the compiled regime is not available in this build")
    return fn


# -- timing ---------------------------------------------------------------------------------------------------
def time_ms(run, device: torch.device, repeats: int, warmup: int, reset=None, host: list | None = None) -> list[float]:
    """Milliseconds of `repeats` calls of `run` after `warmup` untimed ones; each call starts on an idle
    device, and `reset` (untimed) follows every call. `host` receives each call's host milliseconds: until
    `run` returned, before the device sync (on a GPU, the launch work the device waits for; a CPU's
    call is all host)."""
    for _ in range(warmup):
        run()
        if reset is not None:
            reset()
    timer = StepTimer(device)
    timer.sync()
    for _ in range(repeats):
        timer.start_step()
        start = time.perf_counter()
        with timer.span("verify"):
            run()
        if host is not None:
            host.append((time.perf_counter() - start) * 1e3)
        timer.end_step()
        if reset is not None:
            reset()
        timer.sync()
    return timer.resolve()["verify"]


# -- the device -------------------------------------------------------------------------------------------------
@dataclass
class Hardware:
    """What the device can move and compute: measured here, and from its data sheet where known."""

    name: str
    bandwidth_measured: float  # bytes/s, copy kernel (read + write)
    bandwidth_datasheet: float | None
    flops_measured: float  # FLOP/s, square matmul in the profile's dtype
    flops_datasheet: float | None

    @property
    def bandwidth(self) -> float:
        return self.bandwidth_datasheet or self.bandwidth_measured

    @property
    def flops(self) -> float:
        return self.flops_datasheet or self.flops_measured

    def as_dict(self) -> dict:
        return {**asdict(self), "bandwidth_used": "datasheet" if self.bandwidth_datasheet else "measured",
                "flops_used": "datasheet" if self.flops_datasheet else "measured"}


def datasheet(device_name: str) -> tuple[str, float, float] | None:
    upper = device_name.upper()
    for needles, label, bandwidth, flops in DATASHEETS:
        if all(n in upper for n in needles):
            return label, bandwidth, flops
    return None


def measure_hardware(device: torch.device, dtype: torch.dtype) -> Hardware:
    """Best of five: a copy of a buffer far larger than the caches (bytes read + written / time), and a
    square matmul in `dtype` (2 n^3 / time)."""
    cuda = device.type == "cuda"
    n_bytes = GIB if cuda else GIB // 4
    src = torch.ones(n_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_ms = min(time_ms(lambda: dst.copy_(src), device, repeats=5, warmup=1))
    del src, dst
    n = 4096 if cuda else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    mm_ms = min(time_ms(lambda: a @ b, device, repeats=5, warmup=1))
    name = torch.cuda.get_device_name(device) if cuda else cpu_model()
    sheet = datasheet(name) if cuda else None
    low_precision = dtype in (torch.bfloat16, torch.float16)
    return Hardware(name=sheet[0] if sheet else name, bandwidth_measured=2 * n_bytes / (copy_ms / 1e3),
                    bandwidth_datasheet=sheet[1] if sheet else None, flops_measured=2 * n**3 / (mm_ms / 1e3),
                    flops_datasheet=sheet[2] if sheet and low_precision else None)


def free_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can still get: free device memory on CUDA, MemAvailable on CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and ("out of memory" in str(e) or "can't allocate memory" in str(e)))


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- what one forward must move and compute ------------------------------------------------------------------------
def _shape(target) -> tuple[int, int, int, int]:
    """(layers, attention heads, KV heads, head dim) from the config."""
    cfg = target.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return cfg.num_hidden_layers, heads, kv_heads, head_dim


def kv_bytes_per_token(target) -> int:
    """Keys + values of one token in every layer (what the cache stores per row and slot)."""
    layers, _, kv_heads, head_dim = _shape(target)
    return 2 * layers * kv_heads * head_dim * torch.empty((), dtype=target.dtype).element_size()


def weight_bytes_read(target) -> int:
    """Bytes of the parameters one forward reads in full: all of them, except an input embedding table that is
    not tied to the LM head (a forward gathers only its b·q rows of it)."""
    model = target.model
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    return total if embed is head else total - embed.numel() * embed.element_size()


def forward_cost(target, batch: int, q: int, context: int) -> dict:
    """Bytes read and FLOPs of one forward of `q` tokens per row over `context` cached ones.

    FLOPs: 2 per weight read per token, plus QKᵀ and PV over the `context + q` visible slots (the causal
    block counted in full); norms, rotary and softmax are left out.
    """
    layers, heads, _, head_dim = _shape(target)
    weights = weight_bytes_read(target)
    kv = kv_bytes_per_token(target) * batch * (context + q)
    elem = torch.empty((), dtype=target.dtype).element_size()
    flops = 2 * (weights // elem) * batch * q + 4 * batch * layers * heads * head_dim * q * (context + q)
    return {"weight_bytes": weights, "kv_bytes": kv, "flops": flops}


def activation_bytes(target, batch: int, q: int, context: int) -> int:
    """A rough upper bound of the activations of one forward: logits, MLP intermediates, hidden states, the
    4-D mask and the attention scores."""
    cfg = target.config
    elem = torch.empty((), dtype=target.dtype).element_size()
    tokens = batch * q
    return elem * (tokens * (target.vocab_size + 3 * cfg.intermediate_size + 4 * cfg.hidden_size)
                   + tokens * (context + q) * (1 + cfg.num_attention_heads))


# -- the grid ---------------------------------------------------------------------------------------------------
def _random_ids(target, gen: torch.Generator, batch: int, q: int) -> torch.Tensor:
    return torch.randint(0, target.vocab_size, (batch, q), generator=gen).to(target.device)


def fill_cache(target, batch: int, context: int, capacity: int, gen: torch.Generator):
    """A `RowKVCache` of `batch` rows holding `context` random tokens each (chunked prefill)."""
    cache = target.new_cache(batch, capacity)
    for start in range(0, context, PREFILL_CHUNK):
        n = min(PREFILL_CHUNK, context - start)
        # logits_at: the eager path in both regimes, as the decode loop's prefill (no graph per chunk shape)
        target.forward(_random_ids(target, gen, batch, n), cache, logits_at=[n - 1] * batch)
        cache.commit_prefix([n] * batch)
    return cache


def _skipped(batch: int, q: int, reason: str) -> dict:
    return {"batch": batch, "q": q, "tokens": batch * q, "status": "skipped", "reason": reason}


def _too_big(need: int, device: torch.device, what: str) -> str | None:
    free = free_bytes(device)
    if free is not None and need > free:
        return f"does not fit: {what} needs ~{need / GIB:.1f} GiB, {free / GIB:.1f} GiB free"
    return None


def profile_point(target, cache, batch: int, q: int, context: int, repeats: int, warmup: int, hardware: Hardware,
                  gen: torch.Generator) -> dict:
    if reason := _too_big(activation_bytes(target, batch, q, context), target.device, "the forward"):
        return _skipped(batch, q, reason)
    ids = _random_ids(target, gen, batch, q)
    host = []
    try:
        times = time_ms(lambda: target.forward(ids, cache), target.device, repeats, warmup,
                        reset=lambda: cache.commit_prefix([0] * batch), host=host)
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError is one
        if not _is_oom(e):
            raise
        cache.commit_prefix([0] * batch)
        _release(target.device)
        return _skipped(batch, q, f"out of memory: {str(e).splitlines()[0][:160]}")
    cost = forward_cost(target, batch, q, context)
    latency = statistics.median(times)
    memory_ms = (cost["weight_bytes"] + cost["kv_bytes"]) / hardware.bandwidth * 1e3
    compute_ms = cost["flops"] / hardware.flops * 1e3
    roofline = max(memory_ms, compute_ms)
    return {"batch": batch, "q": q, "tokens": batch * q, "status": "ok", "latency_ms": latency,
            "latency_ms_min": min(times), "latency_ms_all": times, "host_ms": statistics.median(host),
            "host_ms_all": host, "attended_slots": cache.window(q), **cost,
            "memory_roofline_ms": memory_ms, "compute_roofline_ms": compute_ms, "roofline_ms": roofline,
            "latency_over_memory_roofline": latency / memory_ms, "latency_over_roofline": latency / roofline}


def profile_grid(target, qs: list[int], batches: list[int], context: int, repeats: int, warmup: int,
                 hardware: Hardware, seed: int = 0) -> list[dict]:
    """One point per (batch, q); a batch whose cache does not fit skips all its points."""
    gen = torch.Generator().manual_seed(seed)
    points = []
    for batch in batches:
        capacity = context + max(qs)
        need = kv_bytes_per_token(target) * batch * capacity + activation_bytes(
            target, batch, min(PREFILL_CHUNK, context) or 1, context)
        if reason := _too_big(need, target.device, f"a cache of {batch} x {capacity} tokens"):
            points += [_skipped(batch, q, reason) for q in qs]
            continue
        try:
            cache = fill_cache(target, batch, context, capacity, gen)
        except RuntimeError as e:  # torch.cuda.OutOfMemoryError is one
            if not _is_oom(e):
                raise
            _release(target.device)
            points += [_skipped(batch, q, f"out of memory in prefill: {str(e).splitlines()[0][:160]}") for q in qs]
            continue
        for q in qs:
            points.append(profile_point(target, cache, batch, q, context, repeats, warmup, hardware, gen))
        del cache
        _release(target.device)
    return points


# -- the command --------------------------------------------------------------------------------------------------
def profile_command(target: str | None, random_weights: str | None, q_sizes: str, batch_sizes: str, context: int,
                    device: str, dtype: str, repeats: int, warmup: int, compiled: bool, out: str) -> Path:
    """Check the options, load (or build) the target, profile the grid, print the table, write the JSON."""
    qs, batches = parse_sizes(q_sizes, "--q"), parse_sizes(batch_sizes, "--batch")
    if context < 0:
        raise SpecbenchError("--context must be >= 0")
    if repeats < 1 or warmup < 0:
        raise SpecbenchError("--repeats must be >= 1 and --warmup >= 0")
    if target and random_weights:
        raise SpecbenchError("give --target or --random-weights, not both")
    compile_target = compiled_regime() if compiled else None  # refuse before loading a large model
    if random_weights:
        from specbench.random_targets import load_random_target

        tgt = load_random_target(random_weights, device, dtype)
    else:
        from specbench.targets import load_target

        tgt = load_target(target or "smollm2-135m", device, dtype)
    limit = getattr(tgt.config, "max_position_embeddings", None)
    if limit and context + max(qs) > limit:
        raise SpecbenchError(f"--context {context} + q {max(qs)} exceeds the target's {limit} positions")
    if compile_target is not None:
        tgt = compile_target(tgt) or tgt
    hardware = measure_hardware(tgt.device, tgt.dtype)
    points = profile_grid(tgt, qs, batches, context, repeats, warmup, hardware)
    result = {"kind": "profile", "regime": "compiled" if compiled else "eager", "target": tgt.describe(),
              "context": context, "q": qs, "batch": batches, "repeats": repeats, "warmup": warmup,
              "device": str(tgt.device), "dtype": str(tgt.dtype).replace("torch.", ""),
              "hardware": hardware.as_dict(), "points": points, "provenance": collect(tgt.device),
              # per compiled graph: guards dynamo re-checks at every call, and those on the target it dropped
              "compiled_guards": tgt.guard_counts}
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", f"profile-{tgt.name}-{result['regime']}-{tgt.device.type}-"
                                              f"{result['dtype']}-ctx{context}-b{'_'.join(map(str, batches))}-"
                                              f"q{'_'.join(map(str, qs))}")  # two grids never overwrite each other
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print_profile(result, path)
    return path


def print_profile(result: dict, path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    hw = result["hardware"]
    table = Table(title=f"one target forward · {result['target']['name']} · {hw['name']} · {result['dtype']} · "
                        f"context {result['context']} · {result['regime']}")
    for col in ("batch", "q", "ms (median)", "host ms", "memory roofline ms", "× memory", "compute roofline ms",
                "× roofline"):
        table.add_column(col, justify="right")
    for p in result["points"]:
        if p["status"] != "ok":
            table.add_row(str(p["batch"]), str(p["q"]), f"[dim]skipped: {p['reason']}[/dim]", "", "", "", "", "")
            continue
        table.add_row(str(p["batch"]), str(p["q"]), f"{p['latency_ms']:.3f}", f"{p['host_ms']:.3f}",
                      f"{p['memory_roofline_ms']:.3f}",
                      f"{p['latency_over_memory_roofline']:.2f}", f"{p['compute_roofline_ms']:.3f}",
                      f"{p['latency_over_roofline']:.2f}")
    console = Console()
    console.print(table)
    sheet = hw["bandwidth_datasheet"]
    console.print(f"bandwidth used: {hw['bandwidth_used']} "
                  f"({(sheet or hw['bandwidth_measured']) / 1e9:.0f} GB/s); copy kernel measured "
                  f"{hw['bandwidth_measured'] / 1e9:.1f} GB/s; peak {hw['flops_used']} "
                  f"{(hw['flops_datasheet'] or hw['flops_measured']) / 1e12:.2f} TFLOP/s\nwritten: {path}")
