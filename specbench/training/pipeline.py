"""From a method name and a recipe to a saved drafter: corpus, tokenisation, split, trainer, save.

This is what `specbench train` and `--drafter auto` run. The held-out split is chosen by a hash of
each record's id, so it does not move when the data spec grows or is reordered.
"""

from __future__ import annotations

import platform
import shutil
import zlib
from pathlib import Path

import torch

from specbench.training.budget import STANDARD_CPU, TrainingRecipe
from specbench.training.data import TrainExample, encode_record, parse_data_spec
from specbench.training.drafter import Drafter, drafter_class
from specbench.training.regen import RegenSettings, load_corpus, regenerate
from specbench.training.trainer import CHECKPOINT, train

#: `--save-at` snapshots live in `<out>/snapshots/<name>/`, each a normal drafter folder
SNAPSHOTS = "snapshots"


def training_examples(target, recipe: TrainingRecipe, regen_batch_size: int = 8, progress: bool = True,
                      log=print) -> tuple[list[TrainExample], list[TrainExample], dict]:
    """Regenerate what is missing, tokenise, and split off `eval_size` held-out sequences."""
    sources = parse_data_spec(recipe.data)
    settings = RegenSettings(max_new_tokens=recipe.max_new_tokens)
    for source in sources:
        report = regenerate(target, source, settings, batch_size=regen_batch_size, progress=progress)
        if report.generated or report.copied:
            log(report.line())
    records = load_corpus(target, sources, settings)
    examples = [e for e in (encode_record(target, r, recipe.max_length) for r in records) if e is not None]
    n_eval = min(recipe.eval_size, len(examples) // 5)  # never more than a fifth of small corpora
    held_out = sorted((zlib.crc32(e.id.encode()), e.id) for e in examples)[:n_eval]
    held_ids = {i for _, i in held_out}
    train_set = [e for e in examples if e.id not in held_ids]
    eval_set = [e for e in examples if e.id in held_ids]
    info = {"spec": recipe.data, "regen": settings.as_dict(), "records": len(records),
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
                           "tokens_per_s": round(result.tokens_per_s, 1)},
                "final_eval": result.final_eval, "history": result.history, "environment": environment}
    drafter.save(out, training)
    shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    final = result.final_eval
    log(f"saved {cls.method or cls.__name__} drafter to {out} (eval loss {final.get('loss', float('nan')):.4f}, "
        f"acc {final.get('acc', float('nan')):.3f}; {result.tokens_per_s:.0f} tokens/s)")
    return out
