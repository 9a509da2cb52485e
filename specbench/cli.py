"""The `specbench` command line (DESIGN.md §6). Bad input exits non-zero with one line, no traceback."""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from specbench.errors import SpecbenchError


def _friendly(fn):
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


def _parse_options(pairs: tuple[str, ...]) -> dict:
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="specbench")
def cli():
    """Implement, train and measure speculative-decoding methods side by side."""


def run_options(fn):
    """Options shared by `run` and `sweep` (the cell definition of DESIGN.md §6)."""
    opts = [
        click.option("--method", "-m", default="ar", show_default=True, help="method name (specbench list methods)"),
        click.option("--suite", "-s", default="gsm8k", show_default=True, help="benchmark suite"),
        click.option("--target", "-t", default="smollm2-135m", show_default=True,
                     help="alias, hub id, local directory or .gguf file"),
        click.option("--drafter", default=None, help="drafter folder PATH, a folder of drafters DIR/<method>/, or 'auto'"),
        click.option("--no-train", is_flag=True, help="with --drafter auto: fail instead of training a missing drafter"),
        click.option("--temperature", type=float, default=0.0, show_default=True),
        click.option("--top-p", type=float, default=1.0, show_default=True),
        click.option("--top-k", type=int, default=0, show_default=True),
        click.option("--batch-size", "-b", type=int, default=1, show_default=True),
        click.option("--depth", type=int, default=None, help="draft depth (method default if omitted)"),
        click.option("--limit", type=int, default=None, help="seeded subset of N prompts"),
        click.option("--max-new-tokens", type=int, default=None, help="per turn (suite default if omitted)"),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default="auto", show_default=True, help="auto|cpu|cuda"),
        click.option("--dtype", default="auto", show_default=True, help="auto|float32|bfloat16"),
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
    from specbench.runner import RunConfig

    return RunConfig(
        method=o["method"], suite=o["suite"], target=o["target"], temperature=o["temperature"],
        top_p=o["top_p"], top_k=o["top_k"], batch_size=o["batch_size"], depth=o["depth"], limit=o["limit"],
        max_new_tokens=o["max_new_tokens"], seed=o["seed"], device=o["device"], dtype=o["dtype"],
        drafter=o["drafter"], no_train=o.get("no_train", False),
        data_file=o["data_file"], system_prompt=o["system_prompt"],
        enable_thinking=o["enable_thinking"], warmup=o["warmup"],
        method_options=_parse_options(o["method_option"]),
        categories=[c.strip() for v in o.get("category") or () for c in v.split(",") if c.strip()] or None)


@cli.command()
@run_options
@click.option("--run-id", default=None, help="name of the run directory (default: timestamp-method-suite-target-hash)")
@click.option("--resume", "resume", default=None, metavar="RUN_ID", help="continue an interrupted run")
@_friendly
def run(run_id, resume, **o):
    """Run one cell: METHOD vs the matched AR baseline on SUITE."""
    from specbench.results import ResultStore
    from specbench.runner import RunConfig, Runner
    from specbench.summary_table import print_summary

    store = ResultStore(o["results_dir"])
    if resume:
        run_dir = store.open(resume)
        manifest = run_dir.read_manifest()
        if manifest.get("status") == "complete":
            raise SpecbenchError(f"run {run_dir.run_id} is already complete")
        runner = Runner(RunConfig(**manifest["config"]), store, progress=o["progress"])
        run_dir = runner.run(resume=run_dir)
    else:
        runner = Runner(config_from_options(o), store, progress=o["progress"])
        run_dir = runner.run(run_id=run_id)
    print_summary(run_dir)


@cli.command(name="list")
@click.argument("what", type=click.Choice(["methods", "suites", "targets", "runs"]))
@click.option("--results-dir", default="results", show_default=True)
@_friendly
def list_(what, results_dir):
    """List registered methods, suites, target aliases or stored runs."""
    if what == "methods":
        from specbench.methods import METHODS, method_class

        for name in sorted(METHODS):
            click.echo(f"{name:12s} {method_class(name).description}")
    elif what == "suites":
        from specbench.suites import SUITES, get_suite

        for name in sorted(SUITES):
            click.echo(f"{name:12s} {get_suite(name).description}")
    elif what == "targets":
        from specbench.targets import TARGET_ALIASES

        for name, desc in TARGET_ALIASES.items():
            click.echo(f"{name:18s} {desc}")
        click.echo("(or any Hugging Face hub id, local model directory or .gguf file)")
    else:
        from specbench.results import ResultStore
        from specbench.summary_table import print_runs

        print_runs(ResultStore(results_dir).runs())


@cli.command()
@click.option("--target", "-t", default="smollm2-135m", show_default=True)
@click.option("--batch-sizes", default="1,8", show_default=True, help="comma-separated")
@click.option("--prompts", "n_prompts", type=int, default=8, show_default=True)
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--suite", default="gsm8k", show_default=True)
@click.option("--out", default="results/bench", show_default=True, type=click.Path(file_okay=False))
@_friendly
def bench(target, batch_sizes, n_prompts, max_new_tokens, repeats, suite, out):
    """Benchmark the shared AR loop against plain HF `generate` (same prompts, one process)."""
    from specbench.bench import bench_loop_vs_generate

    sizes = [int(x) for x in batch_sizes.split(",") if x.strip()]
    if not sizes or min(sizes) < 1:
        raise SpecbenchError("--batch-sizes must be positive integers, e.g. 1,8")
    bench_loop_vs_generate(target, sizes, n_prompts, max_new_tokens, repeats, suite, out)


@cli.command()
@click.option("--target", "-t", default=None, help="alias, hub id, local directory or .gguf file [default: smollm2-135m]")
@click.option("--random-weights", default=None, metavar="NAME|CONFIG",
              help="build the target from a config alone, no download: qwen3-8b, qwen3-1.7b, llama-3.1-8b or a config.json")
@click.option("--q", "q_sizes", default="1,2,4,8,16,32,64", show_default=True, help="new tokens per row, comma-separated")
@click.option("--batch", "batch_sizes", default="1,4,16,64", show_default=True, help="batch sizes, comma-separated")
@click.option("--context", type=int, default=512, show_default=True, help="tokens already in the KV cache")
@click.option("--device", default="auto", show_default=True, help="auto|cpu|cuda")
@click.option("--dtype", default="auto", show_default=True, help="auto|float32|bfloat16")
@click.option("--repeats", type=int, default=10, show_default=True, help="timed forwards per point (median)")
@click.option("--warmup", type=int, default=3, show_default=True, help="untimed forwards per point")
@click.option("--compiled", is_flag=True, help="time the compiled regime instead of eager")
@click.option("--out", default="results/profile", show_default=True, type=click.Path(file_okay=False))
@_friendly
def profile(**o):
    """Latency of one target forward (q new tokens per row, batch b, --context cached tokens) vs the roofline."""
    from specbench.profile import profile_command

    profile_command(**o)


@cli.command()
@click.argument("axis_and_values", nargs=-1, metavar="[AXIS VALUES...]")
@run_options
@click.option("--config", "config_path", default=None, metavar="SWEEP.yaml", help="full grid from a YAML file")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default=None, help="Ray cluster address (default: start a local instance)")
@click.option("--cpus-per-cell", type=int, default=1, show_default=True, help="CPUs a Ray task reserves (CPU cells)")
@click.option("--sweep-id", default=None, help="name of the sweep state file (default: hash of the grid)")
@click.option("--dry-run", is_flag=True, help="list the cells and exit")
@_friendly
def sweep(axis_and_values, config_path, executor, address, cpus_per_cell, sweep_id, dry_run, **o):
    """Run a grid of cells: AXIS (batch-size|temperature|depth|suite|method|seed|target) over VALUES.

    Complete cells are skipped, partial ones resume; a failing cell is recorded and the sweep goes on
    (exit code 1 if any failed). Options set every other field of the cells; an option typed on the
    command line wins over the same field in --config's file.
    """
    from specbench.sweep import sweep_command

    ctx = click.get_current_context()
    typed = {k for k in o if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    sys.exit(sweep_command(axis_and_values, config_path, o, executor, address, cpus_per_cell, sweep_id, dry_run,
                           typed))


@cli.command()
@click.argument("run_dirs", nargs=-1, metavar="[RUN_DIR...]")
@click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--out", default="reports/report.html", show_default=True, type=click.Path(dir_okay=False))
@click.option("--sweep", "sweep_ids", multiple=True, metavar="SWEEP_ID", help="the cells of this sweep (repeatable)")
@click.option("--title", default=None, help="page title")
@_friendly
def report(run_dirs, results_dir, out, sweep_ids, title):
    """One self-contained HTML page (plus CSV and Markdown tables) from stored runs (default: all of them)."""
    from specbench.report import build_report

    files = build_report(run_dirs, results_dir=results_dir, out=out, sweep_ids=sweep_ids, title=title)
    click.echo(f"report: {files.html}  (tables: {files.markdown}, {files.csv_dir}/)")


@cli.group(name="export")
def export_():
    """Write stored runs in other harnesses' formats."""


@export_.command(name="spec-bench")
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="folder for the two answer files")
@click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False))
@_friendly
def export_spec_bench_cmd(run_dir, out_dir, results_dir):
    """Two Spec-Bench answer files (method arm, AR arm) that Spec-Bench's speed.py reads unchanged."""
    from specbench.spec_bench_io import export_then_paths

    paths = export_then_paths(run_dir, out_dir, results_dir)
    click.echo(f"method answers: {paths['method']}\nbaseline answers: {paths['baseline']}")


@cli.group(name="import")
def import_():
    """Turn other harnesses' result files into runs in the results store."""


@import_.command(name="spec-bench")
@click.argument("answers", metavar="ANSWERS.jsonl")
@click.option("--baseline", required=True, metavar="BASELINE.jsonl", help="the AR (vanilla) answer file")
@click.option("--method", "-m", required=True, help="method name to show in reports")
@click.option("--target", "-t", required=True, help="target name to show in reports")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="what the files were made at")
@click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--run-id", default=None, help="name of the run directory")
@_friendly
def import_spec_bench_cmd(answers, baseline, method, target, temperature, results_dir, run_id):
    """Spec-Bench answer files (e.g. from its scripts on a GPU) as an imported run."""
    from specbench.spec_bench_io import import_spec_bench
    from specbench.summary_table import print_summary

    print_summary(import_spec_bench(answers, baseline, method, target, results_dir, run_id, temperature))


# drafter training: `train` and `regen` live in specbench/training/commands.py
from specbench.training.commands import regen_command, train_command  # noqa: E402

cli.add_command(train_command(_friendly))
cli.add_command(regen_command(_friendly))


def main():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli(prog_name="specbench")


if __name__ == "__main__":
    main()
