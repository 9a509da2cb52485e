"""The results store: `results/<run_id>/{manifest.json, records.jsonl, summary.json}` (DESIGN.md §6).

Records are appended and flushed per prompt (both arms of a prompt are written together), so an
interrupted run loses at most the batch in flight; `RunDir.completed_prompt_ids` tells the runner
what `--resume` may skip. A torn last line (the process was killed mid-write) is dropped on resume.

Records written before a field existed stay readable: `load_records` fills the missing per-turn fields
of `TURN_FIELD_DEFAULTS` (`draft_lengths: None`: not recorded, so per-position acceptance cannot
condition on it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from specbench.errors import SpecbenchError

ARMS = ("method", "baseline")
#: per-turn record fields added after records were first written, and what an older record means by them
TURN_FIELD_DEFAULTS = {"draft_lengths": None}


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


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
        _write_json_atomic(self.manifest_path, manifest)

    def update_manifest(self, **fields) -> dict:
        manifest = self.read_manifest()
        manifest.update(fields)
        self.write_manifest(manifest)
        return manifest

    def write_summary(self, summary: dict) -> None:
        _write_json_atomic(self.summary_path, summary)

    def read_summary(self) -> dict | None:
        if not self.summary_path.exists():
            return None
        return json.loads(self.summary_path.read_text())

    def append_records(self, records: list[dict]) -> None:
        with open(self.records_path, "a", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def load_records(self) -> list[dict]:
        """All intact records; a torn trailing line is ignored."""
        if not self.records_path.exists():
            return []
        out = []
        with open(self.records_path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                for turn in (rec.get("turns") or []) if isinstance(rec, dict) else []:
                    for key, value in TURN_FIELD_DEFAULTS.items():
                        turn.setdefault(key, value)
                out.append(rec)
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
        tmp = self.records_path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in keep:
                f.write(json.dumps(rec, default=str) + "\n")
        os.replace(tmp, self.records_path)
        return len(done)


class ResultStore:
    def __init__(self, root: str | Path = "results"):
        self.root = Path(root)

    def create(self, run_id: str) -> RunDir:
        path = self.root / run_id
        if path.exists():
            raise SpecbenchError(f"run {run_id} already exists in {self.root}; use --resume {run_id} or another --run-id")
        path.mkdir(parents=True)
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
