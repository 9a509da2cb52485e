"""Spec-Bench compatibility (issue 13): the 480-question suite, per-category summaries, answer files."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from specbench.cli import cli
from specbench.errors import SpecbenchError
from specbench.jsonl import read_jsonl
from specbench.methods import METHODS
from specbench.results import ResultStore
from specbench.runner import RunConfig, Runner
from specbench.spec_bench_io import export_spec_bench, import_spec_bench
from specbench.suites import get_suite
from specbench.suites.base import data_dir_file
from specbench.suites.spec_bench import MT_BENCH_CATEGORIES, TASKS

#: a drafting method where one is registered, so τ is not trivially 1; the AR method otherwise
METHOD = "pld" if "pld" in METHODS else "ar"
SUMMARY_KEYS = ("tau", "speedup_e2e", "speedup_e2e_ci95", "speedup_decode", "speedup_decode_ci95", "tokens_per_s",
                "baseline_tokens_per_s", "exact_match_rate", "n_prompts", "per_category")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine OpenMP threads waiting on
    each other made these runs ~20x slower (measured: 313 s -> 15 s for the 12-question run)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def questions():
    return get_suite("spec_bench").load().examples


@pytest.fixture(scope="module")
def short_questions(tmp_path_factory):
    """All 480 real ids, categories and turn counts, the turns cut short so a tiny model runs fast."""
    path = tmp_path_factory.mktemp("data") / "question.jsonl"
    rows = read_jsonl(data_dir_file("spec_bench/question.jsonl"))
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps({**row, "turns": [t[:80] for t in row["turns"]]}) + "\n")
    return path


def _run(tmp_path, target, data_file, run_id="native", **overrides):
    config = dict(method=METHOD, suite="spec_bench", target="tiny-random-llama", limit=12, max_new_tokens=12,
                  data_file=str(data_file))
    config.update(overrides)
    store = ResultStore(tmp_path / "results")
    return Runner(RunConfig(**config), store, progress=False, target=target).run(run_id=run_id)


@pytest.fixture(scope="module")
def native(tmp_path_factory, tiny_llama, short_questions):
    return _run(tmp_path_factory.mktemp("native"), tiny_llama, short_questions)


# -- the suite ------------------------------------------------------------------------------------------------
def test_480_questions_in_six_tasks(questions):
    suite = get_suite("spec_bench")
    assert suite.expected_size == 480 and suite.default_max_new_tokens == 1024
    assert len(questions) == 480 and len({e.id for e in questions}) == 480
    assert Counter(e.meta["category"] for e in questions) == {task: 80 for task in TASKS}
    assert Counter(e.meta["question_category"] for e in questions if e.meta["category"] == "mt_bench") == {
        label: 10 for label in MT_BENCH_CATEGORIES}
    two_turn = [e for e in questions if len(e.turns) == 2]
    assert len(two_turn) == 80 and {e.meta["category"] for e in two_turn} == {"mt_bench"}
    assert sorted(e.meta["question_id"] for e in questions) == list(range(81, 561))


def test_limit_is_stratified_and_stable(questions):
    suite = get_suite("spec_bench")
    chosen = suite.select(questions, 12, 0)
    assert Counter(e.meta["category"] for e in chosen) == {task: 2 for task in TASKS}
    assert [e.id for e in chosen] == [e.id for e in suite.select(questions, 12, 0)]
    assert [e.id for e in chosen] != [e.id for e in suite.select(questions, 12, 1)]
    assert Counter(e.meta["category"] for e in suite.select(questions, 8, 0)) == {
        "mt_bench": 2, "translation": 2, "summarization": 1, "qa": 1, "math_reasoning": 1, "rag": 1}
    assert Counter(e.meta["category"] for e in suite.select(questions, 4, 0)) == {  # fewer than the tasks
        "mt_bench": 1, "translation": 1, "summarization": 1, "qa": 1}


def test_category_selection(questions):
    suite = get_suite("spec_bench")
    assert {e.meta["category"] for e in suite.select_categories(questions, ["qa", "rag"])} == {"qa", "rag"}
    assert len(suite.select_categories(questions, ["writing"])) == 10  # an MT-Bench label works too
    with pytest.raises(SpecbenchError, match="unknown Spec-Bench category"):
        suite.select_categories(questions, ["poetry"])


def test_category_flag_reaches_the_runner(tmp_path, tiny_llama, short_questions):
    runner = Runner(RunConfig(method="ar", suite="spec_bench", target="tiny-random-llama", limit=4,
                              categories=["qa", "translation"], data_file=str(short_questions)),
                    ResultStore(tmp_path), progress=False, target=tiny_llama)
    assert Counter(e.meta["category"] for e in runner.examples) == {"qa": 2, "translation": 2}
    assert RunConfig(method="ar", suite="gsm8k").cell_hash() == RunConfig(method="ar", suite="gsm8k",
                                                                        categories=None).cell_hash()
    result = CliRunner().invoke(cli, ["run", "--suite", "gsm8k", "--category", "qa", "--target", "tiny-random-llama",
                                      "--results-dir", str(tmp_path), "--no-progress"])
    assert result.exit_code == 2 and "has no categories" in result.output


# -- per-category summaries --------------------------------------------------------------------------------
def test_records_carry_their_category_and_summary_has_per_category(native):
    records = native.load_records()
    assert {r["meta"]["category"] for r in records} == set(TASKS)
    per_category = native.read_summary()["per_category"]
    assert set(per_category) == set(TASKS)
    for stats in per_category.values():
        assert stats["n_prompts"] == 2
        assert stats["tau"] == pytest.approx(stats["mean_accepted_tokens"])
        assert stats["speedup_e2e"] > 0 and len(stats["speedup_e2e_ci95"]) == 2 and len(stats["tau_ci95"]) == 2
    mt = [r for r in records if r["meta"]["category"] == "mt_bench"]
    assert all(len(r["turns"]) == 2 for r in mt)


# -- export and import -----------------------------------------------------------------------------------
def _speed_py_mean_accepted(path, task):
    """speed.py's "#Mean accepted tokens": the mean over all steps of all lines of the task."""
    lines = [json.loads(x) for x in open(path)]
    pick = [x for x in lines if (x["category"] in MT_BENCH_CATEGORIES if task == "mt_bench" else x["category"] == task)]
    return float(np.mean([n for x in pick for n in x["choices"][0]["accept_lengths"]]))


def test_export_writes_spec_bench_answer_files(native, tmp_path):
    paths = export_spec_bench(native, tmp_path)
    lines = {arm: [json.loads(x) for x in open(p)] for arm, p in paths.items()}
    for arm, rows in lines.items():
        assert len(rows) == 12 and [r["question_id"] for r in rows] == sorted(r["question_id"] for r in rows)
        for r in rows:
            assert {"question_id", "category", "answer_id", "model_id", "choices", "tstamp"} <= set(r)
            choice = r["choices"][0]
            assert choice["index"] == 0
            n = len(choice["turns"])
            assert len(choice["decoding_steps"]) == len(choice["new_tokens"]) == len(choice["wall_time"]) == n
            # the convention: steps' kept tokens sum to new_tokens - 1 per turn (prefill's token in no step)
            assert sum(choice["accept_lengths"]) == sum(choice["new_tokens"]) - n
            assert len(choice["accept_lengths"]) == sum(choice["decoding_steps"])
    assert {r["category"] for r in lines["method"]} >= {"translation", "qa", "rag"}
    per_category = native.read_summary()["per_category"]
    for task in TASKS:
        assert _speed_py_mean_accepted(paths["method"], task) == pytest.approx(per_category[task]["tau"], abs=1e-12)
        assert _speed_py_mean_accepted(paths["baseline"], task) == 1.0


def test_export_then_import_reproduces_the_summary_exactly(native, tmp_path):
    paths = export_spec_bench(native, tmp_path / "answers")
    imported = import_spec_bench(paths["method"], paths["baseline"], METHOD, "tiny-random-llama",
                                 results_dir=tmp_path / "results", run_id="imp")
    before, after = native.read_summary(), imported.read_summary()
    for key in SUMMARY_KEYS:
        assert after[key] == before[key], key
    differ = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert differ == {"run_id", "speedup_note", "imported"}  # histograms, latency, depth: all the same
    manifest = imported.read_manifest()
    assert manifest["status"] == "complete" and manifest["imported"]["from_specbench_export"] is True
    assert manifest["imported"]["files"]["answers"]["sha256"] and manifest["config"]["method_options"] == {
        "imported": "spec-bench"}


def test_export_then_import_is_exact_at_batch_size_two(tmp_path, tiny_llama, short_questions):
    run = _run(tmp_path, tiny_llama, short_questions, batch_size=2, limit=6, max_new_tokens=8, run_id="b2")
    paths = export_spec_bench(run, tmp_path / "answers")
    imported = import_spec_bench(paths["method"], paths["baseline"], METHOD, "tiny-random-llama",
                                 results_dir=tmp_path / "results", run_id="imp")
    for key in SUMMARY_KEYS:
        assert imported.read_summary()[key] == run.read_summary()[key], key


def _plain(path, out):
    """The file as Spec-Bench's own scripts write it: no specbench block."""
    rows = [json.loads(x) for x in open(path)]
    out.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "specbench"}) + "\n" for r in rows))
    return out


def test_plain_spec_bench_files_import_with_what_they_cannot_tell(native, tmp_path):
    paths = export_spec_bench(native, tmp_path / "answers")
    method = _plain(paths["method"], tmp_path / "m.jsonl")
    base = _plain(paths["baseline"], tmp_path / "b.jsonl")
    result = CliRunner().invoke(cli, ["import", "spec-bench", str(method), "--baseline", str(base), "--method", "pld",
                                      "--target", "vicuna-7b", "--results-dir", str(tmp_path / "r"), "--run-id", "x"])
    assert result.exit_code == 0, result.output
    run = ResultStore(tmp_path / "r").open("x")
    summary, manifest = run.read_summary(), run.read_manifest()
    assert manifest["imported"]["from_specbench_export"] is False and manifest["imported"]["unknown"]
    assert summary["imported"] is True and summary["speedup_decode"] is None
    before = native.read_summary()
    assert summary["speedup_e2e"] == pytest.approx(before["speedup_e2e"], rel=1e-12)
    for task in TASKS:
        got, want = summary["per_category"][task], before["per_category"][task]
        assert got["tau"] == pytest.approx(want["tau"]) and got["speedup_e2e"] == pytest.approx(want["speedup_e2e"])
        assert got["speedup_decode"] is None


# -- malformed and mismatched files are refused ---------------------------------------------------------------
def _mutations():
    def drop_field(rows):
        del rows[0]["choices"][0]["wall_time"]
    def short_list(rows):
        rows[0]["choices"][0]["new_tokens"] = rows[0]["choices"][0]["new_tokens"][:-1] or []
    def duplicate(rows):
        rows.append(rows[0])
    def other_question(rows):
        rows[0]["question_id"] = 9999
    def wrong_category(rows):
        rows[0]["category"] = "poetry" if rows[0]["category"] != "poetry" else "qa"
    def negative_time(rows):
        rows[0]["choices"][0]["wall_time"][0] = -1.0
    def missing_question(rows):
        rows.pop()
    return [(drop_field, "missing 'wall_time'"), (short_list, "entries for"), (duplicate, "repeats line"),
            (other_question, "different questions"), (wrong_category, "category"),
            (negative_time, "wall_time must be positive"), (missing_question, "different questions")]


@pytest.mark.parametrize("mutate, message", _mutations(), ids=lambda x: getattr(x, "__name__", ""))
def test_malformed_or_mismatched_files_are_refused_in_one_line(native, tmp_path, mutate, message):
    paths = export_spec_bench(native, tmp_path / "answers")
    rows = [json.loads(x) for x in open(paths["method"])]
    mutate(rows)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(cli, ["import", "spec-bench", str(bad), "--baseline", str(paths["baseline"]),
                                      "--method", "pld", "--target", "t", "--results-dir", str(tmp_path / "r")])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


@pytest.mark.parametrize("content, message", [("{not json\n", "not JSON"), ("", "no answers"), ("[1, 2]\n", "not a JSON object")])
def test_unreadable_files_are_refused(tmp_path, native, content, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    result = CliRunner().invoke(cli, ["import", "spec-bench", str(bad), "--baseline", str(bad), "--method", "pld",
                                      "--target", "t", "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and message in result.output


def test_export_cli_writes_two_files_and_refuses_other_suites(tmp_path, native, tiny_llama):
    result = CliRunner().invoke(cli, ["export", "spec-bench", str(native.path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted({"tiny-random-llama-ar-temp-0.0.jsonl",
                                                                          f"tiny-random-llama-{METHOD}-temp-0.0.jsonl"})
    gsm8k = Runner(RunConfig(method="ar", suite="gsm8k", target="tiny-random-llama", limit=1, max_new_tokens=2),
                   ResultStore(tmp_path / "results"), progress=False, target=tiny_llama).run(run_id="g")
    result = CliRunner().invoke(cli, ["export", "spec-bench", str(gsm8k.path), "--out", str(tmp_path / "out2")])
    assert result.exit_code == 2 and "ran suite 'gsm8k'" in result.output


# -- the report's leaderboard table ---------------------------------------------------------------------------
def test_leaderboard_table_puts_imported_runs_beside_native_ones(native, tmp_path):
    agg = pytest.importorskip("specbench.report.aggregate")
    from specbench.spec_bench_table import spec_bench_table

    paths = export_spec_bench(native, tmp_path / "answers")
    imported = import_spec_bench(paths["method"], paths["baseline"], METHOD, "tiny-random-llama",
                                 results_dir=tmp_path / "results", run_id="imp")
    complete, _ = agg.resolve_runs([str(native.path), str(imported.path)], tmp_path / "results")
    tables = spec_bench_table(agg.runs_frame(complete), agg.Pool(complete))
    assert len(tables) == 1
    table = tables[0]
    assert [g for g, _ in table.groups][1:] == ["MT-Bench (n=2)", "Translation (n=2)", "Summarization (n=2)",
                                                "QA (n=2)", "Math reasoning (n=2)", "RAG (n=2)", "Overall"]
    labels = [row[0].text for row in table.rows]
    assert any(label.startswith(f"{METHOD} (imported=spec-bench)") for label in labels) and len(labels) == 2
    native_row, imported_row = sorted(table.rows, key=lambda row: "imported" in row[0].text)
    assert [c.plain() for c in native_row[1:]] == [c.plain() for c in imported_row[1:]]
    tau = native.read_summary()["tau"]
    assert native_row[-2].text == f"{tau:.2f}"
