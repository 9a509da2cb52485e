"""Spec-Bench (Xia et al. 2024, hemingkx/Spec-Bench): 480 questions in six tasks, no offline score.

Spec-Bench is the question set most speculative-decoding papers quote, so specbench runs it as-is:
the 80 MT-Bench questions (two turns each, turn 2 answered in the conversation that holds the arm's
own turn-1 answer, as Spec-Bench's `evaluation/eval.py` does) and 80 single-turn questions each of
translation, summarization, qa, math_reasoning and rag. Defaults follow Spec-Bench: 1024 new tokens
per turn (`--max-new-tokens` overrides). Spec-Bench measures speed only, so `score` returns None.

Categories (issue 13): the file labels MT-Bench questions with their eight MT-Bench categories
(writing, roleplay, ...); Spec-Bench's `speed.py` merges them into one `mt_bench` task. Every
example therefore carries `meta.category` = the Spec-Bench task (one of `TASKS`, what per-category
summaries and `--category` use) and `meta.question_category` = the file's own label (what the
exported answer files write back, so `speed.py` sees the file it expects). `--category` accepts
either kind of name.

`--limit N` is stratified: N is spread over the tasks in `TASKS` order (N = 12 gives two per task),
each task's share a seeded subset in file order, so a small run still covers all six columns of the
leaderboard table.

Sources: the data dir (`spec_bench/question.jsonl`, a copy of Spec-Bench @ fd2c1cd7), then the same
file from GitHub pinned to that commit and checked against its sha256.
"""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

from specbench.errors import SpecbenchError
from specbench.jsonl import parse_jsonl, read_jsonl
from specbench.suites.base import Example, Suite, data_dir_file, select

#: Spec-Bench's tasks, in the column order of its leaderboard and `speed.py`
TASKS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
#: the eight MT-Bench labels `speed.py` merges into `mt_bench`
MT_BENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
EXPECTED_TASK_SIZES = {task: 80 for task in TASKS}

SPEC_BENCH_COMMIT = "fd2c1cd7d2201ef71db4c5f4e455008f017967bf"
QUESTION_URL = (f"https://raw.githubusercontent.com/hemingkx/Spec-Bench/{SPEC_BENCH_COMMIT}/"
                "data/spec_bench/question.jsonl")
QUESTION_SHA256 = "4b6d33e79484f9841c487ee87d1cf6aa8c6066f61d5d482ff09e5a007fafdf04"


def task_of(question_category: str) -> str:
    """Spec-Bench task of a file label: the MT-Bench labels are one task, the rest are their own."""
    return "mt_bench" if question_category in MT_BENCH_CATEGORIES else question_category


def example_id(question_id) -> str:
    return f"spec_bench-{question_id}"


def _examples(rows: list[dict]) -> list[Example]:
    out = []
    for row in rows:
        turns = row["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise ValueError(f"question {row.get('question_id')}: 'turns' must be a non-empty list of strings")
        out.append(Example(id=example_id(row["question_id"]), turns=list(turns), reference=None,
                           meta={"category": task_of(row["category"]), "question_category": row["category"],
                                 "question_id": row["question_id"]}))
    return out


def _from_github() -> list[dict]:
    with urllib.request.urlopen(QUESTION_URL, timeout=10) as response:
        blob = response.read()
    if hashlib.sha256(blob).hexdigest() != QUESTION_SHA256:
        raise OSError(f"{QUESTION_URL} does not match the pinned sha256")
    return [row for _, row in parse_jsonl(blob, QUESTION_URL, torn_tail=False)]


def select_categories(examples: list[Example], categories) -> list[Example]:
    """Examples whose task or file label is one of `categories`; unknown names are refused."""
    wanted = set(categories)
    known = set(TASKS) | set(MT_BENCH_CATEGORIES)
    unknown = sorted(wanted - known)
    if unknown:
        raise SpecbenchError(f"unknown Spec-Bench category {', '.join(unknown)}; known: {', '.join(TASKS)} "
                             f"or an MT-Bench label ({', '.join(MT_BENCH_CATEGORIES)})")
    return [e for e in examples if e.meta["category"] in wanted or e.meta["question_category"] in wanted]


def stratified(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """`limit` spread evenly over the tasks present (the first ones get the remainder), file order kept."""
    if limit is None or limit >= len(examples):
        return list(examples)
    if limit <= 0:
        raise SpecbenchError(f"--limit must be positive, got {limit}")
    by_task: dict[str, list[Example]] = {}
    for e in examples:
        by_task.setdefault(e.meta["category"], []).append(e)
    tasks = [t for t in TASKS if t in by_task] + sorted(t for t in by_task if t not in TASKS)
    share = {t: limit // len(tasks) + (i < limit % len(tasks)) for i, t in enumerate(tasks)}
    # a task smaller than its share hands the rest to the others, in order
    spare = sum(max(0, share[t] - len(by_task[t])) for t in tasks)
    for t in tasks:
        share[t] = min(share[t], len(by_task[t]))
    for t in tasks:
        extra = min(spare, len(by_task[t]) - share[t])
        share[t] += extra
        spare -= extra
    chosen = {e.id for t in tasks if share[t]  # a limit under the task count leaves the last tasks none
              for e in select(by_task[t], share[t], seed + TASKS.index(t) if t in TASKS else seed)}
    return [e for e in examples if e.id in chosen]


class SpecBench(Suite):
    name = "spec_bench"
    description = ("Spec-Bench, 480 questions: MT-Bench (2 turns), translation, summarization, qa, "
                   "math_reasoning, rag; speed only (no score)")
    default_max_new_tokens = 1024
    expected_size = 480

    def sources(self):
        return [
            ("data-dir:spec_bench/question.jsonl",
             lambda: _examples(read_jsonl(data_dir_file("spec_bench/question.jsonl")))),
            (f"url:github.com/hemingkx/Spec-Bench@{SPEC_BENCH_COMMIT[:8]}/data/spec_bench/question.jsonl",
             lambda: _examples(_from_github())),
        ]

    def load_file(self, path: Path):
        return _examples(read_jsonl(path))

    def select(self, examples: list[Example], limit: int | None, seed: int) -> list[Example]:
        return stratified(examples, limit, seed)

    def select_categories(self, examples: list[Example], categories) -> list[Example]:
        return select_categories(examples, categories)

    def score(self, example, outputs):
        return None
