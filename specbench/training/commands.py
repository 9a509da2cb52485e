"""`specbench train` and `specbench regen` (DESIGN.md §6), registered by `specbench/cli.py`.

Each factory takes the CLI's error decorator, so bad input is one line and exit code 2 as for every
other command. Only click is imported here; torch and the model load when a command runs.
"""

from __future__ import annotations

import click

TARGET_HELP = "alias, hub id, local directory or .gguf file"


def _target_options(fn):
    opts = [
        click.option("--target", "-t", default="smollm2-135m", show_default=True, help=TARGET_HELP),
        click.option("--device", default="auto", show_default=True, help="auto|cpu|cuda"),
        click.option("--dtype", default="auto", show_default=True, help="auto|float32|bfloat16"),
        click.option("--system-prompt", default=None, help="render prompts with this system prompt"),
        click.option("--enable-thinking/--no-thinking", default=False, show_default=True,
                     help="Qwen3-style thinking in the chat template"),
        click.option("--progress/--no-progress", default=True, show_default=True),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _load(o: dict):
    from specbench.targets import load_target

    return load_target(o["target"], o["device"], o["dtype"], system_prompt=o["system_prompt"],
                       enable_thinking=o["enable_thinking"])


def regen_command(friendly) -> click.Command:
    @click.command(name="regen")
    @click.option("--data", required=True, help="prompt sets NAME[:N],... (gsm8k, mix, instruct_mix, code_prompts, "
                                                "mbpp, self_instruct) or .jsonl files of prompts")
    @click.option("--max-new-tokens", type=int, default=256, show_default=True)
    @click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy")
    @click.option("--seed", type=int, default=0, show_default=True, help="sampling seed (temperature > 0)")
    @click.option("--limit", type=int, default=None, help="at most N prompts per set")
    @click.option("--batch-size", "-b", type=int, default=8, show_default=True)
    @click.option("--shard", default=None, metavar="I/N",
                  help="generate every N-th prompt from the I-th (0-based), one process per GPU, all into the same "
                       "corpus files (default under torchrun: RANK/WORLD_SIZE)")
    @_target_options
    @friendly
    def regen(data, max_new_tokens, temperature, seed, limit, batch_size, shard, **o):
        """Generate the target's own responses to training prompts (resumable, cached by target fingerprint)."""
        import dataclasses

        from specbench.errors import SpecbenchError
        from specbench.training import distributed
        from specbench.training.data import parse_data_spec
        from specbench.training.hub_prompts import resolve_sources
        from specbench.training.regen import RegenSettings, parse_shard, regenerate

        if max_new_tokens < 1 or temperature < 0 or (limit is not None and limit < 1):
            raise SpecbenchError("--max-new-tokens and --limit must be >= 1 and --temperature >= 0")
        part = parse_shard(shard) if shard is not None else distributed.env_shard()
        sources = resolve_sources(parse_data_spec(data), log=click.echo)
        if limit is not None:
            sources = [dataclasses.replace(s, limit=min(limit, s.limit or limit)) for s in sources]
        target = _load({**o, "device": distributed.local_device(o["device"])})
        settings = RegenSettings(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        for source in sources:
            click.echo(regenerate(target, source, settings, batch_size=batch_size, progress=o["progress"],
                                  shard=part).line())
    return regen


def train_command(friendly) -> click.Command:
    @click.command(name="train")
    @click.option("--method", "-m", required=True, help="method name, or module:DrafterClass")
    @click.option("--recipe", type=click.Choice(["standard", "paper"]), default="standard", show_default=True,
                  help="standard: the CPU budget every method shares; paper: the papers' data and steps")
    @click.option("--dry-run", is_flag=True, help="print the plan and its cost from a step time measured here; no training")
    @click.option("--step-seconds", type=float, default=None,
                  help="with --dry-run: a step time measured elsewhere (one device, all micro-batches of a step)")
    @click.option("--data", default=None, help="prompt sets NAME[:N],... (default: the recipe's)")
    @click.option("--steps", type=int, default=None, help="optimizer steps (instead of the time budget)")
    @click.option("--budget-minutes", type=float, default=None, help="training wall time (standard: 25)")
    @click.option("--out", default=None, type=click.Path(file_okay=False),
                  help="output folder (default: the drafter store, where --drafter auto looks)")
    @click.option("--batch-size", "-b", type=int, default=None, help="sequences per micro-batch (standard: 8)")
    @click.option("--grad-accum", type=int, default=None, help="micro-batches per step (standard: 1)")
    @click.option("--lr", type=float, default=None, help="peak learning rate (default: the method's)")
    @click.option("--max-length", type=int, default=None, help="tokens per sequence (standard: 384)")
    @click.option("--max-new-tokens", type=int, default=None, help="regenerated response length (standard: 256)")
    @click.option("--eval-every", type=int, default=None, help="steps between held-out evals")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--save-at", default=None, metavar="POINTS",
                  help="also keep drafter snapshots at these points, comma-separated: steps (200), fractions of "
                       "the run (0.25) or training minutes (5m); saved under OUT/snapshots/")
    @click.option("--method-option", "-o", "method_option", multiple=True, metavar="KEY=VALUE",
                  help="drafter configuration field (repeatable)")
    @_target_options
    @friendly
    def train(method, recipe, dry_run, step_seconds, data, steps, budget_minutes, out, batch_size, grad_accum, lr,
              max_length, max_new_tokens, eval_every, seed, save_at, method_option, **o):
        """Train a method's drafter on the target's own responses (resumes an interrupted run in --out).

        Several processes: `torchrun --nproc-per-node N --no-python specbench train ...` (DDP; the global batch
        stays batch size x grad-accum, so grad-accum must be a multiple of N)."""
        import dataclasses

        from specbench.errors import SpecbenchError
        from specbench.options import parse_options
        from specbench.training import distributed
        from specbench.training.budget import RECIPES
        from specbench.training.drafter import drafter_class
        from specbench.training.pipeline import plan_report, train_drafter
        from specbench.training.store import config_options, store_path

        if steps is not None and budget_minutes is not None:
            raise SpecbenchError("give either --steps or --budget-minutes, not both")
        if step_seconds is not None and (not dry_run or step_seconds <= 0):
            raise SpecbenchError("--step-seconds takes a positive step time and goes with --dry-run")
        cls = drafter_class(method)
        options = parse_options(method_option)
        unknown = set(options) - set(config_options(cls, options))
        if unknown:
            raise SpecbenchError(f"unknown drafter option(s) for {method}: {', '.join(sorted(unknown))}")
        if ":" not in method:
            from specbench.methods import method_class

            method_class(method).split_options(options)  # values, in one line (methods/base.py)
        given = {"data": data, "max_length": max_length, "max_new_tokens": max_new_tokens,
                 "batch_size": batch_size, "grad_accum": grad_accum, "lr": lr, "seed": seed}
        recipe_name, recipe = recipe, dataclasses.replace(RECIPES[recipe], **{k: v for k, v in given.items()
                                                                           if v is not None})
        if steps is not None:
            recipe = dataclasses.replace(recipe, steps=steps, budget_minutes=None)
        elif budget_minutes is not None:
            recipe = dataclasses.replace(recipe, budget_minutes=budget_minutes, steps=None)
        points = tuple(p.strip() for p in (save_at or "").split(",") if p.strip())
        overrides = {"eval_every": eval_every, "save_at": points or None}
        target = _load({**o, "device": o["device"] if dry_run else distributed.init_from_env(o["device"])})
        if dry_run:
            for line in plan_report(cls, target, recipe_name, recipe, options, overrides, step_seconds,
                                    log=click.echo):
                click.echo(line)
            return
        folder = out or store_path(target, cls, options, recipe)
        path = train_drafter(cls, target, folder, recipe, options=options, overrides=overrides,
                             progress=o["progress"], log=click.echo)
        if distributed.is_main():
            click.echo(f"use it with: specbench run --method {cls.method or method} --target {o['target']} "
                       f"--drafter {path}")
    return train
