"""`specbench regen --shard I/N`: shards fill one corpus file together, each record once (issue 22)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from specbench.errors import SpecbenchError
from specbench.jsonl import read_jsonl
from specbench.training.data import DataSource
from specbench.training.regen import RegenSettings, corpus_path, parse_shard, regenerate


def _records(path):
    """A corpus file's records, its header line left out."""
    return [r for r in read_jsonl(path) if "id" in r]

SETTINGS = RegenSettings(max_new_tokens=6)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_shards_write_one_corpus_equal_to_an_unsharded_run(tiny_llama, tmp_path, monkeypatch):
    source = DataSource("mix", 7)
    monkeypatch.setenv("SPECBENCH_CACHE_DIR", str(tmp_path / "one"))
    regenerate(tiny_llama, source, SETTINGS, batch_size=4, progress=False)
    alone = {r["id"]: r for r in _records(corpus_path(tiny_llama, source, SETTINGS))}

    monkeypatch.setenv("SPECBENCH_CACHE_DIR", str(tmp_path / "sharded"))
    path = corpus_path(tiny_llama, source, SETTINGS)
    path.parent.mkdir(parents=True)
    path.write_text('{"id": "torn', encoding="utf-8")  # a writer killed mid-line
    reports = {i: regenerate(tiny_llama, source, SETTINGS, batch_size=2, progress=False, shard=(i, 3))
               for i in (2, 0, 1)}  # separate processes in use; one after the other here, in any order
    rows = _records(path)
    assert sorted(r["id"] for r in rows) == sorted(alone)  # every prompt once, the torn line gone
    assert all(r == alone[r["id"]] for r in rows)  # greedy: the same responses, whatever the batches
    assert sorted(reports[i].generated for i in range(3)) == [2, 2, 3]  # every 3rd prompt each

    again = regenerate(tiny_llama, source, SETTINGS, batch_size=2, progress=False, shard=(1, 3))
    assert again.generated == 0 and len(_records(path)) == 7


def test_a_shard_skips_ids_another_writer_added_meanwhile(tiny_llama, tmp_path, monkeypatch):
    """A shard started alongside an unsharded run (or the same shard twice) must not append duplicates."""
    from specbench.training import regen

    monkeypatch.setenv("SPECBENCH_CACHE_DIR", str(tmp_path))
    source = DataSource("mix", 4)
    path = corpus_path(tiny_llama, source, SETTINGS)
    real, other = regen._CorpusWriter.write, {}

    def write_after_the_other(writer, records):  # the whole set is written by someone else first
        if records and writer.shared and not other:
            other["report"] = None
            other["report"] = regenerate(tiny_llama, source, SETTINGS, batch_size=4, progress=False)
        real(writer, records)

    monkeypatch.setattr(regen._CorpusWriter, "write", write_after_the_other)
    regenerate(tiny_llama, source, SETTINGS, batch_size=2, progress=False, shard=(0, 2))
    ids = [r["id"] for r in _records(path)]
    assert other["report"].generated == 4 and sorted(ids) == sorted(set(ids)) and len(ids) == 4


def test_shard_spec_and_cli(tiny_llama, tmp_path, monkeypatch):
    assert parse_shard("2/8") == (2, 8)
    for bad in ("8/8", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(SpecbenchError, match="--shard"):
            parse_shard(bad)
    from specbench.cli import cli

    monkeypatch.setenv("SPECBENCH_CACHE_DIR", str(tmp_path))
    common = ["regen", "--data", "mix:4", "--max-new-tokens", "6", "--target", "tiny-random-llama", "--device", "cpu",
              "--no-progress"]
    res = CliRunner().invoke(cli, [*common, "--shard", "1/2"])
    assert res.exit_code == 0 and "2 generated" in res.output, res.output
    res = CliRunner().invoke(cli, [*common, "--shard", "2/2"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "--shard takes I/N" in res.output
