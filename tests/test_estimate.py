"""estimate.py: a sweep's time from stored runs' measured tokens/s, else the stated rough cost (issue 23)."""

import pytest

from specbench.estimate import ROUGH_SECONDS_PER_TOKEN, duration, estimate_sweep
from specbench.results import ResultStore
from specbench.runner import RunConfig, Runner
from specbench.sweep import grid_cells


def test_cells_are_timed_from_stored_runs_else_at_the_rough_cost(tmp_path, tiny_llama):
    base = RunConfig(method="ar", suite="gsm8k", target="tiny-random-llama", limit=2, max_new_tokens=3, warmup=False)
    done = grid_cells(base, {"seed": [0]})[0]
    stored = Runner(base, ResultStore(tmp_path), progress=False, target=tiny_llama).run(run_id=done.run_id)
    stored = stored.read_summary()
    cells = grid_cells(base, {"batch_size": [1, 2], "seed": [7]})  # b1: measured; b2: no stored run
    est = estimate_sweep([done, *cells], tmp_path)
    measured = 2 * 3 * (1 / stored["tokens_per_s"] + 1 / stored["baseline_tokens_per_s"])
    per, power = ROUGH_SECONDS_PER_TOKEN["cpu"]
    assert (est.measured, est.rough, est.complete) == (1, 1, 1) and not est.trainings
    assert est.decode_s == pytest.approx(measured + 2 * 3 * 2 * per * 2 ** power)
    assert est.line().startswith(f"estimate: about {duration(est.seconds)}: decoding ")
    assert "1 cells from stored runs' tokens/s, 1 at a rough 62 ms per token at batch 1 x b^-0.5 (cpu), 1 complete" in est.line()


def test_durations_read_in_minutes_and_hours():
    assert [duration(s) for s in (1, 60, 61, 3600, 8100)] == ["1 min", "1 min", "2 min", "1 h 00 min", "2 h 15 min"]
