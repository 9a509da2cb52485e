"""Sweeps: a grid of cells (DESIGN.md §3 Runner, §6 `specbench sweep`), resumable cell by cell.

No existing harness sweeps method × suite × temperature × batch size × depth in one command or
resumes a half-finished matrix (research/harness_anchors.md §5.4). The design that makes that work:

* A cell's run id is derived from `RunConfig.cell_hash()`, so re-running the same sweep command finds
  its cells in the result store: complete cells are skipped without being touched, partial ones
  resume from their last finished batch (the runner flushes both arms of every prompt), and cells
  that never started run from scratch. The store is the truth; the sweep state file is a log.
* A failing cell (out of memory, exception, bad target) is recorded with its error in
  `results/sweeps/<sweep_id>.json` and the sweep goes on; the exit code says whether any failed.
* Cells only differ in their `RunConfig`, so the local and the Ray executor (executors.py) run the
  very same `run_cell` and write the same records.
* Learning curves (issue 22) are a sweep over drafters: the `snapshot` axis turns `--save-at` points
  into `--drafter SPEC@POINT` cells (`snapshot_drafters`), so each snapshot is its own cell and its run
  manifest carries the snapshot's training progress (`drafter_provenance`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from specbench.errors import SpecbenchError
from specbench.runner import RunConfig

#: CLI axis name -> (RunConfig field, value parser). The first five are DESIGN.md §6; seed and target added.
AXES = {
    "batch-size": ("batch_size", int),
    "temperature": ("temperature", float),
    "depth": ("depth", int),
    "suite": ("suite", str),
    "method": ("method", str),
    "seed": ("seed", int),
    "target": ("target", str),
    "snapshot": ("snapshot", str),  # not a RunConfig field: drafters, see `snapshot_drafters`
}

#: YAML key (plural or singular) -> RunConfig field; each takes one value or a list (a grid axis).
YAML_AXES = {
    "targets": "target", "target": "target",
    "methods": "method", "method": "method",
    "suites": "suite", "suite": "suite",
    "temperatures": "temperature", "temperature": "temperature",
    "batch_sizes": "batch_size", "batch_size": "batch_size",
    "depths": "depth", "depth": "depth",
    "seeds": "seed", "seed": "seed",
    "limits": "limit", "limit": "limit",
    "max_new_tokens": "max_new_tokens",
    "snapshots": "snapshot", "snapshot": "snapshot",
}
#: YAML keys that set one value for every cell: every other RunConfig field (top_p, dtype, device, warmup, …).
YAML_SCALARS = tuple(f.name for f in dataclasses.fields(RunConfig)
                     if f.name not in set(YAML_AXES.values()) | {"method_options"})
#: grid order: the target outermost, so a local sweep loads each target once.
GRID_ORDER = ("target", "method", "method_options", "suite", "depth", "temperature", "batch_size", "seed",
              "limit", "max_new_tokens")
_FIELD_TYPES = {"batch_size": int, "temperature": float, "depth": int, "seed": int, "limit": int,
                "max_new_tokens": int, "top_p": float, "top_k": int, "enable_thinking": bool, "warmup": bool,
                "no_train": bool, "method": str, "suite": str, "target": str, "device": str, "dtype": str}

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}

#: `specbench sweep AXIS` without values (issue 23) runs every method of the product (unless --method is
#: typed) against its AR arm; the AR cells (AR vs AR) are the timing noise floor
PRODUCT_METHODS = ("ar", "pld", "eagle3", "flexdraft", "dflash", "bita", "mtp")
#: default values per axis: the batch ladder, T = 0 and 1 (FlexDraft's Table 1), depths every method's
#: standard drafter allows (BiTA's M = 3 is the smallest), the README's three suites; a target needs values
DEFAULT_VALUES = {"batch-size": [1, 2, 4, 8, 16], "temperature": [0.0, 1.0], "depth": [2, 3],
                  "suite": ["gsm8k", "humaneval", "mtbench"], "method": list(PRODUCT_METHODS), "seed": [0, 1, 2]}
#: prompts per cell of a default sweep on CUDA (two batches at the largest batch size); on a CPU the
#: run's CPU defaults apply (runner.py `CPU_DEFAULTS`), and the ladder stops at that prompt count
CUDA_SWEEP_LIMIT = 32

SWEEPS_DIR = "sweeps"


@dataclass(frozen=True)
class Cell:
    """One grid point: its full config and the run id derived from the config's hash."""

    config: RunConfig
    run_id: str


def cell_run_id(config: RunConfig) -> str:
    """Readable and deterministic: the same config always maps to the same run directory."""
    target = config.target.replace("/", "_").replace(".gguf", "")[-40:]
    depth = f"-d{config.depth}" if config.depth is not None else ""
    snapshot = f"@{config.drafter.rpartition('@')[2]}" if config.drafter and "@" in config.drafter else ""
    return (f"{config.method}{snapshot}-{config.suite}-{target}-t{config.temperature:g}-b{config.batch_size}{depth}"
            f"-s{config.seed}-{config.cell_hash()}")


# -- grid expansion ------------------------------------------------------------------------------------
def _parse_value(field: str, raw, where: str):
    if field not in _FIELD_TYPES and field in YAML_SCALARS:
        return raw  # a field without a fixed scalar type here (e.g. a list of categories): validated by the run
    kind = _FIELD_TYPES.get(field, str)
    if raw is None and _DEFAULTS.get(field, 0) is None:
        return None  # the method's / suite's default (depth, limit, max_new_tokens, drafter, …)
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            raise ValueError
        if kind is int and isinstance(raw, float) and not raw.is_integer():
            raise ValueError
        if kind in (int, float) and isinstance(raw, bool):
            raise ValueError
        return kind(raw)
    except (TypeError, ValueError):
        raise SpecbenchError(f"{where}: {raw!r} is not a valid {field} ({kind.__name__})") from None


def expand(base: RunConfig, axes: dict[str, list]) -> list[Cell]:
    """The cartesian product of `axes` (RunConfig field -> values) over `base`, validated up front.

    Names are checked before anything runs (a typo should not surface after an hour of cells);
    duplicate cells collapse to one.
    """
    from specbench.methods import method_class
    from specbench.suites import get_suite

    fields = [f for f in GRID_ORDER if f in axes] + [f for f in axes if f not in GRID_ORDER]
    cells, seen = [], set()
    for combo in itertools.product(*(axes[f] for f in fields)):
        values = dict(zip(fields, combo))
        if "method_options" in values:
            values["method_options"] = {**base.method_options, **values["method_options"]}
        config = dataclasses.replace(base, **values)
        config.validate()
        method_class(config.method)
        get_suite(config.suite)
        cell = Cell(config, cell_run_id(config))
        if cell.run_id not in seen:
            seen.add(cell.run_id)
            cells.append(cell)
    return cells


def axis_grid(axis: str, raw_values: list[str]) -> dict[str, list]:
    """`specbench sweep batch-size 1 4 16` -> {"batch_size": [1, 4, 16]}."""
    if axis not in AXES:
        raise SpecbenchError(f"unknown sweep axis {axis!r}; choose one of: {', '.join(AXES)} (or --config FILE)")
    if not raw_values:
        raise SpecbenchError(f"give values for the {axis} axis, e.g. specbench sweep {axis} "
                             f"{'1 4' if AXES[axis][1] is int else '0 0.7' if axis == 'temperature' else 'A B'}")
    field, _ = AXES[axis]
    values = []
    for raw in raw_values:
        value = None if (field == "depth" and raw.lower() in ("default", "none")) else _parse_value(field, raw, axis)
        if value not in values:
            values.append(value)
    return {field: values}


def default_grid(axis: str, base: RunConfig, typed: set[str], device_type: str) -> tuple[dict, RunConfig, str]:
    """`specbench sweep AXIS` with no values: (grid, base config, the line that states it). Options typed
    on the command line (`--method`, `--limit`) win over these defaults."""
    from specbench.runner import CPU_DEFAULTS

    if axis not in AXES:
        axis_grid(axis, [])  # the unknown-axis error
    if axis not in DEFAULT_VALUES:
        raise SpecbenchError(f"the {axis} axis has no default values; give them, e.g. specbench sweep {axis} A B")
    field = AXES[axis][0]
    values = list(DEFAULT_VALUES[axis])
    if "limit" not in typed and device_type == "cuda":
        base = dataclasses.replace(base, limit=CUDA_SWEEP_LIMIT)
    prompts = base.limit or CPU_DEFAULTS["limit"]
    trimmed = ""
    if field == "batch_size" and device_type != "cuda":
        kept = [b for b in values if b <= prompts]
        trimmed = (f" (a CPU cell runs {prompts} prompts, so batch sizes stop at {kept[-1]}; --limit N and "
                   f"explicit values sweep larger ones)") if kept != values else ""
        values = kept
    grid = {field: values}
    if field != "method" and "method" not in typed:
        grid = {"method": list(PRODUCT_METHODS), **grid}
    methods = grid.get("method", [base.method])
    tokens = base.max_new_tokens or (CPU_DEFAULTS["max_new_tokens"] if device_type != "cuda" else None)
    size = f"{prompts} prompts" + (f" x <= {tokens} new tokens" if tokens else "")
    line = (f"default sweep: {axis} {' '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in values)}"
            f"{trimmed} x methods {' '.join(methods)}{' (ar: the noise floor)' if 'ar' in methods else ''} on "
            f"{base.suite if field != 'suite' else 'each suite'}, {size} per cell")
    return grid, base, line


def yaml_grid(path: str | Path) -> tuple[dict[str, list], dict]:
    """Read a sweep file: grid axes (lists) and scalar overrides; any problem is one line.

    ```yaml
    targets: [smollm2-135m]
    methods: [ar, pld, flexdraft]
    suites: [gsm8k]
    temperatures: [0, 1]
    batch_sizes: [1, 4]
    depths: [null]          # null: the method's default depth
    seeds: [0]
    limits: [20]
    max_new_tokens: 128
    method_options:         # per method: one option set, or a list of them (each a separate cell)
      flexdraft: [{mode: parallel}, {mode: sequential}]
    ```
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SpecbenchError(f"cannot read sweep file {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecbenchError(f"sweep file {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict) or not data:
        raise SpecbenchError(f"sweep file {path} must be a YAML mapping such as 'methods: [ar, pld]'")
    axes: dict[str, list] = {}
    scalars: dict = {}
    method_options = None
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key in YAML_AXES:
            field = YAML_AXES[key]
            if field in axes:
                raise SpecbenchError(f"sweep file {path}: {field} is given twice ({raw_key!r})")
            items = value if isinstance(value, list) else [value]
            if not items:
                raise SpecbenchError(f"sweep file {path}: {raw_key!r} is an empty list")
            parsed = []
            for item in items:
                v = _parse_value(field, item, f"sweep file {path}, {raw_key}")
                if v not in parsed:
                    parsed.append(v)
            axes[field] = parsed
        elif key in YAML_SCALARS:
            scalars[key] = _parse_value(key, value, f"sweep file {path}, {raw_key}")
        elif key == "method_options":
            method_options = value
        else:
            known = sorted({*YAML_AXES, *YAML_SCALARS, "method_options"})
            raise SpecbenchError(f"sweep file {path}: unknown key {raw_key!r}; known: {', '.join(known)}")
    if method_options is not None:
        _expand_method_options(axes, method_options, path)
    return axes, scalars


def _expand_method_options(axes: dict, method_options, path) -> None:
    """Turn per-method option sets into (method, options) pairs; other methods get no options.

    Methods and their options are one axis, not two: FlexDraft's `mode` must not be crossed with `ar`.
    """
    if not isinstance(method_options, dict):
        raise SpecbenchError(f"sweep file {path}: method_options must map a method name to options")
    methods = axes.get("method")
    if methods is None:
        raise SpecbenchError(f"sweep file {path}: method_options needs a 'methods' list")
    for name, sets in method_options.items():
        if name not in methods:
            raise SpecbenchError(f"sweep file {path}: method_options for {name!r}, which is not in methods")
        for opts in sets if isinstance(sets, list) else [sets]:
            if not isinstance(opts, dict):
                raise SpecbenchError(f"sweep file {path}: method_options.{name} must be a mapping or a list of them")
    pairs = []
    for name in methods:
        sets = method_options.get(name, {})
        for opts in sets if isinstance(sets, list) else [sets]:
            pairs.append((name, {str(k).replace("-", "_"): v for k, v in opts.items()}))
    del axes["method"]
    axes["method+options"] = pairs


def snapshot_drafters(drafter: str | None, points: list[str]) -> tuple[list[str], list[str]]:
    """The `snapshot` axis as drafters: (specs crossed with the methods, drafter folders that bring their
    own method).

    A point is a snapshot name of `drafter` (default `auto`): `min-005.0` -> `auto@min-005.0`, `final` ->
    `auto` (the finished drafter, the very cell a plain `--drafter auto` sweep has), `all` -> every
    snapshot of a drafter folder; or a drafter folder itself: the run it holds, each snapshot and the
    final drafter (a snapshot folder alone is one cell). Sweep files stay free of machine paths."""
    from specbench.training.pipeline import SNAPSHOTS
    from specbench.training.store import FINAL

    base = drafter or "auto"
    specs, folders = [], []

    def run_of(folder: Path) -> list[str]:
        snaps = sorted((p.parent for p in (folder / SNAPSHOTS).glob("*/config.json")), key=_progress)
        return [str(p) for p in snaps] + [str(folder)]

    for point in points:
        path = Path(point).expanduser()
        if (path / "config.json").is_file():
            folders += run_of(path)
        elif point == FINAL:
            specs.append(base)
        elif point == "all":
            if not (Path(base) / "config.json").is_file():
                raise SpecbenchError(f"snapshot 'all' needs --drafter DIR (a trained drafter folder), not {base!r}; "
                                     "name the snapshots instead (e.g. min-005.0 final)")
            folders += run_of(Path(base))
        elif "/" in point or point.startswith("."):
            raise SpecbenchError(f"snapshot {point!r}: no drafter there (config.json missing)")
        else:
            specs.append(f"{base}@{point}")
    return list(dict.fromkeys(specs)), list(dict.fromkeys(folders))


def _progress(folder: Path) -> tuple:
    """Sort key of a snapshot folder: its training step."""
    from specbench.training.drafter import drafter_provenance

    info = drafter_provenance(folder) or {}
    return (info.get("steps") or 0, folder.name)


def _snapshot_cells(base: RunConfig, axes: dict[str, list]) -> list[Cell]:
    """Cells of a grid with a `snapshot` axis: drafter specs crossed with the other axes, drafter folders
    paired with their own method; methods without a drafter get one cell, not one per snapshot."""
    from specbench.methods import method_class
    from specbench.training.drafter import read_drafter_config
    from specbench.training.store import split_snapshot

    rest = {k: v for k, v in axes.items() if k != "snapshot"}
    specs, folders = snapshot_drafters(base.drafter, axes["snapshot"])
    cells = grid_cells(base, {**rest, "drafter": specs}) if specs else []
    solo = {k: v for k, v in rest.items() if k not in ("method", "method+options")}
    for folder in folders:
        method = read_drafter_config(Path(folder))["method"]
        cells += grid_cells(base, {**solo, "method": [method], "drafter": [folder]})
    out, seen = [], set()
    for cell in cells:
        if ":" not in cell.config.method and not method_class(cell.config.method).needs_drafter:
            config = dataclasses.replace(cell.config, drafter=split_snapshot(cell.config.drafter)[0])
            cell = Cell(config, cell_run_id(config))
        if cell.run_id not in seen:
            seen.add(cell.run_id)
            out.append(cell)
    return out


def grid_cells(base: RunConfig, axes: dict[str, list]) -> list[Cell]:
    """`expand` that also understands the paired `method+options` axis from a sweep file and the
    `snapshot` axis."""
    if "snapshot" in axes:
        return _snapshot_cells(base, axes)
    if "method+options" not in axes:
        return expand(base, axes)
    pairs = axes["method+options"]
    rest = {k: v for k, v in axes.items() if k != "method+options"}
    cells, seen = [], set()
    targets = rest.pop("target", [base.target])
    for target in targets:  # keep the target outermost
        for method, opts in pairs:
            for cell in expand(base, {"target": [target], "method": [method], "method_options": [opts], **rest}):
                if cell.run_id not in seen:
                    seen.add(cell.run_id)
                    cells.append(cell)
    return cells


def default_sweep_id(cells: list[Cell]) -> str:
    """The same grid gets the same id, so a re-run updates the same state file."""
    blob = "\n".join(sorted(c.run_id for c in cells))
    return "sweep-" + hashlib.sha256(blob.encode()).hexdigest()[:8]


# -- the state file ------------------------------------------------------------------------------------
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class SweepState:
    """`results/sweeps/<sweep_id>.json`: each cell's status, error and timing, rewritten atomically.

    It survives a kill (each update replaces the file), but only as a log: on a re-run every cell's
    status is re-derived from its run directory, so a stale "running" entry does no harm.
    """

    def __init__(self, path: Path, data: dict):
        self.path = path
        self.data = data

    @classmethod
    def open(cls, results_dir: str | Path, sweep_id: str, cells: list[Cell], grid: dict, executor: dict):
        path = Path(results_dir) / SWEEPS_DIR / f"{sweep_id}.json"
        previous = {}
        if path.exists():
            try:
                previous = {c["run_id"]: c for c in json.loads(path.read_text()).get("cells", [])}
            except (OSError, json.JSONDecodeError, KeyError, TypeError):
                previous = {}
        entries = []
        for cell in cells:
            old = previous.get(cell.run_id, {})
            entries.append({"run_id": cell.run_id, "cell": cell.config.cell_hash(),
                            "config": dataclasses.asdict(cell.config), "status": "pending", "error": None,
                            "attempts": old.get("attempts", 0), "history": old.get("history", [])})
        data = {"sweep_id": sweep_id, "status": "running", "started": _now(), "updated": _now(),
                "executor": executor, "grid": {k: _jsonable(v) for k, v in grid.items()}, "cells": entries}
        path.parent.mkdir(parents=True, exist_ok=True)
        state = cls(path, data)
        state.save()
        return state

    def _entry(self, run_id: str) -> dict:
        return next(c for c in self.data["cells"] if c["run_id"] == run_id)

    def mark_started(self, run_id: str) -> None:
        entry = self._entry(run_id)
        entry.update(status="running", started=_now())
        entry["attempts"] += 1
        self.save()

    def record(self, outcome) -> None:
        entry = self._entry(outcome.run_id)
        entry.update(status=outcome.status, error=outcome.error, traceback=outcome.traceback,
                     elapsed_s=round(outcome.elapsed_s, 3), resumed_prompts=outcome.resumed_prompts,
                     finished=_now())
        entry["history"].append({"at": _now(), "status": outcome.status, "error": outcome.error})
        self.save()

    def finish(self, status: str | None = None) -> None:
        self.data["status"] = status or ("failed" if self.failed else "complete")
        self.save()

    @property
    def cells(self) -> list[dict]:
        return self.data["cells"]

    @property
    def failed(self) -> list[dict]:
        return [c for c in self.cells if c["status"] == "failed"]

    def save(self) -> None:
        self.data["updated"] = _now()
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)


def _jsonable(values):
    return [list(v) if isinstance(v, tuple) else v for v in values]


# -- running -------------------------------------------------------------------------------------------
def run_sweep(cells: list[Cell], results_dir: str | Path, executor, sweep_id: str, grid: dict) -> SweepState:
    """Run every cell with `executor`; returns the final state (its `failed` list drives the exit code)."""
    state = SweepState.open(results_dir, sweep_id, cells, grid, executor.describe())
    try:
        executor.run(cells, results_dir, on_start=state.mark_started, on_outcome=state.record)
    except KeyboardInterrupt:
        for entry in state.cells:
            if entry["status"] == "running":
                entry["status"] = "interrupted"
        state.finish("interrupted")
        raise
    state.finish()
    return state


def sweep_command(axis_and_values: tuple[str, ...], config_path: str | None, options: dict, executor_name: str,
                  address: str | None, cpus_per_cell: int, sweep_id: str | None, dry_run: bool,
                  typed: set[str] = frozenset(), report: bool = True) -> int:
    """The body of `specbench sweep`; returns the exit code (1 if any cell failed). `typed`: options
    given on the command line, which override the file's scalars (`--drafter DIR` over `drafter: auto`).
    A sweep ends by writing its report (`report_path`); `--dry-run` lists the cells and estimates the time."""
    import click

    from specbench.executors import make_executor
    from specbench.options import config_from_options
    from specbench.targets import resolve_device

    base = config_from_options(options)
    if config_path and axis_and_values:
        raise SpecbenchError("give either an axis with values or --config FILE, not both")
    defaults = None
    if config_path:
        grid, scalars = yaml_grid(config_path)
        base = dataclasses.replace(base, **{k: v for k, v in scalars.items() if k not in typed})
    elif len(axis_and_values) == 1:
        grid, base, defaults = default_grid(axis_and_values[0], base, typed, resolve_device(base.device).type)
    elif axis_and_values:
        grid = axis_grid(axis_and_values[0], list(axis_and_values[1:]))
    else:
        raise SpecbenchError("give an axis (e.g. specbench sweep batch-size [1 4]) or --config FILE")
    cells = grid_cells(base, grid)
    sweep_id = sweep_id or default_sweep_id(cells)
    executor = make_executor(executor_name, address=address, cpus_per_cell=cpus_per_cell,
                             progress=options["progress"])
    click.echo(f"{sweep_id}: {len(cells)} cells, executor {executor_name}, results in {options['results_dir']}")
    if defaults:
        click.echo(defaults)
    if dry_run:
        from specbench.estimate import estimate_sweep

        for cell in cells:
            click.echo(f"  {cell.run_id}")
        click.echo(estimate_sweep(cells, options["results_dir"]).line())
        return 0
    try:
        state = run_sweep(cells, options["results_dir"], executor, sweep_id, grid)
    except KeyboardInterrupt:
        click.echo("\ninterrupted; finished prompts are saved — run the same sweep command again to resume",
                   err=True)
        return 130
    print_sweep(state, options["results_dir"])
    if report:
        write_sweep_report(sweep_id, options["results_dir"])
    if state.failed:
        click.echo(f"error: {len(state.failed)} of {len(cells)} cells failed (details in {state.path})", err=True)
        return 1
    return 0


def report_path(results_dir: str | Path, sweep_id: str) -> Path:
    """`reports/<sweep_id>.html` beside the results folder (the repository layout: results/, reports/)."""
    return Path(results_dir).parent / "reports" / f"{sweep_id}.html"


def write_sweep_report(sweep_id: str, results_dir: str | Path) -> None:
    """The sweep's report page, or one line saying why there is none (no complete cell)."""
    import click

    from specbench.report import build_report

    try:
        files = build_report(sweep_ids=[sweep_id], results_dir=results_dir, out=report_path(results_dir, sweep_id))
    except SpecbenchError as e:
        click.echo(f"no report: {e}", err=True)
        return
    click.echo(f"report: {files.html}")


def print_sweep(state: SweepState, results_dir: str | Path) -> None:
    """The sweep summary table: one row per cell with its headline numbers or its error."""
    from rich.table import Table

    from specbench.results import RunDir
    from specbench.summary_table import _console, _fmt

    table = Table(title=f"{state.data['sweep_id']} · {len(state.cells)} cells")
    for col in ("status", "method", "suite", "target", "T", "batch", "depth", "seed", "τ", "speedup dec [95% CI]",
                "speedup e2e", "exact", "time s", "run_id / error"):
        table.add_column(col, overflow="fold")
    for entry in state.cells:
        c = entry["config"]
        run_dir = RunDir(Path(results_dir) / entry["run_id"])
        s = (run_dir.read_summary() if run_dir.summary_path.exists() else None) or {}
        ci = s.get("speedup_decode_ci95")
        dec = _fmt(s.get("speedup_decode")) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "")
        status = {"failed": "[red]failed[/red]", "skipped": "[dim]cached[/dim]"}.get(entry["status"], entry["status"])
        opts = ",".join(f"{k}={v}" for k, v in (c.get("method_options") or {}).items())
        table.add_row(status, c["method"] + (f" ({opts})" if opts else ""), c["suite"], c["target"],
                      _fmt(c["temperature"]), _fmt(c["batch_size"]), _fmt(s.get("depth", c.get("depth"))),
                      _fmt(c["seed"]), _fmt(s.get("tau")), dec if s else "—", _fmt(s.get("speedup_e2e")),
                      _fmt(s.get("exact_match_rate")) if c["temperature"] == 0 else "n/a",
                      _fmt(entry.get("elapsed_s"), 1),
                      entry["error"] if entry["status"] == "failed" else entry["run_id"])
    console = _console()
    console.print(table)
    console.print(f"sweep state: {state.path}   report: specbench report --sweep {state.data['sweep_id']} "
                  f"--results-dir {results_dir}")
