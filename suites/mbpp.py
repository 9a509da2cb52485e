"""MBPP, sanitized release (Austin et al. 2021), scored by pass@1 in the sandbox.

Evaluation set: the sanitized problems whose task_id lies in the standard test range 11-510, which is
the sanitized "test" split: 257 problems in the shared data (427 sanitized problems in all). The rest
(task_ids 1-10 and 511-974: the sanitized prompt, train and validation splits) are exposed by
`training_prompts` for drafters and never evaluated.

Prompt: the task text plus one of its test asserts, which fixes the function name and signature (the
EvalPlus MBPP prompt), with the instruction to write the function so that the tests pass. Scoring:
the test imports, the extracted code and all the test asserts, run in `suites/sandbox.py`.
Sources: data dir (`mbpp/sanitized-mbpp.json`), then the hub (`google-research-datasets/mbpp`, sanitized).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from specbench.jsonl import read_jsonl
from specbench.suites.base import Example, Suite, data_dir_file
from specbench.suites.code_answers import extract_code
from specbench.suites.sandbox import SandboxLimits, run_program

TEST_RANGE = range(11, 511)
CODE_INSTRUCTION = ("Write the Python function for the task below so that the tests pass. "
                    "Reply with the complete function in a ```python code block.")


def tested_function(row: dict) -> str | None:
    """The function the tests call: the first `def` of the reference code named in the first test."""
    names = re.findall(r"^def\s+(\w+)\s*\(", row["code"], re.MULTILINE)
    called = [n for n in names if re.search(rf"\b{re.escape(n)}\s*\(", row["test_list"][0])]
    return (called or names or [None])[0]


def eval_prompt(row: dict) -> str:
    return f"{CODE_INSTRUCTION}\n\n{row['prompt']}\nYour code should pass this test:\n\n{row['test_list'][0]}"


def training_prompt(row: dict) -> str:
    """The original MBPP prompt with all tests (the format of `shared/data/regen/.../mix.jsonl`)."""
    return f"{row['prompt']}\nYour code should pass these tests:\n\n" + "\n".join(row["test_list"])


def _example(row: dict, turn: str) -> Example:
    reference = {key: row[key] for key in ("code", "test_imports", "test_list")}
    return Example(id=f"mbpp-{row['task_id']}", turns=[turn], reference=reference,
                   meta={"task_id": row["task_id"], "entry_point": tested_function(row)})


def eval_examples(rows: list[dict]) -> list[Example]:
    return [_example(row, eval_prompt(row)) for row in rows if row["task_id"] in TEST_RANGE]


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".json":
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return read_jsonl(path)


def _from_hub() -> list[dict]:
    import datasets

    splits = datasets.load_dataset("google-research-datasets/mbpp", "sanitized")
    return sorted((row for split in splits.values() for row in split), key=lambda row: row["task_id"])


def program_for(reference: dict, answer: str, entry_point: str | None = None) -> str:
    """Test imports, the extracted code, then every test assert (the MBPP evaluation program)."""
    code = extract_code(answer, entry_point)
    return "\n".join([*reference["test_imports"], code, *reference["test_list"]]) + "\n"


class MBPP(Suite):
    name = "mbpp"
    description = "MBPP sanitized, test range task_id 11-510 (257 problems); pass@1 in a sandboxed subprocess"
    default_max_new_tokens = 256
    expected_size = 257

    def __init__(self, limits: SandboxLimits = SandboxLimits()):
        self.limits = limits

    def sources(self):
        return [
            ("data-dir:mbpp/sanitized-mbpp.json",
             lambda: eval_examples(_read_rows(data_dir_file("mbpp/sanitized-mbpp.json")))),
            ("hub:google-research-datasets/mbpp:sanitized", lambda: eval_examples(_from_hub())),
        ]

    def load_file(self, path: Path):
        """A sanitized-MBPP file (JSON list or JSONL); like the data-dir file, only the test range is kept."""
        return eval_examples(_read_rows(path))

    def score(self, example, outputs):
        program = program_for(example.reference, outputs[-1], example.meta.get("entry_point"))
        return run_program(program, self.limits).passed

    def training_prompts(self) -> list[Example]:
        """Sanitized problems outside the test range (170), for drafter training."""
        rows = _read_rows(data_dir_file("mbpp/sanitized-mbpp.json"))
        return [_example(row, training_prompt(row)) for row in rows if row["task_id"] not in TEST_RANGE]
