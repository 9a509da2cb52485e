"""Report figures (matplotlib + seaborn styling), returned as base64 PNG so the page works offline.

Figures are built on `matplotlib.figure.Figure` directly, not pyplot: no global figure state, no GUI
backend, and safe to call from tests and worker processes. Each function returns None when its data
has nothing to show (one batch size, no depth sweep, only AR), and the page says why instead.
"""

from __future__ import annotations

import base64
import io
import math

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SPAN_COLORS = {"draft": "#e69f00", "verify": "#0072b2", "other": "#999999"}
DPI = 100


def _style():
    return matplotlib.rc_context({**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.85),
                                  "axes.spines.top": False, "axes.spines.right": False})


def palette(labels) -> dict[str, tuple]:
    """One colour per method label, the same in every figure of the page."""
    labels = sorted(set(labels))
    return dict(zip(labels, sns.color_palette("colorblind", max(len(labels), 1))))


def to_base64(fig: Figure) -> str:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _nan(x) -> float:
    return float("nan") if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _yerr(values, lows, highs) -> np.ndarray:
    y = np.array([_nan(v) for v in values])
    lo = np.array([_nan(v) for v in lows])
    hi = np.array([_nan(v) for v in highs])
    return np.nan_to_num(np.vstack([y - lo, hi - y]), nan=0.0).clip(min=0)


def _errorbar_lines(ax, frame: pd.DataFrame, x: str, y: str, colors: dict, ci: bool = True) -> None:
    for label, g in frame.groupby("row_label", sort=True):
        g = g.sort_values(x)
        err = _yerr(g[y], g[f"{y}_lo"], g[f"{y}_hi"]) if ci and f"{y}_lo" in g else None
        ax.errorbar(g[x], [_nan(v) for v in g[y]], yerr=err, marker="o", capsize=3, lw=1.6,
                    label=label, color=colors.get(g["label"].iloc[0]))


def _ar_line(ax) -> None:
    ax.axhline(1.0, ls="--", lw=1, color="#555555")
    ax.annotate("AR", xy=(1.0, 1.0), xycoords=("axes fraction", "data"), xytext=(3, 0),
                textcoords="offset points", va="center", fontsize=8, color="#555555")


def _legend_right(ax) -> None:
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.04, 1.0))


def _wrap(label: str) -> str:
    """Long method labels on several short lines, so bar labels never collide."""
    return label.replace(" (", "\n(").replace(" · ", "\n")


def _panel_grid(n: int, max_cols: int, panel_width: float, panel_height: float) -> tuple[Figure, np.ndarray]:
    """A figure of `n` panels in rows of at most `max_cols` (call inside `_style()`); returns the `n` used axes."""
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(panel_width * cols + 0.5, panel_height * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def speedup_vs_batch(frame: pd.DataFrame, colors: dict, target: str) -> str | None:
    if frame.empty or frame["batch_size"].nunique() < 2:
        return None
    with _style():
        fig = Figure(figsize=(8.5, 3.8), layout="constrained")
        ax = fig.subplots()
        _errorbar_lines(ax, frame, "batch_size", "speedup_decode", colors)
        _ar_line(ax)
        sizes = sorted(frame["batch_size"].unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set(xlabel="batch size", ylabel="speedup vs AR (decode-only)", title=f"{target}: speedup vs batch size")
        _legend_right(ax)
        return to_base64(fig)


def depth_curves(frame: pd.DataFrame, colors: dict, target: str) -> str | None:
    if frame.empty:
        return None
    with _style():
        fig = Figure(figsize=(10, 3.6), layout="constrained")
        ax_tau, ax_speed = fig.subplots(1, 2)
        for ax, y, ylabel in ((ax_tau, "tau", "τ (tokens / verify forward)"),
                              (ax_speed, "speedup_decode", "speedup vs AR (decode-only)")):
            _errorbar_lines(ax, frame.assign(row_label=frame["label"]), "depth", y, colors, ci=(y != "tau"))
            ax.set(xlabel="draft depth", ylabel=ylabel)
            ax.xaxis.get_major_locator().set_params(integer=True)
        _ar_line(ax_speed)
        _legend_right(ax_speed)
        fig.suptitle(f"{target}: τ and speedup vs depth", fontsize=10)
        return to_base64(fig)


def latency_stacked(frame: pd.DataFrame, ar: pd.DataFrame, target: str) -> str | None:
    """Median draft / verify / other ms per decode step; one panel per batch size, the pooled AR arm first."""
    if frame.empty or frame["step_ms"].isna().all():
        return None
    sizes = sorted(frame["batch_size"].unique())
    cols = min(len(sizes), 2)
    rows = math.ceil(len(sizes) / cols)
    n_bars = frame.groupby("batch_size").size().max() + 1
    with _style():
        fig = Figure(figsize=(max(5.0, min(11.5, 1.5 * n_bars * cols + 1.5)), 3.9 * rows), layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        for ax, size in zip(axes, sizes):
            g = frame[frame["batch_size"] == size]
            base = ar[ar["batch_size"] == size]
            bars = [("AR", *(base[c].iloc[0] for c in ("draft_ms", "verify_ms", "other_ms")))] if len(base) else []
            bars += [(r.row_label, r.draft_ms, r.verify_ms, r.other_ms) for r in g.itertuples() if r.label != "ar"]
            names = [_wrap(b[0]) for b in bars]
            bottom = np.zeros(len(bars))
            for i, span in enumerate(("draft", "verify", "other")):
                values = np.nan_to_num(np.array([_nan(b[i + 1]) for b in bars]))
                ax.bar(names, values, bottom=bottom, color=SPAN_COLORS[span], label=span, width=0.6)
                bottom += values
            for x, total in enumerate(bottom):
                ax.text(x, total, f"{total:.1f}", ha="center", va="bottom", fontsize=8)
            ax.set_title(f"batch size {size}", fontsize=9)
            ax.set_ylabel("ms per decode step (median)")
            ax.margins(y=0.12)
            ax.tick_params(axis="x", labelsize=7.5)
        for ax in axes[len(sizes):]:
            ax.set_visible(False)
        fig.suptitle(f"{target}: latency per step", fontsize=10)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
        return to_base64(fig)


def tau_histograms(frame: pd.DataFrame, colors: dict, target: str) -> str | None:
    """Share of steps committing L tokens (L = accepted + 1), one panel per method that drafts."""
    rows = [r for r in frame.itertuples()
            if r.tau_histogram and r.tau and max(int(k) for k in r.tau_histogram) > 1]
    if not rows:
        return None
    with _style():
        fig, axes = _panel_grid(len(rows), 3, 3.4, 3.0)
        for ax, r in zip(axes, rows):
            lengths = sorted(int(k) for k in r.tau_histogram)
            counts = np.array([r.tau_histogram[str(k)] for k in lengths], dtype=float)
            ax.bar(lengths, counts / counts.sum(), color=colors.get(r.label), width=0.7)
            ax.axvline(r.tau, ls="--", lw=1, color="#333333")
            ax.text(0.97, 0.95, f"τ = {r.tau:.2f} (dashed)", transform=ax.transAxes, ha="right", va="top", fontsize=8)
            ax.set(xlabel="tokens committed per step", ylabel="share of steps", title=_wrap(r.row_label))
            ax.title.set_fontsize(8.5)
            ax.set_xticks(lengths)
        fig.suptitle(f"{target}: τ histograms", fontsize=10)
        return to_base64(fig)


def per_position_acceptance(frame: pd.DataFrame, colors: dict, target: str) -> str | None:
    rows = [r for r in frame.itertuples() if r.per_position_acceptance]
    if not rows:
        return None
    with _style():
        fig = Figure(figsize=(8.5, 3.4), layout="constrained")
        ax = fig.subplots()
        for r in rows:
            values = [_nan(v) for v in r.per_position_acceptance]
            ax.plot(range(1, len(values) + 1), values, marker="o", lw=1.6, label=r.row_label, color=colors.get(r.label))
        ax.set(xlabel="draft position i", ylabel="P(i accepted | 1…i−1 accepted)", ylim=(0, 1.05),
               title=f"{target}: per-position acceptance")
        ax.xaxis.get_major_locator().set_params(integer=True)
        _legend_right(ax)
        return to_base64(fig)


REGIME_STYLES = {"eager": dict(ls="-", marker="o"), "compiled": dict(ls="--", marker="s")}


def latency_vs_roofline(frame: pd.DataFrame, title: str) -> str | None:
    """Latency of one target forward vs q, one panel per batch size: each regime measured, and the roofline
    (the larger of the memory and compute bounds) as a dotted line, both axes logarithmic (issue 20)."""
    frame = frame[frame["status"] == "ok"]
    if frame.empty:
        return None
    sizes = sorted(frame["batch"].unique())
    with _style():
        fig, axes = _panel_grid(len(sizes), 2, 5.2, 3.4)
        for ax, size in zip(axes, sizes):
            g = frame[frame["batch"] == size]
            for regime, style in REGIME_STYLES.items():
                r = g[g["regime"] == regime].sort_values("q")
                if len(r):
                    ax.plot(r["q"], r["latency_ms"], lw=1.6, label=regime, **style)
            bound = g.drop_duplicates("q").sort_values("q")
            ax.plot(bound["q"], bound["roofline_ms"], ls=":", lw=1.6, color="#333333", label="roofline")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            qs = sorted(g["q"].unique())
            ax.set_xticks(qs, [str(q) for q in qs])
            ax.minorticks_off()
            ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set(xlabel="q (new tokens per row)", ylabel="ms per forward (median)", title=f"batch size {size}")
            ax.title.set_fontsize(9)
        fig.suptitle(title, fontsize=10)
        legend = {}
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(label, handle)
        fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=3, fontsize=8, frameon=False)
        return to_base64(fig)


def _training_axes(ax, frame: pd.DataFrame, x: str, y: str, colors: dict, slice_mask, slice_minutes) -> None:
    """One line per curve (training run); the equal-budget slice as a dashed line (time) or ringed points."""
    for curve, g in frame.groupby("curve", sort=True):
        g = g.sort_values(x)
        ax.plot(g[x], [_nan(v) for v in g[y]], marker="o", lw=1.6, label=curve, color=colors.get(g["label"].iloc[0]))
    ringed = frame[slice_mask.reindex(frame.index, fill_value=False)]
    if x == "minutes":
        ax.axvline(slice_minutes, ls="--", lw=1, color="#333333", label=f"equal budget ({slice_minutes:.1f} min)")
    elif len(ringed):
        ax.scatter(ringed[x], [_nan(v) for v in ringed[y]], s=130, facecolors="none", edgecolors="#333333",
                   lw=1.2, zorder=3, label=f"equal budget ({slice_minutes:.1f} min)")
    if len(frame) and (frame[x] > 0).all():
        ax.set_xscale("log")
        ax.minorticks_off()
        if x == "minutes":  # the snapshot times themselves, as plain numbers
            ticks = sorted({round(float(v), 1) for v in frame[x]})
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=7.5)
        else:
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: _short_count(v)))


def _short_count(v: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:g}{unit}"
    return f"{v:g}"


def learning_curves(frame: pd.DataFrame, colors: dict, title: str, slice_minutes: float,
                    rows: tuple[tuple[str, str], ...]) -> str | None:
    """`rows` (column, y label) against training minutes (left) and tokens seen (right), one line per run."""
    from specbench.report.curves import slice_points

    if frame.empty:
        return None
    mask = slice_points(frame, slice_minutes)
    with _style():
        fig = Figure(figsize=(10, 3.3 * len(rows)), layout="constrained")
        axes = np.atleast_2d(fig.subplots(len(rows), 2, squeeze=False))
        for (y, ylabel), (ax_time, ax_tokens) in zip(rows, axes):
            for ax, x, xlabel in ((ax_time, "minutes", "training wall time (min)"),
                                  (ax_tokens, "drafter_tokens_seen", "training tokens seen")):
                _training_axes(ax, frame.dropna(subset=[x]), x, y, colors, mask, slice_minutes)
                ax.set(xlabel=xlabel, ylabel=ylabel)
            if y == "speedup_decode":
                _ar_line(ax_tokens)
                _ar_line(ax_time)
        _legend_right(axes[0][1])
        fig.suptitle(title, fontsize=10)
        return to_base64(fig)
