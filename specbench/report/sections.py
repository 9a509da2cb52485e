"""The report's sections (issue 8), in reading order, built from the frames of aggregate.py.

Every section states which slice of the grid it shows (temperature, batch size, depth) and whether a
speedup is decode-only or end-to-end, because the anchors' users most often trip over exactly that
(research/harness_anchors.md §4.2–4.3). Where a section has no data it says what to run to fill it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from specbench.report import aggregate as agg
from specbench.report import curves, figures
from specbench.report.tables import Cell, Table, count, num, pct, slug, speedup_cell

SPEEDUP_NOTE = ("Speedup = AR time per output token ÷ method time per output token, AR run through the same "
                "decode loop and interleaved per batch (DESIGN.md §4); brackets: 95% bootstrap CI over timed "
                "batches. τ = committed decode tokens ÷ verification forwards, token-weighted (AR = 1.00).")
AR_ROW_NOTE = ("The ar row measures AR against itself: its speedup shows the measurement noise (ideal 1.00×).")
UNFAITHFUL_MARK = " ⚠"
NOISE_TOLERANCE = 0.10  # |AR-vs-AR speedup − 1| above which the page warns about timing noise


@dataclass
class Fig:
    png_b64: str
    alt: str
    caption: str = ""
    kind: str = "figure"


@dataclass
class Note:
    text: str
    level: str = "info"  # info | warn
    kind: str = "note"


@dataclass
class Heading:
    text: str
    kind: str = "heading"


@dataclass
class Section:
    id: str
    title: str
    intro: str = ""
    items: list = field(default_factory=list)


def _order(labels) -> list[str]:
    return sorted(set(labels), key=lambda label: (label != "ar", label))


def row_label(label: str, depth, faithful=None) -> str:
    text = label if depth is None or depth != depth else f"{label} · d={int(depth)}"
    return text + (UNFAITHFUL_MARK if faithful is False else "")


def _with_row_labels(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return frame.assign(row_label=[])
    return frame.assign(row_label=[row_label(lbl, d, f) for lbl, d, f
                                   in zip(frame["label"], frame["depth"], frame.get("faithful", [None] * len(frame)))])


def _csv(frame: pd.DataFrame, target: str) -> pd.DataFrame:
    """The CSV view: scalar columns only, target first."""
    drop = [c for c in ("tau_histogram", "per_position_acceptance", "latency_ms", "run_ids") if c in frame]
    out = frame.drop(columns=drop)
    out.insert(0, "target", target)
    return out


def _rows_in_order(frame: pd.DataFrame) -> list[tuple]:
    keys = frame[["label", "depth_key"]].drop_duplicates()
    return sorted(((r.label, r.depth_key) for r in keys.itertuples()), key=lambda k: (k[0] != "ar", k[0], k[1]))


def _lookup(frame: pd.DataFrame, **eq) -> pd.Series | None:
    sel = frame
    for key, value in eq.items():
        sel = sel[sel[key] == value]
    return None if sel.empty else sel.iloc[0]


def _first(frame: pd.DataFrame, label: str, depth_key: int) -> pd.Series:
    return frame[(frame["label"] == label) & (frame["depth_key"] == depth_key)].iloc[0]


# -- sections ------------------------------------------------------------------------------------------------
def main_tables(target: str, df: pd.DataFrame, head: agg.Headline, pool: agg.Pool) -> list:
    frame = _with_row_labels(agg.main_frame(df, head, pool))
    if frame.empty:
        return [Note(f"No runs at batch size {head.batch_size}.")]
    suites = sorted(frame["suite"].unique())
    temps = sorted(frame["temperature"].unique())
    mean = len(suites) > 1
    items = []
    for kind in ("decode", "e2e"):
        rows = []
        for t in temps:
            sub = frame[frame["temperature"] == t]
            for label, depth_key in _rows_in_order(sub):
                first = _first(sub, label, depth_key)
                cells = [Cell(f"{t:g}"), Cell(first["row_label"])]
                taus, speeds = [], []
                for suite in suites:
                    r = _lookup(sub, label=label, depth_key=depth_key, suite=suite)
                    if r is None:
                        cells += [Cell("—", muted=True)] * 2
                        continue
                    taus.append(r["tau"])
                    speeds.append(r[f"speedup_{kind}"])
                    cells += [Cell(num(r["tau"])), speedup_cell(r[f"speedup_{kind}"],
                                                                [r[f"speedup_{kind}_lo"], r[f"speedup_{kind}_hi"]])]
                if mean:
                    ok = [x for x in taus if x is not None]
                    ok_s = [x for x in speeds if x is not None and x == x]
                    cells += [Cell(num(sum(ok) / len(ok)) if ok else "—"),
                              speedup_cell(sum(ok_s) / len(ok_s) if ok_s else None, None)]
                rows.append(cells)
        columns = ["T", "method"] + ["τ", f"speedup ({'decode-only' if kind == 'decode' else 'end-to-end'})"] * (
            len(suites) + mean)
        groups = [("", 2)] + [(s, 2) for s in suites] + ([("mean over suites", 2)] if mean else [])
        title = (f"{target}: τ and decode-only speedup (batch size {head.batch_size})" if kind == "decode"
                 else f"{target}: τ and end-to-end speedup, prefill included (batch size {head.batch_size})")
        caption = (f"Methods at their default depth; seeds pooled. "
                   f"{'Decode-only: prefill excluded, as FlexDraft and DFlash report.' if kind == 'decode' else 'End-to-end: prefill + decode.'}")
        table = Table(slug("main", target, kind), title, columns, rows, _csv(frame, target), caption, groups,
                      [AR_ROW_NOTE] if "ar" in set(frame["label"]) and kind == "decode" else [])
        if kind == "e2e":
            table.collapsed = "End-to-end speedup (prefill included)"
        items.append(table)
    return noise_warnings(frame) + items


def noise_warnings(frame: pd.DataFrame) -> list:
    """AR against itself should give 1.00×; where it is far off, the machine's timing noise is that large."""
    out = []
    for r in frame[frame["label"] == "ar"].itertuples():
        off = abs(r.speedup_decode - 1) if r.speedup_decode == r.speedup_decode and r.speedup_decode else 0
        if off > NOISE_TOLERANCE:
            out.append(Note(f"The ar row ({r.suite}, T={r.temperature:g}) measures AR against itself at "
                            f"{r.speedup_decode:.2f}× instead of 1.00×: timing noise on this machine was about "
                            f"{100 * off:.0f}% (other processes on the cores, too few prompts). Speedups closer to "
                            f"1.00× than that are not meaningful; re-run on an idle machine or with more prompts.",
                            "warn"))
    return out


def batch_items(target, df, head, pool, colors) -> list:
    frame = _with_row_labels(agg.batch_frame(df, head, pool))
    sizes = sorted(frame["batch_size"].unique()) if not frame.empty else []
    if len(sizes) < 2:
        return [Note(f"Only batch size {sizes[0] if sizes else '—'} at T={head.temperature:g}; "
                     f"run `specbench sweep batch-size 1 4 16 --method M` to fill this section.")]
    rows = []
    for label, depth_key in _rows_in_order(frame):
        first = _first(frame, label, depth_key)
        cells = [Cell(first["row_label"])]
        for size in sizes:
            r = _lookup(frame, label=label, depth_key=depth_key, batch_size=size)
            cells += ([Cell("—", muted=True)] * 2 if r is None else
                      [speedup_cell(r["speedup_decode"], [r["speedup_decode_lo"], r["speedup_decode_hi"]]),
                       Cell(num(r["tau"]))])
        rows.append(cells)
    suite_sets = frame.groupby("batch_size")["suites"].first().unique()
    footnotes = [f"Suites pooled: {', '.join(sorted(set(','.join(frame['suites']).split(','))))}."]
    if len(suite_sets) > 1:
        footnotes.append("⚠ Batch sizes were run on different suites; compare columns with care.")
    table = Table(slug("batch", target), f"{target}: speedup vs batch size (T={head.temperature:g})",
                  ["method"] + ["speedup (decode)", "τ"] * len(sizes), rows, _csv(frame, target),
                  "Each method mode is its own row; suites and seeds pooled. Throughput (tokens/s of both arms) "
                  "is in the CSV.", [("", 1)] + [(f"batch {s}", 2) for s in sizes], footnotes)
    items = [table]
    png = figures.speedup_vs_batch(frame, colors, target)
    if png:
        items.append(Fig(png, f"{target} speedup vs batch size",
                         "Decode-only speedup with 95% CI; the dashed line is AR. Speculation pays above it."))
    return items


def temperature_items(target, df, head, pool) -> list:
    frame = _with_row_labels(agg.temperature_frame(df, head, pool))
    temps = sorted(frame["temperature"].unique()) if not frame.empty else []
    if len(temps) < 2:
        return [Note(f"Only T={temps[0] if temps else '—'} at batch size {head.batch_size}; "
                     f"run `specbench sweep temperature 0 0.7 1 --method M` to fill this section.")]
    rows = []
    for label, depth_key in _rows_in_order(frame):
        cells = [Cell(_first(frame, label, depth_key)["row_label"])]
        for t in temps:
            r = _lookup(frame, label=label, depth_key=depth_key, temperature=t)
            cells += ([Cell("—", muted=True)] * 2 if r is None else
                      [Cell(num(r["tau"])), speedup_cell(r["speedup_decode"],
                                                         [r["speedup_decode_lo"], r["speedup_decode_hi"]])])
        rows.append(cells)
    return [Table(slug("temperature", target), f"{target}: τ and speedup vs temperature "
                         f"(batch size {head.batch_size})", ["method"] + ["τ", "speedup (decode)"] * len(temps),
                         rows, _csv(frame, target), "Suites and seeds pooled. At T > 0 acceptance uses rejection "
                         "sampling (lossless in distribution, DESIGN.md §5).",
                         [("", 1)] + [(f"T = {t:g}", 2) for t in temps])]


def depth_items(target, df, head, pool, colors) -> list:
    frame = agg.depth_frame(df, head, pool)
    if frame.empty:
        return [Note(f"No method was run at several depths (T={head.temperature:g}, batch {head.batch_size}); "
                     f"run `specbench sweep depth 2 4 6 --method M` to fill this section.")]
    frame = frame.assign(row_label=frame["label"])
    rows = [[Cell(r.label), Cell(str(int(r.depth))), Cell(num(r.tau)),
             speedup_cell(r.speedup_decode, [r.speedup_decode_lo, r.speedup_decode_hi])]
            for r in frame.sort_values(["label", "depth_key"]).itertuples()]
    items = [Table(slug("depth", target), f"{target}: τ and speedup vs draft depth", ["method", "depth", "τ",
                          "speedup (decode)"], rows, _csv(frame, target),
                          f"T={head.temperature:g}, batch size {head.batch_size}; suites and seeds pooled.")]
    png = figures.depth_curves(frame, colors, target)
    if png:
        items.append(Fig(png, f"{target} tau and speedup vs depth", "Deeper drafts raise τ until the longer "
                         "verify forward eats the gain."))
    return items


def latency_items(target, df, head, pool) -> list:
    frame = _with_row_labels(agg.latency_frame(df, head, pool))
    if frame.empty or frame["step_ms"].isna().all():
        return [Note("No per-step spans were recorded.")]
    rows = [[Cell(r.row_label), Cell(str(r.batch_size)), Cell(num(r.draft_ms)), Cell(num(r.verify_ms)),
             Cell(num(r.other_ms)), Cell(num(r.step_ms)), Cell(num(r.ar_step_ms)), Cell(num(r.tau)),
             Cell(f"{num(r.predicted_speedup)}×" if r.predicted_speedup else "—"),
             speedup_cell(r.speedup_decode, None)]
            for r in frame.sort_values(["batch_size", "label"], key=lambda s: s if s.name != "label" else
                                       s.map(lambda x: (x != "ar", x))).itertuples()]
    table = Table(slug("latency", target), f"{target}: latency per decode step (T={head.temperature:g})",
                  ["method", "batch", "draft ms", "verify ms", "other ms", "step ms", "AR step ms", "τ",
                   "predicted speedup", "measured speedup"], rows, _csv(frame, target),
                  "Medians over all decode steps. other = acceptance, cache ops, bookkeeping. Predicted speedup = "
                  "τ × AR step ÷ method step (cost model); a gap to the measured one lies outside the step "
                  "(prefill, rows that finish early). Parallel methods count their in-forward draft as verify.")
    items = [table]
    png = figures.latency_stacked(frame, agg.ar_latency_frame(df, head, pool), target)
    if png:
        items.append(Fig(png, f"{target} latency per step, stacked draft verify other",
                         "Bar = median draft + median verify + median other (ms per step). AR: the baseline arm "
                         "of all runs in the panel, pooled."))
    return items


def acceptance_items(target, df, head, pool, colors) -> list:
    frame = _with_row_labels(agg.acceptance_frame(df, head, pool))
    drafting = frame[[bool(h) and max(int(k) for k in h) > 1 for h in frame["tau_histogram"]]] if not frame.empty \
        else frame
    if drafting.empty:
        return [Note("Every method here commits one token per step (τ = 1, e.g. ar): no histogram to draw.")]
    width = max(len(p) for p in drafting["per_position_acceptance"])
    shown = min(width, 8)
    rows = []
    for r in drafting.itertuples():
        total = sum(r.tau_histogram.values())
        hist = " ".join(f"{k}:{100 * v / total:.0f}%" for k, v in sorted(r.tau_histogram.items(), key=lambda kv: int(kv[0])))
        probs = list(r.per_position_acceptance) + [None] * (shown - len(r.per_position_acceptance))
        rows.append([Cell(r.row_label), Cell(num(r.tau))] + [Cell(pct(p)) for p in probs[:shown]] + [Cell(hist)])
    data = _csv(drafting, target).assign(
        tau_histogram=[str(h) for h in drafting["tau_histogram"]],
        per_position_acceptance=[str(p) for p in drafting["per_position_acceptance"]])
    items = [Table(slug("acceptance", target), f"{target}: acceptance (T={head.temperature:g}, "
                          f"batch size {head.batch_size})", ["method", "τ"] + [f"P(pos {i})" for i in
                          range(1, shown + 1)] + ["steps committing L tokens"], rows, data,
                          "P(pos i) = P(draft position i accepted | positions before it accepted), over the "
                          "steps that drafted at least i tokens.") ]
    unconditioned = [r.row_label for r in drafting.itertuples() if r.steps_without_draft_lengths]
    if unconditioned:
        items.append(Note(f"{', '.join(unconditioned)}: recorded without draft lengths (older runs), so P(pos i) "
                          "also counts steps that drafted fewer than i tokens as rejections there."))
    for png, alt in ((figures.tau_histograms(drafting, colors, target), "tau histograms"),
                     (figures.per_position_acceptance(drafting, colors, target), "per-position acceptance")):
        if png:
            items.append(Fig(png, f"{target} {alt}"))
    return items


def quality_items(target, df, pool) -> list:
    """Rows (method, T) × suite columns; batch sizes pooled on the page, separate in the CSV."""
    frame = _with_row_labels(agg.quality_frame(df, pool))
    page = _with_row_labels(agg.grouped(df, ["label", "depth_key", "suite", "temperature"], pool))
    suites = sorted(page["suite"].unique())
    rows = []
    for (label, depth_key, t), g in sorted(page.groupby(["label", "depth_key", "temperature"]),
                                           key=lambda kv: (kv[0][0] != "ar", kv[0])):
        greedy = t == 0
        cells = [Cell(g["row_label"].iloc[0]), Cell(f"{t:g}")]
        for suite in suites:
            r = _lookup(g, suite=suite)
            if r is None:
                cells += [Cell("—", muted=True)] * 4
                continue
            exact = pct(r["exact_match_rate"]) if greedy else "n/a (T>0)"
            div = (f"{r['divergences']} ({r['near_ties']} near-tie)" if r["divergences"] else "0") if greedy else "—"
            cut = r["cut_at_max_tokens"]
            cells += [Cell(exact, muted=not greedy), Cell(div, muted=not greedy),
                      Cell(pct(r["accuracy"]), f"AR {pct(r['baseline_accuracy'])}"), Cell(pct(cut))]
        rows.append(cells)
    return [Table(slug("quality", target), f"{target}: losslessness and quality", ["method", "T"] +
                  ["exact match vs AR", "divergences", "accuracy", "cut at max tokens"] * len(suites), rows,
                  _csv(frame, target),
                  "At T = 0 every method must reproduce the AR tokens exactly (fp32 CPU); a divergence counts as a "
                  "near-tie when, recomputed in float32, the method's token is the target's second choice and the "
                  "top-2 logits differ by less than the run dtype's tolerance (fp32 1e-4, bf16 2e-2, fp16 5e-3 "
                  "relative). At T > 0 the arms draw different samples, so no exact-match claim is made (n/a); "
                  "losslessness there is the distribution test every method passes in the test suite "
                  "(specbench/testing/lossless.py, check_distribution: 5-token histograms against the exact target "
                  "distribution, DESIGN.md §5). Accuracy: the method arm, with the AR arm's below it; cut at max tokens: answers "
                  "that hit --max-new-tokens (truncated answers score low). Batch sizes pooled here, separate in "
                  "the CSV.", [("", 2)] + [(s, 4) for s in suites])]


def cost_items(target, df, head, pool) -> list:
    frame = _with_row_labels(agg.cost_frame(df, head, pool))
    extra = [c for c in frame.columns if c not in {"label", "depth_key", "depth", "drafter_parameters", "drafter_training",
             "tokens_per_target_forward", "tau", "target_forwards_per_100_tokens",
             "target_tokens_per_committed_token", "faithful", "notes", "row_label"}]
    rows = []
    for label, depth_key in _rows_in_order(frame):
        r = _first(frame, label, depth_key)
        rows.append([Cell(r["row_label"]), Cell(count(r["drafter_parameters"])), Cell(r["drafter_training"]),
                     Cell(num(r["tokens_per_target_forward"], 0)), Cell(num(r["tau"])),
                     Cell(num(r["target_forwards_per_100_tokens"], 1)),
                     Cell(num(r["target_tokens_per_committed_token"]))] + [Cell(num(r[c])) for c in extra])
    return [Table(slug("cost", target), f"{target}: cost", ["method", "drafter parameters", "drafter training",
                         "tokens per target forward", f"τ (T={head.temperature:g})", "target forwards / 100 tokens",
                         "target tokens / committed token"] + extra, rows, _csv(frame, target),
                         "From each method's own description in the manifest. tokens per target forward = verified "
                         "+ mask tokens per forward; ÷ τ gives the target work per output token.")]


def learning_curve_items(target, df, head, pool, colors) -> list:
    """τ, decode speedup and held-out accuracy against training time and tokens, one line per training
    run, the equal-budget slice marked, crossings in words (curves.py)."""
    frame = curves.curve_frame(df, head, pool)
    if frame.empty:
        return [Note("No learning curves: keep snapshots with `specbench train --save-at 2.5m,5m,10m,20m`, then run "
                     "one cell per snapshot with `specbench sweep snapshot min-002.5 min-005.0 min-010.0 min-020.0 "
                     "final --method M --drafter auto` (or `--config benchmarks/learning_curves_cpu.yaml`).")]
    minutes = curves.equal_budget(frame)
    items = [Note(f"Equal-budget slice: {minutes:.1f} min of training, the longest time every curve reached "
                  f"(T={head.temperature:g}, batch size {head.batch_size}). Crossings are read on the time axis, "
                  "interpolated between measured points.")]
    for metric, symbol in (("tau", "τ"), ("speedup_decode", "decode speedup")):
        sentences = curves.crossing_sentences(frame, metric, symbol)
        if sentences:
            items.append(Note(" ".join(sentences)))
    for suite in sorted(frame["suite"].unique()):
        png = figures.learning_curves(frame[frame["suite"] == suite], colors, f"{target} · {suite}: learning curves",
                                      minutes, (("tau", "τ (tokens / verify forward)"),
                                                ("speedup_decode", "speedup vs AR (decode-only)")))
        items.append(Fig(png, f"{target} {suite} learning curves"))
    held = frame.drop_duplicates("drafter_path").assign(suite="held-out")
    png = figures.learning_curves(held, colors, f"{target}: held-out top-1 accuracy of the drafters", minutes,
                                  (("drafter_eval_acc", "held-out accuracy"),))
    items.append(Fig(png, f"{target} held-out accuracy", "Each method's own accuracy (its loss's top-1), "
                     "so levels are comparable within a method, not across methods."))
    suites = sorted(frame["suite"].unique())
    rows = []
    for (curve, path), g in frame.groupby(["curve", "drafter_path"], sort=False):
        first = g.iloc[0]
        cells = [Cell(curve), Cell(str(first["drafter_snapshot"]) if pd.notna(first["drafter_snapshot"]) else "final"),
                 Cell(num(first["drafter_steps"], 0)), Cell(num(first["minutes"], 1)),
                 Cell(count(first["drafter_tokens_seen"])), Cell(num(first["drafter_eval_acc"]))]
        for suite in suites:
            r = _lookup(g, suite=suite)
            cells += [Cell("—", muted=True)] * 2 if r is None else [
                Cell(num(r["tau"])), speedup_cell(r["speedup_decode"], [r["speedup_decode_lo"], r["speedup_decode_hi"]])]
        rows.append(cells)
    data = frame.drop(columns=["run_ids", "tau_histogram", "per_position_acceptance", "latency_ms"], errors="ignore")
    items.append(Table(slug("curves", target), f"{target}: τ and decode speedup along each training run",
                       ["run", "snapshot", "step", "training min", "tokens seen", "held-out acc"]
                       + ["τ", "speedup (decode-only)"] * len(suites), rows, data.assign(target=target),
                       "One row per drafter of a training run (`--save-at` snapshots, then the final drafter); seeds "
                       "pooled. Tokens: non-pad tokens through the drafter so far.",
                       [("", 6)] + [(s, 2) for s in suites]))
    return items


def method_notes(df: pd.DataFrame) -> tuple[list, list[str]]:
    """(notes for the section, one-line alerts for the page header): every method marked not faithful
    to its paper gets a clear warning; any other notes a method attaches are shown as they are."""
    items, alerts = [], []
    for (method, faithful, notes), rows in df.groupby(["method", df["faithful"].astype(str), "notes"], sort=True):
        if faithful != "False" and not notes:
            continue
        labels = ", ".join(sorted(rows["label"].unique()))
        if faithful == "False":
            alerts.append(f"⚠ {method} is marked NOT faithful to its paper; its numbers measure this "
                          f"implementation, not the published method.")
            items.append(Note(f"{labels}{UNFAITHFUL_MARK} — not faithful to the paper: {notes or 'no reason given'}. "
                              f"Rows marked {UNFAITHFUL_MARK.strip()} in the tables measure this implementation.", "warn"))
        else:
            items.append(Note(f"{labels}: {notes}"))
    return items, alerts


def runs_table(df: pd.DataFrame) -> Table:
    rows = [[Cell(r.run_id), Cell(r.label), Cell(r.suite), Cell(f"{r.temperature:g}"), Cell(str(r.batch_size)),
             Cell("—" if r.depth_key == agg.NO_DEPTH else str(r.depth_key)), Cell(str(r.seed)),
             Cell(num(r.n_prompts, 0) if isinstance(r.n_prompts, (int, float)) else "—"), Cell(num(r.tau)),
             speedup_cell(r.speedup_decode, [r.speedup_decode_lo, r.speedup_decode_hi]),
             speedup_cell(r.speedup_e2e, [r.speedup_e2e_lo, r.speedup_e2e_hi]),
             Cell(num(r.tokens_per_s, 1)), Cell(num(r.baseline_tokens_per_s, 1)), Cell(pct(r.exact_match_rate)),
             Cell(pct(r.accuracy)), Cell(pct(r.baseline_accuracy))] for r in df.itertuples()]
    return Table("runs", "All runs (each run's own summary.json)",
                        ["run", "method", "suite", "T", "batch", "depth", "seed", "prompts", "τ", "speedup (decode)",
                         "speedup (e2e)", "tok/s", "AR tok/s", "exact", "accuracy", "AR accuracy"], rows,
                        df.drop(columns=["extra_cost"]), "One row per run; tables above pool the seeds of a cell.",
                 collapsed=f"All {len(df)} runs, one row each")


PROVENANCE_FIELDS = (("target", "targets"), ("target_fingerprint", "target fingerprints"), ("git_sha", "git commits"),
                     ("device", "devices"), ("hardware", "hardware"), ("threads", "torch threads"),
                     ("dtype", "dtypes"), ("torch", "torch"), ("transformers", "transformers"),
                     ("runtime", "target forward"), ("executor", "executed by"), ("max_new_tokens", "max new tokens"))


def provenance_summary(df: pd.DataFrame) -> list:
    """What the whole page was measured on, up front; a warning where runs differ (harness_anchors §5.8)."""
    rows, data = [], []
    for col, what in PROVENANCE_FIELDS:
        values = sorted({str(v) for v in df[col] if v is not None and v == v})
        rows.append([Cell(what), Cell(", ".join(values) or "—", muted=len(values) > 1)])
        data.append({"field": col, "values": ";".join(values)})
    created = sorted(str(v) for v in df["created"] if v)
    if created:
        rows.append([Cell("created (UTC)"), Cell(f"{created[0]} … {created[-1]}" if len(created) > 1 else created[0])])
    items = [Note(w, "warn") for w in agg.provenance_warnings(df)]
    items.append(Table("provenance", "Provenance of the runs on this page", ["field", "values"], rows,
                       pd.DataFrame(data), "Per-run details at the end of the page and in each manifest.json "
                       "(package versions, argv, chat template hash)."))
    return items


def run_provenance_items(df: pd.DataFrame, incomplete: list, failed_cells: list[dict]) -> list:
    cols = ["run_id", "created", "git_sha", "device", "hardware", "threads", "dtype", "torch", "transformers",
            "runtime", "target_fingerprint", "executor", "load_average"]
    rows = [[Cell(str(getattr(r, c)) if getattr(r, c) is not None and getattr(r, c) == getattr(r, c) else "—")
             for c in cols] for r in df.itertuples()]
    items = [Table("run_provenance", "Where each run came from", ["run", "created (UTC)", "git", "device",
                   "hardware", "threads", "dtype", "torch", "transformers", "target forward", "target fingerprint",
                   "executor", "max load (1 min)"],
                   rows, df[cols], collapsed=f"Provenance of each of the {len(df)} runs")]
    if incomplete:
        rows = [[Cell(r.run_id), Cell(str(r.manifest.get("status"))), Cell(str(r.manifest.get("error") or "—"))]
                for r in incomplete]
        data = pd.DataFrame([{"run_id": r.run_id, "status": r.manifest.get("status"),
                              "error": r.manifest.get("error")} for r in incomplete])
        items.append(Table("incomplete", "Runs left out (not complete)", ["run", "status", "error"], rows, data,
                           "Resume them with `specbench run --resume RUN_ID` or by re-running their sweep."))
    if failed_cells:
        rows = [[Cell(c["run_id"]), Cell(str(c.get("attempts", "—"))), Cell(str(c.get("error")))] for c in failed_cells]
        data = pd.DataFrame([{k: c.get(k) for k in ("run_id", "attempts", "error")} for c in failed_cells])
        items.append(Table("failed_cells", "Sweep cells that failed", ["cell", "attempts", "error"], rows, data,
                           "From the sweep's state file; re-running the sweep retries them."))
    return items


def build_sections(df: pd.DataFrame, pool: agg.Pool, incomplete: list,
                   failed_cells: list[dict] = ()) -> tuple[list[Section], list[str]]:
    """The sections in reading order, and the alerts for the page header."""
    colors = figures.palette(df["label"])
    targets = sorted(df["target"].unique())
    multi = len(targets) > 1
    per_target = {name: Section(sid, title, intro) for sid, name, title, intro in (
        ("main", "main", "Main table: τ and speedup per suite", SPEEDUP_NOTE),
        ("curves", "curves", "Learning curves: τ against training", "Each method's drafters along one training run "
         "(issue 22): a method that learns slowly but ends higher and one that saturates early look the same at "
         "a single budget."),
        ("batch", "batch", "Speedup vs batch size", "Where speculation stops paying: AR gets cheaper per "
         "token as the batch grows, while every draft token is verified for every row."),
        ("temperature", "temperature", "Temperature", ""),
        ("depth", "depth", "τ and speedup vs depth", ""),
        ("latency", "latency", "Latency per step: draft / verify / other", "Time spans of one decode step "
         "(perf_counter on CPU, CUDA events on GPU), split so a slow drafter and a slow verify are told apart."),
        ("acceptance", "acceptance", "τ histograms and per-position acceptance", ""),
        ("quality", "quality", "Losslessness and quality", ""),
        ("cost", "cost", "Cost", ""),
    )}
    for target in targets:
        df_t = df[df["target"] == target]
        head = agg.headline(df_t)
        content = {
            "main": main_tables(target, df_t, head, pool),
            "curves": learning_curve_items(target, df_t, head, pool, colors),
            "batch": batch_items(target, df_t, head, pool, colors),
            "temperature": temperature_items(target, df_t, head, pool),
            "depth": depth_items(target, df_t, head, pool, colors),
            "latency": latency_items(target, df_t, head, pool),
            "acceptance": acceptance_items(target, df_t, head, pool, colors),
            "quality": quality_items(target, df_t, pool),
            "cost": cost_items(target, df_t, head, pool),
        }
        for key, items in content.items():
            if multi:
                per_target[key].items.append(Heading(target))
            per_target[key].items.extend(items)
    notes, alerts = method_notes(df)
    sections = [Section("provenance", "Provenance", "", provenance_summary(df))]
    if notes:
        sections.append(Section("method-notes", "Method notes", "", notes))
    sections += list(per_target.values())
    from specbench.spec_bench_table import spec_bench_table  # issue 13: only when spec_bench runs are present

    if leaderboard := spec_bench_table(df, pool):
        sections.append(Section("spec-bench", "Spec-Bench leaderboard", "", leaderboard))
    sections.append(Section("runs", "All runs and their provenance", "",
                            [runs_table(df)] + run_provenance_items(df, incomplete, list(failed_cells))))
    if failed_cells:
        alerts.append(f"{len(failed_cells)} sweep cell(s) failed and are missing from the tables (see the end of the page).")
    return sections, alerts
