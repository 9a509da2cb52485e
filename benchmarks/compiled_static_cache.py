"""Time of one compiled decode forward, by how the static KV cache is written and how many slots it reserves
(issue 20).

The compiled regime writes each layer's keys and values into the static cache inside the captured forward.
Written with `scatter_` (the regime up to stop 32), inductor functionalises the write of a graph input into
a copy of the whole buffer, the scatter, and a copy back: four capacity-sized passes over every layer's K and
V per call, in both arms, growing with batch and capacity. `index_put_` (now) is written in place. And every
forward attends over all the slots the cache reserves (spare ones masked): 1024 per row up to stop 33, now
the run's longest need rounded up to 256. This compiles one target once per (write, capacity) variant and
times the variants interleaved call by call in one process:

* `--writes scatter,index-put`: caches whose layers write with `scatter_` (the old write, kept here as the
  control) or the regime's caches as they are;
* `--capacities 1024,512`: the slots each cache reserves.

    python benchmarks/compiled_static_cache.py --batch 1,4 --q 1,8 --out benchmarks/records/...json
    python benchmarks/compiled_static_cache.py --writes index-put --capacities 1024,512,384 --q 1 --out ...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from specbench.kv_cache import RowKVCache, _RowLayer


class ScatterWrite(_RowLayer):
    """A static cache layer written as before: `scatter_` at each row's slots."""

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        b, h, q, d = key_states.shape
        idx = self.owner.write_slots[:, None, :, None]
        self.keys.scatter_(2, idx.expand(b, h, q, d), key_states)
        self.values.scatter_(2, idx.expand(b, h, q, value_states.shape[-1]), value_states)
        end = self.owner.view_end
        return self.keys[:, :, :end], self.values[:, :, :end]


def new_cache(target, batch: int, capacity: int, write: str):
    cache = RowKVCache(batch, target.num_layers, capacity, target.device, static=True)
    if write == "scatter":
        cache.layers = [ScatterWrite(cache) for _ in cache.layers]
    return cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--random-weights", default=None, help="a packaged config name or config.json")
    ap.add_argument("--batch", default="1,4")
    ap.add_argument("--q", default="1,8")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--writes", default="scatter,index-put")
    ap.add_argument("--capacities", default="1024", help="slots each static cache reserves (>= context + q)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from specbench import compiled
    from specbench.provenance import collect
    from specbench.random_targets import load_random_target
    from specbench.targets import load_target
    from specbench.timing import StepTimer

    load_start = os.getloadavg()
    if args.random_weights:
        base = load_random_target(args.random_weights, args.device, args.dtype)
    else:
        base = load_target(args.target, args.device, args.dtype)
    target = compiled.compile_target(base)  # each variant's shapes are its own graphs
    variants = [(write, int(c)) for write in args.writes.split(",") for c in args.capacities.split(",")]
    timer = StepTimer(base.device)
    gen = torch.Generator().manual_seed(0)
    points = []
    for batch in map(int, args.batch.split(",")):
        for q in map(int, args.q.split(",")):
            prompt = torch.randint(0, 5000, (batch, args.context), generator=gen).to(base.device)
            ids = torch.randint(0, 5000, (batch, q), generator=gen).to(base.device)
            caches, wall, logits = {}, {f"{w}-{c}": [] for w, c in variants}, {}
            for write, capacity in variants:
                name = f"{write}-{capacity}"
                cache = new_cache(target, batch, capacity, write)
                target.forward(prompt, cache, logits_at=[args.context - 1] * batch)
                cache.commit_prefix([args.context] * batch)
                for _ in range(3):  # compiles, then warms
                    logits[name] = target.forward(ids, cache).float()
                    cache.commit_prefix([0] * batch)
                caches[name] = cache
            for _ in range(args.repeats):
                for name, cache in caches.items():
                    timer.sync()
                    start = time.perf_counter()
                    target.forward(ids, cache)
                    timer.sync()
                    wall[name].append((time.perf_counter() - start) * 1e3)
                    cache.commit_prefix([0] * batch)
            first = next(iter(wall))
            point = {"batch": batch, "q": q, "reference": first,
                     "max_abs_logit_diff": max(float((v - logits[first]).abs().max()) for v in logits.values()),
                     "variants": {name: {"ms_median": statistics.median(ms), "ms_min": min(ms), "ms_all": ms,
                                         "paired_ratio_to_reference": statistics.median(
                                             a / b for a, b in zip(wall[first], ms))}
                                  for name, ms in wall.items()}}
            points.append(point)
            print(f"b{batch} q{q}: " + ", ".join(f"{n} {v['ms_median']:.2f} ms (x{v['paired_ratio_to_reference']:.3f})"
                                                 for n, v in point["variants"].items())
                  + f"; max |logit diff| {point['max_abs_logit_diff']:.2e}", flush=True)
    record = {"kind": "compiled-static-cache", "target": base.name, "writes": args.writes,
              "capacities": args.capacities, "context": args.context, "repeats": args.repeats,
              "device": str(base.device), "dtype": str(base.dtype), "threads": torch.get_num_threads(),
              "load_start": load_start, "load_end": os.getloadavg(), "points": points,
              "provenance": collect(base.device)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1, default=str)
    print(f"load {load_start} -> {record['load_end']}; written {args.out}")


if __name__ == "__main__":
    main()
