"""From a method name and a recipe to a saved drafter: corpus, tokenisation, split, trainer, save.

This is what `specbench train` and `--drafter auto` run. The held-out split is chosen by a hash of
each record's id, so it does not move when the data spec grows or is reordered. Under torchrun every
rank runs it: the ranks regenerate missing responses as shards of one corpus, train together, and
rank 0 alone writes the drafter (distributed.py).
"""

from __future__ import annotations

import platform
import shutil
import zlib
from pathlib import Path

import torch

from specbench.training import distributed
from specbench.training.budget import PAPER_STATEMENT, STANDARD_CPU, TrainingRecipe, cost_estimate
from specbench.training.data import TrainExample, encode_record, parse_data_spec
from specbench.training.drafter import Drafter, drafter_class
from specbench.training.hub_prompts import HUB_SETS, resolve_sources
from specbench.training.regen import RegenSettings, load_corpus, missing_prompts, regenerate
from specbench.training.trainer import CHECKPOINT, estimate_step_seconds, plan_steps, train

#: `--save-at` snapshots live in `<out>/snapshots/<name>/`, each a normal drafter folder
SNAPSHOTS = "snapshots"


def training_examples(target, recipe: TrainingRecipe, regen_batch_size: int = 8, progress: bool = True,
                      log=print) -> tuple[list[TrainExample], list[TrainExample], dict]:
    """Regenerate what is missing (one shard per rank under torchrun), tokenise, and split off
    `eval_size` held-out sequences."""
    sources = parse_data_spec(recipe.data)
    named = [s.label for s in sources]
    if any(s.name in HUB_SETS for s in sources):
        sources = resolve_sources(sources, log)
    settings = RegenSettings(max_new_tokens=recipe.max_new_tokens)
    rank, world_size = distributed.world()
    for source in sources:
        report = regenerate(target, source, settings, batch_size=regen_batch_size, progress=progress,
                            shard=(rank, world_size))
        if report.generated or report.copied:
            log(report.line())
    distributed.barrier()  # every shard written before anyone reads the corpus
    records = load_corpus(target, sources, settings)
    examples = [e for e in (encode_record(target, r, recipe.max_length) for r in records) if e is not None]
    n_eval = min(recipe.eval_size, len(examples) // 5)  # never more than a fifth of small corpora
    held_out = sorted((zlib.crc32(e.id.encode()), e.id) for e in examples)[:n_eval]
    held_ids = {i for _, i in held_out}
    train_set = [e for e in examples if e.id not in held_ids]
    eval_set = [e for e in examples if e.id in held_ids]
    info = {"spec": recipe.data, **({"used": ",".join(s.label for s in sources)} if named != [s.label for s in sources]
                                    else {}),
            "regen": settings.as_dict(), "records": len(records),
            "dropped": len(records) - len(examples), "train_sequences": len(train_set),
            "eval_sequences": len(eval_set), "train_tokens": sum(len(e.input_ids) for e in train_set),
            "train_supervised_tokens": sum(sum(e.loss_mask) for e in train_set)}
    return train_set, eval_set, info


def train_drafter(method: str | type[Drafter], target, out: str | Path, recipe: TrainingRecipe = STANDARD_CPU,
                  options: dict | None = None, overrides: dict | None = None, regen_batch_size: int = 8,
                  progress: bool = True, log=print) -> Path:
    """Train `method`'s drafter for `target` under `recipe` and save it to `out` (resuming if possible)."""
    cls = method if isinstance(method, type) else drafter_class(method)
    out = Path(out)
    if not distributed.is_main():
        log = lambda line: None  # noqa: E731
    if (out / "config.json").exists():
        log(f"{out} already holds a trained drafter; nothing to do")
        return out
    cfg = recipe.train_config(cls, **(overrides or {}))
    cfg.validate()
    train_set, eval_set, data_info = training_examples(target, recipe, regen_batch_size, progress, log)
    torch.manual_seed(recipe.seed)  # the drafter's initial weights are part of the run
    drafter = cls.for_target(target, **(options or {}))
    drafter.init_from_data(train_set)
    log(f"{cls.method or cls.__name__}: {drafter.parameter_count():,} drafter parameters; "
        f"{len(train_set)} training / {len(eval_set)} held-out sequences "
        f"({data_info['train_supervised_tokens']:,} supervised tokens; {data_info['dropped']} records dropped: "
        f"prompt longer than {recipe.max_length} tokens)")
    run_info = {"method": cls.method, "class": f"{cls.__module__}:{cls.__qualname__}",
                "target": {"name": target.name, "source": target.source, "fingerprint": target.fingerprint,
                           "dtype": str(target.dtype).replace("torch.", ""), "chat": target.chat.as_dict()},
                "data": data_info, "recipe": recipe.as_dict(), "drafter_config": drafter.config_dict()}
    environment = {"device": str(target.device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "machine": platform.machine()}
    if distributed.world()[1] > 1:
        environment["world_size"] = distributed.world()[1]

    def save_snapshot(name: str, progress_now: dict) -> None:
        """One point of a learning curve: a complete drafter folder of its own (`--save-at`)."""
        folder = drafter.save(out / SNAPSHOTS / name, {**run_info, "hyper_parameters": cfg.as_dict(),
                                                         "snapshot": progress_now, "final_eval": progress_now["eval"],
                                                         "environment": environment})
        log(f"snapshot {name}: step {progress_now['step']}, {progress_now['train_seconds']:.0f} s, "
            f"held-out acc {progress_now['eval'].get('acc', float('nan')):.3f} -> {folder}")

    result = train(drafter, target, train_set, eval_set, cfg, out, run_info, progress=progress, log=log,
                   on_snapshot=save_snapshot)
    training = {**run_info, "hyper_parameters": cfg.as_dict(),
                "budget": {"steps": result.steps, "budget_minutes": cfg.budget_minutes, **result.plan,
                           "train_seconds": round(result.total_seconds, 1),
                           "train_seconds_last_session": round(result.seconds, 1),
                           "tokens_per_s": round(result.tokens_per_s, 1), "tokens_seen": result.tokens_seen,
                           "supervised_tokens_seen": result.supervised_tokens_seen},
                "final_eval": result.final_eval, "history": result.history, "environment": environment}
    if not distributed.is_main():
        return out
    drafter.save(out, training)
    shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    final = result.final_eval
    log(f"saved {cls.method or cls.__name__} drafter to {out} (eval loss {final.get('loss', float('nan')):.4f}, "
        f"acc {final.get('acc', float('nan')):.3f}; {result.tokens_per_s:.0f} tokens/s)")
    return out


def measure_step_seconds(cls: type[Drafter], target, recipe: TrainingRecipe, options: dict | None = None) -> float:
    """Seconds per optimizer step of `recipe` for `cls` on this machine (one process, every micro-batch of
    a step), measured with the trainer's own estimate on synthetic sequences of the recipe's full length:
    an upper bound, since real sequences are often shorter."""
    cfg = recipe.train_config(cls)
    torch.manual_seed(recipe.seed)
    drafter = cls.for_target(target, **(options or {}))
    gen = torch.Generator().manual_seed(0)
    n, half = recipe.max_length, recipe.max_length // 2
    examples = [TrainExample(f"synthetic-{i}", torch.randint(target.vocab_size, (n,), generator=gen).tolist(),
                             [0] * half + [1] * (n - half)) for i in range(4 * cfg.batch_size)]
    drafter.init_from_data(examples)
    return estimate_step_seconds(drafter, target, examples, cfg)


def plan_report(cls: type[Drafter], target, name: str, recipe: TrainingRecipe, options: dict | None = None,
                overrides: dict | None = None, step_seconds: float | None = None, log=print) -> list[str]:
    """`specbench train --dry-run`: the recipe, the data it would use, and its cost from a step time
    measured here (or `step_seconds`, measured elsewhere); nothing is trained or generated."""
    cfg = recipe.train_config(cls, **(overrides or {}))
    cfg.validate()
    sources = resolve_sources(parse_data_spec(recipe.data), log)
    missing = missing_prompts(target, sources, RegenSettings(max_new_tokens=recipe.max_new_tokens))
    lines = [f"recipe {name}: {recipe.describe()}"]
    if name == "paper":
        lines.append(f"  as published: {PAPER_STATEMENT}")
    prompts = sum(len(s.prompts()) for s in sources)
    lines.append(f"data: {', '.join(s.label for s in sources)} ({prompts:,} prompts); {missing:,} responses of up to "
                 f"{recipe.max_new_tokens} tokens still to generate (`specbench regen --shard I/N` spreads them over "
                 "devices)")
    if step_seconds is None:
        step_seconds = measure_step_seconds(cls, target, recipe, options)
        how = (f"measured here on {target.device} ({torch.get_num_threads()} threads): micro-batch {cfg.batch_size} "
               f"x {cfg.grad_accum} at {recipe.max_length} tokens per sequence, an upper bound")
    else:
        how = "given with --step-seconds"
    steps = cfg.steps if cfg.steps is not None else plan_steps(step_seconds, cfg, recipe.eval_size)
    lines.append(f"step time: {step_seconds:.3g} s ({how})")
    lines.append(f"cost: {cost_estimate(steps, step_seconds, cfg.grad_accum)}")  # up to grad_accum devices share a step
    return lines
