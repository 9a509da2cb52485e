"""The report's Spec-Bench leaderboard table (issue 13), laid out like Spec-Bench's `Leaderboard.md`.

Methods are rows; MT-Bench, translation, summarization, QA, math reasoning, RAG and overall are
columns, each with the mean accepted tokens and the speedup. One table per (target, temperature,
batch size), as Spec-Bench keeps one table per model and device.

* Mean accepted tokens: `per_category[task].mean_accepted_tokens` (Spec-Bench's "#Mean accepted
  tokens": the mean over all verification steps of the tokens a step kept), which equals specbench's
  τ for native runs (DESIGN.md §4); for imported Spec-Bench files it is the files' own number.
* Speedup: end-to-end (prefill + decode), because Spec-Bench times the whole generate call; as
  specbench computes it (AR time per token ÷ method time per token, ratio of sums, 95% bootstrap CI),
  not Spec-Bench's ratio of mean per-question throughputs (see README, Spec-Bench compatibility).

Runs of a cell that differ only in seed are pooled (their records re-summarised, never averaged).
Imported runs carry the method option `imported=spec-bench`, so their rows say so.
"""

from __future__ import annotations

import pandas as pd

from specbench.suites.spec_bench import TASKS

TASK_TITLES = {"mt_bench": "MT-Bench", "translation": "Translation", "summarization": "Summarization",
               "qa": "QA", "math_reasoning": "Math reasoning", "rag": "RAG"}
CAPTION = ("Spec-Bench's layout: mean accepted tokens (= τ, tokens committed per verification step, bonus "
           "included, prefill token excluded) and end-to-end speedup (prefill + decode, AR through the same loop; "
           "brackets: 95% bootstrap CI). Rows marked imported=spec-bench come from answer files measured "
           "elsewhere (see each run's manifest: what those files cannot tell).")


def overall_mean_accepted(per_category: dict) -> float | None:
    """Step-weighted mean over the tasks, i.e. the mean over all steps of the run."""
    steps = sum(c.get("accepted_steps") or 0 for c in per_category.values())
    if not steps:
        return None
    return sum((c.get("mean_accepted_tokens") or 0) * (c.get("accepted_steps") or 0)
               for c in per_category.values()) / steps


def leaderboard_frame(frame: pd.DataFrame, pool) -> pd.DataFrame:
    """One row per (target, temperature, batch size, method label, depth) of the spec_bench runs."""
    from specbench.report.aggregate import one_per_seed

    runs = frame[frame["suite"] == "spec_bench"]
    rows = []
    keys = ["target", "temperature", "batch_size", "label", "depth_key"]
    for values, group in runs.groupby(keys, sort=True):
        group = one_per_seed(group)
        summary = pool.stats(group["run_id"])
        per_category = summary.get("per_category") or {}
        row = dict(zip(keys, values))
        row.update({"depth": group["depth"].iloc[0], "run_ids": ",".join(group["run_id"]),
                    "n_prompts": summary.get("n_prompts")})
        for task in TASKS:
            c = per_category.get(task) or {}
            row[f"{task}_mean_accepted"] = c.get("mean_accepted_tokens")
            row[f"{task}_speedup_e2e"] = c.get("speedup_e2e")
            row[f"{task}_speedup_e2e_ci95"] = c.get("speedup_e2e_ci95")
            row[f"{task}_n"] = c.get("n_prompts")
        overall = overall_mean_accepted(per_category)
        row["overall_mean_accepted"] = overall if overall is not None else summary.get("tau")
        row["overall_speedup_e2e"] = summary.get("speedup_e2e")
        row["overall_speedup_e2e_ci95"] = summary.get("speedup_e2e_ci95")
        rows.append(row)
    return pd.DataFrame(rows)


def spec_bench_table(frame: pd.DataFrame, pool) -> list:
    """Report items (tables) for the spec_bench runs of `frame` (agg.runs_frame), or [] if there are none."""
    from specbench.report.tables import Cell, Table, num, slug, speedup_cell

    data = leaderboard_frame(frame, pool)
    if data.empty:
        return []
    items = []
    columns = list(TASKS) + ["overall"]
    for (target, temperature, batch_size), sub in data.groupby(["target", "temperature", "batch_size"], sort=True):
        sub = sub.sort_values(["label", "depth_key"], key=lambda s: s.map(lambda x: (x != "ar", x))
                              if s.name == "label" else s)
        rows = []
        for r in sub.to_dict("records"):
            depth = r["depth"]
            label = r["label"] if depth is None or depth != depth else f"{r['label']} · d={int(depth)}"
            cells = [Cell(label)]
            for task in columns:
                mean = r[f"{task}_mean_accepted"]
                speed, ci = r[f"{task}_speedup_e2e"], r[f"{task}_speedup_e2e_ci95"]
                cells += [Cell(num(mean)), speedup_cell(speed, ci)]
            rows.append(cells)
        n = {task: sub[f"{task}_n"].dropna().astype(int).max() if sub[f"{task}_n"].notna().any() else 0
             for task in TASKS}
        groups = [("", 1)] + [(f"{TASK_TITLES[t]} (n={n[t]})", 2) for t in TASKS] + [("Overall", 2)]
        csv = sub.drop(columns=[c for c in sub.columns if c.endswith("_ci95")]).assign(
            **{f"{t}_speedup_e2e_lo": [(ci or [None, None])[0] for ci in sub[f"{t}_speedup_e2e_ci95"]] for t in columns},
            **{f"{t}_speedup_e2e_hi": [(ci or [None, None])[1] for ci in sub[f"{t}_speedup_e2e_ci95"]] for t in columns})
        items.append(Table(slug("spec_bench", target, f"T{temperature:g}", f"b{batch_size}"),
                           f"{target}: Spec-Bench leaderboard (T={temperature:g}, batch size {batch_size})",
                           ["method"] + ["mean acc.", "speedup (e2e)"] * len(columns), rows, csv, CAPTION, groups))
    return items
