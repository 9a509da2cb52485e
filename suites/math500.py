"""MATH-500 (the 500-problem MATH test subset of Lightman et al. 2023), scored by boxed-answer equivalence.

Prompt: the problem plus the same wrapper as GSM8K (reason step by step, final answer in `\\boxed{}`).
Score: the last `\\boxed{}` of the answer against the reference answer with
`math_answers.math_answers_equal` (LaTeX normalisation, exact rationals, sympy where parsable); an
answer without a box is wrong, as in the MATH grader. Sources: data dir (`math500/test.jsonl`), then
the hub (`HuggingFaceH4/MATH-500`).
"""

from __future__ import annotations

from pathlib import Path

from specbench.jsonl import read_jsonl
from specbench.suites.base import Example, Suite, data_dir_file
from specbench.suites.gsm8k import MATH_INSTRUCTION
from specbench.suites.math_answers import last_boxed, math_answers_equal


def _examples(rows: list[dict]) -> list[Example]:
    """Ids are positions (`math500-0`...): the shared copy lacks the hub's `unique_id`, and both orders agree."""
    return [Example(id=f"math500-{i}", turns=[f"{row['problem']}\n{MATH_INSTRUCTION}"], reference=row["answer"],
                    meta={"subject": row.get("subject"), "level": row.get("level")})
            for i, row in enumerate(rows)]


def _from_hub() -> list[dict]:
    import datasets

    return list(datasets.load_dataset("HuggingFaceH4/MATH-500", split="test"))


class Math500(Suite):
    name = "math500"
    description = "MATH-500, 500 competition problems; boxed-answer equivalence"
    default_max_new_tokens = 512
    expected_size = 500

    def sources(self):
        return [
            ("data-dir:math500/test.jsonl", lambda: _examples(read_jsonl(data_dir_file("math500/test.jsonl")))),
            ("hub:HuggingFaceH4/MATH-500", lambda: _examples(_from_hub())),
        ]

    def load_file(self, path: Path):
        return _examples(read_jsonl(path))

    def score(self, example, outputs):
        return math_answers_equal(last_boxed(outputs[-1]), example.reference)
