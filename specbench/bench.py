"""`specbench bench`: the harness's own runtime against what a user would otherwise run (issues 2, 20).

Three measurements, one process, the same target and prompts, greedy, each contender warmed up first
and the contenders alternating order on every repeat (DESIGN.md §4):

* **AR loop vs HF `generate`** at each batch size: tokens/s of both, their ratio (goal ≥ 1.05), the share
  of a decode step the loop spends outside the target forward ("other") and the achieved weight
  bandwidth (model bytes × forwards/s, gpt-fast style);
* **`pld` vs HF prompt lookup** (`generate(prompt_lookup_num_tokens=K, max_matching_ngram_size=M)`, batch
  1, HF's only batch size for it) with the same K and M: tokens/s, τ (new tokens per target forward, the
  prefill's excluded) and whether the outputs are identical (both are lossless, so they must be);
* **verify cost**: one target forward of q = 1, 2, 4, 8, 16 tokens over the prompts' cache, relative to
  q = 1 (one AR step) — the price a speculative step pays per verified width.

The load average before and after is recorded: timings on a shared CPU are only comparable at similar load.
"""

from __future__ import annotations

import json
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from specbench.decode import generate
from specbench.methods import build_method
from specbench.provenance import collect, load_average
from specbench.sampling import SamplingConfig
from specbench.suites import get_suite
from specbench.suites.base import select
from specbench.targets import load_target
from specbench.timing import StepTimer


def _sync(target) -> None:
    if target.device.type == "cuda":
        torch.cuda.synchronize()


def _new_tokens(row: list[int], eos: set[int]) -> int:
    for i, t in enumerate(row):
        if t in eos:
            return i + 1
    return len(row)


def _hf_generate(target, prompts, max_new_tokens, **kwargs):
    """HF `generate`, left-padded as it expects; returns (tokens per row, seconds)."""
    tok = target.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else target.eos_token_ids[0]
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=target.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=target.device)
    _sync(target)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = target.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                    do_sample=False, eos_token_id=target.eos_token_ids, pad_token_id=pad, **kwargs)
    _sync(target)
    elapsed = time.perf_counter() - t0
    eos = set(target.eos_token_ids)
    rows = [r[: _new_tokens(r, eos)] for r in out[:, width:].tolist()]
    return rows, elapsed


def _loop_generate(target, method, prompts, max_new_tokens):
    """The harness's decode loop; returns (tokens per row, seconds, other share, BatchOutput)."""
    timer = StepTimer(target.device)
    t0 = timer.now()
    out = generate(method.make_decoder(SamplingConfig(), None), prompts, max_new_tokens, target.eos_token_ids, timer)
    elapsed = timer.now() - t0
    spans = out.steps
    total = sum(spans["draft"]) + sum(spans["verify"]) + sum(spans["other"])
    return [r.tokens for r in out.rows], elapsed, (sum(spans["other"]) / total if total else 0.0), out


def _prompts(target, suite_name: str, n: int) -> list[list[int]]:
    examples = select(get_suite(suite_name).load().examples, n, seed=0)
    return [target.render([{"role": "user", "content": e.turns[0]}]) for e in examples]


@contextmanager
def _with_forward(target, impl: str):
    """Run the harness's loop on `impl` ("direct" or "transformers") inside the block, then restore."""
    old, target.forward_impl = target.forward_impl, impl
    try:
        yield
    finally:
        target.forward_impl = old


def bench_loop_vs_generate(target, batch_sizes, all_prompts, max_new_tokens, repeats) -> list[dict]:
    """AR loop vs HF `generate`, and — where the target runs the direct forward — the same loop on
    transformers' own `model(...)` as a third contender (`loop_tf`): the before/after of issue 20's
    forward, in one process. The contenders rotate their order every repeat."""
    method = build_method("ar", target)
    model_bytes = sum(p.numel() * p.element_size() for p in target.model.parameters())
    contenders = ["loop", "hf"] + (["loop_tf"] if target.forward_impl == "direct" else [])

    def run(who, prompts, n):
        if who == "hf":
            return (*_hf_generate(target, prompts, n), None)
        with _with_forward(target, "transformers" if who == "loop_tf" else target.forward_impl):
            toks, t, share, _ = _loop_generate(target, method, prompts, n)
        return toks, t, share

    rows = []
    for bs in batch_sizes:
        batches = [all_prompts[i: i + bs] for i in range(0, len(all_prompts), bs)]
        batches = [b for b in batches if len(b) == bs] or [all_prompts[:bs]]
        for who in contenders:
            run(who, batches[0], 8)
        totals = {w: [0, 0.0] for w in contenders}
        other_shares, ratios, tf_ratios, identical = [], [], [], 0
        for r in range(repeats):
            for prompts in batches:
                res = {}
                k = r % len(contenders)
                for who in contenders[k:] + contenders[:k]:
                    toks, t, share = run(who, prompts, max_new_tokens)
                    if who == "loop":
                        other_shares.append(share)
                    res[who] = (toks, t)
                    totals[who][0] += sum(map(len, toks))
                    totals[who][1] += t
                identical += all(res[w][0] == res["hf"][0] for w in res)
                rate = {w: sum(map(len, res[w][0])) / res[w][1] for w in res}
                ratios.append(rate["loop"] / rate["hf"])
                if "loop_tf" in rate:
                    tf_ratios.append(rate["loop"] / rate["loop_tf"])
        tps = {w: totals[w][0] / totals[w][1] for w in contenders}
        row = {"batch_size": bs, "loop_tokens_per_s": tps["loop"], "hf_generate_tokens_per_s": tps["hf"],
               "ratio": tps["loop"] / tps["hf"], "ratio_median_per_batch": statistics.median(ratios),
               "other_share_median": statistics.median(other_shares),
               "loop_bandwidth_GBps": model_bytes * (tps["loop"] / bs) / 1e9,
               "identical_batches": identical, "timed_batches": len(ratios),
               "batches": len(batches), "repeats": repeats, "forward": target.forward_impl}
        if "loop_tf" in tps:
            row.update({"loop_transformers_forward_tokens_per_s": tps["loop_tf"],
                        "ratio_transformers_forward_vs_hf": tps["loop_tf"] / tps["hf"],
                        "ratio_direct_vs_transformers_forward": tps["loop"] / tps["loop_tf"],
                        "ratio_direct_vs_transformers_forward_median": statistics.median(tf_ratios)})
        rows.append(row)
    return rows


def bench_pld_vs_prompt_lookup(target, prompts, max_new_tokens, repeats, depth: int, max_ngram: int) -> dict:
    """Batch 1, prompt by prompt, interleaved; HF's τ from a forward hook (every target forward counts)."""
    method = build_method("pld", target, depth=depth, max_ngram=max_ngram, min_ngram=1)
    calls = [0]
    hf_kwargs = {"prompt_lookup_num_tokens": depth, "max_matching_ngram_size": max_ngram}

    def hf(prompt, n):
        # the counting hook lives only around HF's call: a pre-hook on the model sends the harness's
        # direct forward back to model(...) (direct_forward.has_pre_hooks), which would time the wrong loop
        hook = target.model.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
        try:
            return _hf_generate(target, [prompt], n, **hf_kwargs)
        finally:
            hook.remove()

    _loop_generate(target, method, prompts[:1], 16)
    hf(prompts[0], 16)
    tot = {"pld": [0, 0.0, 0], "hf": [0, 0.0, 0]}
    identical, ratios = 0, []
    for r in range(repeats):
        for i, p in enumerate(prompts):
            res = {}
            for who in (["pld", "hf"] if (r + i) % 2 == 0 else ["hf", "pld"]):
                calls[0] = 0
                if who == "pld":
                    toks, t, _, out = _loop_generate(target, method, [p], max_new_tokens)
                    forwards = out.active_steps[0]  # verification forwards (prefill excluded)
                else:
                    toks, t = hf(p, max_new_tokens)
                    forwards = calls[0] - 1  # HF's prefill forward excluded
                res[who] = (toks[0], t)
                tot[who][0] += len(toks[0])
                tot[who][1] += t
                tot[who][2] += forwards
            identical += res["pld"][0] == res["hf"][0]
            ratios.append((len(res["pld"][0]) / res["pld"][1]) / (len(res["hf"][0]) / res["hf"][1]))
    n = len(prompts) * repeats
    rate = {w: tot[w][0] / tot[w][1] for w in tot}
    tau = {w: (tot[w][0] - n) / max(tot[w][2], 1) for w in tot}  # the prefill's token is in no step
    return {"depth": depth, "max_ngram": max_ngram, "prompts": len(prompts), "repeats": repeats,
            "pld_tokens_per_s": rate["pld"], "hf_prompt_lookup_tokens_per_s": rate["hf"],
            "ratio": rate["pld"] / rate["hf"], "ratio_median_per_prompt": statistics.median(ratios),
            "pld_tau": tau["pld"], "hf_tau": tau["hf"], "identical_outputs": identical, "outputs": n}


@torch.inference_mode()
def bench_verify_cost(target, prompts, widths, repeats: int = 15) -> list[dict]:
    """One target forward of q tokens per row over the prompts' committed cache, median over repeats; the
    widths take turns within each repeat (a drift of the machine's speed hits them alike), and the pending
    tokens are dropped after each forward, so every forward sees the same context. Where the target runs
    the direct forward, transformers' `model(...)` is timed beside it on the same cache (`*_tf`)."""
    from specbench.decode import prefill_batch

    cache, _, last = prefill_batch(target, prompts, max(map(len, prompts)) + max(widths) + 1, SamplingConfig(), None)
    qs = sorted({1, *widths})
    impls = [target.forward_impl] + (["transformers"] if target.forward_impl == "direct" else [])
    times = {(impl, q): [] for impl in impls for q in qs}
    for i in range(repeats + 1):
        for impl in (impls if i % 2 == 0 else impls[::-1]):
            with _with_forward(target, impl):
                for q in (qs if i % 2 == 0 else qs[::-1]):
                    ids = last[:, None].expand(-1, q).contiguous()
                    _sync(target)
                    t0 = time.perf_counter()
                    target.forward(ids, cache)
                    _sync(target)
                    if i:  # the first round is a warm-up
                        times[impl, q].append(time.perf_counter() - t0)
                    cache.commit_prefix([0] * len(prompts))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for q in qs:
        row = {"q": q, "batch_size": len(prompts), "median_ms": med[impls[0], q] * 1e3,
               "relative_to_ar_step": med[impls[0], q] / med[impls[0], 1]}
        if len(impls) > 1:
            row.update({"median_ms_tf": med["transformers", q] * 1e3,
                        "relative_to_ar_step_tf": med["transformers", q] / med["transformers", 1]})
        rows.append(row)
    return rows


def run_bench(target_name, batch_sizes, n_prompts, max_new_tokens, repeats, suite_name, out_dir,
              pld_prompts: int = 10, pld_tokens: int = 128, pld_depth: int = 7, pld_ngram: int = 2,
              verify_widths=(2, 4, 8, 16)) -> dict:
    from rich.console import Console
    from rich.table import Table

    load_start = load_average()
    target = load_target(target_name)
    console = Console()
    result = {"target": target.describe(), "max_new_tokens": max_new_tokens, "load_average_start": load_start}
    prompts = _prompts(target, suite_name, max(n_prompts, max(batch_sizes), pld_prompts))
    loop = bench_loop_vs_generate(target, batch_sizes, prompts[:max(n_prompts, max(batch_sizes))],
                                  max_new_tokens, repeats)
    result["loop_vs_generate"] = loop
    table = Table(title=f"AR loop vs HF generate · {target.name} · {target.device} · {max_new_tokens} new tokens "
                        f"· forward {target.forward_impl}")
    with_tf = "loop_transformers_forward_tokens_per_s" in loop[0]
    for col in ("batch", "loop tok/s", "HF tok/s", "ratio", "median ratio", "other share", "loop GB/s", "identical",
                *(("loop on model(...) tok/s", "its ratio", "direct / model(...)") if with_tf else ())):
        table.add_column(col, justify="right")
    for r in loop:
        table.add_row(str(r["batch_size"]), f"{r['loop_tokens_per_s']:.1f}", f"{r['hf_generate_tokens_per_s']:.1f}",
                      f"{r['ratio']:.3f}", f"{r['ratio_median_per_batch']:.3f}", f"{r['other_share_median']:.1%}",
                      f"{r['loop_bandwidth_GBps']:.1f}", f"{r['identical_batches']}/{r['timed_batches']}",
                      *((f"{r['loop_transformers_forward_tokens_per_s']:.1f}",
                         f"{r['ratio_transformers_forward_vs_hf']:.3f}",
                         f"{r['ratio_direct_vs_transformers_forward']:.3f}") if with_tf else ()))
    console.print(table)
    if pld_prompts:
        pld = bench_pld_vs_prompt_lookup(target, prompts[:pld_prompts], pld_tokens, max(1, repeats // 2 or 1),
                                         pld_depth, pld_ngram)
        result["pld_vs_prompt_lookup"] = pld
        table = Table(title=f"pld vs HF prompt lookup (K {pld_depth}, n-gram {pld_ngram}) · batch 1 · "
                            f"{pld_prompts} prompts × {pld_tokens} tokens")
        for col in ("pld tok/s", "HF tok/s", "ratio", "median ratio", "pld tau", "HF tau", "identical"):
            table.add_column(col, justify="right")
        table.add_row(f"{pld['pld_tokens_per_s']:.1f}", f"{pld['hf_prompt_lookup_tokens_per_s']:.1f}",
                      f"{pld['ratio']:.3f}", f"{pld['ratio_median_per_prompt']:.3f}", f"{pld['pld_tau']:.2f}",
                      f"{pld['hf_tau']:.2f}", f"{pld['identical_outputs']}/{pld['outputs']}")
        console.print(table)
    if verify_widths:
        cost = bench_verify_cost(target, prompts[:1], verify_widths)
        result["verify_cost"] = cost
        table = Table(title="verify cost: one target forward of q tokens (batch 1) relative to an AR step")
        with_tf = "median_ms_tf" in cost[0]
        for col in ("q", "median ms", "× AR step", *(("model(...) ms", "× its AR step") if with_tf else ())):
            table.add_column(col, justify="right")
        for r in cost:
            table.add_row(str(r["q"]), f"{r['median_ms']:.1f}", f"{r['relative_to_ar_step']:.2f}",
                          *((f"{r['median_ms_tf']:.1f}", f"{r['relative_to_ar_step_tf']:.2f}") if with_tf else ()))
        console.print(table)
    result["load_average_end"] = load_average()
    result["provenance"] = collect(target.device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{target.name}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    console.print(f"written: {path}  (load average {load_start} -> {result['load_average_end']})")
    return result
