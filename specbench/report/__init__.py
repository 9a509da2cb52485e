"""`specbench report`: stored runs → one self-contained HTML page (+ CSV and Markdown tables).

Pipeline (DESIGN.md §3 Report): aggregate.py (pandas frames, seeds pooled with the binding metric
code) → sections.py (tables and figures per section) → figures.py (matplotlib/seaborn, base64 PNG) →
html.py (jinja2 template, files next to each other).
"""

from __future__ import annotations

from pathlib import Path

from specbench.errors import SpecbenchError
from specbench.report.html import ReportFiles


def build_report(run_refs=(), results_dir: str | Path = "results", out: str | Path = "reports/report.html",
                 sweep_ids=(), title: str | None = None) -> ReportFiles:
    from specbench.report import aggregate as agg
    from specbench.report.html import write_report
    from specbench.report.sections import build_sections

    from specbench.report.roofline import roofline_section  # issue 20: only when profile files are present

    sweep_ids = (sweep_ids,) if isinstance(sweep_ids, str) else tuple(sweep_ids or ())
    try:
        complete, incomplete = agg.resolve_runs(tuple(run_refs), results_dir, sweep_ids)
    except SpecbenchError:
        # a folder of `specbench profile` files alone (a GPU session that only profiled) still gets its page
        if run_refs or sweep_ids or not (roofline := roofline_section(results_dir)):
            raise
        return write_report([roofline], out, title or "specbench report · profiles", [], [], 0, 0)
    df = agg.runs_frame(complete)
    pool = agg.Pool(complete)
    failed = agg.failed_sweep_cells(results_dir, sweep_ids)
    sections, alerts = build_sections(df, pool, incomplete, failed)
    if roofline := roofline_section(results_dir):
        sections.insert(len(sections) - 1, roofline)  # before "All runs and their provenance"
    targets = sorted(df["target"].unique())
    facts = [("runs", str(len(df))), ("targets", ", ".join(targets)),
             ("methods", ", ".join(sorted(df["label"].unique()))), ("suites", ", ".join(sorted(df["suite"].unique()))),
             ("temperatures", ", ".join(f"{t:g}" for t in sorted(df["temperature"].unique()))),
             ("batch sizes", ", ".join(str(b) for b in sorted(df["batch_size"].unique())))]
    title = title or f"specbench report · {', '.join(targets)}"
    return write_report(sections, out, title, facts, alerts, len(df), len(incomplete))


def latest_sweep(results_dir: str | Path = "results") -> str | None:
    """The most recently updated sweep with a complete cell: what `specbench report` with no arguments
    shows (issue 23: the report of the sweep just run), None when there is none (then every run)."""
    from specbench.report import aggregate as agg

    candidates = []
    for path in (Path(results_dir) / "sweeps").glob("*.json"):
        try:
            state = agg._sweep_state(results_dir, path.stem)
        except SpecbenchError:
            continue
        if any(c.get("status") in ("complete", "skipped") for c in state["cells"]):
            candidates.append((str(state.get("updated", "")), path.stat().st_mtime, path.stem))
    return max(candidates)[2] if candidates else None


__all__ = ["build_report", "latest_sweep", "ReportFiles"]
