"""GSM8K test (1319 grade-school math problems), scored by final-number match.

Prompt: the question plus the standard instruction to reason step by step and put the final answer
in `\\boxed{}` (the wrapper of the FlexDraft and DFlash evaluations). The reference is the number
after `####` in the dataset's answer. `training_prompts` exposes the train split for drafters.
"""

from __future__ import annotations

from pathlib import Path

from specbench.jsonl import read_jsonl
from specbench.suites.base import Example, Suite, data_dir_file
from specbench.suites.math_answers import final_number, parse_number

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def _examples(rows: list[dict], prefix: str) -> list[Example]:
    out = []
    for i, row in enumerate(rows):
        answer = row["answer"].split("####")[-1].strip()
        out.append(Example(id=f"{prefix}-{i}", turns=[f"{row['question']}\n{MATH_INSTRUCTION}"],
                           reference=answer, meta={"question": row["question"]}))
    return out


def _from_hub(split: str) -> list[dict]:
    import datasets

    return list(datasets.load_dataset("openai/gsm8k", "main", split=split))


class GSM8K(Suite):
    name = "gsm8k"
    description = "GSM8K test split, 1319 problems; final-number match"
    default_max_new_tokens = 256
    expected_size = 1319

    def sources(self):
        return [
            ("data-dir:gsm8k/test.jsonl", lambda: _examples(read_jsonl(data_dir_file("gsm8k/test.jsonl")), "test")),
            ("hub:openai/gsm8k", lambda: _examples(_from_hub("test"), "test")),
        ]

    def load_file(self, path: Path):
        return _examples(read_jsonl(path), "test")

    def score(self, example, outputs):
        got, want = final_number(outputs[-1]), parse_number(example.reference)
        return got is not None and want is not None and abs(got - want) <= 1e-6 * max(1.0, abs(want))

    def training_prompts(self) -> list[Example]:
        """GSM8K train questions (7473) for drafter training; never the test split."""
        return _examples(read_jsonl(data_dir_file("gsm8k/train.jsonl")), "train")
