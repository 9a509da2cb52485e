"""The report's "latency per step vs roofline" section, from `specbench profile` files (issue 20).

`specbench profile` writes one JSON per (target, regime, device, dtype, context) into
`<results>/profile/`. This section draws, per target and hardware, the latency of one target forward
against q for each batch size beside the roofline it is measured against (eager and compiled together
where both exist) and tabulates the points, so a reader sees at once whether a step is launch-bound,
memory-bound or compute-bound. Without profile files the section is left out.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from specbench.report import figures
from specbench.report.sections import Fig, Heading, Note, Section
from specbench.report.tables import Cell, Table, missing, num, slug

POINT_FIELDS = ("batch", "q", "status", "reason", "latency_ms", "host_ms", "memory_roofline_ms", "compute_roofline_ms",
                "roofline_ms", "latency_over_memory_roofline", "latency_over_roofline")
GROUP = ["target", "hardware", "dtype", "context"]


def load_profiles(results_dir: str | Path) -> tuple[list[dict], list[str]]:
    """(profiles, names of files that could not be read) under `<results_dir>/profile/`."""
    profiles, unreadable = [], []
    for path in sorted((Path(results_dir) / "profile").glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            unreadable.append(path.name)
            continue
        if isinstance(data, dict) and data.get("kind") == "profile":
            profiles.append({**data, "file": path.name})
    return profiles, unreadable


def points_frame(profiles: list[dict]) -> pd.DataFrame:
    """One row per grid point of every profile, with the profile's identity columns."""
    rows = []
    for p in profiles:
        ident = {"target": p["target"]["name"], "hardware": p["hardware"]["name"], "dtype": p["dtype"],
                 "context": p["context"], "regime": p["regime"], "bandwidth_used": p["hardware"]["bandwidth_used"],
                 "bandwidth_GBps": (p["hardware"]["bandwidth_datasheet"] or p["hardware"]["bandwidth_measured"]) / 1e9,
                 "created": p.get("provenance", {}).get("created"), "file": p["file"]}
        rows += [{**ident, **{k: point.get(k) for k in POINT_FIELDS}} for point in p["points"]]
    return pd.DataFrame(rows)


def _table(key: tuple, g: pd.DataFrame) -> Table:
    regimes = [r for r in ("eager", "compiled") if r in set(g["regime"])]
    rows = []
    for (batch, q), cell in g.groupby(["batch", "q"], sort=True):
        by_regime = {r.regime: r for r in cell.itertuples()}
        first = next(iter(by_regime.values()))
        cells = [Cell(str(batch)), Cell(str(q)), Cell(num(first.memory_roofline_ms, 3)), Cell(num(first.roofline_ms, 3))]
        for regime in regimes:
            r = by_regime.get(regime)
            if r is None or r.status != "ok":
                cells += [Cell("—", f"skipped: {r.reason}" if r is not None else None, muted=True)]
                cells += [Cell("—", muted=True)] * 2
            else:
                cells += [Cell(num(r.latency_ms, 3)),
                          Cell("—", "not recorded", muted=True) if missing(r.host_ms) else Cell(num(r.host_ms, 3)),
                          Cell(f"{num(r.latency_over_roofline)}×")]
        rows.append(cells)
    target, hardware, dtype, context = key
    return Table(slug("roofline", target, hardware, dtype, context), f"{target} on {hardware} ({dtype}, context "
                 f"{context}): one forward vs the roofline", ["batch", "q", "memory roofline ms", "roofline ms"] +
                 [c for r in regimes for c in (f"{r} ms", f"{r} host ms", f"{r} × roofline")], rows, g,
                 "Median ms of one target forward of q new tokens per row over a cache of `context` tokens; host ms: "
                 "until the call returned, before the device sync (on a GPU, host work the device waits for; on a "
                 "CPU, the whole call). Memory roofline = (weight + KV-cache bytes) ÷ bandwidth; roofline = the "
                 "larger of it and FLOPs ÷ peak.")


def roofline_section(results_dir: str | Path) -> Section | None:
    profiles, unreadable = load_profiles(results_dir)
    if not profiles:
        return None
    frame = points_frame(profiles).drop_duplicates(GROUP + ["regime", "batch", "q"], keep="last")
    items = [Note(f"Unreadable profile files left out: {', '.join(unreadable)}.", "warn")] if unreadable else []
    groups = list(frame.groupby(GROUP, sort=True))
    for key, g in groups:
        if len(groups) > 1:
            items.append(Heading(f"{key[0]} · {key[1]} · {key[2]} · context {key[3]}"))
        bandwidth = g.iloc[0]
        items.append(_table(key, g))
        png = figures.latency_vs_roofline(g, f"{key[0]} on {key[1]}: latency per forward vs roofline")
        if png:
            items.append(Fig(png, f"{key[0]} latency per forward vs roofline",
                             f"Solid: eager; dashed: compiled; dotted: roofline. Bandwidth "
                             f"{bandwidth.bandwidth_GBps:.0f} GB/s ({bandwidth.bandwidth_used})."))
    return Section("roofline", "Latency per step vs roofline", "One target forward as a speculative step pays it "
                   "(`specbench profile`): near the roofline a step is bound by the hardware, far above it by launch "
                   "and Python overhead, which no drafter removes.", items)
