"""Run `specbench train` in several gloo processes from a test, the way torchrun would (issue 22).

torchrun only sets `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT` and starts one
interpreter per rank; `run_ranks` does the same with `torch.multiprocessing.spawn` (one thread per
process), then runs a list of CLI invocations in order in every rank. A job may be interrupted at
its N-th training micro-batch on every rank at once (an exception before that micro-batch's
all-reduce, so the group stays usable), which leaves the last checkpoint as a killed run would.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path


class Interrupted(Exception):
    """The injected stop of an interrupted job."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(world: int, jobs: list[tuple[list[str], int | None]], env: dict[str, str], log: Path) -> None:
    """Run CLI `jobs` — (argv, interrupt at micro-batch N or None) — in `world` processes; each rank appends
    one JSON line per job to `log`: job, rank, the training micro-batches it ran and, for an interrupted
    job, the checkpoint step left."""
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(world, free_port(), jobs, env, str(log)), nprocs=world, join=True)


def _rank(rank: int, world: int, port: int, jobs, env: dict, log: str) -> None:
    os.environ.update(env)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch

    torch.set_num_threads(1)
    from specbench.cli import cli
    from specbench.testing.train_drafters import SkipHeadDrafter

    real_loss = SkipHeadDrafter.loss
    for index, (argv, stop_at) in enumerate(jobs):
        calls = {"n": 0}

        def loss(drafter, batch, stop_at=stop_at, calls=calls):
            if torch.is_grad_enabled():
                calls["n"] += 1
                if calls["n"] == stop_at:
                    raise Interrupted
            return real_loss(drafter, batch)

        SkipHeadDrafter.loss = loss
        entry = {"job": index, "rank": rank}
        try:
            cli.main(argv, standalone_mode=False)
        except Interrupted:
            torch.distributed.barrier()  # rank 0 may still be writing the checkpoint of the step before
            out = Path(argv[argv.index("--out") + 1])
            entry["checkpoint_step"] = json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"]
        finally:
            SkipHeadDrafter.loss = real_loss
        entry["micro_batches"] = calls["n"]
        with open(log, "a") as f:  # one short line per rank and job: O_APPEND keeps lines whole
            f.write(json.dumps(entry) + "\n")
    if torch.distributed.is_initialized():
        # tear the group down in step, not at interpreter exit: a rank whose gloo threads were still joinable
        # there once died with SIGABRT after every job had finished (stop 32's full test run)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
