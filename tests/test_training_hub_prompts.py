"""ShareGPT / UltraChat prompt sets from a (here: locally built) Hugging Face cache, and the offline
fallback to the shipped corpus (issue 22). The hub itself is never contacted."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from specbench.training.data import DataSource, parse_data_spec
from specbench.training.hub_prompts import FALLBACK, HUB_SETS, load_prompts, resolve_sources

SHAREGPT = [{"id": "a1", "conversations": [{"from": "human", "value": "Name three colours."},
                                           {"from": "gpt", "value": "Red, green, blue."}]},
            {"id": "b2", "conversations": [{"from": "gpt", "value": "I start, so I am skipped."}]},
            {"id": "c3", "conversations": [{"from": "human", "value": "Count to five."},
                                           {"from": "gpt", "value": "1 2 3 4 5"},
                                           {"from": "human", "value": "Now backwards."}]}]


def _cached_dataset(cache, repo: str, files: dict) -> None:
    """The layout huggingface_hub reads offline: refs/main names a snapshot folder holding the files."""
    folder = cache / f"datasets--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    for name, write in files.items():
        path = folder / "snapshots" / ("0" * 40) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from specbench import hub

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    return cache


def _fill(cache):
    _cached_dataset(cache, HUB_SETS["sharegpt"].repo,
                    {HUB_SETS["sharegpt"].files[0]: lambda p: p.write_text(json.dumps(SHAREGPT))})
    frame = pd.DataFrame({"prompt": ["Write a haiku.", "  ", "Explain tides."], "prompt_id": ["p1", "p2", "p3"],
                          "messages": [[], [], []]})
    _cached_dataset(cache, HUB_SETS["ultrachat"].repo,
                    {"data/train_sft-00000-of-00001.parquet": lambda p: frame.to_parquet(p)})


def test_hub_sets_read_first_user_turns_from_the_local_cache(offline_hub):
    _fill(offline_hub)
    share = load_prompts("sharegpt")
    assert [(p.id, p.source, p.messages) for p in share] == [
        ("sharegpt-a1", "sharegpt", [{"role": "user", "content": "Name three colours."}]),
        ("sharegpt-c3", "sharegpt", [{"role": "user", "content": "Count to five."}])]
    assert [p.id for p in load_prompts("ultrachat")] == ["ultrachat-p1", "ultrachat-p3"]
    assert [p.id for p in DataSource("ultrachat", 1).prompts()] == ["ultrachat-p1"]
    logs = []
    sources = resolve_sources(parse_data_spec("sharegpt:10,ultrachat:5"), logs.append)
    assert [s.label for s in sources] == ["sharegpt:10", "ultrachat:5"] and len(logs) == 2


def test_unavailable_hub_sets_fall_back_to_the_shipped_corpus_in_one_line(offline_hub):
    logs = []
    sources = resolve_sources(parse_data_spec("sharegpt:10,gsm8k:3,ultrachat:5"), logs.append)
    assert [s.label for s in sources] == [f"{FALLBACK}:15", "gsm8k:3"]  # one mix source: no prompt twice
    assert len(logs) == 2 and all("not reachable" in line and FALLBACK in line for line in logs)
    assert [s.label for s in resolve_sources(parse_data_spec("ultrachat,mix:4"), lambda s: None)] == [FALLBACK]
    with pytest.raises(Exception, match="neither reachable"):
        load_prompts("sharegpt")


def test_regen_cli_uses_the_cached_hub_set_or_says_it_falls_back(offline_hub, tmp_path, monkeypatch):
    from specbench.cli import cli

    monkeypatch.setenv("SPECBENCH_CACHE_DIR", str(tmp_path / "cache"))
    common = ["regen", "--max-new-tokens", "4", "--target", "tiny-random-llama", "--device", "cpu", "--no-progress"]
    res = CliRunner().invoke(cli, [*common, "--data", "sharegpt:2"])
    assert res.exit_code == 0 and "using the shipped offline corpus mix" in res.output, res.output
    assert "/mix-" in res.output and "2 generated" in res.output
    _fill(offline_hub)
    res = CliRunner().invoke(cli, [*common, "--data", "sharegpt:2"])
    assert res.exit_code == 0 and "/sharegpt-" in res.output and "2 generated" in res.output, res.output
