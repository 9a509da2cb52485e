"""From stored runs to the numeric frames behind every report section (pandas).

Runs that differ only in their seed are one measurement: their records are pooled and re-summarised
with `specbench.metrics.summarize`, so a pooled τ stays token-weighted and a pooled speedup stays a
ratio of sums with a bootstrap CI over all timed batches (DESIGN.md §4) — never a mean of means.
A single run is shown with the numbers of its own summary.json.

Each section reads one slice of the grid, chosen per target the way the FlexDraft paper reads its
Table 1: the *headline* temperature (0 if present), batch size (1 if present) and, per method, its
default depth; the batch, temperature and depth sections vary one axis and hold the others there.
Everything is generic over methods: labels come from the method name plus its `method_options`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from specbench.errors import SpecbenchError
from specbench.metrics import latency_stats, summarize
from specbench.results import ResultStore, RunDir

NO_DEPTH = -1  # depth_key of methods without a depth (ar), so groupby never drops them

_METRICS = ("n_prompts", "tau", "speedup_decode", "speedup_e2e", "tokens_per_s", "baseline_tokens_per_s",
            "decode_tokens_per_s", "baseline_decode_tokens_per_s", "exact_match_rate", "accuracy",
            "baseline_accuracy", "timed_units")
#: method-description fields with a fixed place in the report; other numeric ones go to the cost table
_KNOWN_METHOD_FIELDS = {"name", "depth", "options", "drafter_parameters", "tokens_per_target_forward", "faithful",
                        "notes", "deviations", "description", "drafter"}


@dataclass
class LoadedRun:
    run_dir: RunDir
    manifest: dict
    summary: dict | None
    _records: list | None = field(default=None, repr=False)

    @property
    def run_id(self) -> str:
        return self.run_dir.run_id

    @property
    def records(self) -> list[dict]:
        if self._records is None:
            self._records = self.run_dir.load_records()
        return self._records


def _sweep_state(results_dir: str | Path, sweep_id: str) -> dict:
    path = Path(results_dir) / "sweeps" / f"{sweep_id}.json"
    if not path.exists():
        raise SpecbenchError(f"no sweep {sweep_id!r} in {results_dir} (state files live in {results_dir}/sweeps/)")
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SpecbenchError(f"unreadable sweep state {path}: {e}") from None
    if not isinstance(state, dict) or not isinstance(state.get("cells"), list):
        raise SpecbenchError(f"unreadable sweep state {path}: no list of cells")
    return state


def resolve_runs(refs: tuple[str, ...] | list[str], results_dir: str | Path,
                 sweep_ids: tuple[str, ...] | list[str] = ()) -> tuple[list[LoadedRun], list[LoadedRun]]:
    """(complete runs, incomplete runs) named by RUN_DIR arguments and sweeps, or everything in the store."""
    store = ResultStore(results_dir)
    dirs: list[RunDir] = []
    for sweep_id in sweep_ids:
        cells = _sweep_state(results_dir, sweep_id)["cells"]
        dirs += [RunDir(store.root / c["run_id"]) for c in cells
                 if (store.root / c["run_id"] / "manifest.json").exists()]
    dirs += [store.open(ref) for ref in refs]
    if not sweep_ids and not refs:
        dirs = store.runs()
    seen, complete, incomplete = set(), [], []
    for run_dir in dirs:
        if run_dir.path.resolve() in seen:
            continue
        seen.add(run_dir.path.resolve())
        manifest = run_dir.read_manifest()
        summary = run_dir.read_summary()
        run = LoadedRun(run_dir, manifest, summary)
        (complete if manifest.get("status") == "complete" and summary else incomplete).append(run)
    if not complete:
        where = ", ".join([*(f"sweep {s}" for s in sweep_ids), *refs]) or str(results_dir)
        raise SpecbenchError(f"no complete runs in {where} (run `specbench run` or `specbench sweep` first)")
    return complete, incomplete


def failed_sweep_cells(results_dir: str | Path, sweep_ids) -> list[dict]:
    """Cells a sweep recorded as failed: they may have no run directory at all, so only the state knows."""
    return [c for sweep_id in sweep_ids for c in _sweep_state(results_dir, sweep_id)["cells"]
            if c.get("status") == "failed"]


# -- one row per run -------------------------------------------------------------------------------------
def method_label(method: str, options: dict | None) -> str:
    """`flexdraft (mode=parallel)`: modes and other options make separate rows (issue 8)."""
    opts = {k: v for k, v in (options or {}).items() if v is not None and k != "drafter"}
    if not opts:
        return method
    return f"{method} ({', '.join(f'{k}={_short(v)}' for k, v in sorted(opts.items()))})"


def _short(v) -> str:
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def faithfulness(method_desc: dict) -> tuple[bool | None, list[str]]:
    """(faithful flag, notes) from a method description; methods say so via `faithful` / `notes`."""
    faithful = method_desc.get("faithful")
    notes = []
    if isinstance(faithful, dict):
        notes += _as_list(faithful.get("notes"))
        faithful = faithful.get("faithful")
    for key in ("notes", "deviations"):
        notes += _as_list(method_desc.get(key))
    if isinstance(faithful, str):
        notes.insert(0, faithful)
        faithful = False
    return faithful, notes


def _as_list(x) -> list[str]:
    if not x:
        return []
    return [str(v) for v in x] if isinstance(x, (list, tuple)) else [str(x)]


def _max_load(manifest: dict, hardware: dict) -> float | None:
    """The highest 1-minute load seen around the run: the sweep executor's samples, else the run's own
    start and end readings."""
    samples = list((manifest.get("executor") or {}).get("load_average_1m") or [])
    samples += [(hardware.get("load_average") or [None])[0], (manifest.get("load_average_end") or [None])[0]]
    return max((x for x in samples if x is not None), default=None)


def _drafter_training(manifest: dict) -> dict:
    """Steps, wall time, tokens seen and device of the run's drafter, and the training run it belongs to
    (learning curves): from the manifest's `drafter` block, or, for runs recorded before a field existed,
    from the drafter folder if it is still there."""
    from specbench.training.drafter import drafter_provenance

    d = manifest.get("drafter")
    path = (manifest.get("method") or {}).get("drafter")
    if d is None and isinstance(path, str):
        d = drafter_provenance(path)
    d = d or {}
    if "run" not in d and d.get("path"):
        d = {**(drafter_provenance(d["path"]) or {}), **d}
    run = d.get("run")
    if run is None and d.get("path"):
        folder = Path(d["path"])
        run = str(folder.parent.parent if folder.parent.name == "snapshots" else folder)
    return {"drafter_steps": d.get("steps"), "drafter_train_seconds": d.get("train_seconds"),
            "drafter_train_device": d.get("device"), "drafter_eval_acc": d.get("eval_acc"),
            "drafter_tokens_seen": d.get("tokens_seen"), "drafter_snapshot": d.get("snapshot"),
            "drafter_path": d.get("path"), "drafter_run": run}


def runtime_label(target: dict, manifest: dict | None = None) -> str:
    """Which target forward a run measured (issue 20): the harness's direct forward and its product rule,
    or transformers' `model(...)` (manifests before the direct forward say nothing: that one). A compiled
    run says when its method's own passes ran eager (manifests before they were captured) and when graphs
    were compiled inside timed steps (their times include compilation)."""
    regime = "" if target.get("regime") in (None, "eager") else f", {target['regime']}"
    if target.get("regime") == "compiled" and manifest is not None:
        method = manifest.get("method") or {}
        if method.get("drafter_parameters") and "compiled_passes" not in method:
            regime += " (target forward only; the method's own passes eager)"
        if traced := manifest.get("graphs_traced_while_timed"):
            regime += f", {traced} graph(s) compiled while timed"
    if target.get("forward") != "direct":
        return "model(...)" + regime
    rows = target.get("skinny_rows") or 0
    return (f"direct, W·Xᵀ ≤ {rows} rows" if rows else "direct") + regime


def run_row(run: LoadedRun) -> dict:
    m, s = run.manifest, run.summary or {}
    c = m.get("config", {})
    method = m.get("method") or {}
    prov = m.get("provenance") or {}
    hw, versions, git = prov.get("hardware") or {}, prov.get("versions") or {}, prov.get("git") or {}
    faithful, notes = faithfulness(method)
    depth = method.get("depth", s.get("depth"))
    row = {
        "run_id": run.run_id, "status": m.get("status"),
        "target": (m.get("target") or {}).get("name") or c.get("target"),
        "target_fingerprint": (m.get("target") or {}).get("fingerprint"),
        "method": c.get("method"), "label": method_label(c.get("method", "?"), c.get("method_options")),
        "method_options": json.dumps(c.get("method_options") or {}, sort_keys=True),
        "suite": c.get("suite"), "temperature": float(c.get("temperature", 0.0)),
        "batch_size": int(c.get("batch_size", 1)), "depth": depth,
        "depth_key": NO_DEPTH if depth is None else int(depth), "config_depth": c.get("depth"),
        "seed": c.get("seed"), "limit": c.get("limit"),
        "max_new_tokens": (m.get("resolved") or {}).get("max_new_tokens", c.get("max_new_tokens")),
        "device": hw.get("device") or (m.get("target") or {}).get("device"),
        "dtype": (m.get("target") or {}).get("dtype") or c.get("dtype"),
        "hardware": hw.get("gpu") or hw.get("cpu"), "threads": hw.get("torch_threads"),
        "git_sha": (git.get("sha") or "")[:10] + ("+dirty" if git.get("dirty") else ""),
        "torch": versions.get("torch"), "transformers": versions.get("transformers"),
        "runtime": runtime_label(m.get("target") or {}, m),
        "created": prov.get("created"), "executor": (m.get("executor") or {}).get("name", "specbench run"),
        "load_average": _max_load(m, hw),
        "cpu_count": (m.get("executor") or {}).get("cpu_count") or hw.get("cpu_count"),
        "drafter_parameters": method.get("drafter_parameters"),
        **_drafter_training(m),
        "tokens_per_target_forward": method.get("tokens_per_target_forward"),
        "faithful": faithful, "notes": " · ".join(notes),
        "extra_cost": json.dumps({k: v for k, v in method.items() if k not in _KNOWN_METHOD_FIELDS
                                  and isinstance(v, (int, float)) and not isinstance(v, bool)}),
    }
    for key in _METRICS:
        row[key] = s.get(key)
    for key in ("speedup_decode", "speedup_e2e"):
        ci = s.get(f"{key}_ci95") or [None, None]
        row[f"{key}_lo"], row[f"{key}_hi"] = ci
    row["divergences"] = len(s.get("divergences") or [])
    row["near_ties"] = sum(bool(d.get("near_tie")) for d in s.get("divergences") or [])
    return row


def runs_frame(runs: list[LoadedRun]) -> pd.DataFrame:
    return pd.DataFrame([run_row(r) for r in runs]).sort_values(
        ["target", "label", "suite", "temperature", "batch_size", "depth_key", "seed"], kind="stable",
        ignore_index=True)


# -- pooling -------------------------------------------------------------------------------------------------
class Pool:
    """Summaries of sets of runs, cached: one run → its summary.json; several → pooled records."""

    def __init__(self, runs: list[LoadedRun]):
        self.runs = {r.run_id: r for r in runs}
        self._cache: dict[tuple, dict] = {}

    def stats(self, run_ids) -> dict:
        key = tuple(sorted(run_ids))
        if key not in self._cache:
            if len(key) == 1:
                self._cache[key] = self.runs[key[0]].summary or {}
            else:
                records = [{**rec, "batch_id": f"{rid}/{rec.get('batch_id', rec['prompt_id'])}"}
                           for rid in key for rec in self.runs[rid].records]
                self._cache[key] = summarize(records)
        return self._cache[key]


    def share_cut(self, run_ids) -> float | None:
        """Share of the method arm's turns that stopped at max_new_tokens: low accuracy may just be truncation."""
        stops = [t.get("stopped_by") for rid in run_ids for rec in self.runs[rid].records if rec["arm"] == "method"
                 for t in rec["turns"]]
        return sum(s == "length" for s in stops) / len(stops) if stops else None

    def latency(self, run_ids, arm: str) -> dict:
        """Median spans of one arm over the steps of several runs (no bootstrap: cheap)."""
        return latency_stats([rec for rid in run_ids for rec in self.runs[rid].records], arm)


def one_per_seed(df: pd.DataFrame) -> pd.DataFrame:
    """Runs of one cell but another limit or drafter: keep the most-trained drafter (a learning-curve sweep
    has one run per snapshot), then the largest and newest per seed, so prompts never repeat."""
    return (df.sort_values(["drafter_train_seconds", "n_prompts", "created"], na_position="first", kind="stable")
              .drop_duplicates(["target", "label", "suite", "temperature", "batch_size", "depth_key", "seed"],
                               keep="last"))


def grouped(df: pd.DataFrame, by: list[str], pool: Pool) -> pd.DataFrame:
    """One row per group of `by`: pooled metrics of its runs (one per seed and suite)."""
    rows = []
    if df.empty:
        return pd.DataFrame(columns=by)
    for keys, group in df.groupby(by, sort=True, dropna=False):
        group = one_per_seed(group)
        s = pool.stats(group["run_id"])
        row = dict(zip(by, keys if isinstance(keys, tuple) else (keys,)))
        row.update({"n_runs": len(group), "seeds": ",".join(str(x) for x in sorted(group["seed"].unique())),
                    "suites": ",".join(sorted(group["suite"].unique())), "run_ids": list(group["run_id"]),
                    "depth": group["depth"].iloc[0], "faithful": group["faithful"].iloc[0]})
        for key in _METRICS:
            row[key] = s.get(key)
        for key in ("speedup_decode", "speedup_e2e"):
            row[f"{key}_lo"], row[f"{key}_hi"] = s.get(f"{key}_ci95") or [None, None]
        divergences = s.get("divergences") or []
        row["divergences"] = len(divergences)
        row["near_ties"] = sum(bool(d.get("near_tie")) for d in divergences)
        row["tau_histogram"] = s.get("tau_histogram") or {}
        row["per_position_acceptance"] = s.get("per_position_acceptance") or []
        # steps counted as drafting every position (no draft_lengths: older records, or summaries without the count)
        row["steps_without_draft_lengths"] = s.get("steps_without_draft_lengths", s.get("verify_forwards")) or 0
        row["latency_ms"] = s.get("latency_ms") or {}
        row["cut_at_max_tokens"] = pool.share_cut(group["run_id"])
        rows.append(row)
    return pd.DataFrame(rows)


# -- the headline slice -------------------------------------------------------------------------------------
@dataclass
class Headline:
    temperature: float
    batch_size: int
    depth_by_label: dict[str, int]

    def depth_of(self, label: str) -> int:
        return self.depth_by_label.get(label, NO_DEPTH)


def headline(df: pd.DataFrame) -> Headline:
    temps = sorted(df["temperature"].unique())
    sizes = sorted(df["batch_size"].unique())
    depths = {}
    for label, rows in df.groupby("label"):
        default = rows[rows["config_depth"].isna()]
        counts = Counter((default if len(default) else rows)["depth_key"])
        depths[label] = sorted(counts, key=lambda d: (-counts[d], d))[0]
    return Headline(0.0 if 0.0 in temps else float(temps[0]), 1 if 1 in sizes else int(sizes[0]), depths)


def at_headline_depth(df: pd.DataFrame, head: Headline) -> pd.DataFrame:
    return df[[head.depth_of(label) == d for label, d in zip(df["label"], df["depth_key"])]]


# -- section frames (per target) ----------------------------------------------------------------------------
def main_frame(df: pd.DataFrame, head: Headline, pool: Pool) -> pd.DataFrame:
    """Method rows × suite columns at the headline batch size and depth, per temperature (paper Table 1)."""
    sel = at_headline_depth(df[df["batch_size"] == head.batch_size], head)
    return grouped(sel, ["temperature", "label", "depth_key", "suite"], pool)


def batch_frame(df: pd.DataFrame, head: Headline, pool: Pool) -> pd.DataFrame:
    sel = at_headline_depth(df[df["temperature"] == head.temperature], head)
    return grouped(sel, ["label", "depth_key", "batch_size"], pool)


def temperature_frame(df: pd.DataFrame, head: Headline, pool: Pool) -> pd.DataFrame:
    sel = at_headline_depth(df[df["batch_size"] == head.batch_size], head)
    return grouped(sel, ["label", "depth_key", "temperature"], pool)


def depth_frame(df: pd.DataFrame, head: Headline, pool: Pool) -> pd.DataFrame:
    sel = df[(df["temperature"] == head.temperature) & (df["batch_size"] == head.batch_size)]
    swept = [label for label, rows in sel.groupby("label") if rows["depth_key"].nunique() > 1]
    return grouped(sel[sel["label"].isin(swept)], ["label", "depth_key"], pool)


def latency_frame(df: pd.DataFrame, head: Headline, pool: Pool) -> pd.DataFrame:
    """Median draft / verify / other ms per step, per method and batch size, with the AR arm beside it.

    `predicted_speedup` = τ × t_step(AR) / t_step(method): the cost model of harness_anchors.md §5.3;
    when it disagrees with the measured speedup, the gap is outside the step (prefill, stragglers).
    """
    frame = batch_frame(df, head, pool)
    rows = []
    for _, g in frame.iterrows():
        lat = g["latency_ms"] or {}
        meth, base = lat.get("method") or {}, lat.get("baseline") or {}
        step, base_step = meth.get("step_ms_median"), base.get("step_ms_median")
        tau = g["tau"]
        rows.append({"label": g["label"], "depth_key": g["depth_key"], "depth": g["depth"],
                     "batch_size": g["batch_size"], "suites": g["suites"], "faithful": g["faithful"],
                     "draft_ms": meth.get("draft_ms_median"), "verify_ms": meth.get("verify_ms_median"),
                     "other_ms": meth.get("other_ms_median"), "step_ms": step,
                     "ar_draft_ms": base.get("draft_ms_median"), "ar_verify_ms": base.get("verify_ms_median"),
                     "ar_other_ms": base.get("other_ms_median"), "ar_step_ms": base_step, "tau": tau,
                     "predicted_speedup": (tau * base_step / step) if tau and step and base_step else None,
                     "speedup_decode": g["speedup_decode"], "steps": meth.get("steps")})
    return pd.DataFrame(rows)


def ar_latency_frame(df: pd.DataFrame, head: Headline, pool: Pool) -> pd.DataFrame:
    """The AR arm per batch size, pooled over every run of the latency section (one AR bar per panel)."""
    sel = at_headline_depth(df[df["temperature"] == head.temperature], head)
    rows = []
    for size, runs in sel.groupby("batch_size"):
        lat = pool.latency(one_per_seed(runs)["run_id"], "baseline")
        rows.append({"batch_size": size, "draft_ms": lat.get("draft_ms_median"),
                     "verify_ms": lat.get("verify_ms_median"), "other_ms": lat.get("other_ms_median"),
                     "step_ms": lat.get("step_ms_median"), "steps": lat.get("steps")})
    return pd.DataFrame(rows)


def acceptance_frame(df: pd.DataFrame, head: Headline, pool: Pool) -> pd.DataFrame:
    sel = at_headline_depth(df[(df["temperature"] == head.temperature) & (df["batch_size"] == head.batch_size)], head)
    return grouped(sel, ["label", "depth_key"], pool)


def quality_frame(df: pd.DataFrame, pool: Pool) -> pd.DataFrame:
    return grouped(df, ["label", "depth_key", "suite", "temperature", "batch_size"], pool)


def training_label(row) -> str:
    """'971 steps · 78 s on cuda · acc 0.52' for a run row; '' for methods without a drafter."""
    steps = row.get("drafter_steps")
    if pd.isna(steps):
        return ""
    parts = [f"{int(steps)} steps"]
    secs, device, acc = row.get("drafter_train_seconds"), row.get("drafter_train_device"), row.get("drafter_eval_acc")
    if pd.notna(secs):
        parts.append(f"{secs:.0f} s" + (f" on {device}" if device else ""))
    if pd.notna(acc):
        parts.append(f"held-out acc {acc:.2f}")
    return " · ".join(parts)


def drafter_step_warning(df: pd.DataFrame) -> str | None:
    """Drafters compared in one table should have had the same training; say so when their step counts
    differ by more than 2x (the budget is wall time, so a slow method gets fewer steps — by design —
    but a reader must know)."""
    steps = {}
    for method, s in zip(df["method"], df.get("drafter_steps", [])):
        if pd.notna(s):
            steps.setdefault(method, set()).add(int(s))
    flat = {m: max(v) for m, v in steps.items()}
    if len(flat) > 1 and max(flat.values()) > 2 * min(flat.values()):
        listing = ", ".join(f"{m} {n}" for m, n in sorted(flat.items(), key=lambda kv: -kv[1]))
        return (f"The drafters on this page were trained for very different numbers of steps ({listing}): "
                "τ differences partly measure training, not only the method.")
    return None


def cost_frame(df: pd.DataFrame, head: Headline, pool: Pool) -> pd.DataFrame:
    """Drafter size and target work per committed token, the budget view of harness_anchors.md §5.7."""
    rows = []
    for (label, depth_key), runs in df.groupby(["label", "depth_key"]):
        hot = runs[runs["temperature"] == head.temperature]
        s = pool.stats(one_per_seed(hot if len(hot) else runs)["run_id"])
        trained = runs["drafter_train_seconds"].dropna()
        first = runs.loc[trained.idxmax()] if len(trained) else runs.iloc[0]  # the most-trained drafter
        tau, per_forward = s.get("tau"), first["tokens_per_target_forward"]
        row = {"label": label, "depth_key": depth_key, "depth": first["depth"],
               "drafter_parameters": first["drafter_parameters"], "tokens_per_target_forward": per_forward,
               "drafter_training": training_label(first),
               "tau": tau, "target_forwards_per_100_tokens": 100 / tau if tau else None,
               "target_tokens_per_committed_token": per_forward / tau if tau and per_forward else None,
               "faithful": first["faithful"], "notes": first["notes"]}
        row.update(json.loads(first["extra_cost"] or "{}"))
        rows.append(row)
    return pd.DataFrame(rows)


def provenance_warnings(df: pd.DataFrame) -> list[str]:
    """Tables that mix code versions, devices or thread counts should say so (harness_anchors.md §5.8)."""
    out = []
    busy = df[[la is not None and la == la and cpus and la > cpus for la, cpus in zip(df["load_average"], df["cpu_count"])]]
    if len(busy):
        unknown = int(df["load_average"].isna().sum())
        out.append(f"{len(busy)} of {len(df)} runs were measured while the machine's 1-minute load average exceeded "
                   f"its CPU count (up to {busy['load_average'].max():.1f} on {int(busy['cpu_count'].max())} CPUs): "
                   f"other processes competed for the cores, so their timings and speedups are noisy"
                   + (f"; {unknown} other run(s) did not record the load (made outside a sweep or by an older "
                      f"version)." if unknown else "."))
    for target, rows in df.groupby("target"):
        for col, what in (("git_sha", "git commits"), ("device", "devices"), ("hardware", "hardware"),
                          ("dtype", "dtypes"), ("threads", "torch thread counts"), ("torch", "torch versions"),
                          ("transformers", "transformers versions"), ("max_new_tokens", "max_new_tokens"),
                          ("runtime", "target forwards (runtimes: their speedups are not comparable)"),
                          ("target_fingerprint", "target weights (fingerprints)")):
            values = sorted({str(v) for v in rows[col] if v is not None and v == v})
            if len(values) > 1:
                out.append(f"{target}: runs come from {len(values)} different {what} ({', '.join(values[:4])}"
                           f"{', …' if len(values) > 4 else ''}); compare across them with care.")
        steps = drafter_step_warning(rows)
        if steps:
            out.append(f"{target}: {steps}")
    return out
