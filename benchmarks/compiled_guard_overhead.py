"""Host time per call of the compiled regime's target forward, by how the forward is compiled (issue 20).

A compiled call first runs dynamo's guards: on a transformers model, thousands (hook dicts, types,
attributes and tensor properties of every module). This times one decode forward (`Target.forward`,
static cache) of one target compiled three ways, interleaved call by call in one process:

* `model`: `model(...)` compiled with every guard (the compiled regime before stop 32);
* `direct-all-guards`: the direct forward compiled with every guard (hook guards included: the `model`
  variant turns them on process-wide, as the old regime did);
* `direct-frozen`: the direct forward under `compiled.frozen_guards` (the compiled regime now).

Each variant compiles its own copy of the function (dynamo keeps graphs per code object). Reported per
variant: median and minimum wall ms per call, dynamo's guard check ("TorchDynamo Cache Lookup" in the
torch profiler, µs per call) and the guards kept/dropped. `--shrink` keeps the config's layer count (what
the guard count depends on) with tiny widths, so the host cost of a 36-layer Qwen3-8B-shaped model can be
measured on a CPU, where the full model would not be launch-bound.

    python benchmarks/compiled_guard_overhead.py --config qwen3-8b --shrink --out benchmarks/records/...json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import torch


def build(config: str, shrink: bool, device: str, dtype: str):
    from specbench.random_targets import build_random_model, read_config
    from specbench.targets import Target, resolve_device, resolve_dtype
    from specbench.tiny_models import build_tokenizer

    name, fields = read_config(config)
    if shrink:
        fields = {**fields, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512, "bos_token_id": 1, "eos_token_id": 2}
    dev = resolve_device(device)
    model = build_random_model(fields, dev, resolve_dtype(dtype, dev))
    tok = build_tokenizer("qwen3" if fields["model_type"].startswith("qwen3") else "llama")
    return Target(f"{name}{'-shrunk' if shrink else ''}", "random", model, tok, dev, model.dtype), fields


def variants(base, names: list[str]):
    from specbench import compiled
    from specbench.direct_forward import forward_with_layers

    model = compiled.compile_target(dataclasses.replace(base, forward_impl="transformers", name="model"))
    frozen = compiled.compile_target(dataclasses.replace(base, name="direct-frozen"))
    every = compiled.compile_target(dataclasses.replace(base, name="direct-all-guards"))

    def keep_all(target):
        def keep(entries):
            target.guard_counts.append({"kept": len(entries), "dropped": 0})
            return [True] * len(entries)
        return keep

    # the same compilations as compile_target's, with every guard kept and counted
    model.compiled_model = torch.compile(model.model, dynamic=False,
                                         options={**compiled._options(model), "guard_filter_fn": keep_all(model)})
    every.compiled_forward = compiled._compile(every, forward_with_layers, keep_all(every))
    return [t for t in (model, every, frozen) if t.name in names]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="qwen3-8b")
    ap.add_argument("--shrink", action="store_true")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--q", type=int, default=1)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--variants", default="model,direct-all-guards,direct-frozen",
                    help="comma-separated; each compiles the target once more (minutes on a GPU at 8B)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from torch.profiler import ProfilerActivity, profile

    from specbench.provenance import collect
    from specbench.timing import StepTimer

    load_start = os.getloadavg()
    base, fields = build(args.config, args.shrink, args.device, args.dtype)
    targets = variants(base, args.variants.split(","))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 500, (args.batch, args.q), generator=gen).to(base.device)
    caches, wall, lookup = {}, {t.name: [] for t in targets}, {}
    reset = [0] * args.batch
    for t in targets:
        cache = t.new_cache(args.batch, args.context + args.q)
        prompt = torch.randint(0, 500, (args.batch, args.context), generator=gen).to(base.device)
        t.forward(prompt, cache, logits_at=[args.context - 1] * args.batch)
        cache.commit_prefix([args.context] * args.batch)
        caches[t.name] = cache
        for _ in range(5):  # compiles, then warms
            t.forward(ids, cache)
            cache.commit_prefix(reset)
    timer = StepTimer(base.device)
    for _ in range(args.repeats):
        for t in targets:
            timer.sync()
            start = time.perf_counter()
            t.forward(ids, caches[t.name])
            timer.sync()
            wall[t.name].append((time.perf_counter() - start) * 1e3)
            caches[t.name].commit_prefix(reset)
    for t in targets:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                t.forward(ids, caches[t.name])
                caches[t.name].commit_prefix(reset)
        lookup[t.name] = next((e.cpu_time_total / e.count for e in prof.key_averages()
                               if e.key == "TorchDynamo Cache Lookup"), None)
    rows = {t.name: {"ms_median": statistics.median(wall[t.name]), "ms_min": min(wall[t.name]),
                     "ms_all": wall[t.name], "guard_check_us": lookup[t.name], "guards": t.guard_counts}
            for t in targets}
    record = {"kind": "compiled-guard-overhead", "config": args.config, "shrunk": args.shrink,
              "layers": fields["num_hidden_layers"], "batch": args.batch, "q": args.q, "context": args.context,
              "repeats": args.repeats, "device": str(base.device), "dtype": str(base.dtype),
              "threads": torch.get_num_threads(), "load_start": load_start, "load_end": os.getloadavg(),
              "variants": rows, "provenance": collect(base.device)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1, default=str)
    for name, r in rows.items():
        kept = sum(g["kept"] for g in r["guards"])
        print(f"{name:18s} {r['ms_median']:8.3f} ms median {r['ms_min']:8.3f} min  guard check "
              f"{r['guard_check_us'] or 0:7.0f} us  guards kept {kept}")
    print(f"load {load_start} -> {record['load_end']}; written {args.out}")


if __name__ == "__main__":
    main()
