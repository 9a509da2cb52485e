"""Regen, feature capture, the shared trainer, the drafter store and the CLI on tiny-random-llama."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from specbench.errors import SpecbenchError
from specbench.testing.train_drafters import SkipHeadDrafter
from specbench.training.budget import TrainingRecipe
from specbench.training.data import DataSource, encode_record
from specbench.training.features import target_features
from specbench.training.regen import RegenSettings, corpus_path, load_corpus, read_corpus, regenerate
from specbench.training.store import resolve_drafter, store_path
from specbench.training.trainer import REPLAN_FRACTIONS, TrainConfig, evaluate, lr_at, train

SETTINGS = RegenSettings(max_new_tokens=8)
SKIPHEAD = "specbench.testing.train_drafters:SkipHeadDrafter"
RECIPE = TrainingRecipe(data="gsm8k:6", max_new_tokens=8, max_length=512, budget_minutes=None, steps=3,
                        batch_size=2, grad_accum=1, eval_size=2)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matmuls gain nothing from a second thread, and lose a lot when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("specbench-cache")


@pytest.fixture(autouse=True)
def _cache(monkeypatch, cache_root):
    monkeypatch.setenv("SPECBENCH_CACHE_DIR", str(cache_root))


@pytest.fixture(scope="module")
def examples(tiny_llama, cache_root):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPECBENCH_CACHE_DIR", str(cache_root))
        source = DataSource("gsm8k", 6)
        regenerate(tiny_llama, source, SETTINGS, batch_size=3, progress=False)
        records = load_corpus(tiny_llama, [source], SETTINGS)
    return [encode_record(tiny_llama, r, 512) for r in records]


def _generate_one(target, messages, n):
    from specbench.decode import generate
    from specbench.methods import build_method
    from specbench.sampling import SamplingConfig
    from specbench.timing import StepTimer

    decoder = build_method("ar", target).make_decoder(SamplingConfig(), None)
    return generate(decoder, [target.render(messages)], n, target.eos_token_ids, StepTimer(target.device)).rows[0]


def test_regen_is_resumable_and_equals_unbatched_greedy(tiny_llama):
    source = DataSource("mix", 3)
    first = regenerate(tiny_llama, source, SETTINGS, batch_size=2, progress=False)
    assert (first.already_done, first.generated) == (0, 3)
    again = regenerate(tiny_llama, DataSource("mix", 4), SETTINGS, batch_size=2, progress=False)
    assert (again.already_done, again.generated) == (3, 1)
    path = corpus_path(tiny_llama, source, SETTINGS)
    text = path.read_text()
    path.write_text(text[: len(text) - 20])  # an interrupted append
    torn = regenerate(tiny_llama, DataSource("mix", 4), SETTINGS, batch_size=2, progress=False)
    assert (torn.already_done, torn.generated) == (3, 1)
    rows = read_corpus(tiny_llama, DataSource("mix", 4), SETTINGS)
    assert [sorted(r) for r in rows] == [["finish", "id", "messages", "response", "response_ids", "source"]] * 4
    for row in rows[:2]:
        alone = _generate_one(tiny_llama, row["messages"], SETTINGS.max_new_tokens)
        assert row["response_ids"] == alone.tokens and row["finish"] == alone.stopped_by


def test_concurrent_regens_write_each_record_once(tiny_llama, tmp_path, monkeypatch):
    """Two trainings started together share one corpus file: the lock makes the second wait and reuse."""
    import threading

    monkeypatch.setenv("SPECBENCH_CACHE_DIR", str(tmp_path))
    source = DataSource("mix", 4)
    threads = [threading.Thread(target=regenerate, args=(tiny_llama, source, SETTINGS),
                                kwargs={"batch_size": 2, "progress": False}) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [r["id"] for r in read_corpus(tiny_llama, source, SETTINGS)]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 4


def test_a_crashed_regen_resumes_and_a_mismatched_corpus_is_refused_with_its_rebuild_command(tiny_llama, tmp_path):
    import shlex

    from specbench.cli import cli

    prompts = tmp_path / "mine.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "Hi"}) + "\n" + json.dumps({"id": "b", "prompt": "Yo"}) + "\n")
    source = DataSource(str(prompts))
    path = corpus_path(tiny_llama, source, SETTINGS)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"specbench_regen": 1, "fingerp')  # killed while writing the header
    assert regenerate(tiny_llama, source, SETTINGS, progress=False).generated == 2
    header, *records = [json.loads(line) for line in path.read_text().splitlines()]
    assert header["fingerprint"] == tiny_llama.fingerprint and [r["id"] for r in records] == ["a", "b"]

    path.write_text(path.read_text().replace(tiny_llama.fingerprint, "0123456789ab"))
    for step in (lambda: regenerate(tiny_llama, source, SETTINGS, progress=False),
                 lambda: load_corpus(tiny_llama, [source], SETTINGS)):
        with pytest.raises(SpecbenchError) as err:
            step()
        assert "another fingerprint" in str(err.value) and "\n" not in str(err.value)
    rebuild = str(err.value).split("rebuild it: ")[1]
    rm, _, command = rebuild.partition(" && ")
    assert rm == f"rm {shlex.quote(str(path))}"
    path.unlink()
    res = CliRunner().invoke(cli, [*shlex.split(command)[1:], "--no-progress"])  # the command minus `specbench`
    assert res.exit_code == 0, res.output
    assert [r["id"] for r in load_corpus(tiny_llama, [source], SETTINGS)] == ["a", "b"]

    prompts.write_text(json.dumps({"id": "a", "prompt": "Hello"}) + "\n")  # the user edited a prompt
    with pytest.raises(SpecbenchError, match="the prompts changed.*rebuild it: rm "):
        load_corpus(tiny_llama, [source], SETTINGS)


def test_a_full_disk_stops_regen_in_one_line_and_the_rerun_resumes(tiny_llama, tmp_path, monkeypatch):
    import errno

    from specbench import jsonl

    prompts = tmp_path / "mine.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"Say {i}"}) + "\n" for i in "abcd"))
    source = DataSource(str(prompts))
    real, calls = jsonl._write_all, []

    def disk_fills_on_the_second_batch(f, data):
        calls.append(1)
        if len(calls) == 3:  # the header, batch 1, then batch 2
            f.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)

    monkeypatch.setattr(jsonl, "_write_all", disk_fills_on_the_second_batch)
    with pytest.raises(SpecbenchError) as err:
        regenerate(tiny_llama, source, SETTINGS, batch_size=2, progress=False)
    assert "No space left on device" in str(err.value) and "run the same command again" in str(err.value)
    assert [r["id"] for r in read_corpus(tiny_llama, source, SETTINGS)] == ["a", "b"]
    monkeypatch.setattr(jsonl, "_write_all", real)
    again = regenerate(tiny_llama, source, SETTINGS, batch_size=2, progress=False)
    assert (again.already_done, again.generated) == (2, 2)
    assert [r["id"] for r in load_corpus(tiny_llama, [source], SETTINGS)] == ["a", "b", "c", "d"]


def test_features_are_hooked_layer_outputs_and_the_forward_stops_early(tiny_llama):
    ids = torch.tensor([[5, 9, 14, 3, 7, 21]])
    with torch.no_grad():
        hidden = tiny_llama.model(input_ids=ids, output_hidden_states=True).hidden_states
    calls = []
    last = tiny_llama.model.model.layers[-1].register_forward_hook(lambda *a: calls.append(1))
    try:
        feats, logits = target_features(tiny_llama, ids, [0, 2])
    finally:
        last.remove()
    assert logits is None and not calls
    torch.testing.assert_close(feats, torch.cat([hidden[1], hidden[3]], -1), rtol=0, atol=0)
    feats, logits = target_features(tiny_llama, ids, [-2], with_logits=True)
    assert logits.shape[-1] == tiny_llama.vocab_size and feats.shape[-1] == tiny_llama.config.hidden_size


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_ratio=0.1, min_lr_ratio=0.1)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_loss_goes_down_on_a_fixed_batch(tiny_llama, examples, tmp_path):
    fixed = examples[:2]
    drafter = SkipHeadDrafter.for_target(tiny_llama)
    cfg = TrainConfig(steps=30, batch_size=2, lr=1e-2, warmup_ratio=0.1, eval_every=1000, checkpoint_every=1000)
    before = evaluate(drafter, tiny_llama, fixed, cfg)["loss"]
    result = train(drafter, tiny_llama, fixed, fixed, cfg, tmp_path, {"test": 1}, progress=False, log=lambda s: None)
    assert result.final_eval["loss"] < 0.7 * before
    assert result.final_eval["acc"] > 0


def _optimizer_tensors(folder):
    from safetensors.torch import load_file

    return load_file(folder / "checkpoint" / "trainer_state.safetensors")


def test_resume_after_interruption_is_bit_exact(tiny_llama, examples, tmp_path):
    cfg = TrainConfig(steps=6, batch_size=2, lr=5e-3, eval_every=3, checkpoint_every=2, eval_size=2)
    data, held = examples[:4], examples[4:]

    def fresh():
        torch.manual_seed(1)
        return SkipHeadDrafter.for_target(tiny_llama, dropout=0.2)

    whole = fresh()
    train(whole, tiny_llama, data, held, cfg, tmp_path / "a", {}, progress=False, log=lambda s: None)

    broken = fresh()
    calls = {"n": 0}
    real_loss = broken.loss

    def failing_loss(batch):
        calls["n"] += 1
        if calls["n"] == 6:  # steps 1-3, the eval at step 3, step 4 (checkpointed), then step 5 fails
            raise KeyboardInterrupt
        return real_loss(batch)

    broken.loss = failing_loss
    with pytest.raises(KeyboardInterrupt):
        train(broken, tiny_llama, data, held, cfg, tmp_path / "b", {}, progress=False, log=lambda s: None)
    assert json.loads((tmp_path / "b" / "checkpoint" / "trainer_state.json").read_text())["step"] == 4

    resumed = SkipHeadDrafter.for_target(tiny_llama, dropout=0.2)  # different init: the checkpoint wins
    logs = []
    result = train(resumed, tiny_llama, data, held, cfg, tmp_path / "b", {}, progress=False, log=logs.append)
    assert result.steps == 6 and any("resuming from step 4" in line for line in logs)
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    opt_a, opt_b = _optimizer_tensors(tmp_path / "a"), _optimizer_tensors(tmp_path / "b")
    assert opt_a.keys() == opt_b.keys() and all(torch.equal(opt_a[k], opt_b[k]) for k in opt_a)

    with pytest.raises(SpecbenchError, match="different training run"):
        train(fresh(), tiny_llama, data, held, TrainConfig(steps=7, batch_size=2), tmp_path / "b", {},
              progress=False, log=lambda s: None)


def test_store_round_trip_and_target_refusal(tiny_llama, tiny_qwen3, tmp_path, examples):
    from specbench.training.drafter import Drafter

    drafter = SkipHeadDrafter.for_target(tiny_llama, hidden_size=32)
    with torch.no_grad():
        drafter.fc_out.weight.normal_()
    drafter.save(tmp_path / "d", {"data": "x"})
    loaded = Drafter.load(tmp_path / "d", tiny_llama)  # the class comes from config.json
    assert type(loaded) is SkipHeadDrafter and loaded.config.hidden_size == 32
    assert loaded.training_info == {"data": "x"} and loaded.target_fingerprint == tiny_llama.fingerprint
    for (k, a), (_, b) in zip(drafter.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(SpecbenchError) as err:
        SkipHeadDrafter.load(tmp_path / "d", tiny_qwen3)
    assert "trained for" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SpecbenchError, match="config.json missing"):
        SkipHeadDrafter.load(tmp_path / "nothing", tiny_llama)


def test_a_truncated_or_mismatched_drafter_folder_is_refused_in_one_line(tiny_llama, tmp_path):
    import shutil

    from specbench.training.drafter import Drafter

    good = SkipHeadDrafter.for_target(tiny_llama, hidden_size=32).save(tmp_path / "good", {})
    weights = (good / "model.safetensors").read_bytes()
    cases = {"truncated": lambda d: (d / "model.safetensors").write_bytes(weights[:-100]),
             "no header": lambda d: (d / "model.safetensors").write_bytes(weights[:5]),
             "missing": lambda d: (d / "model.safetensors").unlink(),
             "other config": lambda d: (d / "config.json").write_text(
                 (d / "config.json").read_text().replace('"hidden_size": 32', '"hidden_size": 48')),
             "unknown field": lambda d: (d / "config.json").write_text(
                 (d / "config.json").read_text().replace('"hidden_size": 32', '"hidden_sise": 32')),
             "cut config": lambda d: (d / "config.json").write_text((d / "config.json").read_text()[:50])}
    messages = {"truncated": "is truncated", "no header": "not a safetensors file", "missing": "no model.safetensors",
                "other config": "does not match model.safetensors (fc_in.bias", "unknown field": "does not describe",
                "cut config": "cannot parse"}
    for name, damage in cases.items():
        folder = tmp_path / name.replace(" ", "-")
        shutil.copytree(good, folder)
        damage(folder)
        with pytest.raises(SpecbenchError) as err:
            Drafter.load(folder, tiny_llama)
        assert messages[name] in str(err.value) and "\n" not in str(err.value), (name, str(err.value))
    assert isinstance(Drafter.load(good, tiny_llama), SkipHeadDrafter)


def test_drafter_provenance_summarises_the_training(tiny_llama, examples, tmp_path, monkeypatch):
    from specbench.training.drafter import drafter_provenance

    assert drafter_provenance(tmp_path) is None
    monkeypatch.setenv("SPECBENCH_CACHE_DIR", str(tmp_path / "cache"))  # the module's store stays empty
    path = resolve_drafter(SKIPHEAD, tiny_llama, "auto", recipe=RECIPE, progress=False, log=lambda s: None)
    info = drafter_provenance(path)
    assert info["steps"] == 3 and info["device"] == "cpu" and info["data"] == RECIPE.data
    assert info["train_seconds"] >= 0 and 0 <= info["eval_acc"] <= 1


def test_drafter_auto_trains_once_then_reuses(tiny_llama, examples):
    with pytest.raises(SpecbenchError, match="no cached"):
        resolve_drafter(SKIPHEAD, tiny_llama, "auto", train=False, recipe=RECIPE)
    logs = []
    path = resolve_drafter(SKIPHEAD, tiny_llama, "auto", recipe=RECIPE, progress=False, log=logs.append)
    assert any("expected" in line for line in logs)
    assert json.loads(open(f"{path}/config.json").read())["training"]["budget"]["steps"] == 3
    logs.clear()
    assert resolve_drafter(SKIPHEAD, tiny_llama, "auto", train=False, recipe=RECIPE, log=logs.append) == path
    tiny_llama.chat.system_prompt = "Be brief."  # a suite's system prompt: auto still means the standard drafter
    try:
        assert resolve_drafter(SKIPHEAD, tiny_llama, "auto", train=False, recipe=RECIPE) == path
        assert store_path(tiny_llama, SkipHeadDrafter, recipe=RECIPE) != Path(path)
    finally:
        tiny_llama.chat.system_prompt = None
    assert resolve_drafter(SKIPHEAD, tiny_llama, "some/path") == "some/path"


def test_no_drafter_means_auto_for_a_drafter_method(tiny_llama, examples):
    """Issue 23: `specbench run --method M` without --drafter resolves `auto`: one line announcing the
    training (where, how long), then the stored drafter on the next run; `--no-train` refuses instead."""
    with pytest.raises(SpecbenchError, match="no cached mtp drafter"):
        resolve_drafter("mtp", tiny_llama, None, train=False, recipe=RECIPE)
    logs = []
    path = resolve_drafter("mtp", tiny_llama, None, recipe=RECIPE, progress=False, log=logs.append)
    assert logs[0].startswith(f"mtp: no stored mtp drafter for tiny-random-llama (fingerprint {tiny_llama.fingerprint})"
                              "; training one once with the standard recipe")
    assert f"into {path}: expected 3 steps. --drafter auto is the default; --drafter PATH picks another" in logs[0]
    logs.clear()
    assert resolve_drafter("mtp", tiny_llama, None, train=False, recipe=RECIPE, log=logs.append) == path
    assert logs == [f"mtp: using the stored standard drafter {path} (--drafter auto is the default; --drafter PATH "
                    "picks another)"]
    assert resolve_drafter("pld", tiny_llama, None) is None and resolve_drafter(SKIPHEAD, tiny_llama, None) is None


def test_the_training_time_is_the_budget_on_this_machine(tiny_llama):
    from specbench.training.budget import OVERHEAD_MINUTES, STANDARD_CPU
    from specbench.training.store import expected_training

    minutes, words = expected_training(tiny_llama, STANDARD_CPU)
    assert minutes == STANDARD_CPU.budget_minutes + OVERHEAD_MINUTES == 27
    assert words.startswith("about 27 minutes on this machine, after generating ")  # no shipped corpus for it


def test_drafter_folder_resolves_per_method(tiny_llama, tmp_path):
    (tmp_path / "eagle3").mkdir()
    (tmp_path / "eagle3" / "config.json").write_text("{}")
    assert resolve_drafter("eagle3", tiny_llama, str(tmp_path)) == str(tmp_path / "eagle3")
    assert resolve_drafter("ar", tiny_llama, str(tmp_path)) is None  # a sweep's AR and PLD cells need none
    assert resolve_drafter("eagle3", tiny_llama, str(tmp_path / "eagle3")) == str(tmp_path / "eagle3")
    with pytest.raises(SpecbenchError, match="folder of drafters with a flexdraft/"):
        resolve_drafter("flexdraft", tiny_llama, str(tmp_path))
    assert resolve_drafter("ar", tiny_llama, "auto") is None


def test_cli_regen_and_train_end_to_end(tmp_path, examples):
    from specbench.cli import cli

    runner = CliRunner()
    common = ["--target", "tiny-random-llama", "--device", "cpu", "--no-progress"]
    res = runner.invoke(cli, ["regen", "--data", "gsm8k:6", "--max-new-tokens", "8", *common])
    assert res.exit_code == 0, res.output
    assert "6 cached" in res.output
    out = tmp_path / "drafter"
    res = runner.invoke(cli, ["train", "--method", SKIPHEAD, "--data", "gsm8k:6", "--max-new-tokens", "8",
                              "--steps", "2", "--batch-size", "2", "--max-length", "512", "--out", str(out),
                              "-o", "hidden_size=16", *common])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "skiphead-test" and cfg["config"]["hidden_size"] == 16
    assert cfg["training"]["data"]["spec"] == "gsm8k:6" and cfg["training"]["hyper_parameters"]["steps"] == 2
    assert not (out / "checkpoint").exists()
    for args, message in [(["--steps", "2", "--budget-minutes", "1"], "not both"),
                          (["--data", "nope:3", "--steps", "1"], "unknown training data"),
                          (["-o", "colour=red", "--steps", "1"], "unknown drafter option")]:
        res = runner.invoke(cli, ["train", "--method", SKIPHEAD, *args, *common])
        assert res.exit_code == 2 and res.output.count("\n") == 1 and message in res.output, res.output
    res = runner.invoke(cli, ["train", "--method", "ar", "--steps", "1", *common])
    assert res.exit_code == 2 and "no trainable drafter" in res.output


def test_budget_minutes_become_a_stored_step_count(tiny_llama, examples, tmp_path):
    from specbench.training.trainer import plan_steps

    cfg = TrainConfig(budget_minutes=1.0, batch_size=8, eval_every=10, eval_size=16)
    assert plan_steps(1.0, cfg, 16) == int(60 / (1 + 2 / 3 / 10))  # eval: 2 forward-only batches every 10 steps
    cfg = TrainConfig(budget_minutes=0.01, batch_size=2, checkpoint_every=1000)
    logs = []
    result = train(SkipHeadDrafter.for_target(tiny_llama), tiny_llama, examples[:4], examples[4:], cfg, tmp_path,
                   {}, progress=False, log=logs.append)
    planned = json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())["total_steps"]
    assert result.steps == planned >= 1 and logs[0].startswith("budget 0.01 min: planned ")


class FakeClock:
    """The trainer's clock (`perf_counter`, `process_time`): a training micro-batch (a `loss` call with grad) costs
    `cost(n)` seconds, `n` counting those calls from 1; everything else is free."""

    def __init__(self, monkeypatch, cost):
        import types

        from specbench.training import trainer

        self.now, self.calls, self.cost = 0.0, 0, cost
        # the two clocks run with different origins, so code that mixes them measures nonsense
        monkeypatch.setattr(trainer, "time", types.SimpleNamespace(perf_counter=lambda: self.now + 1e4,
                                                                   process_time=lambda: self.now))
        monkeypatch.setattr(trainer.torch, "get_num_threads", lambda: 1)
        real_loss = SkipHeadDrafter.loss

        def timed_loss(drafter, batch):
            if torch.is_grad_enabled():
                self.calls += 1
                self.now += self.cost(self.calls)
            return real_loss(drafter, batch)

        monkeypatch.setattr(SkipHeadDrafter, "loss", timed_loss)


def test_budget_is_planned_from_the_steady_state_not_the_warm_up(tiny_llama, examples, tmp_path, monkeypatch):
    """The first two micro-batches take 10 s (the old estimate timed exactly those), then 0.5 s each."""
    from specbench.training.pipeline import train_drafter

    FakeClock(monkeypatch, lambda n: 10.0 if n <= 2 else 0.5)
    recipe = TrainingRecipe(data="gsm8k:6", max_new_tokens=8, max_length=512, budget_minutes=0.25, steps=None,
                            batch_size=2, grad_accum=1, eval_size=2)
    logs = []
    out = train_drafter(SkipHeadDrafter, tiny_llama, tmp_path / "d", recipe, progress=False, log=logs.append)
    budget = json.loads((out / "config.json").read_text())["training"]["budget"]
    # untimed warm-up (10 s), timed 10 / 0.5 / 0.5 s: median 0.5 s -> 15 s / (0.5 s + eval) = 29 steps
    # (the old estimate: 10 s per step -> 1 step); the real steps confirm it, so the re-plan after round(0.1 * 29) steps keeps it
    # and the re-plans at 1/4, 1/2, 3/4 of 29 steps (7, 14, 22) keep it too
    assert budget["planned_step_seconds"] == 0.5 and budget["planned_steps"] == 29
    assert [{k: r[k] for k in ("after", "steps", "step_seconds")} for r in budget["replans"]] == [
        {"after": after, "steps": 29, "step_seconds": 0.5} for after in (3, 7, 14, 22)]
    assert budget["clock"] == "cpu-time/thread" and all(len(r["load"]) == 3 for r in budget["replans"])
    assert budget["steps"] == 29
    assert budget["train_seconds"] == 14.5 and budget["budget_minutes"] == 0.25
    assert any(line.startswith("budget 0.25 min: planned 29 steps (0.5 s/step), re-planned to 29 after 3 steps "
                               "(0.5 s/step), re-planned to 29 after 7 steps") for line in logs)


def _budget_cost(n):
    """Warm-up 5 s, the estimate's micro-batches 0.1 s, the real steps (calls 5...) 0.3 s."""
    return 5.0 if n == 1 else 0.1 if n <= 4 else 0.3


def test_budget_is_replanned_from_the_first_real_steps(tiny_llama, examples, tmp_path, monkeypatch):
    clock = FakeClock(monkeypatch, _budget_cost)
    cfg = TrainConfig(budget_minutes=0.5, batch_size=2, lr=5e-3, eval_every=1000, checkpoint_every=1000)
    logs = []
    result = train(SkipHeadDrafter.for_target(tiny_llama), tiny_llama, examples[:4], examples[4:], cfg, tmp_path,
                   {}, progress=False, log=logs.append)
    # planned 30 s / (0.1 s + eval) = 299 steps, re-planned after min(10, round(0.1 * 299)) = 10 steps of 0.3 s:
    # 10 + (30 s - 3 s) / (0.3 s + eval) = 10 + 89 steps; the steps keep costing 0.3 s, so the re-plans at
    # round(99 / 4) = 25, 50 (round(49.5)) and 74 keep 99
    assert {k: result.plan[k] for k in ("planned_steps", "replan_after")} == {"planned_steps": 299, "replan_after": 10}
    assert result.plan["planned_step_seconds"] == pytest.approx(0.1)
    assert [(r["after"], r["steps"]) for r in result.plan["replans"]] == [(10, 99), (25, 99), (50, 99), (74, 99)]
    assert all(r["step_seconds"] == pytest.approx(0.3) for r in result.plan["replans"])
    assert result.steps == 99 and result.seconds == pytest.approx(99 * 0.3) and clock.calls == 4 + 99
    assert logs[:2] == ["budget 0.5 min: planned 299 steps (0.1 s/step)",
                        "budget 0.5 min: planned 299 steps (0.1 s/step), re-planned to 99 after 10 steps (0.3 s/step)"]
    assert json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())["total_steps"] == 99


def test_a_budget_run_that_speeds_up_midway_still_spends_its_budget(tiny_llama, examples, tmp_path, monkeypatch):
    """Drafters trained side by side on one GPU: steps cost 0.4 s until a neighbour finishes, then 0.2 s.
    A single early re-plan stopped after ~75 steps (30 s at 0.4 s/step, about half of the budget spent once
    the steps got faster); the later re-plans follow the speed-up and use the whole budget."""
    clock = FakeClock(monkeypatch, lambda n: 0.1 if n <= 4 else 0.4 if n <= 4 + 20 else 0.2)
    cfg = TrainConfig(budget_minutes=0.5, batch_size=2, lr=5e-3, eval_every=1000, checkpoint_every=1000)
    result = train(SkipHeadDrafter.for_target(tiny_llama), tiny_llama, examples[:4], examples[4:], cfg, tmp_path,
                   {}, progress=False, log=lambda s: None)
    first, *later = result.plan["replans"]
    assert first["after"] == 10 and first["step_seconds"] == pytest.approx(0.4) and first["steps"] < 80
    assert later and later[-1]["step_seconds"] == pytest.approx(0.2) and result.steps > first["steps"]
    assert 0.95 * 30 <= result.seconds <= 30 and clock.calls == 4 + result.steps


def test_each_replan_fraction_fires_once_and_never_from_a_one_step_window(tiny_llama, examples, tmp_path,
                                                                          monkeypatch):
    """Steps that keep getting faster raise the total at every re-plan. Placing the next fraction on the new
    total alone re-planned again one step after the 1/2 re-plan (seen in a CPU run: "re-planned to 80 after
    39 steps, re-planned to 80 after 40 steps"), from a one-step window; each fraction now fires once, at
    least the first window after the previous re-plan."""
    FakeClock(monkeypatch, lambda n: 0.1 if n <= 4 else max(0.05, 0.3 - 0.002 * n))
    cfg = TrainConfig(budget_minutes=0.5, batch_size=2, lr=5e-3, eval_every=1000, checkpoint_every=1000)
    result = train(SkipHeadDrafter.for_target(tiny_llama), tiny_llama, examples[:4], examples[4:], cfg, tmp_path,
                   {}, progress=False, log=lambda s: None)
    afters = [r["after"] for r in result.plan["replans"]]
    totals = [r["steps"] for r in result.plan["replans"]]
    assert len(afters) == 1 + len(REPLAN_FRACTIONS) and totals == sorted(totals) and totals[-1] > totals[0]
    assert min(b - a for a, b in zip(afters, afters[1:])) >= result.plan["replan_after"]
    for f, replan, before in zip(REPLAN_FRACTIONS, result.plan["replans"][1:], totals):
        assert replan["after"] >= round(f * before)  # each fraction of the total current when it was placed


def test_steps_runs_are_not_planned(tiny_llama, examples, tmp_path, monkeypatch):
    FakeClock(monkeypatch, _budget_cost)
    logs = []
    result = train(SkipHeadDrafter.for_target(tiny_llama), tiny_llama, examples[:4], examples[4:],
                   TrainConfig(steps=12, batch_size=2), tmp_path, {}, progress=False, log=logs.append)
    assert result.steps == 12 and result.plan == {} and not logs


@pytest.mark.parametrize("stop_at", [5, 13])  # before the re-plan after step 10, and after it
def test_budget_resume_keeps_the_replanned_total_and_is_bit_exact(tiny_llama, examples, tmp_path, monkeypatch,
                                                                  stop_at):
    cfg = TrainConfig(budget_minutes=0.2, batch_size=2, lr=5e-3, warmup_ratio=0.1, eval_every=5, checkpoint_every=4,
                      eval_size=2)
    data, held = examples[:4], examples[4:]

    def fresh():
        torch.manual_seed(1)
        return SkipHeadDrafter.for_target(tiny_llama, dropout=0.2)

    clock = FakeClock(monkeypatch, _budget_cost)
    whole = fresh()
    expected = train(whole, tiny_llama, data, held, cfg, tmp_path / "a", {}, progress=False, log=lambda s: None)
    assert expected.plan["planned_steps"] > expected.steps > stop_at and expected.plan["replans"][0]["after"] == 10

    clock.calls = 0

    def cost(n):
        if n == 4 + stop_at:
            raise KeyboardInterrupt
        return _budget_cost(n)

    clock.cost = cost
    with pytest.raises(KeyboardInterrupt):
        train(fresh(), tiny_llama, data, held, cfg, tmp_path / "b", {}, progress=False, log=lambda s: None)
    saved = json.loads((tmp_path / "b" / "checkpoint" / "trainer_state.json").read_text())
    assert saved["step"] == (stop_at - 1) // 4 * 4 and ("replans" in saved["plan"]) == (stop_at > 10)

    clock.cost = lambda n: 0.3  # the resumed session's steps cost what the first session's real steps did
    resumed = SkipHeadDrafter.for_target(tiny_llama, dropout=0.2)
    logs = []
    result = train(resumed, tiny_llama, data, held, cfg, tmp_path / "b", {}, progress=False, log=logs.append)
    assert result.steps == expected.steps
    def fixed(plan):  # what the plan decided (the load averages it records differ between sessions)
        return {k: v for k, v in plan.items() if k not in ("replans", "load", "clock")}

    assert fixed(result.plan) == pytest.approx(fixed(expected.plan)) and result.plan["clock"] == expected.plan["clock"]
    assert [(r["after"], r["steps"]) for r in result.plan["replans"]] == [
        (r["after"], r["steps"]) for r in expected.plan["replans"]]
    assert result.total_seconds == pytest.approx(expected.total_seconds)
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    opt_a, opt_b = _optimizer_tensors(tmp_path / "a"), _optimizer_tensors(tmp_path / "b")
    assert opt_a.keys() == opt_b.keys() and all(torch.equal(opt_a[k], opt_b[k]) for k in opt_a)


def test_the_estimate_leaves_weights_and_rng_alone(tiny_llama, examples):
    from specbench.training.trainer import estimate_step_seconds

    drafter = SkipHeadDrafter.for_target(tiny_llama, dropout=0.2)
    with torch.no_grad():
        drafter.fc_out.weight.normal_()
    before = {k: v.clone() for k, v in drafter.state_dict().items()}
    rng = torch.get_rng_state()
    assert estimate_step_seconds(drafter, tiny_llama, examples[:4], TrainConfig(budget_minutes=1, batch_size=2)) > 0
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(before[k], v) for k, v in drafter.state_dict().items())
    assert all(p.grad is None for p in drafter.parameters())


def test_save_at_keeps_snapshots_of_one_run_without_changing_it(tiny_llama, examples, tmp_path):
    """`--save-at`: each snapshot is a loadable drafter holding the weights of that step, with its
    progress (steps, tokens seen, wall time, held-out eval); taking them leaves the run bit-identical."""
    from specbench.training.drafter import Drafter
    from specbench.training.pipeline import SNAPSHOTS, train_drafter
    from specbench.training.trainer import parse_save_point, snapshot_name

    logs = []
    recipe = dataclasses.replace(RECIPE, steps=4)
    out = train_drafter(SkipHeadDrafter, tiny_llama, tmp_path / "snap", recipe, progress=False, log=logs.append,
                        overrides={"save_at": ("1", "0.5", "0.01m", "99")})
    names = sorted(p.name for p in (out / SNAPSHOTS).iterdir())
    assert names == sorted(snapshot_name(p) for p in ("1", "0.5", "0.01m", "99"))
    steps = {}
    for name in names:
        info = json.loads((out / SNAPSHOTS / name / "config.json").read_text())["training"]["snapshot"]
        steps[name] = info["step"]
        assert info["tokens_seen"] > 0 and info["train_seconds"] >= 0 and "loss" in info["eval"]
    assert steps["step-000001"] == 1 and steps["frac-0.500"] == 2 and steps["step-000099"] == 4  # past the end: last
    final = Drafter.load(out, tiny_llama)
    last = Drafter.load(out / SNAPSHOTS / "step-000099", tiny_llama)
    assert all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), last.state_dict().values()))
    again = train_drafter(SkipHeadDrafter, tiny_llama, tmp_path / "nosnap", recipe, progress=False, log=lambda s: None)
    ref = Drafter.load(again, tiny_llama)
    assert all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), ref.state_dict().values()))
    first = Drafter.load(out / SNAPSHOTS / "step-000001", tiny_llama)
    assert not all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), first.state_dict().values()))
    assert sum(line.startswith("snapshot ") for line in logs) == 4
    with pytest.raises(SpecbenchError, match="save-at"):
        parse_save_point("1.5")
    with pytest.raises(SpecbenchError, match="save-at"):
        parse_save_point("ten")


def test_drafter_provenance_of_snapshots_and_of_drafters_saved_before_tokens_were_counted(tiny_llama, examples,
                                                                                          tmp_path):
    """Learning curves need each drafter's point of its run: a snapshot's own step, seconds and tokens,
    and for final drafters from before `tokens_seen` was stored, one session's rate x its time, flagged."""
    from specbench.training.drafter import drafter_provenance
    from specbench.training.pipeline import SNAPSHOTS, train_drafter

    out = train_drafter(SkipHeadDrafter, tiny_llama, tmp_path / "run", dataclasses.replace(RECIPE, steps=4),
                        overrides={"save_at": ("2",)}, progress=False, log=lambda s: None)
    final, snap = drafter_provenance(out), drafter_provenance(out / SNAPSHOTS / "step-000002")
    assert (snap["snapshot"], snap["steps"], snap["total_steps"], snap["run"]) == ("2", 2, 4, str(out))
    assert (final["snapshot"], final["steps"], final["run"]) == (None, 4, str(out))
    assert 0 < snap["tokens_seen"] < final["tokens_seen"] and snap["train_seconds"] <= final["train_seconds"]
    cfg = json.loads((out / "config.json").read_text())
    budget = cfg["training"]["budget"]
    del budget["tokens_seen"]
    budget.update(tokens_per_s=100.0, train_seconds=3.0, train_seconds_last_session=3.0)
    (out / "config.json").write_text(json.dumps(cfg))
    old = drafter_provenance(out)
    assert old["tokens_seen"] == 300 and old["tokens_seen_estimated"] is True
    budget["train_seconds"] = 5.0  # resumed: one session's rate says nothing about the other
    (out / "config.json").write_text(json.dumps(cfg))
    assert drafter_provenance(out)["tokens_seen"] is None
