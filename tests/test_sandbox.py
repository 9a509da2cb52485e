"""The sandbox stops what model-written code must not do, and lets ordinary programs pass (issue 3)."""

from __future__ import annotations

import socket
import time

import pytest

from specbench.suites.sandbox import SandboxLimits, run_program, run_programs

FAST = SandboxLimits(timeout_s=5.0)


def test_a_correct_program_passes_and_may_use_its_own_directory():
    program = ("import os, shutil, tempfile\n"
               "assert os.getcwd() == os.environ['HOME'] == os.environ['TMPDIR']\n"
               "open('notes.txt', 'w').write('x')\n"
               "os.mkdir('d'); open('d/f', 'w').close(); shutil.rmtree('d'); os.remove('notes.txt')\n"
               "with tempfile.NamedTemporaryFile() as f: f.write(b'y')\n"
               "assert sorted([3, 1, 2]) == [1, 2, 3]\n")
    result = run_program(program, FAST)
    assert result.passed, result.output
    assert result.status == "passed"


def test_a_failing_assert_fails():
    result = run_program("assert 1 + 1 == 3\n", FAST)
    assert not result.passed and result.status == "failed"
    assert "AssertionError" in result.output


@pytest.mark.parametrize("exit_call", ["exit(0)", "import sys; sys.exit(0)", "import os; os._exit(0)"])
def test_exiting_before_the_tests_is_not_a_pass(exit_call):
    assert not run_program(f"{exit_call}\nassert False\n", FAST).passed


def test_an_infinite_loop_times_out():
    start = time.perf_counter()
    result = run_program("while True:\n    pass\n", SandboxLimits(timeout_s=1.0))
    assert result.status == "timeout" and not result.passed
    assert time.perf_counter() - start < 8


def test_unbounded_allocation_fails():
    program = "chunks = []\nwhile True:\n    chunks.append(bytearray(32 << 20))\n"
    start = time.perf_counter()
    result = run_program(program, SandboxLimits(timeout_s=20.0, memory_mb=256))
    assert result.status == "failed", result.output
    assert "MemoryError" in result.output
    assert time.perf_counter() - start < 15


def test_endless_output_is_cut_off():
    result = run_program("while True:\n    print('x' * 1000)\n", SandboxLimits(timeout_s=20.0, output_mb=1))
    assert result.status == "failed"


@pytest.mark.parametrize("program", [
    "import os\nwhile True:\n    os.fork()\n",
    "import os\nos.system('true')\n",
    "import subprocess\nsubprocess.run(['true'], check=True)\n",
    "import multiprocessing\np = multiprocessing.Process(target=print)\np.start()\np.join()\n",
    "import _posixsubprocess\n_posixsubprocess.fork_exec()\n",
    "import ctypes\nctypes.CDLL(None).fork()\n",
], ids=["fork-bomb", "os.system", "subprocess", "multiprocessing", "fork_exec", "ctypes"])
def test_starting_processes_fails(program):
    result = run_program(program, FAST)
    assert result.status == "failed", result.output
    assert "not allowed" in result.output


@pytest.mark.parametrize("attack", [
    "import os\nos.remove(SENTINEL)\n",
    "import os\nos.unlink(SENTINEL)\n",
    "import shutil\nshutil.rmtree(FOLDER)\n",
    "import os\nos.rename(SENTINEL, 'mine.txt')\n",
    "open(SENTINEL, 'w').write('overwritten')\n",
    "import os\nos.truncate(SENTINEL, 0)\n",
    "import os\nos.chmod(SENTINEL, 0)\n",
    "import os\nfd = os.open(FOLDER, os.O_RDONLY)\nos.unlink('sentinel.txt', dir_fd=fd)\n",
    "import os\nos.symlink(FOLDER, 'link')\nopen('link/sentinel.txt', 'w').write('overwritten')\n",
    "import os\nos.symlink(FOLDER, 'link')\nos.remove('link/sentinel.txt')\n",
    "import os\nos.chdir(FOLDER)\nos.remove('sentinel.txt')\n",
], ids=["remove", "unlink", "rmtree", "rename", "overwrite", "truncate", "chmod", "dir_fd", "symlink-write",
        "symlink-remove", "chdir-remove"])
def test_files_outside_the_sandbox_are_untouched(tmp_path, attack):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me")
    mode = sentinel.stat().st_mode
    program = f"SENTINEL = {str(sentinel)!r}\nFOLDER = {str(tmp_path)!r}\n{attack}"
    result = run_program(program, FAST)
    assert result.status == "failed", result.output
    assert sentinel.read_text() == "keep me"
    assert sentinel.stat().st_mode == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sentinel.txt"]


@pytest.mark.parametrize("network_namespace", [True, False], ids=["namespace-then-guard", "guard-only"])
def test_network_is_unreachable(network_namespace):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        program = ("import socket\n"
                   f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                   "s.sendall(b'hello')\n")
        result = run_program(program, SandboxLimits(timeout_s=5.0, network_namespace=network_namespace))
        assert result.status == "failed", result.output
        listener.settimeout(0.2)
        with pytest.raises(socket.timeout):
            listener.accept()
    assert result.isolation in ("namespace", "audit-hook")
    if not network_namespace:
        assert result.isolation == "audit-hook"


def test_the_sandbox_directory_is_removed_afterwards(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    assert run_program("open('left.txt', 'w').write('x')\n", FAST).passed
    assert list(tmp_path.iterdir()) == []


def test_run_programs_keeps_the_order():
    results = run_programs(["assert True\n", "assert False\n", "x = 1\n"], FAST, workers=2)
    assert [r.passed for r in results] == [True, False, True]
