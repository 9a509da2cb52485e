"""Code extraction shared by the code suites (HumanEval, MBPP).

Chat models answer with prose around a ```python fence, several fences (code, then example usage),
a fence cut off by `max_new_tokens`, bare code, or, for HumanEval, only the function body. The rule,
as in EvalPlus' sanitiser: take the fenced block that defines the function under test (else the first
Python block); without fences, take the answer as it is if it parses, else drop the prose before the
first `def`/`import`/`class` line and trim lines from the end until the rest parses.
"""

from __future__ import annotations

import ast
import re
import warnings

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_LANGS = {"", "python", "py", "python3", "py3"}
_CODE_START = re.compile(r"^(def |class |import |from |async def |@)")


def fenced_blocks(text: str) -> list[str]:
    """Python (or unlabelled) fenced blocks in order; a last fence left open counts to the end."""
    return [code for lang, code in _FENCE.findall(text) if lang.lower() in _PYTHON_LANGS]


def _parses(code: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. invalid escape sequences in model code are not our concern
        try:
            ast.parse(code)
            return True
        except (SyntaxError, ValueError):
            return False


def parsable_prefix(code: str, context: str = "") -> str:
    """The longest prefix of `code`'s lines that parses after `context` (prose or a cut-off tail removed)."""
    lines = code.rstrip().splitlines()
    for n in range(len(lines), 0, -1):
        candidate = "\n".join(lines[:n]) + "\n"
        if _parses(context + candidate):
            return candidate
    return code


def extract_code(answer: str, entry_point: str | None = None) -> str:
    """The program in a model's answer (see module docstring)."""
    blocks = fenced_blocks(answer)
    if blocks:
        defining = [b for b in blocks if entry_point and re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", b)]
        return (defining or blocks)[0]
    if _parses(answer):
        return answer
    lines = answer.splitlines()
    start = next((i for i, line in enumerate(lines) if _CODE_START.match(line)), None)
    if start is None:
        return answer
    return parsable_prefix("\n".join(lines[start:]))


def defines(code: str, name: str) -> bool:
    return re.search(rf"^\s*(async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None
