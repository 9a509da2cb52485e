"""Runner and results store: the three files, interleaving, and resume after a real kill."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from specbench.results import ResultStore
from specbench.runner import RunConfig, Runner

CONFIG = dict(method="ar", suite="gsm8k", target="tiny-random-llama", limit=6, max_new_tokens=12, batch_size=2)


def test_run_writes_manifest_records_summary(tmp_path, tiny_llama):
    store = ResultStore(tmp_path)
    run_dir = Runner(RunConfig(**CONFIG), store, progress=False, target=tiny_llama).run(run_id="r")
    manifest = json.loads((run_dir.path / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["target"]["fingerprint"] == tiny_llama.fingerprint
    assert manifest["suite"]["source"] == "data-dir:gsm8k/test.jsonl"
    assert manifest["provenance"]["versions"]["torch"] and manifest["provenance"]["hardware"]["torch_threads"] >= 1
    assert len(manifest["provenance"]["hardware"]["load_average"]) == len(manifest["load_average_end"]) == 3
    assert manifest["target"]["chat"]["template_sha256"]
    records = run_dir.load_records()
    assert len(records) == 12 and {r["arm"] for r in records} == {"method", "baseline"}
    assert sorted({r["prompt_id"] for r in records}) == sorted(manifest["resolved"]["prompt_ids"])
    # interleaving: batch 0 runs the method arm first, batch 1 the baseline first; both are recorded
    assert all(r["exact_match"] for r in records)
    # AR drafts nothing: a draft length of 0 per step, stored next to the accept lengths
    assert all(t["draft_lengths"] == [0] * len(t["accept_lengths"]) for r in records for t in r["turns"])
    summary = json.loads((run_dir.path / "summary.json").read_text())
    assert summary["tau"] == pytest.approx(1.0) and summary["exact_match_rate"] == 1.0
    assert summary["n_prompts"] == 6 and summary["timed_units"] == 3
    # the speedup is the ratio of the arms' summed decode time per decode token, read back from the records
    time_per_token = {}
    for arm in ("method", "baseline"):
        recs = [r for r in records if r["arm"] == arm]
        seconds = sum({r["batch_id"]: r["turns"][0]["decode_s"] for r in recs}.values())  # once per batch
        time_per_token[arm] = seconds / sum(r["turns"][0]["new_tokens"] - 1 for r in recs)
    assert summary["speedup_decode"] == pytest.approx(time_per_token["baseline"] / time_per_token["method"])


def test_arms_alternate_and_both_are_warmed_up_first(tmp_path, tiny_llama, monkeypatch):
    """Warm-up decodes both arms (short, unrecorded) before the first timed batch; then the method arm
    goes first in even batches and second in odd ones (DESIGN.md §4)."""
    import specbench.runner as runner_module

    runner = Runner(RunConfig(**CONFIG), ResultStore(tmp_path), progress=False, target=tiny_llama)
    calls = []
    real = runner._decode

    def spy(method, prompts, n, key):
        calls.append(("method" if method is runner.method else "baseline", n, key.split(":")[0]))
        return real(method, prompts, n, key)

    monkeypatch.setattr(runner, "_decode", spy)
    run_dir = runner.run(run_id="order")
    warm = runner_module.WARMUP_TOKENS
    assert calls[:2] == [("method", warm, "warmup"), ("baseline", warm, "warmup")]
    timed = [(arm, key) for arm, n, key in calls[2:]]
    assert [arm for arm, _ in timed] == ["method", "baseline", "baseline", "method", "method", "baseline"]
    assert all(n == runner.max_new_tokens for _, n, _ in calls[2:]) and warm != runner.max_new_tokens
    assert len(run_dir.load_records()) == 12  # warm-up decodes are not recorded


def test_records_store_draft_lengths_and_per_position_acceptance_uses_them(tmp_path, tiny_llama):
    config = {**CONFIG, "method": "pld", "limit": 4, "max_new_tokens": 24}
    run_dir = Runner(RunConfig(**config), ResultStore(tmp_path), progress=False, target=tiny_llama).run(run_id="p")
    turns = [t for r in run_dir.load_records() if r["arm"] == "method" for t in r["turns"]]
    steps = [(n, d) for t in turns for n, d in zip(t["accept_lengths"], t["draft_lengths"], strict=True)]
    assert steps and all(n - 1 <= d for n, d in steps)
    summary = json.loads((run_dir.path / "summary.json").read_text())
    assert summary["steps_without_draft_lengths"] == 0
    # position 1 counts exactly the steps that drafted something (some did, some did not: both cases occur)
    drafted = sum(d >= 1 for _, d in steps)
    assert 0 < drafted < len(steps) and summary["per_position_steps"][0] == drafted
    assert summary["per_position_acceptance"][0] == pytest.approx(sum(n >= 2 for n, d in steps) / drafted)


def test_records_without_draft_lengths_stay_readable(tmp_path):
    run_dir = ResultStore(tmp_path).create("old")
    turn = {"new_tokens": 5, "steps": 3, "accept_lengths": [1, 3, 1], "ttft_s": 0.1, "decode_s": 0.3}
    with run_dir.records_path.open("w") as f:  # the record layout before draft_lengths existed
        for arm in ("method", "baseline"):
            f.write(json.dumps({"prompt_id": "a", "arm": arm, "batch_id": "b0", "turns": [turn]}) + "\n")
    records = run_dir.load_records()
    assert [t["draft_lengths"] for r in records for t in r["turns"]] == [None, None]
    from specbench.metrics import summarize
    summary = summarize(records)
    assert summary["per_position_acceptance"] == [pytest.approx(1 / 3), pytest.approx(1.0)]
    assert summary["steps_without_draft_lengths"] == 3


def test_same_subset_for_every_method_and_seed_changes_it(tmp_path, tiny_llama):
    a = Runner(RunConfig(**CONFIG), ResultStore(tmp_path), progress=False, target=tiny_llama)
    b = Runner(RunConfig(**{**CONFIG, "batch_size": 1}), ResultStore(tmp_path), progress=False, target=tiny_llama)
    c = Runner(RunConfig(**{**CONFIG, "seed": 1}), ResultStore(tmp_path), progress=False, target=tiny_llama)
    assert [e.id for e in a.examples] == [e.id for e in b.examples] != [e.id for e in c.examples]


def test_divergence_is_recorded_with_near_tie_flag(tmp_path, tiny_llama, monkeypatch):
    """A method that emits a different token must be caught, with its position and top-2 gap."""
    from specbench.methods import ar

    original = ar.AutoregressiveDecoder.step
    def corrupt(self, timer, active):
        out = original(self, timer, active)
        if getattr(self, "_n", 0) == 3:
            out = [[(t[0] + 1) % 300] if t else t for t in out]
        self._n = getattr(self, "_n", 0) + 1
        return out
    runner = Runner(RunConfig(**{**CONFIG, "limit": 2}), ResultStore(tmp_path), progress=False, target=tiny_llama)
    runner.warmup = lambda batch: None
    monkeypatch.setattr(runner.method, "make_decoder", lambda s, g: type("D", (ar.AutoregressiveDecoder,),
                                                                          {"step": corrupt})(tiny_llama, s, g))
    run_dir = runner.run(run_id="div")
    method_recs = [r for r in run_dir.load_records() if r["arm"] == "method"]
    assert all(not r["exact_match"] for r in method_recs)
    div = method_recs[0]["first_divergence"]
    assert div["turn"] == 0 and div["position"] == 4 and div["near_tie"] is False
    assert div["judged_in"] == "float32" and div["method_token_is_second"] is False and div["top2_gap"] > 0
    assert run_dir.read_summary()["exact_match_rate"] == 0.0


def test_near_ties_are_judged_in_float32_for_a_bf16_target(tiny_llama):
    """bf16 logits are too coarse to judge a tie (DESIGN.md §5): the gap is recomputed from an fp32 copy,
    a flip to the target's second choice inside bf16's tolerance is a near-tie, any other token is not."""
    import copy

    from specbench.runner import NEAR_TIE_RELATIVE_GAP, near_tie
    from specbench.targets import Target

    bf16_model = copy.deepcopy(tiny_llama.model).to(torch.bfloat16)
    bf16 = Target("tiny-bf16", "test", bf16_model, tiny_llama.tokenizer, tiny_llama.device, torch.bfloat16)
    prompt = tiny_llama.render([{"role": "user", "content": "hi"}])
    ids = torch.tensor([prompt])
    fp32 = copy.deepcopy(bf16_model).float()(input_ids=ids).logits[0, -1].detach()  # fp32 math, same weights
    assert torch.equal(bf16.float32_logits(ids)[0, -1], fp32)
    assert not torch.equal(fp32, bf16_model(input_ids=ids).logits[0, -1].float())  # not the bf16 math
    top = torch.topk(fp32, 3)
    second, third = int(top.indices[1]), int(top.indices[2])
    rel = float((top.values[0] - top.values[1]) / top.values[0].abs())
    judged = near_tie(bf16, prompt, [], second)
    assert judged["judged_in"] == "float32" and judged["run_dtype"] == "bfloat16"
    assert judged["method_token_is_second"] and judged["top2_relative_gap"] == pytest.approx(rel, rel=1e-5)
    assert judged["near_tie"] == (rel < NEAR_TIE_RELATIVE_GAP[torch.bfloat16])
    assert not near_tie(bf16, prompt, [], third)["near_tie"]  # not the second choice: a real divergence
    # an fp32 run keeps the tight tolerance
    assert near_tie(tiny_llama, prompt, [], second)["near_tie"] == (rel < NEAR_TIE_RELATIVE_GAP[torch.float32])


def test_no_exact_match_claim_at_positive_temperature(tmp_path, tiny_llama):
    run_dir = Runner(RunConfig(**{**CONFIG, "limit": 2, "temperature": 1.0}), ResultStore(tmp_path), progress=False,
                     target=tiny_llama).run(run_id="t1")
    method = [r for r in run_dir.load_records() if r["arm"] == "method"]
    assert all(r["exact_match"] is None and r["first_divergence"] is None for r in method)
    assert run_dir.read_summary()["exact_match_rate"] is None


def test_interrupted_run_resumes_without_duplicates(tmp_path, tiny_llama):
    store = ResultStore(tmp_path)
    runner = Runner(RunConfig(**CONFIG), store, progress=False, target=tiny_llama)
    original = runner.run_batch
    calls = []
    def flaky(k, batch):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(k)
        return original(k, batch)
    runner.run_batch = flaky
    with pytest.raises(KeyboardInterrupt):
        runner.run(run_id="int")
    run_dir = store.open("int")
    assert run_dir.read_manifest()["status"] == "interrupted"
    assert len(run_dir.completed_prompt_ids()) == 4
    with open(run_dir.records_path, "a") as f:
        f.write('{"prompt_id": "torn", "ar')  # a write cut by the kill
    resumed = Runner(RunConfig(**CONFIG), store, progress=False, target=tiny_llama).run(resume=run_dir)
    records = resumed.load_records()
    keys = [(r["prompt_id"], r["arm"]) for r in records]
    assert len(keys) == len(set(keys)) == 12
    assert resumed.read_manifest()["status"] == "complete" and len(resumed.read_manifest()["resumed"]) == 1


def test_sigkill_midway_then_cli_resume(tmp_path):
    """The real thing: SIGKILL a CLI run mid-flight, then `--resume` completes it with nothing lost."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "specbench.cli", "run", "--method", "ar", "--suite", "gsm8k",
           "--target", "tiny-random-llama", "--limit", "40", "--max-new-tokens", "48",
           "--results-dir", str(tmp_path), "--run-id", "killed", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = tmp_path / "killed" / "records.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if records.exists() and len(records.read_text().splitlines()) >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = ResultStore(tmp_path)
    before = store.open("killed").completed_prompt_ids()
    assert 3 <= len(before) < 40, "the run must be killed midway for this test to mean anything"
    done = subprocess.run([sys.executable, "-m", "specbench.cli", "run", "--resume", "killed",
                           "--results-dir", str(tmp_path), "--no-progress"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    run_dir = store.open("killed")
    keys = [(r["prompt_id"], r["arm"]) for r in run_dir.load_records()]
    assert len(keys) == len(set(keys)) == 80
    assert before <= run_dir.completed_prompt_ids()
    assert run_dir.read_manifest()["status"] == "complete"
    assert run_dir.read_summary()["n_prompts"] == 40


def test_a_cpu_run_without_limit_runs_a_few_prompts_says_so_and_records_it(tmp_path, tiny_llama):
    """Issue 23: GSM8K's 1319 prompts x 256 tokens would take hours on 2 cores; a CPU run without --limit /
    --max-new-tokens takes `CPU_DEFAULTS`, says so in one line and records it; typed values win; CUDA keeps
    the whole suite."""
    from specbench.runner import CPU_DEFAULTS, device_size
    from specbench.suites import get_suite

    logs = []
    config = RunConfig(method="ar", suite="gsm8k", target="tiny-random-llama")
    runner = Runner(config, ResultStore(tmp_path), progress=False, target=tiny_llama, log=logs.append)
    assert CPU_DEFAULTS == {"limit": 10, "max_new_tokens": 128}
    assert len(runner.examples) == 10 and runner.max_new_tokens == 128
    assert logs == ["on a CPU: 10 of 1319 gsm8k prompts, at most 128 new tokens each (CPU defaults, minutes not "
                    "hours; the full suite: --limit 1319 --max-new-tokens 256, or run on a GPU)"]
    resolved = runner.manifest("x")["resolved"]
    assert resolved["cpu_defaults"] == CPU_DEFAULTS and resolved["n_prompts"] == 10
    logs.clear()
    typed = Runner(RunConfig(**CONFIG), ResultStore(tmp_path), progress=False, target=tiny_llama, log=logs.append)
    assert len(typed.examples) == 6 and typed.max_new_tokens == 12 and not logs
    assert typed.manifest("y")["resolved"]["cpu_defaults"] is None
    gsm8k = get_suite("gsm8k")
    assert device_size(config, gsm8k, 1319, "cuda") == (None, 256, {})
    assert device_size(RunConfig(method="ar", suite="gsm8k", limit=3), gsm8k, 1319, "cpu") == (
        3, 128, {"max_new_tokens": 128})
