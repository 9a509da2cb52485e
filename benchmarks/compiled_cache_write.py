"""Time of one compiled decode forward, by how it writes the static KV cache (issue 20).

The compiled regime writes each layer's keys and values into the static cache inside the captured forward.
Written with `scatter_` (the regime up to stop 32), inductor functionalises the write of a graph input into
a copy of the whole buffer, the scatter, and a copy back: four capacity-sized passes over every layer's K and
V per call, in both arms, growing with batch and capacity. `index_put_` (now) is written in place. This
compiles one target twice, once with each write, and times them interleaved call by call in one process:

* `scatter`: caches whose layers write with `scatter_` (the old write, kept here as the control);
* `index-put`: the regime's caches as they are.

    python benchmarks/compiled_cache_write.py --batch 1,4 --q 1,8 --out benchmarks/records/...json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import torch

from specbench.kv_cache import _RowLayer


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
    cache = target.new_cache(batch, capacity)
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
    variants = {write: compiled.compile_target(dataclasses.replace(base, name=f"{base.name}-{write}"))
                for write in ("scatter", "index-put")}
    timer = StepTimer(base.device)
    gen = torch.Generator().manual_seed(0)
    points = []
    for batch in map(int, args.batch.split(",")):
        for q in map(int, args.q.split(",")):
            prompt = torch.randint(0, 5000, (batch, args.context), generator=gen).to(base.device)
            ids = torch.randint(0, 5000, (batch, q), generator=gen).to(base.device)
            caches, wall, logits = {}, {write: [] for write in variants}, {}
            for write, t in variants.items():
                cache = new_cache(t, batch, args.context + q, write)
                t.forward(prompt, cache, logits_at=[args.context - 1] * batch)
                cache.commit_prefix([args.context] * batch)
                for _ in range(3):  # compiles, then warms
                    logits[write] = t.forward(ids, cache).float()
                    cache.commit_prefix([0] * batch)
                caches[write] = cache
            for _ in range(args.repeats):
                for write, t in variants.items():
                    timer.sync()
                    start = time.perf_counter()
                    t.forward(ids, caches[write])
                    timer.sync()
                    wall[write].append((time.perf_counter() - start) * 1e3)
                    caches[write].commit_prefix([0] * batch)
            old, new = wall["scatter"], wall["index-put"]
            point = {"batch": batch, "q": q, "capacity": caches["scatter"].capacity,
                     "same_logits": bool(torch.equal(logits["scatter"], logits["index-put"])),
                     "variants": {write: {"ms_median": statistics.median(ms), "ms_min": min(ms), "ms_all": ms}
                                  for write, ms in wall.items()},
                     "ratio_median": statistics.median(old) / statistics.median(new),
                     "paired_ratio_median": statistics.median(a / b for a, b in zip(old, new))}
            points.append(point)
            print(f"b{batch} q{q}: scatter {statistics.median(old):.2f} ms, index-put {statistics.median(new):.2f} ms, "
                  f"paired ratio {point['paired_ratio_median']:.3f}, same logits {point['same_logits']}", flush=True)
    record = {"kind": "compiled-cache-write", "target": base.name, "context": args.context, "repeats": args.repeats,
              "device": str(base.device), "dtype": str(base.dtype), "threads": torch.get_num_threads(),
              "load_start": load_start, "load_end": os.getloadavg(), "points": points,
              "provenance": collect(base.device)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1, default=str)
    print(f"load {load_start} -> {record['load_end']}; written {args.out}")


if __name__ == "__main__":
    main()
