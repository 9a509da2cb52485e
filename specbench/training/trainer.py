"""The shared trainer: one loop for every method's drafter (style.md, nanoGPT; issue 5).

AdamW with linear warm-up and cosine decay, gradient clipping and accumulation, fp32 on CPU and bf16
autocast on CUDA, a held-out eval every `eval_every` steps, checkpoints every `checkpoint_every`
steps. A method only supplies `Drafter.loss(batch)`; the frozen target's features are captured here
when the drafter asks for them.

Resume is exact: the checkpoint holds the drafter, AdamW's moments and step counts, every RNG state
and the step; the data order is a pure function of (seed, step) and the learning rate a pure
function of the step, so an interrupted run continues bit-for-bit as if it had not stopped (fp32).
A `--budget-minutes` run plans a fixed step count (the cosine schedule needs a total) from the
steady state: one untimed warm-up micro-batch, then the median of timed micro-batches and AdamW
steps on a throwaway optimizer (weights and RNG restored afterwards). Warm-up costs (CUDA init,
allocator growth, first-call kernel selection, start-up contention) can still skew that, so after
the first few real steps, still inside the LR warm-up, the total is re-planned from their
measured wall time to fit the rest of the budget, and again at a quarter, half and three quarters of
the total from the steps since the previous re-plan: drafters trained side by side on one GPU speed
up when a neighbour finishes, and a single early re-plan left one of them half its budget unused.
The cosine schedule follows the newest total. The plan and its re-plans are stored in the
checkpoint, so a resumed run keeps the same total and the same remaining re-plan points.

Under `torchrun` the same loop runs on every rank (distributed.py): the drafter alone in DDP, each rank
its share of the micro-batches, rank 0's clock for the planner and `--save-at`, eval, snapshots and
checkpoints on rank 0. One process runs exactly the single-process loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from specbench.errors import SpecbenchError
from specbench.provenance import load_average
from specbench.training import distributed
from specbench.training.data import TrainExample, collate
from specbench.training.features import target_features

CHECKPOINT = "checkpoint"


@dataclass
class TrainConfig:
    steps: int | None = None  # optimizer steps; or
    budget_minutes: float | None = None  # training wall time, planned as steps (see `estimate_step_seconds`)
    batch_size: int = 8  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step, over all ranks (each rank takes grad_accum / world)
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_every: int = 100  # steps; the final step is always evaluated
    eval_size: int = 64  # held-out sequences
    checkpoint_every: int = 50
    seed: int = 0
    #: snapshot points of one run (`--save-at`): "N" steps, "F" (0 < F < 1) a fraction of the total
    #: steps, "Mm" minutes of training wall time; see `snapshot_due`
    save_at: tuple[str, ...] = ()

    def validate(self) -> None:
        if (self.steps is None) == (self.budget_minutes is None):
            raise SpecbenchError("give exactly one of --steps N or --budget-minutes M")
        if self.steps is not None and self.steps < 1:
            raise SpecbenchError(f"--steps must be >= 1, got {self.steps}")
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            raise SpecbenchError(f"--budget-minutes must be > 0, got {self.budget_minutes}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise SpecbenchError("--batch-size and --grad-accum must be >= 1")
        for point in self.save_at:
            parse_save_point(point)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_save_point(point: str) -> tuple[str, float]:
    """`"200"` -> ("steps", 200), `"0.25"` -> ("fraction", 0.25), `"5m"` -> ("minutes", 5.0); one-line
    error on anything else."""
    text = str(point).strip().lower()
    try:
        if text.endswith("m"):
            value = float(text[:-1])
            if value > 0:
                return "minutes", value
        elif "." in text:
            value = float(text)
            if 0 < value < 1:
                return "fraction", value
        elif int(text) >= 1:
            return "steps", int(text)
    except ValueError:
        pass
    raise SpecbenchError(f"--save-at takes steps (200), fractions of the run (0.25) or training minutes (5m); "
                         f"got {point!r}")


def snapshot_due(point: str, step: int, total: int, train_seconds: float) -> bool:
    """Whether snapshot `point` is reached after `step` of `total` steps and `train_seconds` of training.
    A point past the end of the run falls on its last step, so every asked-for snapshot exists."""
    kind, value = parse_save_point(point)
    reached = {"steps": step >= value, "fraction": step >= value * total,
               "minutes": train_seconds >= value * 60}[kind]
    return reached or step == total


def snapshot_name(point: str) -> str:
    """Folder name of a snapshot under `out/snapshots/`: sortable within a kind (`step-000200`,
    `frac-0.250`, `min-005.0`)."""
    kind, value = parse_save_point(point)
    return {"steps": f"step-{int(value):06d}", "fraction": f"frac-{value:.3f}", "minutes": f"min-{value:05.1f}"}[kind]


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up to `lr`, then cosine decay to `min_lr_ratio * lr` at the last step."""
    warmup = max(1, round(cfg.warmup_ratio * total))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def micro_batch(examples: list[TrainExample], index: int, batch_size: int, seed: int) -> list[TrainExample]:
    """Micro-batch `index` of an endless stream of seeded epoch permutations (partial tails dropped)."""
    n = len(examples)
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(index, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return [examples[i] for i in order[k * batch_size:(k + 1) * batch_size].tolist()]


def prepare_batch(drafter, target, examples: list[TrainExample]) -> dict:
    """Collate on the target's device and add the frozen target's features / logits if asked for."""
    pad = target.tokenizer.pad_token_id or 0
    batch = {k: v.to(target.device) for k, v in collate(examples, pad).items()}
    layers = drafter.feature_layers()
    if layers or drafter.needs_target_logits:
        features, logits = target_features(target, batch["input_ids"], layers or [0], drafter.needs_target_logits)
        if layers:
            batch["features"] = features
        if logits is not None:
            batch["target_logits"] = logits
    return batch


def autocast(device: torch.device):
    """bf16 autocast on CUDA; plain fp32 on CPU (where bf16 matmuls are slower and lossless checks are fp32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def evaluate(drafter, target, examples: list[TrainExample], cfg: TrainConfig) -> dict:
    """Mean loss and metrics on the held-out split, with a fixed RNG so evals are comparable."""
    if not examples:
        return {}
    drafter.eval()
    totals: dict[str, float] = {}
    n = 0
    devices = [target.device] if target.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed + 17)
        for start in range(0, len(examples), cfg.batch_size):
            chunk = examples[start:start + cfg.batch_size]
            with autocast(target.device):
                loss, metrics = drafter.loss(prepare_batch(drafter, target, chunk))
            for k, v in {"loss": loss.item(), **metrics}.items():
                if isinstance(v, (int, float)):
                    totals[k] = totals.get(k, 0.0) + float(v) * len(chunk)
            n += len(chunk)
    drafter.train()
    return {k: v / n for k, v in totals.items()}


# -- checkpoints ---------------------------------------------------------------------------------------

def save_checkpoint(out: Path, drafter, optimizer, state: dict, other_ranks: list = ()) -> None:
    """`out/checkpoint/`: drafter and AdamW tensors and RNG states (safetensors) + `trainer_state.json`.

    Written to a temporary folder and swapped in, so an interruption leaves the previous checkpoint.
    `other_ranks`: the RNG states of ranks 1.. of a distributed run (rank 0's are this process's).
    """
    from safetensors.torch import save_file

    tmp, final, old = out / (CHECKPOINT + ".tmp"), out / CHECKPOINT, out / (CHECKPOINT + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in drafter.state_dict().items()},
              tmp / "drafter.safetensors")
    opt = optimizer.state_dict()
    tensors = {f"optimizer.{pid}.{name}": value.detach().cpu().clone().contiguous()
               for pid, slots in opt["state"].items() for name, value in slots.items()}
    rng = rng_state()
    tensors["rng.torch"] = rng["torch"]
    for i, s in enumerate(rng.get("cuda", [])):
        tensors[f"rng.cuda.{i}"] = s
    for r, other in enumerate(other_ranks, 1):
        tensors[f"rank{r}.rng.torch"] = other["torch"]
        for i, s in enumerate(other.get("cuda", [])):
            tensors[f"rank{r}.rng.cuda.{i}"] = s
    save_file(tensors, tmp / "trainer_state.safetensors")
    groups = [{k: v for k, v in g.items()} for g in opt["param_groups"]]
    ranks = {"rank_python_rng": [o["python"] for o in other_ranks]} if other_ranks else {}
    (tmp / "trainer_state.json").write_text(json.dumps({**state, "param_groups": groups,
                                                        "python_rng": rng["python"], **ranks}, indent=1, default=str))
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(out: Path, drafter, optimizer, rank: int = 0) -> dict | None:
    """Restore drafter, optimizer and `rank`'s RNG from `out/checkpoint`; returns the saved trainer state."""
    from safetensors.torch import load_file

    folder = out / CHECKPOINT
    if not (folder / "trainer_state.json").exists():
        folder = out / (CHECKPOINT + ".old")  # interrupted between the two renames
        if not (folder / "trainer_state.json").exists():
            return None
    state = json.loads((folder / "trainer_state.json").read_text())
    drafter.load_state_dict(load_file(folder / "drafter.safetensors"))
    tensors = load_file(folder / "trainer_state.safetensors")
    slots: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            slots.setdefault(int(pid), {})[name] = value
    groups = state.pop("param_groups")
    for g in groups:
        g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": slots, "param_groups": groups})
    py = state.pop("python_rng")
    ranks = state.pop("rank_python_rng", [])
    prefix = "" if rank == 0 else f"rank{rank}."
    if rank > 0:
        if rank > len(ranks):
            return state  # saved by fewer ranks: the caller refuses the run (its identity differs)
        py = ranks[rank - 1]
    cuda = sorted((t for t in tensors if t.startswith(prefix + "rng.cuda.")), key=lambda t: int(t.rsplit(".", 1)[1]))
    set_rng_state({"torch": tensors[prefix + "rng.torch"], "python": (py[0], tuple(py[1]), py[2]),
                   **({"cuda": [tensors[k] for k in cuda]} if cuda else {})})
    return state


# -- the loop --------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    steps: int
    seconds: float  # wall time of this process's training steps (eval and checkpoints excluded)
    tokens: int  # non-pad tokens through the drafter in those steps (all ranks)
    supervised_tokens: int
    final_eval: dict
    train_metrics: dict  # last step's
    history: list = field(default_factory=list)
    plan: dict = field(default_factory=dict)  # a budget run's planned / re-planned step counts and step times
    total_seconds: float = 0.0  # training wall time over every session of the run
    tokens_seen: int = 0  # tokens through the drafter over every session and rank of the run
    supervised_tokens_seen: int = 0
    world_size: int = 1

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def _clock(device: torch.device) -> float:
    """Training time as the budget counts it (`clock_name`). On CUDA: wall time once the device's queued
    work is done. On a CPU: this process's CPU time per torch thread, so other work sharing the cores
    (a second training run, a test suite) does not eat the budget: a run gets the same compute whatever
    else the machine does, and on an otherwise idle machine this is its wall time (issue 19: equal
    budgets under equal rules)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time() / torch.get_num_threads()


def clock_name(device: torch.device) -> str:
    return "wall" if device.type == "cuda" else "cpu-time/thread"


def estimate_step_seconds(drafter, target, examples, cfg: TrainConfig, timed: int = 3) -> float:
    """Steady-state seconds per optimizer step; the drafter's weights, the RNG and the real optimizer are untouched.

    One untimed warm-up micro-batch and optimizer step (CUDA init, allocator growth, first-call kernel
    selection), then `timed` more: the median micro-batch (batch, forward, backward) times this rank's
    share of `grad_accum`,
    plus the median clip + AdamW step, run on a throwaway AdamW whose updates are undone.
    """
    saved_rng = rng_state()
    params = [p for p in drafter.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    optimizer = make_optimizer(params, cfg)
    micro, update = [], []
    for i in range(1 + timed):
        t0 = _clock(target.device)
        batch = prepare_batch(drafter, target, micro_batch(examples, i, cfg.batch_size, cfg.seed))
        with autocast(target.device):
            loss, _ = drafter.loss(batch)
        loss.backward()
        t1 = _clock(target.device)
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t2 = _clock(target.device)
        if i > 0:
            micro.append(t1 - t0)
            update.append(t2 - t1)
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s)
    del optimizer, saved
    set_rng_state(saved_rng)
    return _median(micro) * (cfg.grad_accum // distributed.world()[1]) + _median(update)


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def plan_steps(step_seconds: float, cfg: TrainConfig, n_eval: int, seconds: float | None = None,
               minimum: int = 1) -> int:
    """Optimizer steps that fit `seconds` (default: the whole budget), counting evals (a forward-only
    pass costs ~1/3 of a step)."""
    eval_seconds = step_seconds / cfg.grad_accum * math.ceil(n_eval / cfg.batch_size) / 3
    per_step = step_seconds + eval_seconds / max(1, cfg.eval_every)
    seconds = cfg.budget_minutes * 60 if seconds is None else seconds
    return max(minimum, int(seconds / per_step))


REPLAN_FRACTIONS = (0.25, 0.5, 0.75)


def replan_after(total: int, cfg: TrainConfig) -> int:
    """The step after which a budget run first re-plans: at most 10, and inside the LR warm-up."""
    return min(10, max(1, round(cfg.warmup_ratio * total)))


def next_replan(plan: dict, total: int) -> int | None:
    """The step of the next re-plan: the first one, then each of `REPLAN_FRACTIONS` of the current total
    once, in order; None once they are all done. A re-plan moves the total, so a fraction is never placed
    closer than the first window (`replan_after` steps) to the previous re-plan: a window of one step is
    timing noise, not a speed."""
    replans = plan.get("replans", [])
    if not replans:
        return plan["replan_after"]
    if len(replans) > len(REPLAN_FRACTIONS):
        return None
    return max(round(REPLAN_FRACTIONS[len(replans) - 1] * total), replans[-1]["after"] + plan["replan_after"])


def plan_line(cfg: TrainConfig, plan: dict) -> str:
    line = (f"budget {cfg.budget_minutes:g} min: planned {plan['planned_steps']} steps "
            f"({plan['planned_step_seconds']:.3g} s/step)")
    for replan in plan.get("replans", []):
        line += (f", re-planned to {replan['steps']} after {replan['after']} steps "
                 f"({replan['step_seconds']:.3g} s/step)")
    return line


def train(drafter, target, train_set: list[TrainExample], eval_set: list[TrainExample], cfg: TrainConfig,
          out: str | Path, run_info: dict, progress: bool = True, log=print, on_snapshot=None) -> TrainResult:
    """Train `drafter` (attached to `target`) and checkpoint under `out`; resumes from `out/checkpoint`.

    `run_info` (method, target, data, budget...) is stored with every checkpoint; resuming a
    checkpoint written for different `run_info` or `cfg` is refused. At each `cfg.save_at` point
    `on_snapshot(name, progress)` is called with the drafter as it is then (after a held-out eval), where
    `progress` holds the step, total steps, training seconds, tokens seen and that eval; the points
    already taken are kept in the checkpoint, so a resumed run takes each one once.

    In a process group (distributed.py) every rank calls this; only rank 0 logs, evaluates, calls
    `on_snapshot` and writes checkpoints, and the result's eval is rank 0's.
    """
    from tqdm.auto import tqdm

    cfg.validate()
    if not train_set:
        raise SpecbenchError("no training sequences (all prompts filtered out?)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target.model.requires_grad_(False)
    target.model.eval()
    drafter.train()
    params = [p for p in drafter.parameters() if p.requires_grad]
    if not params:
        raise SpecbenchError(f"drafter {drafter.method} has no trainable parameters")
    optimizer = make_optimizer(params, cfg)
    rank, world_size = distributed.world()
    if cfg.grad_accum % world_size:
        raise SpecbenchError(f"--grad-accum {cfg.grad_accum} must be a multiple of the {world_size} processes: the "
                             "global batch is batch size x grad-accum, and each process takes an equal share")
    per_rank = cfg.grad_accum // world_size
    main = rank == 0
    log = log if main else (lambda line: None)
    identity = {"run_info": run_info, "config": cfg.as_dict()}
    if world_size > 1:  # absent for one process, so single-process checkpoints keep their identity
        identity["world_size"] = world_size

    torch.manual_seed(cfg.seed + 1_000_003 * rank)  # ranks draw different dropout / anchors
    random.seed(cfg.seed + rank)
    state = load_checkpoint(out, drafter, optimizer, rank)
    if state is not None:
        if json.loads(json.dumps(identity, default=str)) != state["identity"]:
            raise SpecbenchError(f"{out} holds a checkpoint of a different training run (or process count); use "
                                 "another --out or delete its checkpoint folder")
        step, total, history = state["step"], state["total_steps"], state["history"]
        plan, seconds_before = state.get("plan") or {}, state.get("train_seconds", 0.0)
        seen_before, snapshots = state.get("seen", [0, 0]), state.get("snapshots", [])
        log(f"resuming from step {step}/{total} in {out}")
    else:
        step, history, plan, seconds_before = 0, [], {}, 0.0
        seen_before, snapshots = [0, 0], []
        if cfg.steps is not None:
            total = cfg.steps
        else:  # rank 0 plans, every rank follows
            step_s = distributed.broadcast_float(estimate_step_seconds(drafter, target, train_set, cfg), target.device)
            total = plan_steps(step_s, cfg, len(eval_set))
            plan = {"planned_steps": total, "planned_step_seconds": step_s, "replan_after": replan_after(total, cfg),
                    "clock": clock_name(target.device), "load": load_average()}
            log(plan_line(cfg, plan))
    window = (step, 0.0)  # (step, this session's seconds) at the start of the current re-plan window
    loss_fn, no_sync = distributed.loss_function(drafter, target.device)

    seconds, tokens, supervised = 0.0, 0, 0
    metrics = history[-1]["train"] if history else {}
    eval_metrics = history[-1]["eval"] if history else {}  # a run stopped after its last checkpoint
    bar = tqdm(total=total, initial=step, desc=f"train {drafter.method}", unit="step", disable=not progress or not main)
    while step < total:
        t0 = _clock(target.device)
        lr = lr_at(step, total, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sums: dict[str, float] = {}
        for micro in range(per_rank):
            index = step * cfg.grad_accum + micro * world_size + rank  # this rank's share of the step's micro-batches
            batch = prepare_batch(drafter, target, micro_batch(train_set, index, cfg.batch_size, cfg.seed))
            with no_sync() if micro < per_rank - 1 else contextlib.nullcontext():
                with autocast(target.device):
                    loss, m = loss_fn(batch)
                (loss / per_rank).backward()  # DDP then averages over ranks: the mean over all micro-batches
            for k, v in {"loss": loss.item(), **m}.items():
                if isinstance(v, (int, float)):
                    sums[k] = sums.get(k, 0.0) + float(v) / per_rank
            tokens += int(batch["lengths"].sum())
            supervised += int(batch["loss_mask"].sum())
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        seconds = distributed.broadcast_float(seconds + _clock(target.device) - t0, target.device)  # rank 0's clock
        metrics = {**sums, "lr": lr, "grad_norm": float(grad_norm)}
        if plan and step == next_replan(plan, total):
            # this window's measured s/step, for what is left of the budget
            step_s = (seconds - window[1]) / (step - window[0])
            left = cfg.budget_minutes * 60 - seconds_before - seconds
            total = step + plan_steps(step_s, cfg, len(eval_set), left, minimum=0)
            plan.setdefault("replans", []).append({"after": step, "steps": total, "step_seconds": step_s,
                                                   "load": load_average()})
            window = (step, seconds)
            bar.total = total
            log(plan_line(cfg, plan))
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics.get('acc', float('nan')):.3f}",
                        tok_s=f"{tokens / seconds:.0f}")
        if step % cfg.eval_every == 0 or step == total:
            eval_metrics = evaluate(drafter, target, eval_set, cfg) if main else {}
            history.append({"step": step, "train": metrics, "eval": eval_metrics})
            if eval_metrics:
                bar.write(f"step {step}/{total}: train loss {metrics['loss']:.4f}  eval loss "
                          f"{eval_metrics['loss']:.4f}  eval acc {eval_metrics.get('acc', float('nan')):.3f}")
        due = [p for p in cfg.save_at if p not in snapshots
               and snapshot_due(p, step, total, seconds_before + seconds)]
        checkpoint = step % cfg.checkpoint_every == 0 or step == total or due
        if checkpoint or (due and on_snapshot is not None):
            seen = [a + b for a, b in zip(seen_before, distributed.sum_ints([tokens, supervised], target.device))]
        if due and on_snapshot is not None:
            if main and (not history or history[-1]["step"] != step):
                eval_metrics = evaluate(drafter, target, eval_set, cfg)
                history.append({"step": step, "train": metrics, "eval": eval_metrics})
            progress_now = {"step": step, "total_steps": total, "train_seconds": round(seconds_before + seconds, 1),
                            "tokens_seen": seen[0], "supervised_tokens_seen": seen[1], "eval": eval_metrics}
            if world_size > 1:
                progress_now["world_size"] = world_size
            if main:
                for point in due:
                    on_snapshot(snapshot_name(point), {"save_at": point, **progress_now})
            snapshots += due
        if checkpoint:
            other_ranks = distributed.gather(rng_state())[1:]
            if main:
                save_checkpoint(out, drafter, optimizer, {"identity": identity, "total_steps": total, "plan": plan,
                                                          "train_seconds": seconds_before + seconds, "step": step,
                                                          "history": history, "snapshots": snapshots, "seen": seen},
                                other_ranks)
    bar.close()
    session = distributed.sum_ints([tokens, supervised], target.device)
    return TrainResult(step, seconds, session[0], session[1], eval_metrics, metrics, history, dict(plan),
                       seconds_before + seconds, seen_before[0] + session[0], seen_before[1] + session[1], world_size)
