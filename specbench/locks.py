"""One writer at a time for files several specbench processes may create together (a sweep, two
trainings side by side, several methods on one GPU): an exclusive `flock`, released however the
process ends."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(lock_path: Path):
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
