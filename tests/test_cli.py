"""Bad input exits non-zero with one clear line and no traceback (issue 2, item 6)."""

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
