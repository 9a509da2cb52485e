"""The results store: `results/<run_id>/{manifest.json, records.jsonl, summary.json}` (DESIGN.md §6).

Records are appended and flushed per prompt (both arms of a prompt are written together), so an
interrupted run loses at most the batch in flight; `RunDir.completed_prompt_ids` tells the runner
what `--resume` may skip. Reading and writing go through `specbench.jsonl` (issue 24): a torn last
line (the process was killed mid-write) is dropped, a damaged middle line is an error, and a write
that fails (a full disk) leaves every record before it intact. One process writes a run at a time
(`RunDir.writer_lock`): a second `--run-id`/`--resume` of the same run is refused, not interleaved.

Records written before a field existed stay readable: `load_records` fills the missing per-turn fields
of `TURN_FIELD_DEFAULTS` (`draft_lengths: None`: not recorded, so per-position acceptance cannot
condition on it).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from specbench.errors import SpecbenchError
from specbench.jsonl import append_jsonl, read_jsonl, write_jsonl

ARMS = ("method", "baseline")
#: per-turn record fields added after records were first written, and what an older record means by them
TURN_FIELD_DEFAULTS = {"draft_lengths": None}


def write_json_atomic(path: Path, data: dict) -> None:
    """Write `data` whole or not at all (tmp file, then rename); one-line error, the old file kept."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise SpecbenchError(f"cannot write {path}: {e.strerror or e}; the previous {path.name} is kept") from None


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.run_id = self.path.name

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def records_path(self) -> Path:
        return self.path / "records.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    def read_manifest(self) -> dict:
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SpecbenchError(f"run {self.run_id}: unreadable manifest.json ({e})") from None

    def write_manifest(self, manifest: dict) -> None:
        write_json_atomic(self.manifest_path, manifest)

    def update_manifest(self, **fields) -> dict:
        manifest = self.read_manifest()
        manifest.update(fields)
        self.write_manifest(manifest)
        return manifest

    def write_summary(self, summary: dict) -> None:
        write_json_atomic(self.summary_path, summary)

    def read_summary(self) -> dict | None:
        if not self.summary_path.exists():
            return None
        return json.loads(self.summary_path.read_text())

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    @contextmanager
    def writer_lock(self):
        """Hold the run's write lock (an `flock`, released when the process ends however it ends);
        a second writer is refused in one line instead of interleaving its records with ours."""
        import fcntl

        with open(self.lock_path, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "another process"
                raise SpecbenchError(f"run {self.run_id} is being written by {holder}; wait for it to finish "
                                     f"(or stop it), then --resume {self.run_id}") from None
            lock.seek(0)
            lock.truncate()
            lock.write(f"process {os.getpid()}")
            lock.flush()
            try:
                yield self
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def append_records(self, records: list[dict]) -> None:
        append_jsonl(self.records_path, records,
                     fix=f"free some space, then continue with `specbench run --resume {self.run_id}`")

    def load_records(self) -> list[dict]:
        """All intact records; a torn trailing line is ignored, a damaged earlier one is an error."""
        if not self.records_path.exists():
            return []
        out = read_jsonl(self.records_path, fix=f"delete that line (--resume {self.run_id} re-runs its prompt)")
        for rec in out:
            for turn in (rec.get("turns") or []) if isinstance(rec, dict) else []:
                for key, value in TURN_FIELD_DEFAULTS.items():
                    turn.setdefault(key, value)
        return out

    def completed_prompt_ids(self) -> set[str]:
        arms: dict[str, set] = {}
        for rec in self.load_records():
            arms.setdefault(rec["prompt_id"], set()).add(rec["arm"])
        return {pid for pid, seen in arms.items() if seen >= set(ARMS)}

    def compact_for_resume(self) -> int:
        """Rewrite records.jsonl with complete prompt pairs only; returns how many prompts survive."""
        done = self.completed_prompt_ids()
        keep, seen = [], set()
        for rec in self.load_records():
            key = (rec["prompt_id"], rec["arm"])
            if rec["prompt_id"] in done and key not in seen:
                seen.add(key)
                keep.append(rec)
        write_jsonl(self.records_path, keep, fix="free some space and resume again")
        return len(done)


class ResultStore:
    def __init__(self, root: str | Path = "results"):
        self.root = Path(root)

    def create(self, run_id: str) -> RunDir:
        if not run_id or run_id in (".", "..") or any(c in run_id for c in "/\\\x00"):
            raise SpecbenchError(f"run id {run_id!r} must be a plain folder name (not empty, no '/', '\\' or NUL)")
        path = self.root / run_id
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            path.mkdir()  # atomic: of two processes given the same --run-id, one gets it
        except FileExistsError:
            raise SpecbenchError(f"run {run_id} already exists in {self.root}; use --resume {run_id} or another "
                                 "--run-id") from None
        return RunDir(path)

    def open(self, run_id: str) -> RunDir:
        path = Path(run_id) if Path(run_id).is_dir() and (Path(run_id) / "manifest.json").exists() else self.root / run_id
        if not (path / "manifest.json").exists():
            raise SpecbenchError(f"no run {run_id!r} in {self.root} (see: specbench list runs)")
        return RunDir(path)

    def runs(self) -> list[RunDir]:
        if not self.root.is_dir():
            return []
        return sorted((RunDir(p) for p in self.root.iterdir() if (p / "manifest.json").exists()),
                      key=lambda r: r.run_id)
