"""GSM8K / MATH answer extraction and equivalence on the references and on tricky formats (issue 3)."""

from __future__ import annotations

import time

import pytest

from specbench.jsonl import read_jsonl
from specbench.suites.base import Example, data_dir_file
from specbench.suites.gsm8k import GSM8K
from specbench.suites.math500 import Math500
from specbench.suites.math_answers import (as_fraction, final_number, last_boxed, latex_to_sympy,
                                           math_answers_equal, normalize_answer)


def test_gsm8k_scorer_accepts_every_reference_solution():
    suite = GSM8K()
    rows = read_jsonl(data_dir_file("gsm8k/test.jsonl"))
    examples = suite.load().examples
    assert all(suite.score(example, [row["answer"]]) for example, row in zip(examples, rows))
    shifted = sum(suite.score(example, [row["answer"]]) for example, row in zip(examples, rows[1:] + rows[:1]))
    assert shifted < 0.05 * len(rows)


@pytest.mark.parametrize("answer, reference, expected", [
    ("So she has \\boxed{1,234} apples.", "1234", True),
    ("The total is $18.", "18", True),
    ("It costs \\boxed{\\$18.00}", "18", True),
    ("She pays 18 dollars.", "18", True),
    ("\\boxed{18 \\text{ dollars}}", "18", True),
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("The answer is \\boxed 42.", "42", True),
    ("First 3 then 5, so \\boxed{7}", "5", False),
    ("No number at all", "5", False),
    ("-3 degrees", "-3", True),
])
def test_gsm8k_tricky_formats(answer, reference, expected):
    assert GSM8K().score(Example("x", ["q"], reference), [answer]) is expected


def test_math500_scorer_accepts_every_reference_solution_and_rejects_others():
    suite = Math500()
    rows = read_jsonl(data_dir_file("math500/test.jsonl"))
    examples = suite.load().examples
    assert all(suite.score(example, [row["solution"]]) for example, row in zip(examples, rows))
    rotated = rows[1:] + rows[:1]
    shifted = [suite.score(example, [row["solution"]]) for example, row in zip(examples, rotated)]
    coincide = [normalize_answer(a["answer"]) == normalize_answer(b["answer"]) for a, b in zip(rows, rotated)]
    assert sum(shifted) <= sum(coincide) + 5
    assert sum(shifted) < 0.1 * len(rows)


@pytest.mark.parametrize("predicted, reference, expected", [
    ("0.5", "\\frac{1}{2}", True),
    ("\\dfrac{1}{2}", "\\frac12", True),
    ("\\tfrac{3}{4}", "0.75", True),
    ("\\frac{2}{4}", "\\frac{1}{2}", True),
    ("2\\frac{1}{4}", "\\frac94", True),
    ("0.333", "\\frac{1}{3}", False),
    ("1,234", "1234", True),
    ("10{,}080", "10,\\!080", True),
    ("\\$18", "18", True),
    ("18\\text{ dollars}", "18", True),
    ("18 dollars", "18", True),
    ("15\\mbox{ cm}^2", "15", True),
    ("30^\\circ", "30", True),
    ("30^{\\circ}", "30 degrees", True),
    ("10\\%", "10", True),
    (".35625", "0.35625", True),
    ("\\text{(C)}", "C", True),
    ("(C)", "\\text{(C)}", True),
    ("\\textbf{(C)}", "\\text{(C)}", True),
    ("(B)", "\\text{(C)}", False),
    ("\\text{Evelyn}", "Evelyn", True),
    ("x = 5", "5", True),
    ("y = 2x + 3", "2x+3", True),
    ("\\frac{\\sqrt3}{2}", "\\frac{1}{2}\\sqrt{3}", True),
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\sqrt{8}", "2.83", False),
    ("\\pi", "3.14159", False),
    ("\\frac{\\pi}{2}", "\\frac{1}{2}\\pi", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("2x", "2y", False),
    ("6 - 5i", "6-5i", True),
    ("-6+5i", "6-5i", False),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
    ("(\\frac{\\pi}{2}, 3)", "(3,\\frac{\\pi}{2})", False),
    ("[2,5)", "(2,5)", False),
    ("1, -2", "-2, 1", True),
    ("1, 2", "1, 2, 3", False),
    ("3", "4", False),
    ("100000", "100001", False),
    ("", "0", False),
    (None, "0", False),
])
def test_math_equivalence(predicted, reference, expected):
    assert math_answers_equal(predicted, reference) is expected


def test_math500_needs_a_boxed_answer():
    example = Example("x", ["q"], "\\frac{1}{2}")
    assert Math500().score(example, ["So the answer is \\boxed{\\dfrac{1}{2}}."])
    assert not Math500().score(example, ["So the answer is 1/2."])


@pytest.mark.parametrize("text, content", [
    ("a \\boxed{\\frac{1}{2}} b", "\\frac{1}{2}"),
    ("\\boxed{1} then \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\fbox{7}", "7"),
    ("so \\boxed 5.", "5"),
    ("unclosed \\boxed{12", None),
    ("nothing", None),
])
def test_last_boxed(text, content):
    assert last_boxed(text) == content


def test_exact_fractions():
    assert as_fraction("0.5") == as_fraction("\\frac{1}{2}") == as_fraction("1/2")
    assert float(as_fraction("-\\frac{3}{4}")) == -0.75
    assert as_fraction("\\frac{1}{0}") is None
    assert final_number("\\boxed{-\\frac{3}{4}}") == -0.75


@pytest.mark.parametrize("hostile", ["__import__('os').system('true')", "9^{9^{9^{9}}}", "10^{100000}",
                                     "().__class__", "x" * 500])
def test_model_text_never_reaches_sympy_eval(hostile):
    start = time.perf_counter()
    assert latex_to_sympy(hostile) is None
    assert not math_answers_equal(hostile, "1")
    assert time.perf_counter() - start < 2
