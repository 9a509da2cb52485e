"""How long a sweep will take, shown by `specbench sweep --dry-run` before anything runs (issue 23).

A cell decodes its prompts x turns x token cap through both arms; that count is an upper bound (every
answer runs to its cap). Each arm's time per token comes from the stored runs of the same target, method,
batch size and device (their measured tokens/s), else from a stated rough cost, `ROUGH_SECONDS_PER_TOKEN`:
on a CPU DESIGN.md §7's ~16 tokens/s of plain AR on 2 cores at batch 1, a row's cost falling as b^-0.5
(a batch-16 forward costs ~3.7x a batch-1 one there), the method arm at the AR arm's cost; on CUDA a
launch-bound 20 ms step at any batch. Complete cells cost nothing (a re-run skips them) and every missing
drafter adds its standard training time once (`--drafter auto`, training/store.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

#: device type -> (seconds per decode step of one row at batch 1, exponent of the batch size)
ROUGH_SECONDS_PER_TOKEN = {"cpu": (1 / 16, -0.5), "cuda": (0.020, -1.0)}


@dataclass
class Estimate:
    decode_s: float = 0.0
    measured: int = 0  # cells timed from stored runs
    rough: int = 0  # cells timed at the rough cost
    complete: int = 0  # cells already complete
    trainings: dict = field(default_factory=dict)  # method -> minutes (None: a step count, not timed)
    rough_cost: str = ""  # the rough costs used, in words

    @property
    def seconds(self) -> float:
        return self.decode_s + 60 * sum(m or 0 for m in self.trainings.values())

    def line(self) -> str:
        parts = [f"decoding {duration(self.decode_s)} (at most; {self.measured} cells from stored runs' tokens/s, "
                 f"{self.rough} at {self.rough_cost or 'a rough cost'}"
                 + (f", {self.complete} complete" if self.complete else "") + ")"]
        if self.trainings:
            parts.append(f"training {len(self.trainings)} missing drafters first "
                         f"({', '.join(self.trainings)}: {duration(60 * sum(m or 0 for m in self.trainings.values()))})")
        return f"estimate: about {duration(self.seconds)}: " + "; ".join(parts)


def duration(seconds: float) -> str:
    minutes = math.ceil(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def measured_speeds(results_dir: str | Path) -> dict:
    """(target, method, batch size, device type) -> (method, AR) seconds per token, from complete runs."""
    from specbench.results import ResultStore

    speeds = {}
    for run_dir in ResultStore(results_dir).runs():
        try:
            manifest, summary = run_dir.read_manifest(), run_dir.read_summary()
        except Exception:  # noqa: BLE001 — an unreadable run just gives no estimate
            continue
        if manifest.get("status") != "complete" or not summary or not summary.get("tokens_per_s"):
            continue
        c, device = manifest["config"], str(manifest.get("target", {}).get("device", "cpu")).split(":")[0]
        if summary.get("baseline_tokens_per_s"):
            speeds[(c["target"], c["method"], c["batch_size"], device)] = (1 / summary["tokens_per_s"],
                                                                          1 / summary["baseline_tokens_per_s"])
    return speeds


def rough_cost(device_type: str) -> str:
    per, power = ROUGH_SECONDS_PER_TOKEN[device_type]
    return f"a rough {1000 * per:.0f} ms per token at batch 1 x b^{power:g} ({device_type})"


def estimate_sweep(cells, results_dir: str | Path) -> Estimate:
    """The `Estimate` of running `cells` now. Drafter methods without an explicit `--drafter` load their
    target (one at a time; the grid puts targets outermost) to look their drafter up in the store."""
    from specbench.executors import cell_is_complete
    from specbench.methods import method_class
    from specbench.results import RunDir
    from specbench.runner import device_size
    from specbench.suites import get_suite
    from specbench.targets import load_target, resolve_device
    from specbench.training.store import expected_training, missing_drafter

    out = Estimate()
    speeds = measured_speeds(results_dir)
    suites: dict = {}
    targets: dict = {}
    for cell in cells:
        c = cell.config
        if cell_is_complete(RunDir(Path(results_dir) / cell.run_id)):
            out.complete += 1
            continue
        key = (c.suite, c.data_file, tuple(c.categories or ()))
        if key not in suites:
            suite = get_suite(c.suite)
            examples = suite.load(c.data_file).examples
            if c.categories:
                examples = suite.select_categories(examples, c.categories)
            suites[key] = (suite, len(examples), sum(len(e.turns) for e in examples) / max(len(examples), 1))
        suite, total, turns = suites[key]
        device_type = resolve_device(c.device).type
        limit, max_new, _ = device_size(c, suite, total, device_type)
        tokens = min(limit or total, total) * turns * max_new
        speed = speeds.get((c.target, c.method, c.batch_size, device_type))
        if speed is None:
            per, power = ROUGH_SECONDS_PER_TOKEN[device_type]
            speed = (per * c.batch_size ** power,) * 2
            out.rough += 1
            out.rough_cost = rough_cost(device_type)
        else:
            out.measured += 1
        out.decode_s += tokens * sum(speed)
        cls = method_class(c.method)
        if cls.needs_drafter and c.drafter in (None, "auto") and c.method not in out.trainings:
            key = (c.target, c.device, c.dtype)
            if key not in targets:
                targets.clear()
                targets[key] = load_target(*key)
            target = targets[key]
            if missing_drafter(c.method, target, c.method_options):
                out.trainings[c.method] = expected_training(target)[0]
    return out
