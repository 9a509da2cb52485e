"""Training prompts for drafters: every non-evaluation prompt set in the data directory, one format.

Drafters must never see an evaluation split (shared/data/README.md), so this module only reads
GSM8K train, MBPP outside the test range, the instruction mix, the self-instruct seed tasks and the
standard-library code prompts. Ids, sources and prompt texts match the self-distillation files in
`regen/<target>/` (DESIGN.md §9), so a drafter trainer can join prompts to precomputed responses.
The prompts are bare user messages: no suite instruction (like `\\boxed{}`) is appended.
"""

from __future__ import annotations

import json
from itertools import chain, zip_longest
from typing import NamedTuple

from specbench.jsonl import read_jsonl
from specbench.suites.base import data_dir_file
from specbench.suites.mbpp import TEST_RANGE, training_prompt


class TrainingPrompt(NamedTuple):
    id: str
    source: str
    prompt: str


def gsm8k_train() -> list[TrainingPrompt]:
    rows = read_jsonl(data_dir_file("gsm8k/train.jsonl"))
    return [TrainingPrompt(f"gsm8k-train-{i}", "gsm8k:train", row["question"]) for i, row in enumerate(rows)]


def mbpp_non_test() -> list[TrainingPrompt]:
    with open(data_dir_file("mbpp/sanitized-mbpp.json"), encoding="utf-8") as f:
        rows = json.load(f)
    return [TrainingPrompt(f"mbpp-{row['task_id']}", "mbpp:non-test", training_prompt(row))
            for row in rows if row["task_id"] not in TEST_RANGE]


def instruct_mix() -> list[TrainingPrompt]:
    return [TrainingPrompt(row["id"], row["source"], row["prompt"])
            for row in read_jsonl(data_dir_file("instruct_mix/prompts.jsonl"))]


def self_instruct_seeds() -> list[TrainingPrompt]:
    """The instruction, followed by its first instance's input when it has one."""
    prompts = []
    for row in read_jsonl(data_dir_file("self_instruct/seed_tasks.jsonl")):
        first_input = row["instances"][0]["input"].strip() if row["instances"] else ""
        text = f"{row['instruction']}\n\n{first_input}" if first_input else row["instruction"]
        prompts.append(TrainingPrompt(row["id"], "self_instruct:seed", text))
    return prompts


def code_prompts() -> list[TrainingPrompt]:
    return [TrainingPrompt(row["id"], row["source"], row["prompt"])
            for row in read_jsonl(data_dir_file("code_prompts/stdlib_functions.jsonl"))]


def instruction_prompts() -> list[TrainingPrompt]:
    """General instructions and code: instruct_mix, then self-instruct seeds, then stdlib code prompts."""
    return instruct_mix() + self_instruct_seeds() + code_prompts()


SETS = {"gsm8k": gsm8k_train, "mbpp": mbpp_non_test, "instruct_mix": instruct_mix,
        "self_instruct": self_instruct_seeds, "code_prompts": code_prompts}


def round_robin(*prompt_sets: list[TrainingPrompt]) -> list[TrainingPrompt]:
    """Interleave sets one prompt at a time, so any prefix is balanced (the layout of regen's mix.jsonl)."""
    return [p for p in chain.from_iterable(zip_longest(*prompt_sets)) if p is not None]
