"""Report: seeds pooled with the binding metrics, generic method labels, every section, CSV/Markdown
next to the page, an offline self-contained page, and a real browser rendering the run's numbers."""

import dataclasses
import json
import random
import re
import shutil
import subprocess
from html import unescape
from html.parser import HTMLParser

import pandas as pd
import pytest
from click.testing import CliRunner

from specbench.cli import cli
from specbench.metrics import summarize
from specbench.report import build_report
from specbench.report import aggregate as agg
from specbench.results import ResultStore
from specbench.runner import RunConfig
from specbench.sweep import cell_run_id

TARGET = "fake-8b"


def fake_run(root, method, *, suite="gsm8k", temperature=0.0, batch_size=1, depth=None, seed=0, options=None,
             faithful=None, notes=None, n_prompts=4, accept=0.6, drafter_parameters=0, tokens_per_forward=1,
             default_depth=None, status="complete", drafter=None):
    """A stored run with every field the report reads; drafting methods commit 1..depth+1 tokens per step
    and their step costs grow with depth and batch size, so the curves have a shape."""
    config = RunConfig(method=method, suite=suite, target=TARGET, temperature=temperature, batch_size=batch_size,
                       depth=depth, seed=seed, method_options=options or {}, drafter=drafter)
    run_id = cell_run_id(config)
    depth_used = depth if depth is not None else default_depth
    rng = random.Random(run_id)
    ar_step = 10 + 0.5 * batch_size
    m_step = ar_step * (1 + 0.12 * (depth_used or 0) * (1 + batch_size / 8))
    records = []
    for b0 in range(0, n_prompts, batch_size):
        rows = range(b0, min(b0 + batch_size, n_prompts))
        for arm in ("method", "baseline"):
            drafting = depth_used is not None and arm == "method"
            lengths = []
            for _ in rows:
                acc = []
                while sum(acc) < 30:
                    n = 1
                    while drafting and n <= depth_used and rng.random() < accept:
                        n += 1
                    acc.append(n)
                lengths.append(acc)
            steps = max(len(a) for a in lengths)
            step_ms = m_step if arm == "method" else ar_step
            split = (0.25, 0.65, 0.10) if drafting else (0.0, 0.93, 0.07)
            spans = {k: [round(step_ms * f * rng.uniform(0.9, 1.1), 3) for _ in range(steps)]
                     for k, f in zip(("draft", "verify", "other"), split)}
            for j, (p, acc) in enumerate(zip(rows, lengths)):
                new = 1 + sum(acc)
                diverged = arm == "method" and temperature == 0 and p == 3 and method != "ar"
                records.append({
                    "prompt_id": f"p{p}", "arm": arm, "method": method if arm == "method" else "ar",
                    "batch_id": f"b{b0 // batch_size}-p{b0}", "batch_size": len(rows), "row": j,
                    "turns": [{"prompt_tokens": 50, "output_ids": list(range(new)), "text": "x", "new_tokens": new,
                               "ttft_s": 0.02, "decode_s": steps * step_ms / 1000 * rng.uniform(0.95, 1.05),
                               "steps": len(acc), "accept_lengths": acc, "stopped_by": "length",
                               "batch_spans_ms": spans if j == 0 else None}],
                    "score": rng.random() < 0.5, "exact_match": not diverged,
                    "first_divergence": ({"turn": 0, "position": 7, "top2_relative_gap": 5e-5, "near_tie": True}
                                         if diverged else None)})
    run_dir = ResultStore(root).create(run_id)
    method_desc = {"name": method, "depth": depth_used, "options": options or {},
                   "drafter_parameters": drafter_parameters, "tokens_per_target_forward": tokens_per_forward}
    if faithful is not None:
        method_desc.update(faithful=faithful, notes=notes)
    run_dir.write_manifest({
        "run_id": run_id, "status": status, "config": dataclasses.asdict(config), "cell": config.cell_hash(),
        "resolved": {"max_new_tokens": 64, "n_prompts": n_prompts},
        "target": {"name": TARGET, "fingerprint": "abc123", "dtype": "float32", "device": "cpu"},
        "method": method_desc,
        "provenance": {"git": {"sha": "0123456789abcdef", "dirty": False},
                       "versions": {"torch": "2.13.0", "transformers": "5.24.0"},
                       "hardware": {"device": "cpu", "cpu": "Test CPU", "torch_threads": 2},
                       "created": f"2026-01-01T00:00:{seed:02d}+00:00"}})
    run_dir.append_records(records)
    if status == "complete":
        summary = summarize(records)
        summary.update(run_id=run_id, method=method, suite=suite, target=TARGET, temperature=temperature,
                       batch_size=batch_size, depth=depth_used)
        run_dir.write_summary(summary)
    return run_dir


def make_grid(root):
    for suite, seeds in (("gsm8k", (0, 1)), ("mbpp", (0,))):
        for seed in seeds:
            for bs in (1, 4):
                for t in (0.0, 1.0):
                    kw = dict(suite=suite, temperature=t, batch_size=bs, seed=seed)
                    fake_run(root, "ar", **kw)
                    fake_run(root, "pld", default_depth=4, tokens_per_forward=5, accept=0.5, **kw)
                    for mode, accept in (("parallel", 0.7), ("decoupled", 0.6)):
                        fake_run(root, "flexdraft", options={"mode": mode}, default_depth=5, faithful=False,
                                 notes="calibration uses 10x fewer steps than the paper", accept=accept,
                                 drafter_parameters=12_500_000, tokens_per_forward=6, **kw)
    for d in (2, 6):
        fake_run(root, "pld", depth=d, tokens_per_forward=d + 1, accept=0.5)
    fake_run(root, "pld", suite="mbpp", batch_size=16, status="interrupted", default_depth=4)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    make_grid(root / "results")
    files = build_report(results_dir=root / "results", out=root / "reports" / "report.html")
    return {"results": root / "results", "files": files, "html": files.html.read_text()}


def _frame(results):
    complete, incomplete = agg.resolve_runs((), results)
    return agg.runs_frame(complete), agg.Pool(complete), complete, incomplete


# -- aggregation -------------------------------------------------------------------------------------------
def test_seeds_are_pooled_token_weighted_and_as_ratio_of_sums(grid):
    df, pool, complete, _ = _frame(grid["results"])
    head = agg.headline(df)
    main = agg.main_frame(df, head, pool)
    row = main[(main["label"] == "pld") & (main["suite"] == "gsm8k") & (main["temperature"] == 0)].iloc[0]
    assert row["n_runs"] == 2 and row["seeds"] == "0,1"
    runs = {r.run_id: r for r in complete}
    records = [rec for rid in row["run_ids"] for rec in runs[rid].records]
    method = [t for r in records if r["arm"] == "method" for t in r["turns"]]
    assert row["tau"] == pytest.approx(sum(t["new_tokens"] - 1 for t in method) / sum(t["steps"] for t in method))
    time, tokens = {"method": 0.0, "baseline": 0.0}, {"method": 0, "baseline": 0}
    for rid in row["run_ids"]:
        seen = set()
        for r in runs[rid].records:
            t = r["turns"][0]
            tokens[r["arm"]] += t["new_tokens"] - 1
            if (r["batch_id"], r["arm"]) not in seen:  # one wall time per batch and arm
                seen.add((r["batch_id"], r["arm"]))
                time[r["arm"]] += t["decode_s"]
    expected = (time["baseline"] / tokens["baseline"]) / (time["method"] / tokens["method"])
    assert row["speedup_decode"] == pytest.approx(expected)
    lo, hi = row["speedup_decode_lo"], row["speedup_decode_hi"]
    assert lo < row["speedup_decode"] < hi
    single = main[(main["label"] == "pld") & (main["suite"] == "mbpp") & (main["temperature"] == 0)].iloc[0]
    summary = runs[single["run_ids"][0]].summary
    assert single["n_runs"] == 1 and single["tau"] == summary["tau"]
    assert single["speedup_decode"] == summary["speedup_decode"]


def test_headline_slice_labels_and_modes_are_generic(grid):
    df, pool, _, incomplete = _frame(grid["results"])
    head = agg.headline(df)
    assert (head.temperature, head.batch_size) == (0.0, 1)
    assert head.depth_of("pld") == 4  # the default depth, although depths 2 and 6 were run too
    assert set(df["label"]) == {"ar", "pld", "flexdraft (mode=decoupled)", "flexdraft (mode=parallel)"}
    batch = agg.batch_frame(df, head, pool)
    assert set(batch["label"]) == set(df["label"]) and set(batch["batch_size"]) == {1, 4}
    assert sorted(agg.depth_frame(df, head, pool)["depth"]) == [2, 4, 6]
    assert [r.run_id for r in incomplete] and all(r.manifest["status"] == "interrupted" for r in incomplete)
    latency = agg.latency_frame(df, head, pool)
    flex = latency[(latency["label"] == "flexdraft (mode=parallel)") & (latency["batch_size"] == 1)].iloc[0]
    assert flex["draft_ms"] > 0 and flex["predicted_speedup"] == pytest.approx(
        flex["tau"] * flex["ar_step_ms"] / flex["step_ms"])


# -- the page and its files ----------------------------------------------------------------------------------
def test_page_is_self_contained_and_has_every_section(grid):
    html = grid["html"]
    assert not re.search(r'(src|href)="(?!data:|#)', html), "external reference in an offline page"
    assert "<script" not in html
    assert html.count('src="data:image/png;base64,') >= 5  # batch, depth, latency, τ histograms, per position
    for section in ("provenance", "method-notes", "main", "batch", "temperature", "depth", "latency", "acceptance",
                    "quality", "cost", "runs"):
        assert f'<section id="{section}">' in html
    assert "decode-only" in html and "End-to-end speedup (prefill included)" in html
    assert "flexdraft is marked NOT faithful" in html and "calibration uses 10x fewer steps" in html
    assert "flexdraft (mode=parallel) · d=5 ⚠" in html
    assert "Runs left out (not complete)" in html and "interrupted" in html


def test_tables_are_also_csv_and_markdown(grid):
    files = grid["files"]
    names = {p.stem for p in files.csv_dir.glob("*.csv")}
    assert {f"main-{TARGET}-decode", f"batch-{TARGET}", f"temperature-{TARGET}", f"depth-{TARGET}",
            f"latency-{TARGET}", f"acceptance-{TARGET}", f"quality-{TARGET}", f"cost-{TARGET}", "runs",
            "provenance"} <= names
    import pandas as pd

    main = pd.read_csv(files.csv_dir / f"main-{TARGET}-decode.csv")
    row = main[(main["label"] == "pld") & (main["suite"] == "gsm8k") & (main["temperature"] == 0)].iloc[0]
    assert f"{row['tau']:.2f}" in grid["html"] and f"{row['speedup_decode']:.2f}×" in grid["html"]
    md = files.markdown.read_text()
    assert md.count("### ") == len(list(files.csv_dir.glob("*.csv")))
    assert "| T | method |" in md.replace("  ", " ") or "| T | method" in md
    assert "NOT faithful" in md and f"{row['speedup_decode']:.2f}×" in md


def test_sections_without_data_say_what_to_run(tmp_path):
    fake_run(tmp_path, "ar")
    files = build_report(results_dir=tmp_path, out=tmp_path / "r.html")
    html = files.html.read_text()
    assert "specbench sweep batch-size" in html and "specbench sweep temperature" in html
    assert "specbench sweep depth" in html and "no histogram to draw" in html


def test_noisy_ar_against_ar_is_flagged(tmp_path):
    run_dir = fake_run(tmp_path, "ar")
    summary = run_dir.read_summary()
    run_dir.write_summary({**summary, "speedup_decode": 1.37})
    html = unescape(build_report(results_dir=tmp_path, out=tmp_path / "r.html").html.read_text())
    assert "measures AR against itself at 1.37× instead of 1.00×" in html and "about 37%" in html


def test_contended_runs_are_flagged(tmp_path):
    """Timings taken while other processes held the cores are noisy; the page must say so."""
    run_dir = fake_run(tmp_path, "ar")
    run_dir.update_manifest(executor={"name": "local", "cpu_count": 2, "load_average_1m": [1.5, 7.25]})
    html = unescape(build_report(results_dir=tmp_path, out=tmp_path / "r.html").html.read_text())
    assert "1 of 1 runs were measured while the machine's 1-minute load average exceeded its CPU count" in html
    assert "up to 7.2 on 2 CPUs" in html


def test_contended_single_runs_are_flagged_from_their_own_load_readings(tmp_path):
    """A `specbench run` outside a sweep has no executor samples: its start and end load readings count."""
    run_dir = fake_run(tmp_path, "ar")
    manifest = run_dir.read_manifest()
    manifest["provenance"]["hardware"].update(cpu_count=2, load_average=[1.0, 1.0, 1.0])
    run_dir.write_manifest({**manifest, "load_average_end": [3.5, 2.0, 1.0]})
    html = unescape(build_report(results_dir=tmp_path, out=tmp_path / "r.html").html.read_text())
    assert "1 of 1 runs were measured while the machine's 1-minute load average exceeded its CPU count" in html
    assert "up to 3.5 on 2 CPUs" in html


def test_runs_of_different_target_forwards_are_flagged(tmp_path):
    """A run on transformers' model(...) and one on the direct forward with W·Xᵀ products time different
    runtimes (issue 20): the page names both and warns; runs of one runtime are not flagged."""
    fake_run(tmp_path, "ar")
    html = unescape(build_report(results_dir=tmp_path, out=tmp_path / "r.html").html.read_text())
    assert "different target forwards" not in html and "model(...)" in html
    direct = fake_run(tmp_path, "pld")
    manifest = direct.read_manifest()
    direct.write_manifest({**manifest, "target": {**manifest["target"], "forward": "direct", "skinny_rows": 8}})
    html = unescape(build_report(results_dir=tmp_path, out=tmp_path / "r.html").html.read_text())
    assert "runs come from 2 different target forwards" in html and "direct, W·Xᵀ ≤ 8 rows" in html


def test_drafter_training_is_shown_and_unequal_training_is_flagged(tmp_path):
    """τ of drafters trained for 971 vs 80 steps measures training as much as the method: say so, and
    show each drafter's steps, wall time and device next to its cost."""
    for method, steps in (("eagle3", 971), ("flexdraft", 80)):
        run_dir = fake_run(tmp_path, method, default_depth=4, tokens_per_forward=5, drafter_parameters=10)
        run_dir.update_manifest(drafter={"steps": steps, "train_seconds": 78.2, "device": "cuda", "eval_acc": 0.5})
    html = unescape(build_report(results_dir=tmp_path, out=tmp_path / "r.html").html.read_text())
    assert "trained for very different numbers of steps (eagle3 971, flexdraft 80)" in html
    assert "971 steps · 78 s on cuda · held-out acc 0.50" in html


def test_equal_drafter_training_is_not_flagged(tmp_path):
    for method in ("eagle3", "flexdraft"):
        fake_run(tmp_path, method, default_depth=4).update_manifest(drafter={"steps": 100})
    assert "very different numbers of steps" not in build_report(results_dir=tmp_path, out=tmp_path / "r.html").html.read_text()


@pytest.mark.parametrize("args, message", [
    ([], "no complete runs in"),
    (["nosuchrun"], "no run 'nosuchrun'"),
    (["--sweep", "sweep-nope"], "no sweep 'sweep-nope'"),
])
def test_report_errors_are_one_line(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["report", *args, "--results-dir", str(tmp_path), "--out", str(tmp_path / "r.html")])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output


# -- a real browser on a real (tiny) sweep ------------------------------------------------------------------
class _TableCells(HTMLParser):
    """Text of every cell, per `data-table` name."""

    def __init__(self):
        super().__init__()
        self.tables, self._table, self._cell = {}, None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = dict(attrs).get("data-table")
            self.tables.setdefault(self._table, [])
        elif tag == "td" and self._table:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.tables[self._table].append(" ".join(" ".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no headless Chromium (apt-get install chromium); .ci/run installs it")


def test_browser_renders_the_page_with_the_runs_numbers(tmp_path):
    from PIL import Image, ImageStat

    browser = _chromium()
    results = tmp_path / "results"
    sweep = CliRunner().invoke(cli, ["sweep", "batch-size", "1", "2", "--target", "tiny-random-llama", "--limit", "2",
                                     "--max-new-tokens", "6", "--no-warmup", "--no-progress", "--sweep-id", "b",
                                     "--results-dir", str(results)])
    assert sweep.exit_code == 0, sweep.output
    report = CliRunner().invoke(cli, ["report", "--sweep", "b", "--results-dir", str(results),
                                      "--out", str(tmp_path / "report.html")])
    assert report.exit_code == 0, report.output
    page = (tmp_path / "report.html").as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, "--window-size=1280,2400", f"--screenshot={shot}", page],
                   capture_output=True, timeout=120, check=True)
    image = Image.open(shot).convert("L")
    assert image.size == (1280, 2400)
    assert ImageStat.Stat(image).stddev[0] > 20  # text, tables and plots, not a blank page
    dom = subprocess.run([browser, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    cells = _TableCells()
    cells.feed(dom)
    runs_table = cells.tables["runs"]
    main_table = cells.tables["main-tiny-random-llama-decode"]
    for summary_path in results.glob("*/summary.json"):
        s = json.loads(summary_path.read_text())
        assert s["run_id"] in runs_table
        ci = s["speedup_decode_ci95"]  # None with a single timed batch
        speedup = f"{s['speedup_decode']:.2f}×" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        assert speedup in runs_table and f"{s['tau']:.2f}" in runs_table
        if s["batch_size"] == 1:  # the headline batch size: the main table shows this run's numbers
            assert speedup in main_table and ci


# -- learning curves (issue 22) ------------------------------------------------------------------------------
MINUTES = (2.5, 5.0, 10.0, 20.0, 25.0)
CURVES = {  # τ at each point: flexdraft starts low and passes eagle3 between 10 and 20 min on gsm8k
    "gsm8k": {"flexdraft": (1.5, 1.8, 2.1, 2.6, 2.7), "eagle3": (2.0, 2.2, 2.3, 2.4, 2.45),
              "dflash": (2.2, 2.5, 2.7, 2.9, 3.0)},
    "mtbench": {"flexdraft": (1.2, 1.3, 1.4, 1.5, 1.55), "eagle3": (1.6, 1.7, 1.8, 1.85, 1.9),
                "dflash": (1.1, 1.15, 1.2, 1.25, 1.3)},
}


def make_curves(root):
    """Each method's snapshots (and final drafter, at 25 min) on two suites, τ set exactly; an AR run beside."""
    fake_run(root, "ar")
    for suite, taus in CURVES.items():
        for method, values in taus.items():
            for i, (minutes, tau) in enumerate(zip(MINUTES, values)):
                final = i == len(MINUTES) - 1
                point = None if final else f"min-{minutes:05.1f}"
                run_dir = fake_run(root, method, suite=suite, default_depth=4, drafter=f"auto@{point}" if point else "auto")
                run = f"/store/{method}-abc"
                run_dir.update_manifest(drafter={
                    "path": run if final else f"{run}/snapshots/{point}", "run": run, "steps": 10 * (i + 1),
                    "train_seconds": minutes * 60, "tokens_seen": int(minutes * 1000), "device": "cpu",
                    "eval_acc": 0.1 * (i + 1), "snapshot": None if final else f"{minutes}m"})
                run_dir.write_summary({**run_dir.read_summary(), "tau": tau, "speedup_decode": tau / 2})


def test_learning_curves_plot_each_run_and_state_the_crossings(tmp_path):
    from specbench.report import curves

    make_curves(tmp_path)
    df, pool, _, _ = _frame(tmp_path)
    frame = curves.curve_frame(df, agg.headline(df), pool)
    assert len(frame) == 2 * 3 * 5 and curves.equal_budget(frame) == 25.0  # ar has no drafter, no curve
    sentences = curves.crossing_sentences(frame)
    assert "gsm8k: flexdraft's τ passes eagle3's at ~15.0 min / ~15,000 tokens (+0.25 at 25.0 min)." in sentences
    assert any(s.startswith("gsm8k: flexdraft's τ does not pass dflash's within the budget measured (up to "
                            "~25.0 min / ~25,000 tokens; -0.30 at the end)") for s in sentences)
    assert "mtbench: flexdraft's τ is above dflash's at every training time measured (from 2.5 to 25.0 min)." \
        in sentences
    assert len(sentences) == 4  # flexdraft against each other method, per suite
    # every other section shows each method's most-trained drafter, not a snapshot
    main = agg.main_frame(df, agg.headline(df), pool)
    assert main.set_index(["label", "suite"]).loc[("flexdraft", "gsm8k"), "tau"] == 2.7

    files = build_report(results_dir=tmp_path, out=tmp_path / "r.html")
    html = unescape(files.html.read_text())
    assert '<section id="curves">' in html and "Equal-budget slice: 25.0 min" in html
    assert "flexdraft's τ passes eagle3's at ~15.0 min / ~15,000 tokens" in html
    assert html.count('src="data:image/png;base64,') >= 3 + 2  # two suites and the held-out accuracy, + others
    table = pd.read_csv(files.csv_dir / f"curves-{TARGET}.csv")
    assert len(table) == 30 and set(table["drafter_snapshot"].dropna()) == {"2.5m", "5.0m", "10.0m", "20.0m"}


def test_crossings_back_and_forth_and_without_a_focus_method():
    from specbench.report import curves

    def rows(curve, method, taus, minutes=(1, 2, 3, 4)):
        return [{"curve": curve, "label": curve, "method": method, "suite": "s", "minutes": m, "tau": t,
                 "drafter_tokens_seen": None} for m, t in zip(minutes, taus)]

    frame = pd.DataFrame(rows("flexdraft", "flexdraft", (1, 3, 3, 1)) + rows("mtp", "mtp", (2, 2, 2, 2)))
    assert curves.crossing_sentences(frame) == [
        "s: flexdraft's τ passes mtp's at ~1.5 min, then falls back below mtp's at ~3.5 min (-1.00 at 4.0 min)."]
    frame = pd.DataFrame(rows("bita", "bita", (1, 2), (1, 2)) + rows("mtp", "mtp", (1.5, 1.5, 1.5), (1.5, 2.5, 9)))
    assert curves.crossing_sentences(frame) == [  # no flexdraft: every pair; only the overlap is read
        "s: bita's τ is level with or above mtp's at every training time measured (from 1.5 to 2.0 min)."]
    # 0.001 apart at the end (two MT-Bench curves of stop 30): level, not "above at every time"
    frame = pd.DataFrame(rows("flexdraft", "flexdraft", (1.10, 1.20, 1.124)) + rows("dflash", "dflash", (1.0, 1.1, 1.125)))
    assert curves.crossing_sentences(frame) == [
        "s: flexdraft's τ is level with or above dflash's at every training time measured (from 1.0 to 3.0 min)."]
    frame = pd.DataFrame(rows("flexdraft", "flexdraft", (1.10, 1.104)) + rows("mtp", "mtp", (1.105, 1.10)))
    assert curves.crossing_sentences(frame) == [
        "s: flexdraft's τ is level with mtp's (within 0.01) at every training time measured (from 1.0 to 2.0 min)."]


def test_runtime_label_says_when_a_compiled_run_left_passes_eager_or_compiled_while_timed():
    """A compiled run of a drafted method from before its passes were captured, and one that compiled graphs
    inside timed steps, must not read like a clean compiled measurement."""
    from specbench.report.aggregate import runtime_label

    target = {"forward": "transformers", "regime": "compiled"}
    old = {"method": {"name": "dflash", "drafter_parameters": 10}}
    new = {"method": {"name": "dflash", "drafter_parameters": 10, "compiled_passes": {"captured": ["x"]}},
           "graphs_traced_while_timed": 0}
    assert runtime_label(target, old) == "model(...), compiled (target forward only; the method's own passes eager)"
    assert runtime_label(target, new) == "model(...), compiled"
    assert runtime_label(target, {**new, "graphs_traced_while_timed": 2}) == \
        "model(...), compiled, 2 graph(s) compiled while timed"
    assert runtime_label(target, {"method": {"name": "pld", "drafter_parameters": 0}}) == "model(...), compiled"
    assert runtime_label({"forward": "direct", "skinny_rows": 0}, old) == "direct"
