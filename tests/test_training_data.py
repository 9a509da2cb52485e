"""Training data: data specs, the shipped corpus's prompt order, tokenisation and the shipped-record rule."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from specbench.errors import SpecbenchError
from specbench.jsonl import read_jsonl
from specbench.training import regen as regen_mod
from specbench.training.data import (DataSource, TrainExample, collate, encode_record, mix_prompts,
                                     parse_data_spec)
from specbench.training.regen import RegenSettings, precomputed_records


def test_parse_data_spec(tmp_path):
    assert parse_data_spec("gsm8k:512, mix") == [DataSource("gsm8k", 512), DataSource("mix")]
    own = tmp_path / "mine.jsonl"
    own.write_text(json.dumps({"prompt": "hi"}) + "\n" + json.dumps({"id": "b", "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "old answer"}]}) + "\n")
    (src,) = parse_data_spec(f"{own}:1")
    assert src.limit == 1 and [p.id for p in src.prompts()] == ["mine-0"]
    assert DataSource(str(own)).prompts()[1].messages == [{"role": "user", "content": "q"}]
    for bad in ("nope", "gsm8k:0", ""):
        with pytest.raises(SpecbenchError):
            parse_data_spec(bad)


def test_mix_order_matches_the_shipped_corpus(tmp_path):
    """`mix:2400` must be served entirely from shared/data/regen (the standard recipe relies on it)."""
    import os
    from pathlib import Path

    shipped = Path(os.environ["SPECBENCH_DATA_DIR"]) / "regen" / "smollm2-135m" / "mix.jsonl"
    if not shipped.exists():
        pytest.skip("shared/data/regen is not available")
    rows = read_jsonl(shipped)
    ids = [p.id for p in mix_prompts()]
    assert ids[:100] == [r["id"] for r in rows[:100]]
    assert set(ids[:2400]) <= {r["id"] for r in rows}


def _fake_target(prompt_len=3):
    return SimpleNamespace(render=lambda messages: list(range(100, 100 + prompt_len)),
                           decode=lambda ids: " ".join(map(str, ids)))


def test_encode_record_masks_the_assistant_tokens_only():
    rec = {"id": "x", "messages": [{"role": "user", "content": "q"}], "response_ids": [5, 6, 7, 2]}
    ex = encode_record(_fake_target(), rec, max_length=64)
    assert ex.input_ids == [100, 101, 102, 5, 6, 7, 2]
    assert ex.loss_mask == [0, 0, 0, 1, 1, 1, 1]
    cut = encode_record(_fake_target(), rec, max_length=5)
    assert cut.input_ids == [100, 101, 102, 5, 6] and sum(cut.loss_mask) == 2
    assert encode_record(_fake_target(), rec, max_length=4) is None  # < 2 response tokens fit


def test_collate_right_pads():
    batch = collate([TrainExample("a", [1, 2, 3], [0, 1, 1]), TrainExample("b", [4], [1])], pad_id=9)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert batch["loss_mask"].tolist() == [[0, 1, 1], [1, 0, 0]]
    assert batch["lengths"].tolist() == [3, 1]
    assert batch["attention_mask"].dtype == torch.long


def test_shipped_records_apply_only_when_valid(tmp_path, monkeypatch):
    """EOS-terminated responses serve any longer limit; every response is cut to a shorter one."""
    folder = tmp_path / "regen" / "fake"
    folder.mkdir(parents=True)
    rows = [{"id": "eos", "messages": [], "response_ids": [1, 2, 3], "finish": "eos"},
            {"id": "long", "messages": [], "response_ids": [1, 2, 3, 4, 5, 6], "finish": "length"}]
    (folder / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("SPECBENCH_DATA_DIR", str(tmp_path))
    monkeypatch.setitem(regen_mod.PRECOMPUTED, "fp", "fake")
    chat = SimpleNamespace(system_prompt=None, enable_thinking=False)
    target = SimpleNamespace(fingerprint="fp", dtype=torch.float32, chat=chat, decode=lambda ids: str(ids))
    got = precomputed_records(target, RegenSettings(max_new_tokens=4))
    assert got["eos"]["response_ids"] == [1, 2, 3] and got["eos"]["finish"] == "eos"
    assert got["long"]["response_ids"] == [1, 2, 3, 4] and got["long"]["finish"] == "length"
    assert set(precomputed_records(target, RegenSettings(max_new_tokens=8))) == {"eos"}
    assert precomputed_records(target, RegenSettings(max_new_tokens=4, temperature=0.7)) == {}
    chat.system_prompt = "be brief"
    assert precomputed_records(target, RegenSettings(max_new_tokens=4)) == {}


def test_pick_anchors_are_distinct_sorted_valid_and_padded():
    from specbench.training.data import pick_anchors

    valid = torch.zeros(3, 20, dtype=torch.bool)
    valid[0, 5:15] = True
    valid[1, [2, 7]] = True  # fewer valid positions than asked for
    anchors, keep = pick_anchors(valid, 4, torch.Generator().manual_seed(0))
    assert anchors.shape == keep.shape == (3, 4)
    assert keep.sum(1).tolist() == [4, 2, 0]
    assert anchors[1, :2].tolist() == [2, 7]
    row = anchors[0][keep[0]]
    assert valid[0, row].all() and row.unique().numel() == 4 and row.tolist() == sorted(row.tolist())
    again, _ = pick_anchors(valid, 4, torch.Generator().manual_seed(0))
    assert torch.equal(anchors, again)
