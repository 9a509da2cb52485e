"""Display tables for the report: one object renders to HTML (template), Markdown and CSV.

Each table keeps two views of the same numbers: `cells` (formatted for a reader: τ to two decimals,
speedups with their 95% CI) and `data` (a pandas frame with the raw values, written as CSV so nobody
has to scrape the page).

Cells can hold any text a user or model wrote (labels from `-o` values, target paths, error messages),
so each output escapes it (issue 24): the HTML template autoescapes; Markdown gets `md_cell` /
`md_text` (one line per row, no raw HTML, no stray `|`); the CSV quotes every field that holds a line
break of any kind (RFC 4180 line ends), so it reads back exactly.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class Cell:
    text: str
    sub: str | None = None  # secondary text, e.g. the CI, shown smaller
    muted: bool = False

    def plain(self) -> str:
        return f"{self.text} {self.sub}" if self.sub else self.text

    @property
    def numeric(self) -> bool:
        return bool(_NUMERIC.fullmatch(self.text))


_NUMERIC = re.compile(r"[-+]?[\d.,]+(×|%| pt|[kMB])?")
_BLANK = {"—", "n/a (T>0)", ""}


@dataclass
class Table:
    name: str  # file stem for the CSV
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    data: pd.DataFrame
    caption: str = ""
    #: optional header row above `columns`: (label, span) pairs, e.g. one suite over its τ and speedup
    groups: list[tuple[str, int]] = field(default_factory=list)
    footnotes: list[str] = field(default_factory=list)
    kind: str = "table"  # for the template, which renders sections item by item
    collapsed: str | None = None  # summary line of a <details> block that hides the table until opened

    def numeric_columns(self) -> list[bool]:
        """Right-align a column when all its filled cells are numbers (text columns stay left)."""
        out = []
        for i in range(len(self.columns)):
            cells = [row[i] for row in self.rows if i < len(row) and row[i].text not in _BLANK]
            out.append(bool(cells) and all(c.numeric for c in cells))
        return out

    def markdown(self) -> str:
        cols = [f"{g} {c}".strip() for g, c in zip(_expand_groups(self.groups, len(self.columns)), self.columns)]
        lines = [f"### {md_text(self.title)}", ""]
        if self.caption:
            lines += [md_text(self.caption), ""]
        lines.append("| " + " | ".join(md_cell(c) for c in cols) + " |")
        lines.append("|" + "|".join("---:" if n else "---" for n in self.numeric_columns()) + "|")
        for row in self.rows:
            lines.append("| " + " | ".join(md_cell(c.plain()) for c in row) + " |")
        lines += [""] + [f"{md_text(note)}  " for note in self.footnotes]
        return "\n".join(lines).rstrip() + "\n"

    def write_csv(self, directory: Path) -> Path:
        path = directory / f"{self.name}.csv"
        self.data.to_csv(path, index=False, lineterminator="\r\n")  # "\r" in a field gets quoted too
        return path


def _expand_groups(groups, n):
    if not groups:
        return [""] * n
    out = []
    for label, span in groups:
        out += [label] * span
    return (out + [""] * n)[:n]


#: every character `str.splitlines` ends a line at
_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")


def md_text(text: str) -> str:
    """Text shown on one Markdown line: line breaks become spaces, `<`, `>`, `&` entities (Markdown
    renderers pass raw HTML through), NUL the replacement character (as CommonMark reads it)."""
    text = _LINE_BREAKS.sub(" ", str(text)).replace("\x00", "\ufffd")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def md_cell(text: str) -> str:
    """`md_text` for a table cell: a backslash or `|` is escaped so it cannot end the cell early."""
    return md_text(text).replace("\\", "\\\\").replace("|", "\\|")


def slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", "_".join(str(p) for p in parts if p is not None)).strip("-").lower()


# -- number formatting ---------------------------------------------------------------------------------
def missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def num(x, digits: int = 2) -> str:
    if missing(x):
        return "—"
    if isinstance(x, (int,)) and not isinstance(x, bool):
        return f"{x:,}"
    return f"{float(x):.{digits}f}"


def pct(x) -> str:
    return "—" if missing(x) else f"{100 * float(x):.0f}%"


def ci_text(ci) -> str | None:
    if not ci or missing(ci[0]) or missing(ci[1]):
        return None
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def speedup_cell(value, ci) -> Cell:
    if missing(value):
        return Cell("—", muted=True)
    return Cell(f"{value:.2f}×", ci_text(ci))


def count(x) -> str:
    if missing(x):
        return "—"
    x = float(x)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"
