"""Self-distillation: the target's own responses to training prompts (`specbench regen`).

Drafters trained on the target's outputs accept more of them than drafters trained on human text
(bita_mtp_flexdraft.md A.5.1; eagle3_dflash.md A.2.1, A.5-18), so every method trains on a regenerated
corpus. Generation reuses the AR method through the shared decode loop (batched, greedy unless a
temperature is given). Records are appended and flushed per batch to
`cache_dir()/regen/<target fingerprint>/<prompt set>-<settings>.jsonl`, so an interrupted run resumes
where it stopped and skips every id already written.

At scale (`--shard I/N`, one process per GPU) shard `I` takes every `N`-th prompt and appends each
batch under the corpus lock instead of holding it for the whole run, skipping ids another writer
added meanwhile; N shards therefore fill the one corpus file together.

For smollm2-135m a greedy corpus ships with the data (DESIGN.md §9); records it covers are copied
from there instead of being generated again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from specbench.errors import SpecbenchError
from specbench.targets import cache_dir
from specbench.training.data import DataSource, PromptItem, read_records

#: targets whose greedy corpus ships in `shared/data/regen/<folder>/`: fingerprint -> folder. The
#: fingerprint is smollm2-135m's in float32; fresh greedy generations were checked to equal the
#: shipped `response_ids` (see .notes/training.md).
PRECOMPUTED = {"e4df814bcd9ada50268a6ce0": "smollm2-135m"}
#: how the shipped corpus was made (DESIGN.md §9)
PRECOMPUTED_MAX_NEW_TOKENS = 256


@dataclass(frozen=True)
class RegenSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0

    def key(self, target) -> str:
        """Everything that changes a response: sampling, length, dtype and chat rendering."""
        chat = json.dumps([target.chat.system_prompt, target.chat.enable_thinking, target.chat.template_hash])
        mode = "greedy" if self.temperature == 0 else f"t{self.temperature:g}-seed{self.seed}"
        dtype = str(target.dtype).replace("torch.", "")
        return f"{mode}-n{self.max_new_tokens}-{dtype}-chat{hashlib.sha256(chat.encode()).hexdigest()[:8]}"

    def as_dict(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "seed": self.seed}


def corpus_path(target, source: DataSource, settings: RegenSettings) -> Path:
    return cache_dir() / "regen" / target.fingerprint / f"{source.slug}-{settings.key(target)}.jsonl"


def precomputed_records(target, settings: RegenSettings) -> dict[str, dict]:
    """Shipped responses usable under `settings`, cut to `max_new_tokens`; {} when they do not apply.

    They apply to the same weights (fingerprint), greedy decoding in float32 with the template's
    default system prompt and thinking off. A response that ended with EOS is valid for any longer
    limit; any response at least `max_new_tokens` long is valid once cut.
    """
    folder = PRECOMPUTED.get(target.fingerprint)
    root = os.environ.get("SPECBENCH_DATA_DIR")
    if (folder is None or not root or settings.temperature != 0 or target.dtype != torch.float32
            or target.chat.system_prompt is not None or target.chat.enable_thinking):
        return {}
    n = settings.max_new_tokens
    usable = {}
    for path in sorted((Path(root) / "regen" / folder).glob("*.jsonl")):
        for rec in read_records(path):
            ids = rec["response_ids"]
            if len(ids) > n:
                rec = {**rec, "response_ids": ids[:n], "response": target.decode(ids[:n]), "finish": "length"}
            elif not (rec["finish"] == "eos" or len(ids) == n):
                continue
            usable[rec["id"]] = rec
    return usable


@dataclass
class RegenReport:
    path: Path
    already_done: int
    copied: int
    generated: int
    generated_tokens: int
    seconds: float

    def line(self) -> str:
        rate = self.generated_tokens / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.path}: {self.already_done} cached, {self.copied} from the shipped corpus, "
                f"{self.generated} generated ({self.generated_tokens} tokens, {self.seconds:.1f} s, {rate:.1f} tok/s)")


def _open_for_append(path: Path):
    """Append handle; a torn last line from an interrupted run is cut off first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    return open(path, "a", encoding="utf-8")


def _write(f, rec: dict) -> None:
    f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def parse_shard(text: str) -> tuple[int, int]:
    """`"2/8"` -> (2, 8): shard 2 of 8 (0-based); one-line error on anything else."""
    try:
        index, count = (int(x) for x in str(text).split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise SpecbenchError(f"--shard takes I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return index, count


def regenerate(target, source: DataSource, settings: RegenSettings, batch_size: int = 8,
               progress: bool = True, shard: tuple[int, int] = (0, 1)) -> RegenReport:
    """Make sure every prompt of `source` (of `shard`: every N-th from I) has a response in its corpus
    file; resumable, one writer at a time (for the run, or per batch when sharded)."""
    if batch_size < 1:
        raise SpecbenchError(f"--batch-size must be >= 1, got {batch_size}")
    path = corpus_path(target, source, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    if shard[1] > 1:
        return _regenerate(target, source, settings, batch_size, progress, path, shard)
    with _exclusive(path.with_suffix(".lock")):
        return _regenerate(target, source, settings, batch_size, progress, path, shard)


@contextmanager
def _exclusive(lock_path: Path):
    """One writer per corpus file: two trainings started together (a sweep, a GPU running several
    methods at once) would otherwise both append the same records and interleave lines."""
    import fcntl

    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class _CorpusWriter:
    """Appends records to a corpus file. Alone, the run holds the lock and keeps the file open; as a
    shard, each batch is appended under the lock after reading what other writers added since (from
    the byte offset read up to), so no id is written twice and lines never interleave."""

    def __init__(self, path: Path, shared: bool):
        self.path, self.shared = path, shared
        self.offset, self.ids = 0, set()
        self.file = None if shared else _open_for_append(path)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()

    def write(self, records: list[dict]) -> None:
        if self.file is not None:
            for rec in records:
                _write(self.file, rec)
            self.file.flush()
            return
        with _exclusive(self.path.with_suffix(".lock")):
            self._catch_up()
            with open(self.path, "a", encoding="utf-8") as f:
                for rec in records:
                    if rec["id"] not in self.ids:
                        _write(f, rec)
                        self.ids.add(rec["id"])
                f.flush()
                self.offset = f.tell()

    def _catch_up(self) -> None:
        """Read the lines written since `offset`; cut a torn last line (a writer killed mid-line)."""
        if not self.path.exists():
            return
        with open(self.path, "r+b") as f:
            f.seek(self.offset)
            data = f.read()
            if data and not data.endswith(b"\n"):
                data = data[: data.rfind(b"\n") + 1]
                f.truncate(self.offset + len(data))
        for line in data.splitlines():
            if line.strip():
                self.ids.add(json.loads(line)["id"])
        self.offset += len(data)


def _regenerate(target, source: DataSource, settings: RegenSettings, batch_size: int, progress: bool,
                path: Path, shard: tuple[int, int] = (0, 1)) -> RegenReport:
    from tqdm.auto import tqdm

    from specbench.decode import generate
    from specbench.methods import build_method
    from specbench.sampling import SamplingConfig
    from specbench.timing import StepTimer

    prompts = source.prompts()[shard[0]::shard[1]]
    done = {r["id"] for r in read_records(path)} if path.exists() else set()
    todo = [p for p in prompts if p.id not in done]
    shipped = precomputed_records(target, settings) if todo else {}
    copied = [p for p in todo if p.id in shipped and shipped[p.id]["messages"] == p.messages]
    copied_ids = {p.id for p in copied}
    remaining = [p for p in todo if p.id not in copied_ids]
    sampling = SamplingConfig(temperature=settings.temperature)
    method = build_method("ar", target)
    t0, n_tokens = time.perf_counter(), 0
    with _CorpusWriter(path, shared=shard[1] > 1) as writer:
        writer.write([shipped[p.id] for p in copied])
        bar = tqdm(total=len(remaining), desc=f"regen {source.label}" + (f" {shard[0]}/{shard[1]}" if shard[1] > 1 else ""),
                   unit="prompt", disable=not progress or not remaining)
        for start in range(0, len(remaining), batch_size):
            batch: list[PromptItem] = remaining[start:start + batch_size]
            generator = None
            if not sampling.greedy:  # seeded by the batch's first id, so a resumed run draws the same way
                generator = torch.Generator(device=target.device)
                generator.manual_seed(settings.seed * 1_000_003 + zlib.crc32(batch[0].id.encode()))
            out = generate(method.make_decoder(sampling, generator), [target.render(p.messages) for p in batch],
                           settings.max_new_tokens, target.eos_token_ids, StepTimer(target.device))
            writer.write([{"id": p.id, "source": p.source, "messages": p.messages,
                           "response": target.decode(row.tokens), "response_ids": row.tokens,
                           "finish": row.stopped_by} for p, row in zip(batch, out.rows)])
            n_tokens += sum(len(row.tokens) for row in out.rows)
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{n_tokens / (time.perf_counter() - t0):.1f}")
        bar.close()
    return RegenReport(path, len(done), len(copied), len(remaining), n_tokens, time.perf_counter() - t0)


def missing_prompts(target, sources: list[DataSource], settings: RegenSettings) -> int:
    """How many prompts would have to be generated (not cached, not shipped) for `sources`."""
    shipped = None
    missing = 0
    for source in sources:
        path = corpus_path(target, source, settings)
        done = {r["id"] for r in read_records(path)} if path.exists() else set()
        todo = [p for p in source.prompts() if p.id not in done]
        if todo and shipped is None:
            shipped = precomputed_records(target, settings)
        missing += sum(1 for p in todo if p.id not in (shipped or {}))
    return missing


def load_corpus(target, sources: list[DataSource], settings: RegenSettings) -> list[dict]:
    """Records for every prompt of `sources`, in spec order; an error if any is not regenerated yet."""
    records = []
    for source in sources:
        path = corpus_path(target, source, settings)
        by_id = {r["id"]: r for r in read_records(path)} if path.exists() else {}
        prompts = source.prompts()
        absent = [p.id for p in prompts if p.id not in by_id]
        if absent:
            raise SpecbenchError(f"{len(absent)} of {len(prompts)} prompts of {source.label} have no response yet; "
                                 f"run `specbench regen --data {source.label}` first")
        records.extend(by_id[p.id] for p in prompts)
    return records
