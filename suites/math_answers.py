"""Answer extraction and equivalence shared by the math suites (GSM8K, MATH-500).

Models are asked for `\\boxed{...}`; small models often forget, so the GSM8K fallback is the last
number in the text (the lm-evaluation-harness "flexible extract" rule). MATH-500 answers are LaTeX, so
they are compared the way the MATH / PRM800K graders do (issue 3: "normalise LaTeX; sympy-based
equality where parsable"): first the Hendrycks `strip_string` normalisation (spaces, `\\left`/`\\right`,
`\\dfrac`, degrees, dollars, percent, units in `\\text{}`, `x = `), then exact rational equality
(`0.5` equals `\\frac{1}{2}`), then sympy on a whitelisted translation of the LaTeX (`\\frac{\\sqrt3}{2}`
equals `\\frac{1}{2}\\sqrt{3}`; expressions with variables are compared at random points). Numbers
must be exact up to float noise: `0.333` is not `\\frac{1}{3}`, as in the MATH grader.
"""

from __future__ import annotations

import math
import random
import re
import string
from fractions import Fraction

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_TEXT_COMMANDS = ("\\text", "\\textbf", "\\textrm", "\\textup", "\\mathrm", "\\mathbf", "\\mbox", "\\textit")
_SPACING = ("\\!", "\\,", "\\;", "\\:", "\\ ", "~", "\\displaystyle", "\\left", "\\right")
_DEGREES = ("^{\\circ}", "^\\circ", "°", "\\degree", "\\circ")
_SIMPLE_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
_SYMPY_NAMES = {"sqrt", "pi", "oo", "log", "exp", "sin", "cos", "tan", "binomial"}
_MAX_SYMPY_CHARS = 200


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`), braces balanced; None if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start + len("\\boxed" if text.startswith("\\boxed", start) else "\\fbox") :]
    if rest[:1] == " ":
        token = rest.strip().split()
        return token[0].rstrip("$.") if token else None
    content = _braced(rest, 0)
    return content.strip() if content is not None else None


def _braced(text: str, i: int) -> str | None:
    """The balanced `{...}` group starting at `text[i]` (without its braces), or None."""
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def parse_number(text: str) -> float | None:
    """The last number in `text` (commas, `$`, units and trailing dots tolerated)."""
    if text is None:
        return None
    cleaned = text.replace("\\$", "").replace("$", "").replace("\\!", "").replace("{,}", "")
    found = _NUMBER.findall(cleaned)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def final_number(text: str) -> float | None:
    """The model's final numeric answer: the boxed one if any (`\\frac` understood), else the last number."""
    boxed = last_boxed(text)
    if boxed is not None:
        exact = as_fraction(normalize_answer(boxed))
        if exact is not None:
            return float(exact)
        value = parse_number(boxed)
        if value is not None:
            return value
    return parse_number(text)


# -- normalisation ---------------------------------------------------------------------------------


def _replace_command_groups(text: str, command: str, render) -> str:
    """Rewrite every `command{a}{b}...` (arity = parameters of `render`) with `render(a, b, ...)`."""
    arity = render.__code__.co_argcount
    out, i = [], 0
    while (k := text.find(command, i)) >= 0:
        j, groups = k + len(command), []
        if j < len(text) and text[j].isalpha():  # a longer command, e.g. \textbf for \text
            out.append(text[i:j])
            i = j
            continue
        for _ in range(arity):
            while j < len(text) and text[j] == " ":
                j += 1
            group = _braced(text, j)
            if group is None and j < len(text) and text[j] not in "\\{}":
                group, j = text[j], j + 1  # \frac12, \sqrt3
            elif group is not None:
                j += len(group) + 2
            if group is None:
                break
            groups.append(group)
        if len(groups) < arity:
            out.append(text[i : k + len(command)])
            i = k + len(command)
            continue
        out.append(text[i:k] + render(*groups))
        i = j
    return "".join(out) + text[i:]


def _strip_units(text: str) -> str:
    """`18\\text{ dollars}`, `5 \\mbox{cm}`, `18 dollars` -> the number; a lone `\\text{Evelyn}` stays."""
    for command in _TEXT_COMMANDS:
        match = re.fullmatch(r"(.*\d.*?)\s*" + re.escape(command) + r"\{\s*[A-Za-z][A-Za-z\s.]*\}(\^\{?[23]\}?)?", text)
        if match:
            text = match.group(1)
    match = re.fullmatch(r"(-?[\d.,]+|\\frac\{\d+\}\{\d+\})\s+[A-Za-z][A-Za-z\s.]*", text)
    return match.group(1) if match else text


def normalize_answer(answer: str) -> str:
    """Canonical string form of a LaTeX answer (after Hendrycks et al.'s `strip_string`)."""
    text = answer.strip()
    if text.startswith(("\\boxed", "\\fbox")):
        text = last_boxed(text) or text
    text = text.replace("\n", " ").replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac")
    for token in _SPACING:
        text = text.replace(token, " " if token in ("\\ ", "~") else "")
    for token in _DEGREES + ("\\$", "$", "\\%", "%", "{,}"):
        text = text.replace(token, "")
    text = re.sub(r"\s*degrees?$", "", text.strip())
    text = _strip_units(text.strip().rstrip("."))
    for command in _TEXT_COMMANDS:
        text = _replace_command_groups(text, command, lambda a: a)
    text = text.strip()
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")
    lhs, eq, rhs = text.partition("=")
    if eq and "=" not in rhs and re.fullmatch(r"\s*[A-Za-z](_\{?\w+\}?)?\s*", lhs):
        text = rhs
    text = _replace_command_groups(text, "\\sqrt", lambda a: "\\sqrt{" + a + "}")
    text = _replace_command_groups(text, "\\frac", lambda a, b: "\\frac{" + a + "}{" + b + "}")
    text = text.replace(" ", "")
    text = re.sub(r"(^|[^\d])\.(\d)", r"\g<1>0.\2", text)
    text = re.sub(r"^\(([A-Za-z])\)$", r"\1", text)
    return text.rstrip(".")


def as_fraction(text: str) -> Fraction | None:
    """Exact value of `3`, `-0.25`, `\\frac{1}{2}`, `-\\frac{3}{4}`, `3/4`, `2\\frac{1}{4}` (mixed); else None."""
    if _SIMPLE_NUMBER.fullmatch(text):
        return Fraction(text)
    match = re.fullmatch(r"(-?)(\d+)?\\frac\{(-?\d+)\}\{(-?\d+)\}|(-?\d+)/(-?\d+)", text)
    if not match:
        return None
    sign, whole, num, den, slash_num, slash_den = match.groups()
    num, den = (num, den) if num is not None else (slash_num, slash_den)
    if int(den) == 0:
        return None
    value = Fraction(int(whole or 0)) + Fraction(int(num), int(den))
    return -value if sign else value


# -- sympy ------------------------------------------------------------------------------------------


def latex_to_sympy(text: str):
    """A sympy expression for a normalised LaTeX answer, or None when it is not plain algebra.

    Only a whitelisted subset is translated (numbers, one-letter variables, + - * / ^, \\frac, \\sqrt,
    \\pi, \\infty, \\cdot, \\times, trig/log), because `parse_expr` evaluates its input and the input is
    model output; large powers are refused so that a reply like `9^{9^{9}}` cannot hang the scorer.
    """
    if not text or len(text) > _MAX_SYMPY_CHARS:
        return None
    expr = _replace_command_groups(text, "\\frac", lambda a, b: f"(({a})/({b}))")
    expr = _replace_command_groups(expr, "\\binom", lambda a, b: f"binomial({a},{b})")
    expr = re.sub(r"\\sqrt\[([^\]]+)\]\{", r"root{\1}{", expr)
    expr = _replace_command_groups(expr, "root", lambda n, a: f"(({a})**(1/({n})))")
    expr = _replace_command_groups(expr, "\\sqrt", lambda a: f"sqrt({a})")
    for latex, python in (("\\pi", " pi "), ("\\infty", " oo "), ("\\cdot", "*"), ("\\times", "*"),
                          ("\\div", "/"), ("\\ln", " log "), ("\\log", " log "), ("\\sin", " sin "),
                          ("\\cos", " cos "), ("\\tan", " tan "), ("\\exp", " exp "), ("{", "("), ("}", ")"),
                          ("^", "**")):
        expr = expr.replace(latex, python)
    if not re.fullmatch(r"[\w\s+\-*/().]*", expr) or "_" in expr or "__" in expr:
        return None
    expr = re.sub(r"[A-Za-z]+", lambda m: m.group() if m.group() in _SYMPY_NAMES else " ".join(m.group()), expr)
    if expr.count("**") > 2 or re.search(r"\*\*\s*\(?\s*\d{4,}", expr):
        return None
    try:
        from sympy.parsing.sympy_parser import (implicit_multiplication_application, parse_expr,
                                                standard_transformations)

        return parse_expr(expr, transformations=standard_transformations + (implicit_multiplication_application,),
                          local_dict=_letters_as_symbols(), evaluate=True)
    except Exception:  # sympy raises many types (SyntaxError, TokenError, TypeError, ...) on odd input
        return None


def _letters_as_symbols() -> dict:
    """Every single letter is a variable (sympy's namespace would make `N`, `S`, `E`, `I`, `O` objects)."""
    import sympy

    return {c: sympy.Symbol(c) for c in string.ascii_letters}


def _numbers_close(a: complex, b: complex) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(b))


def sympy_equal(a, b, trials: int = 3) -> bool:
    """Equal as numbers, or, with variables, at a few random points (free symbols must match)."""
    if a.free_symbols != b.free_symbols:
        return False
    symbols = sorted(a.free_symbols, key=str)
    rng = random.Random(0)
    for _ in range(trials if symbols else 1):
        point = {s: rng.uniform(0.5, 2.5) for s in symbols}
        try:
            x, y = complex(a.evalf(subs=point)), complex(b.evalf(subs=point))
        except (TypeError, ValueError, OverflowError, ZeroDivisionError):
            return False
        if any(math.isnan(v.real) or math.isnan(v.imag) for v in (x, y)) or not _numbers_close(x, y):
            return False
    return True


# -- equivalence ----------------------------------------------------------------------------------


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def _enclosed(text: str) -> bool:
    return len(text) >= 2 and text[0] in "([" and text[-1] in ")]" and _split_top_level(text[1:-1]) != [text[1:-1]]


def _normalized_equal(a: str, b: str) -> bool:
    if a == b:
        return True
    if re.fullmatch(r"[A-Za-z ]{2,}", a) and re.fullmatch(r"[A-Za-z ]{2,}", b):
        return a.casefold() == b.casefold()
    if _enclosed(a) and _enclosed(b):
        if a[0] != b[0] or a[-1] != b[-1]:
            return False
        left, right = _split_top_level(a[1:-1]), _split_top_level(b[1:-1])
        return len(left) == len(right) and all(_normalized_equal(x, y) for x, y in zip(left, right))
    left, right = _split_top_level(a), _split_top_level(b)
    if len(left) > 1 or len(right) > 1:
        if len(left) != len(right):
            return False
        unmatched = list(right)
        for x in left:
            match = next((y for y in unmatched if _normalized_equal(x, y)), None)
            if match is None:
                return False
            unmatched.remove(match)
        return True
    fa, fb = as_fraction(a), as_fraction(b)
    if fa is not None and fb is not None:
        return fa == fb
    ea, eb = latex_to_sympy(a), latex_to_sympy(b)
    return ea is not None and eb is not None and sympy_equal(ea, eb)


def math_answers_equal(predicted: str | None, reference: str | None) -> bool:
    """Whether a predicted MATH answer (LaTeX) is equivalent to the reference answer."""
    if predicted is None or reference is None:
        return False
    a, b = normalize_answer(predicted), normalize_answer(reference)
    return bool(a) and _normalized_equal(a, b)
