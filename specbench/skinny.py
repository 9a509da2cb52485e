"""Skinny matrix products on the CPU: `W @ Xᵀ` for a handful of rows (issue 20).

A decode step multiplies every weight by a few rows: one per sequence for AR, `B × q` for a verify pass,
a handful for a drafter's level. On the CPU build torch ships (MKL), `x @ Wᵀ` (`F.linear`) is slow
exactly there: one row goes to a GEMV that runs on a single thread, and 2-8 rows to a GEMM that packs the
whole weight first. `W @ Xᵀ` streams each weight once, on every thread. Measured on the project's 2-core
box, smollm2-135m's 211 weights (540 MB, streamed from memory) per step, median of 5:

| rows | 1 | 2 | 3 | 4 | 6 | 8 | 12 | 16 |
|---|---|---|---|---|---|---|---|---|
| `F.linear`, 2 threads (ms) | 34.8 | 55.6 | 69.6 | 53.5 | 46.0 | 49.6 | 54.5 | 61.6 |
| `W @ Xᵀ`, 2 threads (ms) | 17.3 | 15.9 | 19.8 | 16.7 | 29.8 | 35.4 | 63.9 | 53.9 |
| `F.linear`, 1 thread (ms) | 34.7 | 58.5 | 93.6 | 56.0 | 65.2 | 65.7 | 83.9 | 94.6 |
| `W @ Xᵀ`, 1 thread (ms) | 27.1 | 32.2 | 36.2 | 31.3 | 58.5 | 65.6 | 127.4 | 102.2 |

On a second 2-core box (AVX-512, 2026-12-04) the same products turned the other way: `F.linear`
20-43 ms for 1-8 rows at 2 threads, `W @ Xᵀ` ~50 ms at every width, so the fixed rule made the AR loop
0.52x `generate` there (1.52x on the first box). The cut-off is therefore measured on the machine at hand, not
assumed: on the target's own weights (`measure`), once per (CPU, torch, threads, dtype, weight shapes),
stored in the cache (`calibrated_rows`). It is the largest of 1, 2, 4, 8 rows at and below which
`W @ Xᵀ` beats `F.linear` by 10 % at every measured width; 0 (`F.linear` everywhere) if it never does.

The sums of `W @ Xᵀ` run in another order than `F.linear`'s, so results differ from it in the last bits;
the rule is the same for every product of the process — the target's forward in both arms
(`direct_forward`) and the drafters' own linears (`use_skinny`, at attach) — so no arm gets faster
kernels than another. `SPECBENCH_SKINNY_ROWS` sets the cut-off (0: off) without measuring; the manifest
records the cut-off and where it came from (`Target.describe`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

#: the widths measured, and the margin `W @ Xᵀ` must win by at each (a tie is not worth the other rounding)
WIDTHS = (1, 2, 4, 8)
MARGIN = 0.9
#: weights timed per pass: enough bytes to stream from memory as the forward does (past any CPU cache),
#: few enough that an 8B target measures as fast as a 135M one
SAMPLE_BYTES = 256 * 2**20


def default_rows(device: torch.device, dtype: torch.dtype, weights=None, store: Path | None = None) -> tuple[int, str]:
    """`(cut-off, source)` for a target on `device` in `dtype`: `SPECBENCH_SKINNY_ROWS` if set ("env");
    0 off a CPU or outside float32 ("off": CUDA's GEMMs have no such cliff, bfloat16 was not measured);
    else measured on `weights` (the target's linear weights), cached under `store` ("measured")."""
    env = os.environ.get("SPECBENCH_SKINNY_ROWS")
    if env is not None:
        try:
            return max(int(env), 0), "env"
        except ValueError:
            from specbench.errors import SpecbenchError

            raise SpecbenchError(f"SPECBENCH_SKINNY_ROWS must be an integer, not {env!r}") from None
    if device.type != "cpu" or dtype != torch.float32 or not weights:
        return 0, "off"
    return calibrated_rows(weights, store), "measured"


def choose_rows(timings: dict[int, tuple[float, float]]) -> int:
    """The cut-off from `{rows: (F.linear ms, W @ Xᵀ ms)}`: the largest width at and below which every
    measured width has `W @ Xᵀ` faster by `MARGIN`; 0 when the narrowest already loses."""
    rows = 0
    for width in sorted(timings):
        linear_ms, skinny_ms = timings[width]
        if skinny_ms >= MARGIN * linear_ms:
            break
        rows = width
    return rows


def measure(weights, widths=WIDTHS, repeats: int = 3) -> dict[int, tuple[float, float]]:
    """Median ms of one pass of `F.linear` and of `W @ Xᵀ` over a sample of `weights` per width,
    the two interleaved so a neighbour's load falls on both."""
    sample, total = [], 0
    for w in weights:
        sample.append(w.detach())
        total += w.numel() * w.element_size()
        if total >= SAMPLE_BYTES:
            break
    timings = {}
    with torch.inference_mode():
        for width in widths:
            xs = [torch.randn(width, w.shape[1], dtype=w.dtype) for w in sample]
            runs = {"linear": [], "skinny": []}
            for i in range(repeats + 1):
                for name, fn in (("linear", F.linear), ("skinny", lambda x, w: product(w, None, x, width))):
                    start = time.perf_counter()
                    for w, x in zip(sample, xs):
                        fn(x, w)
                    if i:  # the first round warms both up
                        runs[name].append((time.perf_counter() - start) * 1e3)
            timings[width] = (statistics.median(runs["linear"]), statistics.median(runs["skinny"]))
    return timings


def machine_key(weights) -> str:
    """What the measurement depends on: the CPU, torch, the thread count, the dtype, the weight shapes."""
    shapes = sorted({tuple(w.shape) for w in weights})
    parts = [_cpu_name(), torch.__version__, str(torch.get_num_threads()), str(weights[0].dtype), str(shapes)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def calibrated_rows(weights, store: Path | None) -> int:
    """The cut-off measured for these weights on this machine, read from `store` when measured before.
    One process measures at a time (two trainings started together would each time the products under
    the other's load, and could pick different rules); the next one reads its result."""
    weights = list(weights)
    if store is None:
        return choose_rows(measure(weights))
    from specbench.locks import exclusive
    from specbench.results import write_json_atomic

    path = store / f"{machine_key(weights)}.json"
    with exclusive(path.with_suffix(".lock")):
        if path.exists():
            try:
                return int(json.loads(path.read_text())["rows"])
            except (ValueError, KeyError, TypeError):
                pass  # unreadable: measure again
        timings = measure(weights)
        rows = choose_rows(timings)
        write_json_atomic(path, {
            "rows": rows, "cpu": _cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "timings_ms": {str(k): {"linear": v[0], "skinny": v[1]} for k, v in timings.items()},
            "load_average": list(os.getloadavg()), "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return rows


def _cpu_name() -> str:
    """The CPU's model name and a hash of its feature flags (the same name ships with and without AVX-512)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    info = {}
    for line in lines:
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    flags = hashlib.sha256(info.get("flags", "").encode()).hexdigest()[:8]
    return f"{info.get('model name') or platform.machine()} | flags {flags}"


def product(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor, skinny_rows: int) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, as `W @ Xᵀ` when `x` has at most `skinny_rows` rows."""
    rows = x.numel() // x.shape[-1]
    if rows > skinny_rows or rows == 0:
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, -1)
    if rows == 1:
        flat = torch.cat([flat, flat])  # [2, K]: one column would be a GEMV again
    y = (weight @ flat.t())[:, :rows].t()  # [N, rows] -> [rows, N]
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], -1)


def linear(module: nn.Linear, x: torch.Tensor, skinny_rows: int) -> torch.Tensor:
    """`module(x)` under the rule. Forward hooks (MTP's gated LoRA) run on the result as
    `nn.Module.__call__` would run them; a module with pre-hooks is called as itself."""
    if module._forward_pre_hooks or not skinny_rows:
        return module(x)
    y = product(module.weight, module.bias, x, skinny_rows)
    for hook in list(module._forward_hooks.values()):
        result = hook(module, (x,), y)
        if result is not None:
            y = result
    return y


class SkinnyLinear(nn.Linear):
    """An `nn.Linear` under the rule; same parameters and state-dict keys as the one it replaces (its
    hooks, if any, run as for any module: this is its `forward`)."""

    skinny_rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return product(self.weight, self.bias, x, self.skinny_rows)


def use_skinny(module: nn.Module, skinny_rows: int) -> nn.Module:
    """Put every plain `nn.Linear` under `module` (a drafter) under the rule, in place: each becomes a
    `SkinnyLinear` holding the very same parameters (optimizers and saved state dicts are unaffected)."""
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if type(child) in (nn.Linear, SkinnyLinear):
                if type(child) is nn.Linear:
                    skinny = SkinnyLinear.__new__(SkinnyLinear)
                    skinny.__dict__.update(child.__dict__)
                    setattr(parent, name, skinny)
                    child = skinny
                child.skinny_rows = skinny_rows
    return module
