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

The file is keyed and validated (issue 24): its first line is a header naming the target fingerprint,
prompt set and settings it was made with, and every record is keyed by prompt id and messages. A file
whose header or messages do not match what is asked for is refused with the command that rebuilds it,
never mixed in. Files written before the header existed are read as they are (their path is their key).
I/O goes through `specbench.jsonl`: a torn last line (a crash) is cut off on resume, a damaged middle
line stops the read with its line number.

For smollm2-135m a greedy corpus ships with the data (DESIGN.md §9); records it covers are copied
from there instead of being generated again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from specbench.errors import SpecbenchError
from specbench.jsonl import append_jsonl, read_jsonl
from specbench.locks import exclusive
from specbench.targets import cache_dir
from specbench.training.data import DataSource, PromptItem

#: targets whose greedy corpus ships in `shared/data/regen/<folder>/`: fingerprint -> folder. The
#: fingerprint is smollm2-135m's in float32; fresh greedy generations were checked to equal the
#: shipped `response_ids` (see .notes/training.md).
PRECOMPUTED = {"e4df814bcd9ada50268a6ce0": "smollm2-135m"}
#: how the shipped corpus was made (DESIGN.md §9)
PRECOMPUTED_MAX_NEW_TOKENS = 256
#: the header line's marker and version
HEADER_KEY = "specbench_regen"
#: fields every record of a corpus holds
RECORD_FIELDS = ("id", "messages", "response_ids", "finish")


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


def corpus_header(target, source: DataSource, settings: RegenSettings) -> dict:
    """The first line of a corpus file: what its responses were made with."""
    return {HEADER_KEY: 1, "target": target.name, "fingerprint": target.fingerprint, "prompts": source.slug,
            "settings": settings.as_dict(), "key": settings.key(target)}


def rebuild_command(target, source: DataSource, settings: RegenSettings, path: Path) -> str:
    """The shell command that replaces a corpus file with a fresh one for these settings."""
    where = getattr(target, "source", "") or ""
    if where.startswith("hub:"):
        loadable = where[4:]
    elif where and not where.startswith(("builtin:", "pypi:")):
        loadable = where  # the directory or .gguf file it was loaded from
    else:
        loadable = target.name  # an alias
    args = ["specbench", "regen", "--data", source.label, "--target", loadable,
            "--max-new-tokens", str(settings.max_new_tokens), "--dtype", str(target.dtype).replace("torch.", "")]
    if settings.temperature:
        args += ["--temperature", f"{settings.temperature:g}", "--seed", str(settings.seed)]
    if target.chat.system_prompt is not None:
        args += ["--system-prompt", target.chat.system_prompt]
    if target.chat.enable_thinking:
        args.append("--enable-thinking")
    return f"rm {shlex.quote(str(path))} && {shlex.join(args)}"


def read_corpus(target, source: DataSource, settings: RegenSettings, prompts: list[PromptItem] | None = None,
                path: Path | None = None) -> list[dict]:
    """The records of a corpus file (none when it does not exist), after checking that its header and
    its records' messages belong to `target`, `source` and `settings`; refused with the rebuild command."""
    path = path or corpus_path(target, source, settings)
    if not path.exists():
        return []
    rebuild = rebuild_command(target, source, settings, path)
    rows = read_jsonl(path, fix=f"delete that line (it is regenerated) or rebuild the file: {rebuild}")
    if rows and isinstance(rows[0], dict) and HEADER_KEY in rows[0]:
        found, wanted = rows.pop(0), corpus_header(target, source, settings)
        differs = [k for k in ("fingerprint", "prompts", "key") if found.get(k) != wanted[k]]
        if differs:
            raise SpecbenchError(f"{path} was made for another {'/'.join(differs)} ("
                                 f"{', '.join(f'{found.get(k)!r}' for k in differs)}, need "
                                 f"{', '.join(f'{wanted[k]!r}' for k in differs)}); rebuild it: {rebuild}")
    by_prompt = {p.id: p.messages for p in prompts or []}
    for n, rec in enumerate(rows, 1):
        if not isinstance(rec, dict) or any(k not in rec for k in RECORD_FIELDS):
            raise SpecbenchError(f"{path}: record {n} lacks one of {', '.join(RECORD_FIELDS)}; rebuild it: {rebuild}")
        if rec["id"] in by_prompt and rec["messages"] != by_prompt[rec["id"]]:
            raise SpecbenchError(f"{path}: the response to {rec['id']!r} answers other messages than "
                                 f"{source.label} now holds (the prompts changed); rebuild it: {rebuild}")
    return rows


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
        for rec in read_jsonl(path):
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
    with exclusive(path.with_suffix(".lock")):
        return _regenerate(target, source, settings, batch_size, progress, path, shard)


class _CorpusWriter:
    """Appends records to a corpus file through `specbench.jsonl` (all-or-nothing, durable), starting a
    new file with its header. Alone, the run holds the file's lock throughout (`regenerate`); as one of
    several shards, each batch is appended under the lock after reading which ids the others wrote, so
    no id is written twice and lines never interleave."""

    def __init__(self, path: Path, header: dict, fix: str, shared: bool):
        self.path, self.header, self.fix, self.shared = path, header, fix, shared
        self.started = False  # the file holds at least its header

    def write(self, records: list[dict]) -> None:
        if not self.shared:
            self._append(records, set())
            return
        with exclusive(self.path.with_suffix(".lock")):
            written = {r.get("id") for r in read_jsonl(self.path)} if self.path.exists() else set()
            self._append([r for r in records if r["id"] not in written], written)

    def _append(self, records: list[dict], written: set) -> None:
        if not self.started:  # a new file, or one holding only a torn line, gets the header first
            self.started = bool(self.path.exists() and (written or read_jsonl(self.path)))
        if not self.started:
            append_jsonl(self.path, [self.header], self.fix)
            self.started = True
        if records:
            append_jsonl(self.path, records, self.fix)


def _regenerate(target, source: DataSource, settings: RegenSettings, batch_size: int, progress: bool,
                path: Path, shard: tuple[int, int] = (0, 1)) -> RegenReport:
    from tqdm.auto import tqdm

    from specbench.decode import generate
    from specbench.methods import build_method
    from specbench.sampling import SamplingConfig
    from specbench.timing import StepTimer

    prompts = source.prompts()[shard[0]::shard[1]]
    existing = read_corpus(target, source, settings, prompts, path)
    done = {r["id"] for r in existing}
    todo = [p for p in prompts if p.id not in done]
    shipped = precomputed_records(target, settings) if todo else {}
    copied = [p for p in todo if p.id in shipped and shipped[p.id]["messages"] == p.messages]
    copied_ids = {p.id for p in copied}
    remaining = [p for p in todo if p.id not in copied_ids]
    sampling = SamplingConfig(temperature=settings.temperature)
    method = build_method("ar", target)
    t0, n_tokens = time.perf_counter(), 0
    fix = "free some space and run the same command again (it resumes)"
    writer = _CorpusWriter(path, header=corpus_header(target, source, settings), fix=fix, shared=shard[1] > 1)
    if copied:
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
        prompts = source.prompts()
        done = {r["id"] for r in read_corpus(target, source, settings, prompts)}
        todo = [p for p in prompts if p.id not in done]
        if todo and shipped is None:
            shipped = precomputed_records(target, settings)
        missing += sum(1 for p in todo if p.id not in (shipped or {}))
    return missing


def load_corpus(target, sources: list[DataSource], settings: RegenSettings) -> list[dict]:
    """Records for every prompt of `sources`, in spec order; an error if any is not regenerated yet."""
    records = []
    for source in sources:
        prompts = source.prompts()
        by_id = {r["id"]: r for r in read_corpus(target, source, settings, prompts)}
        absent = [p.id for p in prompts if p.id not in by_id]
        if absent:
            raise SpecbenchError(f"{len(absent)} of {len(prompts)} prompts of {source.label} have no response yet; "
                                 f"run `specbench regen --data {source.label}` first")
        records.extend(by_id[p.id] for p in prompts)
    return records
