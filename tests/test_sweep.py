"""Sweeps: grid expansion, one-line errors, failing cells, kill + resume without recomputation, Ray = local."""

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from specbench.cli import cli
from specbench.errors import SpecbenchError
from specbench.runner import RunConfig
from specbench.sweep import (CUDA_SWEEP_LIMIT, PRODUCT_METHODS, axis_grid, cell_run_id, default_grid, default_sweep_id,
                             grid_cells, yaml_grid)

TINY = ["--target", "tiny-random-llama", "--no-progress", "--no-warmup"]
# the 2×2×2 grid of issue 8 with ar and two seeds standing in for a second method (one file, reused below)
GRID_YAML = """\
target: tiny-random-llama
methods: [ar]
seeds: [0, 1]
batch_sizes: [1, 2]
temperatures: [0, 0.8]
limit: 3
max_new_tokens: 8
warmup: false
"""


def _one_line_error(result, message):
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert "Traceback" not in result.output


# -- expansion -------------------------------------------------------------------------------------------
def test_axis_values_are_typed_deduplicated_and_checked():
    assert axis_grid("batch-size", ["1", "4", "4"]) == {"batch_size": [1, 4]}
    assert axis_grid("temperature", ["0", "0.7"]) == {"temperature": [0.0, 0.7]}
    assert axis_grid("depth", ["default", "3"]) == {"depth": [None, 3]}
    with pytest.raises(SpecbenchError, match="unknown sweep axis 'colour'"):
        axis_grid("colour", ["1"])
    with pytest.raises(SpecbenchError, match="'x' is not a valid batch_size"):
        axis_grid("batch-size", ["x"])
    with pytest.raises(SpecbenchError, match="give values"):
        axis_grid("method", [])
    with pytest.raises(SpecbenchError, match="--batch-size must be >= 1"):
        grid_cells(RunConfig(method="ar", suite="gsm8k"), axis_grid("batch-size", ["0"]))


def test_run_ids_follow_the_cell_hash():
    base = RunConfig(method="ar", suite="gsm8k", target="tiny-random-llama", limit=2)
    a = grid_cells(base, {"batch_size": [1, 2], "temperature": [0.0, 0.5]})
    b = grid_cells(base, {"batch_size": [1, 2], "temperature": [0.0, 0.5]})
    assert [c.run_id for c in a] == [c.run_id for c in b] and len({c.run_id for c in a}) == 4
    assert all(c.run_id.endswith(c.config.cell_hash()) for c in a)
    assert cell_run_id(RunConfig(method="ar", suite="gsm8k", limit=3)) != cell_run_id(RunConfig(method="ar", suite="gsm8k"))
    assert default_sweep_id(a) == default_sweep_id(list(reversed(b)))


def test_yaml_grid_crosses_axes_and_keeps_method_options_with_their_method(tmp_path, monkeypatch):
    from specbench import methods

    monkeypatch.setitem(methods.METHODS, "ar2", "specbench.methods.ar:AutoregressiveMethod")
    path = tmp_path / "sweep.yaml"
    path.write_text("methods: [ar, ar2]\ntemperatures: [0, 0.5]\nbatch-sizes: 2\nlimits: [3]\ndtype: float32\n"
                    "method_options:\n  ar2: [{mode: parallel}, {mode: decoupled}]\n")
    axes, scalars = yaml_grid(path)
    assert scalars == {"dtype": "float32"}
    cells = grid_cells(RunConfig(method="ar", suite="gsm8k", target="tiny-random-llama"), axes)
    got = sorted((c.config.method, json.dumps(c.config.method_options), c.config.temperature) for c in cells)
    assert got == sorted([("ar", "{}", 0.0), ("ar", "{}", 0.5),
                          ("ar2", '{"mode": "parallel"}', 0.0), ("ar2", '{"mode": "parallel"}', 0.5),
                          ("ar2", '{"mode": "decoupled"}', 0.0), ("ar2", '{"mode": "decoupled"}', 0.5)])
    assert all(c.config.batch_size == 2 and c.config.limit == 3 for c in cells)


@pytest.mark.parametrize("text, message", [
    ("methods: [ar\n", "is not valid YAML (line"),
    ("- ar\n- pld\n", "must be a YAML mapping"),
    ("methods: [ar]\ncolour: blue\n", "unknown key 'colour'"),
    ("batch_sizes: [one]\n", "'one' is not a valid batch_size"),
    ("methods: [ar]\nmethod_options:\n  pld: {mode: x}\n", "method_options for 'pld', which is not in methods"),
    ("methods: [ar, nosuch]\n", "unknown method 'nosuch'"),
    ("temperatures: []\n", "is an empty list"),
])
def test_bad_sweep_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["sweep", "--config", str(path), "--results-dir", str(tmp_path)])
    _one_line_error(result, message)


@pytest.mark.parametrize("args, message", [
    ([], "give an axis (e.g. specbench sweep batch-size [1 4]) or --config FILE"),
    (["colour", "red"], "unknown sweep axis 'colour'"),
    (["colour"], "unknown sweep axis 'colour'"),
    (["target"], "the target axis has no default values"),
    (["batch-size", "1", "--config", "x.yaml"], "not both"),
    (["--config", "/nonexistent/sweep.yaml"], "cannot read sweep file"),
    (["batch-size", "1", "--executor", "local", "--address", "auto"], "--address only applies"),
])
def test_bad_sweep_command_is_one_line(tmp_path, args, message):
    _one_line_error(CliRunner().invoke(cli, ["sweep", *args, "--results-dir", str(tmp_path)]), message)


def test_dry_run_lists_cells_and_runs_nothing(tmp_path):
    result = CliRunner().invoke(cli, ["sweep", "temperature", "0", "0.7", "--dry-run", *TINY,
                                      "--results-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "2 cells" in result.output and "ar-gsm8k-tiny-random-llama-t0.7-b1-s0-" in result.output
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_an_axis_without_values_sweeps_every_method_over_default_values():
    """Issue 23: `specbench sweep batch-size` as typed: every method of the product (AR = the noise floor)
    over the batch ladder, trimmed on a CPU to the batch sizes its default prompt count fills; CUDA gets
    the whole ladder and a default prompt count; typed --method / --limit win."""
    base = RunConfig(method="ar", suite="gsm8k", target="tiny-random-llama")
    assert PRODUCT_METHODS == ("ar", "pld", "eagle3", "flexdraft", "dflash", "bita", "mtp")
    grid, cpu_base, line = default_grid("batch-size", base, set(), "cpu")
    assert grid == {"method": list(PRODUCT_METHODS), "batch_size": [1, 2, 4, 8]} and cpu_base.limit is None
    assert line.startswith("default sweep: batch-size 1 2 4 8 (a CPU cell runs 10 prompts, so batch sizes stop at 8")
    assert "methods ar pld eagle3 flexdraft dflash bita mtp (ar: the noise floor) on gsm8k, 10 prompts x <= 128" in line
    grid, cuda_base, _ = default_grid("batch-size", base, set(), "cuda")
    assert grid["batch_size"] == [1, 2, 4, 8, 16] and cuda_base.limit == CUDA_SWEEP_LIMIT
    typed = dataclasses.replace(base, method="pld", limit=16)
    assert default_grid("batch-size", typed, {"method", "limit"}, "cpu")[0] == {"batch_size": [1, 2, 4, 8, 16]}
    assert default_grid("temperature", base, set(), "cpu")[0]["temperature"] == [0.0, 1.0]
    assert default_grid("depth", base, set(), "cpu")[0]["depth"] == [2, 3]
    assert default_grid("method", base, set(), "cpu")[0] == {"method": list(PRODUCT_METHODS)}


def test_dry_run_of_a_default_sweep_shows_the_grid_and_an_estimate(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECBENCH_CACHE_DIR", str(tmp_path / "cache"))  # no stored drafters
    result = CliRunner().invoke(cli, ["sweep", "batch-size", "--dry-run", "--device", "cpu", *TINY,
                                      "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].endswith(": 28 cells, executor local, results in " + str(tmp_path / "r"))
    assert lines[1].startswith("default sweep: batch-size 1 2 4 8 ")
    assert "mtp-gsm8k-tiny-random-llama-t0-b8-s0-" in result.output
    assert lines[-1].startswith("estimate: about ") and "28 at a rough 62 ms per token at batch 1 x b^-0.5 (cpu)" in lines[-1]
    assert "training 5 missing drafters first (eagle3, flexdraft, dflash, bita, mtp: 2 h 15 min)" in lines[-1]
    assert not (tmp_path / "r").exists()


def test_a_sweep_ends_with_its_report_and_report_opens_on_the_latest_sweep(tmp_path):
    """Issue 23: the sweep writes reports/<sweep_id>.html beside the results folder; `specbench report` with
    no arguments reports the most recent sweep's cells (`--all`: every run)."""
    results = tmp_path / "results"
    common = ["--method", "ar", "--limit", "1", "--max-new-tokens", "2", *TINY, "--results-dir", str(results)]
    older = CliRunner().invoke(cli, ["sweep", "seed", "5", "--sweep-id", "older", "--no-report", *common])
    assert older.exit_code == 0 and "report:" not in older.output.replace("report: specbench report", "")
    newer = CliRunner().invoke(cli, ["sweep", "temperature", "0", "--sweep-id", "newer", *common])
    assert newer.exit_code == 0, newer.output
    assert newer.output.strip().splitlines()[-1] == f"report: {tmp_path / 'reports' / 'newer.html'}"
    assert (tmp_path / "reports" / "newer.html").exists()
    out = tmp_path / "page.html"
    latest = CliRunner().invoke(cli, ["report", "--results-dir", str(results), "--out", str(out)])
    assert latest.exit_code == 0, latest.output
    assert latest.output.splitlines()[0].startswith("report of sweep newer, the most recent")
    assert latest.output.splitlines()[1].startswith(f"report: {out}")
    page = out.read_text()
    assert "-t0-b1-s0-" in page and "-s5-" not in page
    everything = CliRunner().invoke(cli, ["report", "--all", "--results-dir", str(results), "--out", str(out)])
    assert everything.exit_code == 0 and "-s5-" in out.read_text()


def test_typed_option_wins_over_the_sweep_file(tmp_path):
    """`--drafter DIR` on the command line must beat the file's `drafter: auto`, or a sweep meant for
    drafters trained elsewhere silently trains standard ones."""
    def ids(text, *extra):
        path = tmp_path / "s.yaml"
        path.write_text(text)
        result = CliRunner().invoke(cli, ["sweep", "--config", str(path), "--dry-run", *TINY, *extra,
                                          "--results-dir", str(tmp_path / "r")])
        assert result.exit_code == 0, result.output
        return [line.strip() for line in result.output.splitlines()[1:]]

    grid = "methods: [ar]\ntemperatures: [0]\n"
    typed = ids(grid + "drafter: auto\n", "--drafter", str(tmp_path))
    assert typed == ids(grid, "--drafter", str(tmp_path))
    assert typed != ids(grid + "drafter: auto\n")


# -- running ---------------------------------------------------------------------------------------------
def _files(run_dir: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(run_dir.iterdir())}


def test_failing_cell_is_recorded_the_sweep_goes_on_and_a_rerun_repairs_it(tmp_path, monkeypatch):
    from specbench.runner import Runner

    original = Runner.run_batch

    def out_of_memory(self, index, batch):
        if self.config.batch_size == 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, index, batch)

    args = ["sweep", "batch-size", "2", "1", "--limit", "2", "--max-new-tokens", "6", *TINY,
            "--results-dir", str(tmp_path)]
    monkeypatch.setattr(Runner, "run_batch", out_of_memory)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "1 of 2 cells failed" in result.output
    state_file = next((tmp_path / "sweeps").glob("sweep-*.json"))
    state = json.loads(state_file.read_text())
    by_bs = {c["config"]["batch_size"]: c for c in state["cells"]}
    assert by_bs[2]["status"] == "failed" and "CUDA out of memory" in by_bs[2]["error"]
    assert "RuntimeError" in by_bs[2]["traceback"] and by_bs[1]["status"] == "complete"  # the sweep went on
    assert state["status"] == "failed"
    done = _files(tmp_path / by_bs[1]["run_id"])
    page = tmp_path / "report.html"
    report = CliRunner().invoke(cli, ["report", "--sweep", state["sweep_id"], "--results-dir", str(tmp_path),
                                      "--out", str(page)])
    assert report.exit_code == 0, report.output
    assert "1 sweep cell(s) failed" in page.read_text() and "CUDA out of memory" in page.read_text()

    monkeypatch.setattr(Runner, "run_batch", original)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    state = json.loads(state_file.read_text())
    by_bs = {c["config"]["batch_size"]: c for c in state["cells"]}
    assert by_bs[1]["status"] == "skipped" and by_bs[2]["status"] == "complete" and by_bs[2]["attempts"] == 2
    assert [h["status"] for h in by_bs[2]["history"]] == ["failed", "complete"]
    assert _files(tmp_path / by_bs[1]["run_id"]) == done  # untouched
    assert "cached" in result.output and state["status"] == "complete"


def _cell_status(results: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for manifest in results.glob("*/manifest.json"):
        try:
            status = json.loads(manifest.read_text())["status"]
        except (json.JSONDecodeError, KeyError, OSError):
            continue
        records = manifest.parent / "records.jsonl"
        out[manifest.parent.name] = (status, records.stat().st_size if records.exists() else 0)
    return out


@pytest.fixture(scope="module")
def killed_sweep(tmp_path_factory):
    """The 2×2×2 sweep, SIGKILLed while a cell is half done (≥ 1 cell complete), then run again."""
    root = tmp_path_factory.mktemp("killed")
    config = root / "sweep.yaml"
    config.write_text(GRID_YAML)
    results = root / "results"
    cmd = [sys.executable, "-m", "specbench.cli", "sweep", "--config", str(config), "--results-dir", str(results),
           "--no-progress", "--sweep-id", "grid"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
    deadline = time.time() + 120
    before = None
    while time.time() < deadline and proc.poll() is None:
        cells = _cell_status(results)
        complete = [r for r, (s, _) in cells.items() if s == "complete"]
        partial = [r for r, (s, size) in cells.items() if s == "running" and size > 0]
        if complete and partial:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.01)
    assert proc.returncode == -signal.SIGKILL, f"sweep was not killed midway: {proc.returncode} {proc.stderr.read()}"
    proc.stderr.close()
    before = {r: _files(results / r) for r, (s, _) in _cell_status(results).items() if s == "complete"}
    partial = {r: (results / r / "records.jsonl").read_text() for r, (s, _) in _cell_status(results).items()
               if s == "running"}
    result = CliRunner().invoke(cli, ["sweep", "--config", str(config), "--results-dir", str(results),
                                      "--no-progress", "--sweep-id", "grid"])
    return {"root": root, "config": config, "results": results, "before": before, "partial": partial,
            "rerun": result}


def test_killed_sweep_resumes_without_recomputing_finished_cells(killed_sweep):
    rerun, results = killed_sweep["rerun"], killed_sweep["results"]
    assert rerun.exit_code == 0, rerun.output
    state = json.loads((results / "sweeps" / "grid.json").read_text())
    assert len(state["cells"]) == 8 and state["status"] == "complete"
    status = {c["run_id"]: c for c in state["cells"]}
    for run_id, files in killed_sweep["before"].items():
        assert status[run_id]["status"] == "skipped"
        assert _files(results / run_id) == files  # not a byte nor an mtime changed
    assert killed_sweep["partial"]
    for run_id, old_records in killed_sweep["partial"].items():
        manifest = json.loads((results / run_id / "manifest.json").read_text())
        assert manifest["status"] == "complete" and len(manifest["resumed"]) == 1
        assert manifest["executor"]["name"] == "local" and len(manifest["executor"]["load_average_1m"]) == 2
        kept = _intact(old_records)
        arms = {}
        for r in kept:
            arms.setdefault(r["prompt_id"], set()).add(r["arm"])
        finished = {(r["prompt_id"], r["arm"]) for r in kept if arms[r["prompt_id"]] == {"method", "baseline"}}
        now = {(r["prompt_id"], r["arm"]): r for r in map(json.loads, (results / run_id / "records.jsonl").open())}
        assert all(now[key]["turns"] == next(r for r in kept if (r["prompt_id"], r["arm"]) == key)["turns"]
                   for key in finished)  # finished prompts were kept, not recomputed
        assert status[run_id]["resumed_prompts"] == len({p for p, _ in finished}) > 0
    for entry in state["cells"]:
        summary = json.loads((results / entry["run_id"] / "summary.json").read_text())
        assert summary["n_prompts"] == 3


def _intact(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # the line the kill tore
    return out


def _tokens(results: Path) -> dict:
    out = {}
    for records in sorted(results.glob("*/records.jsonl")):
        for rec in map(json.loads, records.open()):
            out[(records.parent.name, rec["prompt_id"], rec["arm"])] = [t["output_ids"] for t in rec["turns"]]
    return out


def test_ray_sweep_gives_the_same_records_as_local(killed_sweep, tmp_path):
    """Same grid through Ray on a local CPU instance: same run ids, same tokens, at T = 0 and T > 0."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        result = CliRunner().invoke(cli, ["sweep", "--config", str(killed_sweep["config"]), "--executor", "ray",
                                          "--results-dir", str(tmp_path), "--no-progress", "--sweep-id", "grid"])
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    local, remote = _tokens(killed_sweep["results"]), _tokens(tmp_path)
    assert len(local) == 8 * 3 * 2 and local.keys() == remote.keys()
    assert local == remote
    sampled = {k for k in local if "-t0.8-" in k[0]}
    assert sampled and any(local[k] != local[(k[0], k[1], "baseline")] for k in sampled if k[2] == "method")
    manifest = json.loads(next(tmp_path.glob("*/manifest.json")).read_text())
    assert manifest["executor"]["name"] == "ray" and manifest["status"] == "complete"
    state = json.loads((tmp_path / "sweeps" / "grid.json").read_text())
    assert state["executor"]["name"] == "ray" and {c["status"] for c in state["cells"]} == {"complete"}


def test_ray_tasks_ask_for_a_gpu_only_for_cuda_cells(monkeypatch):
    from specbench.executors import RayExecutor

    monkeypatch.setenv("SPECBENCH_DATA_DIR", "/data")
    ex = RayExecutor(cpus_per_cell=2)
    cuda = ex.task_options(RunConfig(method="ar", suite="gsm8k", device="cuda"), cluster_gpus=0)
    auto_gpu = ex.task_options(RunConfig(method="ar", suite="gsm8k", device="auto"), cluster_gpus=4)
    cpu = ex.task_options(RunConfig(method="ar", suite="gsm8k", device="cpu"), cluster_gpus=4)
    assert cuda["num_gpus"] == 1 and auto_gpu["num_gpus"] == 1 and cpu["num_gpus"] == 0
    assert cpu["num_cpus"] == 2 and cpu["runtime_env"]["env_vars"]["SPECBENCH_DATA_DIR"] == "/data"


# -- learning curves: the snapshot axis (issue 22) -------------------------------------------------------
def _fake_drafter(folder: Path, method: str, step: int | None = None) -> Path:
    from specbench.training.drafter import FORMAT

    folder.mkdir(parents=True)
    training = {"snapshot": {"save_at": f"{step}", "step": step, "train_seconds": step, "tokens_seen": 10 * step}} \
        if step else {"budget": {"steps": 9}}
    (folder / "config.json").write_text(json.dumps({"format": FORMAT, "method": method, "training": training}))
    return folder


def test_snapshot_axis_makes_one_cell_per_drafter_point(tmp_path):
    file = tmp_path / "curves.yaml"
    file.write_text("methods: [ar, eagle3, flexdraft]\nsuites: [gsm8k]\ndrafter: auto\n"
                    "snapshots: [min-005.0, final]\n")
    grid, scalars = yaml_grid(file)
    base = RunConfig(method="ar", suite="gsm8k", target="tiny-random-llama", **scalars)
    cells = grid_cells(base, grid)
    assert [(c.config.method, c.config.drafter) for c in cells] == [
        ("ar", "auto"), ("eagle3", "auto@min-005.0"), ("eagle3", "auto"), ("flexdraft", "auto@min-005.0"),
        ("flexdraft", "auto")]
    assert cells[1].run_id.startswith("eagle3@min-005.0-gsm8k-")
    plain = grid_cells(base, {"method": ["eagle3"]})  # `final` is the cell a plain --drafter auto sweep runs
    assert plain[0].run_id == cells[2].run_id

    run = _fake_drafter(tmp_path / "eagle3-run", "eagle3")
    for step in (40, 5):
        _fake_drafter(run / "snapshots" / f"step-{step:06d}", "eagle3", step)
    cells = grid_cells(RunConfig(method="ar", suite="gsm8k"), axis_grid("snapshot", [str(run)]))
    assert [(c.config.method, Path(c.config.drafter).name) for c in cells] == [
        ("eagle3", "step-000005"), ("eagle3", "step-000040"), ("eagle3", "eagle3-run")]  # in training order
    one = grid_cells(RunConfig(method="ar", suite="gsm8k"), axis_grid("snapshot", [str(run / "snapshots" /
                                                                                        "step-000005")]))
    assert len(one) == 1 and one[0].config.method == "eagle3"
    alls = grid_cells(RunConfig(method="eagle3", suite="gsm8k", drafter=str(run)), axis_grid("snapshot", ["all"]))
    assert [c.run_id for c in alls] == [c.run_id for c in cells]
    with pytest.raises(SpecbenchError, match="snapshot 'all' needs --drafter DIR"):
        grid_cells(RunConfig(method="eagle3", suite="gsm8k"), axis_grid("snapshot", ["all"]))
    with pytest.raises(SpecbenchError, match="no drafter there"):
        grid_cells(RunConfig(method="eagle3", suite="gsm8k"), axis_grid("snapshot", [str(tmp_path / "none")]))


def test_snapshot_cells_run_each_snapshot_and_record_its_progress(tmp_path, monkeypatch, tiny_llama):
    """`sweep snapshot step-000001 final --drafter auto`: the store's drafter at its snapshot and at the end,
    each run's manifest saying how far it was trained."""
    import dataclasses

    from specbench.methods.eagle3 import Eagle3Drafter
    from specbench.training.budget import STANDARD_CPU
    from specbench.training.pipeline import train_drafter
    from specbench.training.store import store_path

    monkeypatch.setenv("SPECBENCH_CACHE_DIR", str(tmp_path / "cache"))
    small = dataclasses.replace(STANDARD_CPU, data="gsm8k:6", max_new_tokens=8, max_length=256, budget_minutes=None,
                                steps=2, batch_size=2, eval_size=2)
    folder = store_path(tiny_llama, Eagle3Drafter)  # where --drafter auto looks (standard recipe)
    train_drafter(Eagle3Drafter, tiny_llama, folder, small, overrides={"save_at": ("1",)}, progress=False,
                  log=lambda s: None)
    results = tmp_path / "results"
    res = CliRunner().invoke(cli, ["sweep", "snapshot", "step-000001", "final", "--method", "eagle3", "--drafter",
                                   "auto", "--no-train", "--limit", "1", "--max-new-tokens", "4", "--results-dir",
                                   str(results), *TINY])
    assert res.exit_code == 0, res.output
    blocks = {}
    for manifest in results.glob("*/manifest.json"):
        m = json.loads(manifest.read_text())
        blocks[m["config"]["drafter"]] = m["drafter"]
    assert set(blocks) == {"auto@step-000001", "auto"}
    snap, final = blocks["auto@step-000001"], blocks["auto"]
    assert (snap["snapshot"], snap["steps"], snap["total_steps"], snap["run"]) == ("1", 1, 2, str(folder))
    assert final["snapshot"] is None and final["steps"] == 2 and final["run"] == str(folder)
    assert 0 < snap["tokens_seen"] < final["tokens_seen"] and "tokens_seen_estimated" not in final
    res = CliRunner().invoke(cli, ["run", "--method", "eagle3", "--drafter", "auto@min-009.0", "--no-train",
                                   "--limit", "1", "--max-new-tokens", "4", "--results-dir", str(results), *TINY])
    _one_line_error(res, "has no snapshot 'min-009.0' (it has: step-000001")
