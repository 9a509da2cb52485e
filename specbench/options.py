"""Option parsing shared by the commands (DESIGN.md §6): the `run` cell options, `-o KEY=VALUE` pairs
and the one-line error wrapper.

`cli.py`, `sweep.py` and `training/commands.py` all read options the same way; keeping that here lets
data flow down (the CLI imports its subcommands, nothing imports the CLI back; style.md).
Only click is imported at module level; the runner loads when a config is built.
"""

from __future__ import annotations

import functools
import json
import sys

import click

from specbench.errors import SpecbenchError


def friendly(fn):
    """Turn user errors into one line on stderr and exit code 2; Ctrl-C into exit code 130."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SpecbenchError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("\ninterrupted; finished prompts are saved (resume with --resume RUN_ID)", err=True)
            sys.exit(130)
    return wrapper


def parse_options(pairs: tuple[str, ...]) -> dict:
    """`-o KEY=VALUE` pairs; values are JSON where they parse (`8`, `false`, `[1, 2]`), else strings.
    Methods check names and values (`Method.check_options`)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SpecbenchError(f"method option {pair!r} is not KEY=VALUE")
        key, value = pair.split("=", 1)
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def run_options(fn):
    """Options shared by `run` and `sweep` (the cell definition of DESIGN.md §6)."""
    opts = [
        click.option("--method", "-m", default="ar", show_default=True, help="method name (specbench list methods)"),
        click.option("--suite", "-s", default="gsm8k", show_default=True, help="benchmark suite"),
        click.option("--target", "-t", default="smollm2-135m", show_default=True,
                     help="alias, hub id, local directory or .gguf file"),
        click.option("--drafter", default=None,
                     help="drafter folder PATH, a folder of drafters DIR/<method>/, or 'auto' (the default for "
                          "methods with a drafter: the stored standard one, trained first if missing)"),
        click.option("--no-train", is_flag=True, help="with --drafter auto: fail instead of training a missing drafter"),
        click.option("--temperature", type=float, default=0.0, show_default=True),
        click.option("--top-p", type=float, default=1.0, show_default=True),
        click.option("--top-k", type=int, default=0, show_default=True),
        click.option("--batch-size", "-b", type=int, default=1, show_default=True),
        click.option("--depth", type=int, default=None, help="draft depth (method default if omitted)"),
        click.option("--limit", type=int, default=None,
                     help="seeded subset of N prompts (default: the whole suite on a GPU, a few on a CPU)"),
        click.option("--max-new-tokens", type=int, default=None,
                     help="per turn (default: the suite's; capped on a CPU)"),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default="auto", show_default=True, help="auto|cpu|cuda"),
        click.option("--dtype", default="auto", show_default=True, help="auto|float32|bfloat16"),
        click.option("--regime", default="eager", show_default=True,
                     help="eager | compiled (static KV cache + torch.compile'd decode forwards, CUDA graphs on GPU; "
                          "both arms)"),
        click.option("--data-file", default=None, help="explicit suite data file"),
        click.option("--category", "category", multiple=True, metavar="NAME",
                     help="only this category of the suite (repeatable or comma-separated; e.g. spec_bench qa)"),
        click.option("--system-prompt", default=None, help="override the system prompt"),
        click.option("--enable-thinking/--no-thinking", default=False, show_default=True,
                     help="Qwen3-style thinking in the chat template"),
        click.option("--method-option", "-o", "method_option", multiple=True, metavar="KEY=VALUE",
                     help="method-specific option (repeatable)"),
        click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False)),
        click.option("--warmup/--no-warmup", default=True, show_default=True),
        click.option("--progress/--no-progress", default=True, show_default=True),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def config_from_options(o: dict):
    """The `RunConfig` of one cell from `run_options` values."""
    from specbench.runner import RunConfig

    return RunConfig(
        method=o["method"], suite=o["suite"], target=o["target"], temperature=o["temperature"],
        top_p=o["top_p"], top_k=o["top_k"], batch_size=o["batch_size"], depth=o["depth"], limit=o["limit"],
        max_new_tokens=o["max_new_tokens"], seed=o["seed"], device=o["device"], dtype=o["dtype"],
        regime=o.get("regime", "eager"),
        drafter=o["drafter"], no_train=o.get("no_train", False),
        data_file=o["data_file"], system_prompt=o["system_prompt"],
        enable_thinking=o["enable_thinking"], warmup=o["warmup"],
        method_options=parse_options(o["method_option"]),
        categories=[c.strip() for v in o.get("category") or () for c in v.split(",") if c.strip()] or None)
