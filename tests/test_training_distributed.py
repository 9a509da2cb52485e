"""`specbench train` on two gloo processes (issue 22): the same drafter as one process with the same
global batch, snapshots and checkpoints from rank 0 only, and an interrupted run that resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from specbench.training.data import DataSource
from specbench.training.regen import RegenSettings, regenerate

SKIPHEAD = "specbench.testing.train_drafters:SkipHeadDrafter"
# 4 steps of 2 micro-batches of 2 sequences; a snapshot (and so a checkpoint) after step 2
TRAIN = ["train", "--method", SKIPHEAD, "--data", "gsm8k:6", "--max-new-tokens", "8", "--max-length", "512",
         "--steps", "4", "--batch-size", "2", "--grad-accum", "2", "--lr", "1e-2", "--save-at", "2",
         "-o", "hidden_size=16", "--target", "tiny-random-llama", "--device", "cpu", "--no-progress"]


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One single-process reference, then four jobs in two gloo ranks: the same run; a run with dropout;
    that run interrupted at its third step (after the step-2 checkpoint); and the interrupted one again."""
    from specbench.testing.distributed import run_ranks
    from specbench.tiny_models import build_tokenizer  # noqa: F401  (fail here, not in a child, if absent)

    root = tmp_path_factory.mktemp("ddp")
    cache = root / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPECBENCH_CACHE_DIR", str(cache))
        from specbench.targets import load_target

        target = load_target("tiny-random-llama", device="cpu", dtype="float32")
        regenerate(target, DataSource("gsm8k", 6), RegenSettings(max_new_tokens=8), batch_size=3, progress=False)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            from specbench.cli import cli

            res = CliRunner().invoke(cli, [*TRAIN, "--out", str(root / "single")])
        finally:
            torch.set_num_threads(threads)
        assert res.exit_code == 0, res.output
    dropout = ["-o", "dropout=0.2"]
    jobs = [([*TRAIN, "--out", str(root / "ddp")], None),
            ([*TRAIN, *dropout, "--out", str(root / "whole")], None),
            ([*TRAIN, *dropout, "--out", str(root / "broken")], 3),  # one micro-batch per rank and step
            ([*TRAIN, *dropout, "--out", str(root / "broken")], None)]
    env = {"SPECBENCH_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    run_ranks(2, jobs, env, root / "jobs.jsonl")
    log = {(e["job"], e["rank"]): e for e in map(json.loads, (root / "jobs.jsonl").read_text().splitlines())}
    return root, log


def test_two_processes_train_the_drafter_of_one_process_with_the_same_global_batch(runs):
    root, log = runs
    # 4 steps x 2 micro-batches: each rank ran its half of them
    assert [log[0, r]["micro_batches"] for r in (0, 1)] == [4, 4]
    single, ddp = _weights(root / "single"), _weights(root / "ddp")
    assert single.keys() == ddp.keys()
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-5, atol=1e-6, msg=name)
    fresh = {k: v for k, v in _weights(root / "ddp" / "snapshots" / "step-000002").items()}
    assert any(not torch.equal(fresh[k], ddp[k]) for k in ddp)  # the steps did train
    a = json.loads((root / "single" / "config.json").read_text())["training"]
    b = json.loads((root / "ddp" / "config.json").read_text())["training"]
    # the ranks together saw exactly the single process's micro-batches
    assert b["budget"]["tokens_seen"] == a["budget"]["tokens_seen"] > 0
    assert b["environment"]["world_size"] == 2 and "world_size" not in a["environment"]
    assert [h["step"] for h in b["history"]] == [h["step"] for h in a["history"]]
    assert b["final_eval"]["loss"] == pytest.approx(a["final_eval"]["loss"], rel=1e-4)
    assert sorted(p.name for p in (root / "ddp" / "snapshots").iterdir()) == ["step-000002"]
    assert not (root / "ddp" / "checkpoint").exists()


def test_an_interrupted_two_process_run_resumes_exactly(runs):
    root, log = runs
    assert log[2, 0]["checkpoint_step"] == log[2, 1]["checkpoint_step"] == 2
    assert log[3, 0]["micro_batches"] == 2  # the resumed job ran steps 3 and 4 only
    whole, resumed = _weights(root / "whole"), _weights(root / "broken")
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name
    assert not all(torch.equal(whole[k], _weights(root / "ddp")[k]) for k in whole)  # dropout mattered
    done = json.loads((root / "broken" / "config.json").read_text())["training"]["budget"]
    assert done["steps"] == 4 and done["tokens_seen"] == json.loads(
        (root / "whole" / "config.json").read_text())["training"]["budget"]["tokens_seen"]
