"""Terminal tables for `specbench run` and `specbench list runs` (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _fmt(x, digits=2):
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _ci(s, key):
    ci = s.get(f"{key}_ci95")
    return f"{_fmt(s.get(key))} [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else _fmt(s.get(key))


def print_summary(run_dir) -> None:
    s = run_dir.read_summary() or {}
    console = _console()
    table = Table(title=f"{s.get('method')} vs ar · {s.get('suite')} · {s.get('target')} · "
                        f"T={s.get('temperature')} · batch {s.get('batch_size')}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("prompts", _fmt(s.get("n_prompts"))),
        ("τ (tokens / verify forward)", _fmt(s.get("tau"))),
        ("speedup decode [95% CI]", _ci(s, "speedup_decode")),
        ("speedup end-to-end [95% CI]", _ci(s, "speedup_e2e")),
        ("tokens/s method · AR (e2e)", f"{_fmt(s.get('tokens_per_s'), 1)} · {_fmt(s.get('baseline_tokens_per_s'), 1)}"),
        ("exact match vs AR", _fmt(s.get("exact_match_rate"))),
        ("accuracy method · AR", f"{_fmt(s.get('accuracy'))} · {_fmt(s.get('baseline_accuracy'))}"),
    ]
    lat = (s.get("latency_ms") or {}).get("method") or {}
    if lat:
        rows.append(("step ms: draft / verify / other",
                     f"{_fmt(lat.get('draft_ms_median'))} / {_fmt(lat.get('verify_ms_median'))} / "
                     f"{_fmt(lat.get('other_ms_median'))}"))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    console.print(f"results: {run_dir.path}")


def _console() -> Console:
    """Wide when piped, so run ids and numbers are never cut off in logs."""
    console = Console()
    return console if console.is_terminal else Console(width=220)


def print_runs(runs) -> None:
    table = Table(title="runs")
    for col in ("run_id", "status", "method", "suite", "target", "T", "batch", "prompts", "τ", "speedup dec"):
        table.add_column(col)
    for run_dir in runs:
        m = run_dir.read_manifest()
        c = m.get("config", {})
        s = run_dir.read_summary() or {}
        table.add_row(run_dir.run_id, m.get("status", "?"), c.get("method"), c.get("suite"), c.get("target"),
                      _fmt(c.get("temperature")), _fmt(c.get("batch_size")),
                      _fmt(m.get("resolved", {}).get("n_prompts")), _fmt(s.get("tau")), _fmt(s.get("speedup_decode")))
    _console().print(table)
