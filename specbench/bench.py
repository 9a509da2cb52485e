"""`specbench bench`: the shared AR loop against plain HF `generate` (issue 2, "Must show").

Same target, same prompts, same process, greedy, same EOS and max tokens; the two contenders
alternate order on every repeat and each is warmed up first. Reports tokens/s for both, their ratio
(goal ≥ 1.0), and the share of a decode step the loop spends outside the target forward ("other"),
plus the achieved weight bandwidth (model bytes × forwards/s), gpt-fast style.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from specbench.decode import generate
from specbench.methods import build_method
from specbench.provenance import collect
from specbench.sampling import SamplingConfig
from specbench.suites import get_suite
from specbench.suites.base import select
from specbench.targets import load_target
from specbench.timing import StepTimer


def _hf_generate(target, prompts, max_new_tokens):
    tok = target.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else target.eos_token_ids[0]
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=target.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=target.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = target.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                    do_sample=False, eos_token_id=target.eos_token_ids, pad_token_id=pad)
    if target.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    tokens = 0
    eos = set(target.eos_token_ids)
    for row in out[:, width:].tolist():
        for t in row:
            tokens += 1
            if t in eos:
                break
    return tokens, elapsed


def _loop_generate(target, method, prompts, max_new_tokens):
    timer = StepTimer(target.device)
    t0 = timer.now()
    out = generate(method.make_decoder(SamplingConfig(), None), prompts, max_new_tokens, target.eos_token_ids, timer)
    elapsed = timer.now() - t0
    tokens = sum(len(r.tokens) for r in out.rows)
    spans = out.steps
    total = sum(spans["draft"]) + sum(spans["verify"]) + sum(spans["other"])
    return tokens, elapsed, (sum(spans["other"]) / total if total else 0.0), out


def bench_loop_vs_generate(target_name, batch_sizes, n_prompts, max_new_tokens, repeats, suite_name, out_dir):
    from rich.console import Console
    from rich.table import Table

    target = load_target(target_name)
    suite = get_suite(suite_name)
    examples = select(suite.load().examples, max(n_prompts, max(batch_sizes)), seed=0)
    all_prompts = [target.render([{"role": "user", "content": e.turns[0]}]) for e in examples]
    method = build_method("ar", target)
    model_bytes = sum(p.numel() * p.element_size() for p in target.model.parameters())
    rows = []
    for bs in batch_sizes:
        batches = [all_prompts[i : i + bs] for i in range(0, len(all_prompts), bs)]
        batches = [b for b in batches if len(b) == bs] or [all_prompts[:bs]]
        _loop_generate(target, method, batches[0], 8)
        _hf_generate(target, batches[0], 8)
        loop_tok = loop_time = hf_tok = hf_time = 0.0
        other_shares, ratios = [], []
        for r in range(repeats):
            for prompts in batches:
                contenders = ["loop", "hf"] if r % 2 == 0 else ["hf", "loop"]
                res = {}
                for who in contenders:
                    if who == "loop":
                        n, t, share, out = _loop_generate(target, method, prompts, max_new_tokens)
                        other_shares.append(share)
                    else:
                        n, t = _hf_generate(target, prompts, max_new_tokens)
                    res[who] = (n, t)
                loop_tok += res["loop"][0]; loop_time += res["loop"][1]
                hf_tok += res["hf"][0]; hf_time += res["hf"][1]
                ratios.append((res["loop"][0] / res["loop"][1]) / (res["hf"][0] / res["hf"][1]))
        loop_tps, hf_tps = loop_tok / loop_time, hf_tok / hf_time
        rows.append({"batch_size": bs, "loop_tokens_per_s": loop_tps, "hf_generate_tokens_per_s": hf_tps,
                     "ratio": loop_tps / hf_tps, "ratio_median_per_batch": statistics.median(ratios),
                     "other_share_median": statistics.median(other_shares),
                     "loop_bandwidth_GBps": model_bytes * (loop_tps / bs) / 1e9,
                     "batches": len(batches), "repeats": repeats})
    table = Table(title=f"AR loop vs HF generate · {target.name} · {target.device} · {max_new_tokens} new tokens")
    for col in ("batch", "loop tok/s", "HF tok/s", "ratio", "median ratio", "other share", "loop GB/s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["batch_size"]), f"{r['loop_tokens_per_s']:.1f}", f"{r['hf_generate_tokens_per_s']:.1f}",
                      f"{r['ratio']:.3f}", f"{r['ratio_median_per_batch']:.3f}", f"{r['other_share_median']:.1%}",
                      f"{r['loop_bandwidth_GBps']:.1f}")
    Console().print(table)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"loop_vs_generate-{target.name}.json"
    path.write_text(json.dumps({"target": target.describe(), "max_new_tokens": max_new_tokens, "rows": rows,
                                "provenance": collect(target.device)}, indent=2, default=str))
    Console().print(f"written: {path}")
    return rows
