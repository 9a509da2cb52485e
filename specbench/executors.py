"""Executors run sweep cells: `local` (in this process, one after another) and `ray` (cells as tasks).

Both call the same `run_cell`, which writes into the same result store, so where a cell ran never
changes its records (DESIGN.md §3 Executor). Sampling seeds come from the cell config and the batch
(runner.py `_generator`), not from process state, so a cell gives the same tokens wherever it runs.

Timing caveat: cells that run concurrently on one CPU compete for its cores. Each cell's speedup stays
paired (method and AR interleave in the same process), but absolute tokens/s drop; the executor and
its concurrency are written into every manifest (`executor`) so a report can say so.
"""

from __future__ import annotations

import os
import shutil
import time
import traceback as _traceback
from dataclasses import dataclass
from pathlib import Path

from specbench.errors import SpecbenchError
from specbench.results import ResultStore, RunDir
from specbench.runner import RunConfig

#: environment a Ray task inherits from the driver (data and cache locations, hub mode)
FORWARDED_ENV = ("SPECBENCH_DATA_DIR", "SPECBENCH_CACHE_DIR", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                 "TOKENIZERS_PARALLELISM")


@dataclass
class CellOutcome:
    run_id: str
    status: str  # "complete" (ran now) | "skipped" (was complete already) | "failed"
    error: str | None = None
    traceback: str | None = None
    resumed_prompts: int = 0  # prompts found finished when the cell started (0: it ran from scratch)
    elapsed_s: float = 0.0


def cell_is_complete(run_dir: RunDir) -> bool:
    if not (run_dir.manifest_path.exists() and run_dir.summary_path.exists()):
        return False
    try:
        return run_dir.read_manifest().get("status") == "complete"
    except SpecbenchError:
        return False


def run_cell(config: RunConfig, run_id: str, results_dir: str | Path, progress: bool = False, target=None,
             executor: dict | None = None) -> CellOutcome:
    """Run one cell to completion: skip it if complete, resume it if partial, else start it.

    Any exception becomes a failed outcome (the sweep goes on); Ctrl-C / SIGTERM propagate.
    """
    from specbench.runner import Runner

    start = time.perf_counter()
    store = ResultStore(results_dir)
    run_dir = RunDir(store.root / run_id)
    resumed = 0
    try:
        if cell_is_complete(run_dir):
            return CellOutcome(run_id, "skipped", elapsed_s=time.perf_counter() - start)
        if run_dir.path.exists() and not run_dir.manifest_path.exists():
            shutil.rmtree(run_dir.path)  # killed before its manifest was written: nothing recorded yet
        runner = Runner(config, store, progress=progress, target=target)
        load_before = _load_average()
        if run_dir.path.exists():
            stored = run_dir.read_manifest().get("cell")
            if stored != config.cell_hash():
                raise SpecbenchError(f"run directory {run_id} holds cell {stored}, not {config.cell_hash()}")
            resumed = len(run_dir.completed_prompt_ids())
            runner.run(resume=run_dir)
        else:
            runner.run(run_id=run_id)
        if executor:
            run_dir.update_manifest(executor={**executor, "cpu_count": os.cpu_count(),
                                              "load_average_1m": [load_before, _load_average()]})
        return CellOutcome(run_id, "complete", resumed_prompts=resumed, elapsed_s=time.perf_counter() - start)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 — a failing cell must not stop the sweep
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return CellOutcome(run_id, "failed", error=f"{type(e).__name__}: {message}".rstrip(": "),
                           traceback=None if isinstance(e, SpecbenchError) else _traceback.format_exc()[-4000:],
                           resumed_prompts=resumed, elapsed_s=time.perf_counter() - start)


def _load_average() -> float | None:
    """1-minute load average: timings taken while it exceeds the CPU count were contended (report warns)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _target_key(config: RunConfig) -> tuple:
    from specbench.suites import get_suite

    system_prompt = config.system_prompt or get_suite(config.suite).system_prompt
    return (config.target, config.device, config.dtype, system_prompt, config.enable_thinking)


class LocalExecutor:
    """Cells one after another in this process; a loaded target is reused by the cells that follow.

    Only one target is kept (the grid puts the target outermost), so memory stays that of one run.
    """

    name = "local"

    def __init__(self, progress: bool = True):
        self.progress = progress

    def describe(self) -> dict:
        return {"name": self.name, "concurrent_cells": 1}

    def _target(self, config: RunConfig, cache: dict):
        from specbench.targets import load_target

        key = _target_key(config)
        if key not in cache:
            cache.clear()
            cache[key] = load_target(config.target, config.device, config.dtype, system_prompt=key[3],
                                     enable_thinking=config.enable_thinking)
        return cache[key]

    def run(self, cells, results_dir, on_start, on_outcome) -> None:
        cache: dict = {}
        for cell in cells:
            if cell_is_complete(RunDir(Path(results_dir) / cell.run_id)):
                on_outcome(CellOutcome(cell.run_id, "skipped"))
                continue
            on_start(cell.run_id)
            start = time.perf_counter()
            try:
                target = self._target(cell.config, cache)
            except Exception as e:  # noqa: BLE001 — recorded like any other cell failure
                on_outcome(CellOutcome(cell.run_id, "failed", error=f"{type(e).__name__}: {e}".splitlines()[0],
                                       elapsed_s=time.perf_counter() - start))
                continue
            on_outcome(run_cell(cell.config, cell.run_id, results_dir, self.progress, target, self.describe()))


def _ray_cell(config: RunConfig, run_id: str, results_dir: str, threads: int, executor: dict) -> CellOutcome:
    """A Ray task: one cell in a worker process, with as many torch threads as CPUs it reserved."""
    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads > 0:
        torch.set_num_threads(threads)
    return run_cell(config, run_id, results_dir, progress=False, executor=executor)


class RayExecutor:
    """Cells as Ray tasks: one GPU per task when the cell runs on CUDA, else `cpus_per_cell` CPUs.

    `address=None` starts a local Ray instance (stopped again afterwards); `auto` or `ray://…` joins a
    cluster. Workers write straight into `results_dir`, so on several nodes it must be a shared
    filesystem and specbench must be installed on every node.
    """

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_cell: int = 1, init_kwargs: dict | None = None):
        self.address = address
        self.cpus_per_cell = cpus_per_cell
        self.init_kwargs = init_kwargs or {}
        self._concurrency = None

    def describe(self) -> dict:
        return {"name": self.name, "address": self.address, "cpus_per_cell": self.cpus_per_cell,
                "concurrent_cells": self._concurrency}

    def task_options(self, config: RunConfig, cluster_gpus: float) -> dict:
        """Ray resources for one cell: a whole GPU for a CUDA cell, else `cpus_per_cell` CPUs.

        `device=auto` asks for a GPU when the cluster has one (the head node may have none), and the
        driver's SPECBENCH_* / HF_* variables travel with the task so workers find the same data.
        """
        gpu = config.device.startswith("cuda") or (config.device == "auto" and cluster_gpus > 0)
        env = {k: v for k, v in os.environ.items() if k in FORWARDED_ENV}
        options = {"num_gpus": 1 if gpu else 0, "num_cpus": self.cpus_per_cell, "max_retries": 0}
        if env:
            options["runtime_env"] = {"env_vars": env}
        return options

    def run(self, cells, results_dir, on_start, on_outcome) -> None:
        try:
            import ray
        except ImportError:
            raise SpecbenchError("the ray executor needs Ray: pip install 'specbench[ray]'") from None
        started_here = not ray.is_initialized()
        if started_here:
            kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR",
                      **self.init_kwargs}
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise SpecbenchError(f"cannot start or reach Ray at {self.address or 'a new local instance'}: "
                                     f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        try:
            self._run(ray, cells, str(Path(results_dir).resolve()), on_start, on_outcome)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, ray, cells, results_dir, on_start, on_outcome) -> None:
        resources = ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 1)
        task = ray.remote(_ray_cell)
        pending = {}
        for cell in cells:
            if cell_is_complete(RunDir(Path(results_dir) / cell.run_id)):
                on_outcome(CellOutcome(cell.run_id, "skipped"))
                continue
            options = self.task_options(cell.config, gpus)
            gpu = options["num_gpus"] > 0
            self._concurrency = int(gpus) if gpu else max(1, int(cpus // self.cpus_per_cell))
            ref = task.options(**options).remote(cell.config, cell.run_id, results_dir,
                                                 0 if gpu else self.cpus_per_cell, self.describe())
            pending[ref] = cell
            on_start(cell.run_id)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(done[0])
            try:
                outcome = ray.get(done[0])
            except Exception as e:  # noqa: BLE001 — a worker that died (OOM kill, segfault) fails its cell
                outcome = CellOutcome(cell.run_id, "failed", error=f"{type(e).__name__}: "
                                      f"{str(e).strip().splitlines()[0] if str(e).strip() else 'worker died'}")
            on_outcome(outcome)


def make_executor(name: str, address: str | None = None, cpus_per_cell: int = 1, progress: bool = True):
    if cpus_per_cell < 1:
        raise SpecbenchError(f"--cpus-per-cell must be >= 1, got {cpus_per_cell}")
    if name == "local":
        if address:
            raise SpecbenchError("--address only applies to --executor ray")
        return LocalExecutor(progress=progress)
    if name == "ray":
        return RayExecutor(address=address, cpus_per_cell=cpus_per_cell)
    raise SpecbenchError(f"unknown executor {name!r}; choose local or ray")
