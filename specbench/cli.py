"""The `specbench` command line (DESIGN.md §6). Bad input exits non-zero with one line, no traceback."""

from __future__ import annotations

import os
import sys

import click

from specbench.errors import SpecbenchError
from specbench.options import config_from_options, run_options
from specbench.options import friendly as _friendly


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="specbench")
def cli():
    """Implement, train and measure speculative-decoding methods side by side."""


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


def _int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise SpecbenchError(f"{name} takes positive integers separated by commas, e.g. 1,4,8; got {text!r}")
    return values


@cli.command()
@click.option("--target", "-t", default="smollm2-135m", show_default=True)
@click.option("--batch-sizes", default="1,4,8", show_default=True, help="comma-separated")
@click.option("--prompts", "n_prompts", type=int, default=8, show_default=True)
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--suite", default="gsm8k", show_default=True)
@click.option("--pld-prompts", type=int, default=10, show_default=True, help="prompts for pld vs HF prompt lookup (0: skip)")
@click.option("--pld-tokens", type=int, default=128, show_default=True)
@click.option("--pld-depth", type=int, default=7, show_default=True, help="draft tokens (HF prompt_lookup_num_tokens)")
@click.option("--pld-ngram", type=int, default=2, show_default=True, help="longest n-gram (HF max_matching_ngram_size)")
@click.option("--verify-q", default="2,4,8,16", show_default=True, help="verification widths to time against q = 1")
@click.option("--out", default="results/bench", show_default=True, type=click.Path(file_okay=False))
@_friendly
def bench(target, batch_sizes, n_prompts, max_new_tokens, repeats, suite, pld_prompts, pld_tokens, pld_depth, pld_ngram,
          verify_q, out):
    """The harness's runtime against HF: AR loop vs `generate`, pld vs prompt lookup, verify cost per width."""
    from specbench.bench import run_bench

    sizes = _int_list(batch_sizes, "--batch-sizes")
    widths = _int_list(verify_q, "--verify-q")
    if min(n_prompts, max_new_tokens, repeats, pld_tokens, pld_depth, pld_ngram) < 1 or pld_prompts < 0:
        raise SpecbenchError("--prompts, --max-new-tokens, --repeats, --pld-* must be >= 1 (--pld-prompts >= 0)")
    run_bench(target, sizes, n_prompts, max_new_tokens, repeats, suite, out, pld_prompts, pld_tokens, pld_depth,
              pld_ngram, widths)


@cli.command()
@click.option("--target", "-t", default=None, help="alias, hub id, local directory or .gguf file [default: smollm2-135m]")
@click.option("--random-weights", default=None, metavar="NAME|CONFIG",
              help="build the target from a config alone, no download: qwen3-8b, qwen3-1.7b, llama-3.1-8b, smollm2-135m or a config.json")
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
@click.option("--dry-run", is_flag=True, help="list the cells, estimate the time and exit")
@click.option("--report/--no-report", default=True, show_default=True,
              help="end by writing the report, reports/SWEEP_ID.html beside the results folder")
@_friendly
def sweep(axis_and_values, config_path, executor, address, cpus_per_cell, sweep_id, dry_run, report, **o):
    """Run a grid of cells: AXIS (batch-size|temperature|depth|suite|method|seed|target) over VALUES.

    An axis without values sweeps its default values over every method (ar, pld, eagle3, flexdraft, dflash,
    bita, mtp; unless --method is typed), training missing drafters once first (--drafter auto).
    Complete cells are skipped, partial ones resume; a failing cell is recorded and the sweep goes on
    (exit code 1 if any failed). Options set every other field of the cells; an option typed on the
    command line wins over the same field in --config's file.
    """
    from specbench.sweep import sweep_command

    ctx = click.get_current_context()
    typed = {k for k in o if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    sys.exit(sweep_command(axis_and_values, config_path, o, executor, address, cpus_per_cell, sweep_id, dry_run,
                           typed, report))


@cli.command()
@click.argument("run_dirs", nargs=-1, metavar="[RUN_DIR...]")
@click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--out", default="reports/report.html", show_default=True, type=click.Path(dir_okay=False))
@click.option("--sweep", "sweep_ids", multiple=True, metavar="SWEEP_ID", help="the cells of this sweep (repeatable)")
@click.option("--all", "all_runs", is_flag=True, help="every stored run (the default when there is no sweep)")
@click.option("--title", default=None, help="page title")
@_friendly
def report(run_dirs, results_dir, out, sweep_ids, all_runs, title):
    """One self-contained HTML page (plus CSV and Markdown tables) from stored runs; with no arguments the
    most recent sweep's cells, or every run when there is no sweep."""
    from specbench.report import build_report, latest_sweep

    if not (run_dirs or sweep_ids or all_runs) and (latest := latest_sweep(results_dir)):
        sweep_ids = (latest,)
        click.echo(f"report of sweep {latest}, the most recent (--all: every run; --sweep ID: another sweep)")
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


@cli.command(name="import-drafter")
@click.argument("source", metavar="hub:ORG/NAME[@REV]|PATH")
@click.option("--target", "-t", required=True, help="the target the drafter is for (checked against it)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder for the specbench drafter")
@click.option("--method", "-m", default=None, help="eagle3|dflash|flexdraft (default: detected from the layout)")
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@_friendly
def import_drafter_cmd(source, target, out, method, device, dtype):
    """Convert a published EAGLE-3, DFlash or FlexDraft checkpoint once into a specbench drafter folder
    (with its source, revision and file hashes); `--drafter SOURCE` also converts on the fly."""
    from specbench.published import import_drafter
    from specbench.targets import load_target

    path = import_drafter(source, load_target(target, device, dtype), out, method)
    click.echo(f"drafter: {path}")


# drafter training: `train` and `regen` live in specbench/training/commands.py
from specbench.training.commands import regen_command, train_command  # noqa: E402

cli.add_command(train_command(_friendly))
cli.add_command(regen_command(_friendly))


def main():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli(prog_name="specbench")


if __name__ == "__main__":
    main()
