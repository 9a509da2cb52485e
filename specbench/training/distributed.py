"""Training on several processes with torch's own machinery (issue 22): `torchrun ... specbench train`.

torchrun sets `RANK`, `WORLD_SIZE`, `LOCAL_RANK` and the rendezvous address; `init_from_env` opens the
process group (gloo on CPU, NCCL on CUDA) and gives each rank its own GPU. The trainer then:

* wraps the drafter alone in `DistributedDataParallel` (the frozen target is loaded per process and
  never wrapped), so gradients are averaged across ranks;
* keeps `--grad-accum` the number of micro-batches per step over all ranks (the global batch is
  batch size x grad-accum, whatever the process count) and gives rank `r` micro-batches
  `step * grad_accum + m * world + r` of the one seeded stream: a step of `world` ranks sees exactly
  the micro-batches of one process, and its averaged gradient is that process's accumulated one;
* runs on rank 0's clock: rank 0's training seconds are broadcast after every step, so the budget
  re-plans and `--save-at` minutes are decided once and identically on every rank;
* evaluates, snapshots and checkpoints on rank 0 (each rank's RNG state is gathered into the
  checkpoint, so a resumed run continues every rank's stream).

With one process every function here is a no-op, so single-process training is unchanged.
"""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def launched() -> bool:
    """Started by torchrun (or any launcher that sets the env:// variables) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def env_shard() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) of a torchrun launch, (0, 1) otherwise: `specbench regen` shards by it."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))) if launched() else (0, 1)


def local_device(device: str) -> str:
    """This process's device under torchrun: "cuda:LOCAL_RANK" when it runs on GPUs, else `device`."""
    if launched() and (device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(torch.device(device))
    return device


def init_from_env(device: str) -> str:
    """Open the process group of a torchrun launch (NCCL on GPUs, gloo on CPUs) and return this rank's
    device; `device` unchanged for a single process."""
    if not launched():
        return device
    device = local_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        atexit.register(_close)  # NCCL warns at exit about groups left open
    return device


def _close() -> None:
    if dist.is_initialized():  # a launcher may have closed it already
        dist.destroy_process_group()


def broadcast_float(value: float, device: torch.device) -> float:
    """Rank 0's `value` on every rank (NCCL needs the tensor on the GPU)."""
    if world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    dist.broadcast(t, 0)
    return float(t.item())


def sum_ints(values: list[int], device: torch.device) -> list[int]:
    """Element-wise sum over ranks (token counts)."""
    if world()[1] == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.int64, device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return [int(x) for x in t.tolist()]


def gather(obj) -> list:
    """Every rank's `obj`, in rank order (RNG states for the checkpoint)."""
    rank, size = world()
    if size == 1:
        return [obj]
    out = [None] * size
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


class LossModule(nn.Module):
    """DDP synchronises what runs through `forward`; a drafter's training entry point is `loss(batch)`."""

    def __init__(self, drafter: nn.Module):
        super().__init__()
        self.drafter = drafter

    def forward(self, batch: dict):
        return self.drafter.loss(batch)


def loss_function(drafter: nn.Module, device: torch.device):
    """`(loss_fn(batch), no_sync())` for the training step: the drafter's own `loss` for one process,
    DDP around it for several. `no_sync` skips the all-reduce on all but the last accumulated
    micro-batch. Unused parameters are allowed: not every drafter touches every parameter each step."""
    import contextlib

    if world()[1] == 1:
        return drafter.loss, contextlib.nullcontext
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(LossModule(drafter), device_ids=[device.index] if device.type == "cuda" else None,
                                  find_unused_parameters=True)
    return ddp, ddp.no_sync
