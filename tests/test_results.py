"""The results store under file faults (issue 24): a full disk fails the run in one line and keeps every
finished record; a second writer of the same run is refused, not interleaved; run ids are folder names."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from specbench import jsonl
from specbench.cli import cli
from specbench.errors import SpecbenchError
from specbench.results import ResultStore

RUN = ["run", "--method", "ar", "--suite", "gsm8k", "--target", "tiny-random-llama", "--limit", "4",
       "--max-new-tokens", "6", "--no-warmup", "--no-progress"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _one_line_error(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_a_full_disk_fails_the_run_in_one_line_and_keeps_every_finished_record(tmp_path, monkeypatch):
    calls = []
    real = jsonl._write_all

    def disk_fills_on_the_second_batch(f, data):
        calls.append(len(data))
        if len(calls) == 2:
            f.write(data[: len(data) // 2])  # half a batch reaches the disk, then it is full
            f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)

    monkeypatch.setattr(jsonl, "_write_all", disk_fills_on_the_second_batch)
    result = CliRunner().invoke(cli, [*RUN, "--run-id", "full", "--results-dir", str(tmp_path)])
    line = _one_line_error(result)
    assert "No space left on device" in line and "specbench run --resume full" in line
    run_dir = ResultStore(tmp_path).open("full")
    manifest = run_dir.read_manifest()
    assert manifest["status"] == "failed" and "No space left on device" in manifest["error"]
    assert len(run_dir.records_path.read_bytes().splitlines()) == 2  # batch 1, both arms; nothing of batch 2
    assert len(run_dir.completed_prompt_ids()) == 1

    monkeypatch.setattr(jsonl, "_write_all", real)
    result = CliRunner().invoke(cli, ["run", "--resume", "full", "--results-dir", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert run_dir.read_manifest()["status"] == "complete" and len(run_dir.completed_prompt_ids()) == 4


def test_a_second_writer_of_the_same_run_is_refused_until_the_first_ends(tmp_path):
    result = CliRunner().invoke(cli, [*RUN, "--limit", "1", "--run-id", "r", "--results-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    run_dir = ResultStore(tmp_path).open("r")
    run_dir.update_manifest(status="interrupted")
    resume = [sys.executable, "-m", "specbench.cli", "run", "--resume", "r", "--results-dir", str(tmp_path),
              "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    before = run_dir.records_path.read_bytes()
    with run_dir.writer_lock():  # this process is writing the run
        other = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=300)
        assert other.returncode == 2 and other.stderr.strip().count("\n") == 0, other.stderr
        assert f"run r is being written by process {os.getpid()}" in other.stderr
        assert run_dir.records_path.read_bytes() == before
        line = _one_line_error(CliRunner().invoke(cli, [*RUN, "--run-id", "r", "--results-dir", str(tmp_path)]))
        assert "already exists" in line
    again = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=300)  # the lock went with it
    assert again.returncode == 0, again.stderr
    assert json.loads(run_dir.manifest_path.read_text())["status"] == "complete"


@pytest.mark.parametrize("run_id", ["a/b", "..", "", "nul\x00"])
def test_run_ids_must_be_folder_names(tmp_path, run_id):
    with pytest.raises(SpecbenchError, match="plain folder name"):
        ResultStore(tmp_path).create(run_id)


def test_a_damaged_record_in_the_middle_is_reported_not_skipped(tmp_path):
    run_dir = ResultStore(tmp_path).create("r")
    run_dir.append_records([{"prompt_id": "a", "arm": "method"}, {"prompt_id": "a", "arm": "baseline"}])
    data = run_dir.records_path.read_bytes()
    run_dir.records_path.write_bytes(b"#" + data[1:])  # the first of two lines damaged
    with pytest.raises(SpecbenchError) as err:
        run_dir.load_records()
    assert "records.jsonl line 1" in str(err.value) and "--resume r" in str(err.value)
