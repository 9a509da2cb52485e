"""Learning curves (issue 22): τ and speedup of one training run's drafters against its training.

A method that learns slowly but ends higher and one that learns fast but saturates look the same at
one budget, so the report reads every drafter of a `--save-at` run (`specbench sweep snapshot ...`)
as a point (training minutes, tokens seen, held-out accuracy; τ and decode speedup per suite) on the
curve of its run. The *equal-budget slice* is the longest training time every curve reached: the
standard recipe's budget when each method was trained to it. Crossing points are read on the time
axis — equal wall time is the budget the recipe equalises — by linear interpolation between measured
points, and never outside the range both curves cover.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from specbench.report import aggregate as agg

#: the method whose crossings are stated when it is on the page (the question the harness exists for)
FOCUS = "flexdraft"
#: differences smaller than this (in τ, or in × of speedup) are read as level: ten prompts do not rank two
#: curves 0.001 apart, and a crossing between such points would be noise
LEVEL = 0.01
CURVE_COLUMNS = ["label", "method", "drafter_run", "drafter_path", "drafter_snapshot", "drafter_steps",
                 "drafter_train_seconds", "drafter_tokens_seen", "drafter_eval_acc"]


def curve_frame(df: pd.DataFrame, head: agg.Headline, pool: agg.Pool) -> pd.DataFrame:
    """One row per (drafter, suite) at the headline temperature, batch size and depth: its training point
    and its pooled τ / speedup; `curve` names its run (the label, numbered when a label has several
    runs). Only runs with two or more drafters make a curve."""
    sel = agg.at_headline_depth(df[(df["temperature"] == head.temperature) & (df["batch_size"] == head.batch_size)
                                   & df["drafter_train_seconds"].notna() & df["drafter_run"].notna()], head)
    if sel.empty:
        return pd.DataFrame()
    points = sel.groupby("drafter_run")["drafter_path"].nunique()
    sel = sel[sel["drafter_run"].isin(points[points > 1].index)]
    if sel.empty:
        return pd.DataFrame()
    frame = agg.grouped(sel, [*CURVE_COLUMNS, "suite"], pool)
    frame["minutes"] = frame["drafter_train_seconds"] / 60
    names = {}
    for label, runs in frame.groupby("label"):
        ordered = sorted(runs["drafter_run"].unique())
        names.update({(label, r): label if len(ordered) == 1 else f"{label} #{i + 1}" for i, r in enumerate(ordered)})
    frame["curve"] = [names[(lbl, run)] for lbl, run in zip(frame["label"], frame["drafter_run"])]
    return frame.sort_values(["curve", "suite", "minutes"], ignore_index=True)


def equal_budget(frame: pd.DataFrame) -> float | None:
    """Minutes of the equal-budget slice: the longest training every curve reached."""
    if frame.empty:
        return None
    return float(frame.groupby("curve")["minutes"].max().min())


def slice_points(frame: pd.DataFrame, minutes: float) -> pd.Series:
    """True on each curve's point nearest the slice (per suite)."""
    nearest = (frame["minutes"] - minutes).abs()
    best = nearest.groupby([frame["curve"], frame["suite"]]).transform("min")
    return nearest == best


def _crossings(x: np.ndarray, d: np.ndarray) -> list[tuple[float, str]]:
    """Where `d` (A − B) changes sign on the grid `x`: (x*, "up" | "down")."""
    out = []
    signs = np.sign(d)
    last = None
    for i, s in enumerate(signs):
        if s == 0:
            continue
        if last is not None and s != signs[last]:
            x0, x1, d0, d1 = x[last], x[i], d[last], d[i]
            out.append((float(x0 + (x1 - x0) * d0 / (d0 - d1)), "up" if s > 0 else "down"))
        last = i
    return out


def crossing_sentences(frame: pd.DataFrame, metric: str = "tau", symbol: str = "τ") -> list[str]:
    """One sentence per (pair, suite): where the focus method's `metric` passes another's, in training
    minutes and its own tokens seen, or that it does not within the range measured. Every pair when the
    focus method is absent."""
    if frame.empty:
        return []
    curves = sorted(frame["curve"].unique())
    focus = [c for c in curves if frame.loc[frame["curve"] == c, "method"].iloc[0] == FOCUS]
    pairs = [(a, b) for a in focus for b in curves if b != a] if focus else \
        [(a, b) for i, a in enumerate(curves) for b in curves[i + 1:]]
    out = []
    for suite in sorted(frame["suite"].unique()):
        on = frame[frame["suite"] == suite]
        for a, b in pairs:
            pa, pb = (on[on["curve"] == c].dropna(subset=[metric]).sort_values("minutes") for c in (a, b))
            if len(pa) < 2 or len(pb) < 2:
                continue
            lo, hi = max(pa["minutes"].min(), pb["minutes"].min()), min(pa["minutes"].max(), pb["minutes"].max())
            if lo >= hi:
                out.append(f"{suite}: {a} and {b} were measured over training times that do not overlap.")
                continue
            x = np.unique(np.concatenate([pa["minutes"], pb["minutes"], [lo, hi]]))
            x = x[(x >= lo) & (x <= hi)]
            ya, yb = (np.interp(x, p["minutes"], p[metric].astype(float)) for p in (pa, pb))
            raw = ya - yb
            d = np.where(np.abs(raw) < LEVEL, 0.0, raw)
            tokens = pa.dropna(subset=["drafter_tokens_seen"])

            def at(m: float) -> str:
                if len(tokens) < 2:
                    return f"~{m:.1f} min"
                return f"~{m:.1f} min / ~{np.interp(m, tokens['minutes'], tokens['drafter_tokens_seen']):,.0f} tokens"

            events = _crossings(x, d)
            if not events:
                where = f"from {lo:.1f} to {hi:.1f} min"
                if not d.any():
                    out.append(f"{suite}: {a}'s {symbol} is level with {b}'s (within {LEVEL}) at every training time "
                               f"measured ({where}).")
                elif (d > 0).all():
                    out.append(f"{suite}: {a}'s {symbol} is above {b}'s at every training time measured ({where}).")
                elif (d >= 0).all() and (d > 0).any():
                    out.append(f"{suite}: {a}'s {symbol} is level with or above {b}'s at every training time measured "
                               f"({where}).")
                else:
                    out.append(f"{suite}: {a}'s {symbol} does not pass {b}'s within the budget measured (up to "
                               f"{at(hi)}; {raw[-1]:+.2f} at the end).")
                continue
            parts = [f"{'passes' if kind == 'up' else 'falls back below'} {b}'s at {at(m)}" for m, kind in events]
            out.append(f"{suite}: {a}'s {symbol} " + ", then ".join(parts) + f" ({raw[-1]:+.2f} at {hi:.1f} min).")
    return out
