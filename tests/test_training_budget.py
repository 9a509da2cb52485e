"""Recipes (budget.py): the `paper` recipe's plan and its cost from a measured step time (issue 22)."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from specbench.training.budget import PAPER, PAPER_SAMPLES, RECIPES, STANDARD_CPU, cost_estimate

SKIPHEAD = "specbench.testing.train_drafters:SkipHeadDrafter"
DRY = ["train", "--method", SKIPHEAD, "--recipe", "paper", "--dry-run", "--max-length", "48", "--batch-size", "2",
       "--target", "tiny-random-llama", "--device", "cpu", "--no-progress"]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    from specbench import hub

    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    monkeypatch.setenv("SPECBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def test_paper_recipe_states_its_scale():
    assert RECIPES == {"standard": STANDARD_CPU, "paper": PAPER}
    assert sum(PAPER_SAMPLES.values()) == 300_000 and PAPER.data == "sharegpt:68000,ultrachat:232000"
    assert PAPER.steps == 300_000 * 6 // 32 and PAPER.batch_size * PAPER.grad_accum == 32
    assert cost_estimate(1000, 36.0) == "1,000 steps x 36 s/step = 10.0 device-hours"
    assert cost_estimate(1000, 36.0, 8).endswith("(~1.2 h on 8 devices, communication not counted)")


def test_dry_run_costs_the_measured_step_time_and_trains_nothing(offline, monkeypatch):
    from specbench.cli import cli
    from specbench.training import pipeline

    measured = []
    real = pipeline.estimate_step_seconds

    def spy(*args, **kwargs):
        measured.append(real(*args, **kwargs))
        return measured[-1]

    monkeypatch.setattr(pipeline, "estimate_step_seconds", spy)
    res = CliRunner().invoke(cli, DRY)
    assert res.exit_code == 0, res.output
    assert len(measured) == 1 and measured[0] > 0
    assert "using the shipped offline corpus mix" in res.output and "data: mix:300000" in res.output
    assert "as published: 300K samples" in res.output and "measured here on cpu" in res.output
    cost = next(line for line in res.output.splitlines() if line.startswith("cost: "))
    assert cost == f"cost: {cost_estimate(PAPER.steps, measured[0], PAPER.grad_accum)}"
    assert not (offline / "cache" / "drafters").exists()

    res = CliRunner().invoke(cli, [*DRY, "--step-seconds", "2"])
    assert res.exit_code == 0 and len(measured) == 1, res.output  # given: nothing measured
    assert f"cost: {cost_estimate(PAPER.steps, 2.0, 8)}" in res.output and "given with --step-seconds" in res.output
    hours = float(re.search(r"= ([\d,.]+) device-hours", res.output).group(1).replace(",", ""))
    assert hours == pytest.approx(PAPER.steps * 2 / 3600, abs=0.06)


def test_step_seconds_needs_a_dry_run(offline):
    from specbench.cli import cli

    for extra in (["--step-seconds", "2"], ["--step-seconds", "0", "--dry-run"]):
        args = [a for a in DRY if a != "--dry-run"] + extra
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 2 and res.output.count("\n") == 1 and "--step-seconds" in res.output, res.output
