"""Render the sections into one self-contained HTML file, plus the same tables as CSV and Markdown.

Self-contained means readable offline and mailable: CSS inline, images as base64 data URIs, no
scripts, no external references (harness_anchors.md §5.9: today users juggle console output, JSON,
PNGs and a separate dashboard).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import jinja2

from specbench.report.tables import Table, md_text


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    csv_dir: Path


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("specbench.report", "templates"),
                              autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True,
                              lstrip_blocks=True, undefined=jinja2.StrictUndefined)


def _version() -> str:
    try:
        return metadata.version("specbench")
    except metadata.PackageNotFoundError:
        return "dev"


def tables_of(sections) -> list[Table]:
    return [item for s in sections for item in s.items if getattr(item, "kind", None) == "table"]


def write_report(sections, out: str | Path, title: str, facts: list[tuple[str, str]], alerts: list,
                 n_runs: int, n_incomplete: int) -> ReportFiles:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_dir = out.with_name(out.stem + "_tables")
    csv_dir.mkdir(exist_ok=True)
    markdown = out.with_suffix(".md")
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    html = _environment().get_template("report.html.j2").render(
        title=title, generated=generated, version=_version(), sections=sections, facts=facts, alerts=alerts,
        n_runs=n_runs, n_incomplete=n_incomplete, csv_dir=csv_dir.name, markdown=markdown.name)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    tables = tables_of(sections)
    for table in tables:
        table.write_csv(csv_dir)
    md = [f"# {md_text(title)}", "", f"Generated {generated} from {n_runs} runs. Speedups are decode-only unless a table "
          "says end-to-end; brackets are 95% bootstrap CIs (DESIGN.md §4).", ""]
    md += [f"> **{md_text(a)}**\n" for a in alerts]
    for section in sections:
        md.append(f"## {md_text(section.title)}\n")
        for item in section.items:
            kind = getattr(item, "kind", None)
            if kind == "table":
                md.append(item.markdown())
            elif kind == "heading":
                md.append(f"#### {md_text(item.text)}\n")
            elif kind == "note":
                bold = "**" if item.level == "warn" else ""
                md.append(f"> {bold}{md_text(item.text)}{bold}\n")
    markdown.write_text("\n".join(md), encoding="utf-8")
    return ReportFiles(out, markdown, csv_dir)
