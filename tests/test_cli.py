"""Bad input exits non-zero with one clear line and no traceback (issue 2, item 6)."""

import json

import pytest
from click.testing import CliRunner

from specbench.cli import cli

BASE = ["run", "--target", "tiny-random-llama", "--limit", "1", "--max-new-tokens", "4", "--no-progress"]


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--suite", "nope"], "unknown suite 'nope'"),
    (["--target", "no/such-model-here"], "cannot load target"),
    (["--batch-size", "-2"], "--batch-size must be >= 1"),
    (["--temperature", "-0.5"], "--temperature must be >= 0"),
    (["--data-file", "/nonexistent/file.jsonl"], "--data-file not found"),
    (["-o", "novalue"], "is not KEY=VALUE"),
])
def test_bad_input_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(cli, BASE + ["--results-dir", str(tmp_path)] + args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.output


def test_unparseable_data_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    result = CliRunner().invoke(cli, BASE + ["--results-dir", str(tmp_path), "--data-file", str(bad)])
    assert result.exit_code == 2 and "cannot parse" in result.output


def test_run_and_list(tmp_path):
    result = CliRunner().invoke(cli, BASE + ["--results-dir", str(tmp_path), "--run-id", "x"])
    assert result.exit_code == 0, result.output
    assert "exact match vs AR" in result.output and (tmp_path / "x" / "summary.json").exists()
    listed = CliRunner().invoke(cli, ["list", "runs", "--results-dir", str(tmp_path)])
    assert listed.exit_code == 0 and "x" in listed.output and "complete" in listed.output
    again = CliRunner().invoke(cli, BASE + ["--results-dir", str(tmp_path), "--run-id", "x"])
    assert again.exit_code == 2 and "already exists" in again.output
    assert CliRunner().invoke(cli, ["run", "--resume", "x", "--results-dir", str(tmp_path)]).exit_code == 2


@pytest.mark.parametrize("what, expect", [("methods", "ar"), ("suites", "gsm8k"), ("targets", "smollm2-135m")])
def test_list(what, expect):
    result = CliRunner().invoke(cli, ["list", what])
    assert result.exit_code == 0 and expect in result.output


# -- issue 23: the design's commands as typed ------------------------------------------------------------
TRAINED = ("bita", "dflash", "eagle3", "flexdraft", "mtp")
#: one bad -o value per method and the line it must give (what the option takes, exit 2)
BAD_OPTION = {
    "ar": ("x=1", "ar takes no options; got ['x']"),
    "pld": ("max_ngram=abc", "pld option max_ngram takes an integer >= 1, got 'abc'"),
    "eagle3": ("top_k=0", "eagle3 option top_k takes an integer >= 1, got 0"),
    "flexdraft": ("mode=fast", "flexdraft option mode takes one of flex, parallel, sequential, got 'fast'"),
    "dflash": ("block_size=big", "dflash option block_size takes an integer, got 'big'"),
    "bita": ("tree=full", "bita option tree takes tree or chain, got 'full'"),
    "mtp": ("decoding=cubic", "mtp option decoding takes quadratic or linear, got 'cubic'"),
}


@pytest.fixture
def empty_store(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("method", sorted(BAD_OPTION))
def test_a_bad_option_value_is_one_line_for_every_method(method, tmp_path, empty_store):
    """`--no-train` and an empty store: a missing check would end in another error, not train for minutes."""
    option, message = BAD_OPTION[method]
    result = CliRunner().invoke(cli, BASE + ["--method", method, "-o", option, "--no-train",
                                             "--results-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines == [f"error: {message}"]


@pytest.mark.parametrize("method", TRAINED)
def test_a_drafter_method_without_drafter_uses_the_stored_standard_one(method, tmp_path, empty_store):
    """`specbench run --method M` as typed: `--drafter auto`, announced in one line."""
    from specbench.methods import method_class
    from specbench.testing import lossless
    from specbench.training.store import store_path

    cls = method_class(method).drafter_class
    target = lossless.load_tiny("tiny-random-llama")
    path = store_path(target, cls)
    cls.for_target(target).save(path)
    result = CliRunner().invoke(cli, BASE + ["--method", method, "--no-warmup", "--results-dir", str(tmp_path),
                                             "--run-id", "r"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (f"{method}: using the stored standard drafter {path} (--drafter auto "
                                             "is the default; --drafter PATH picks another)")
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["exact_match_rate"] == 1.0


def test_no_train_without_a_stored_drafter_is_one_line(tmp_path, empty_store):
    result = CliRunner().invoke(cli, BASE + ["--method", "flexdraft", "--no-train", "--results-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: no cached flexdraft drafter for tiny-random-llama (fingerprint {_fingerprint()}) in "
        f"{empty_store / 'drafters' / _fingerprint()}; train one with `specbench train --method flexdraft "
        "--target tiny-random-llama` or drop --no-train"]


def _fingerprint() -> str:
    from specbench.testing import lossless

    return lossless.load_tiny("tiny-random-llama").fingerprint
