"""Answer extraction shared by the math suites (GSM8K, MATH-500).

Models are asked for `\\boxed{...}`; small models often forget, so the fallback is the last number
in the text (the lm-evaluation-harness "flexible extract" rule for GSM8K).
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced; None if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def parse_number(text: str) -> float | None:
    """The last number in `text` (commas, `$`, units and trailing dots tolerated)."""
    if text is None:
        return None
    cleaned = text.replace("\\$", "").replace("$", "").replace("\\!", "")
    found = _NUMBER.findall(cleaned)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def final_number(text: str) -> float | None:
    """The model's final numeric answer: the boxed one if any, else the last number."""
    boxed = last_boxed(text)
    if boxed is not None:
        value = parse_number(boxed)
        if value is not None:
            return value
    return parse_number(text)
