"""Any text a model can write survives every file specbench keeps (issue 24), checked with Hypothesis.

Real models emit U+0085, U+2028/U+2029, "\\r", NUL and other control characters, U+FFFD from cut
byte-level tokens, very long lines, and markup (`<script>`, `|`, `,`, quotes). Each property pushes
such text through one file layer with synthetic records (fast: no model per case) and checks an exact
round trip, or, where the text is displayed (HTML, Markdown), that it is escaped: no injected markup,
no broken table row. One end-to-end case runs the real pipeline on a tiny model whose decoded output
carries the same text. `pytest --hypothesis-show-statistics` prints how many cases each property ran.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import html
import json
import os
import re
import tempfile
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specbench import metrics
from specbench.decode import BatchOutput, RowOutput
from specbench.jsonl import append_jsonl, read_jsonl, write_jsonl
from specbench.metrics import summarize
from specbench.report.html import write_report
from specbench.report.sections import Heading, Note, Section
from specbench.report.tables import Cell, Table
from specbench.results import ResultStore
from specbench.runner import RunConfig
from specbench.spec_bench_io import export_spec_bench, import_spec_bench
from specbench.suites.base import data_dir_file
from specbench.targets import ChatSettings
from specbench.training.data import DataSource
from specbench.training.regen import RegenSettings, load_corpus, regenerate

NASTY = ["\x85", "\u2028", "\u2029", "\r", "\r\n", "\n", "\x00", "\x01", "\x0b", "\x0c", "\x1c", "\x1b[31m", "\x7f",
         "\x9f", "\ufffd", "\ufeff", "\t", " ", "é中🙂", "<script>alert(1)</script>", "</td></tr><tr><td>", "<!--",
         "<img src=x onerror=alert(1)>", "&amp;", "&lt;", "|", "\\|", "\\", ",", '"', "'", "`", "**", "#", "=1+1"]
PIECE = st.one_of(st.sampled_from(NASTY), st.text(max_size=12),
                  st.builds(lambda s, n: s * n, st.sampled_from(NASTY), st.integers(100, 2_000)))
LONG_PIECE = st.builds(lambda s, n: s * n, st.sampled_from(NASTY), st.integers(10_000, 100_000))
#: text a model writes (tokenizers decode to valid Unicode: no lone surrogates)
MODEL_TEXT = st.lists(PIECE, max_size=6).map("".join)
#: any Python string, lone surrogates included (JSON escapes them; a high one is never followed by a low one,
#: which JSON, like UTF-16, reads back as one astral character)
ANY_TEXT = st.lists(st.one_of(PIECE, st.characters(categories=["Cs"]).map(lambda c: c + "x")), max_size=6).map("".join)
#: very long lines too
LONG_TEXT = st.one_of(ANY_TEXT, LONG_PIECE)
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: two real Spec-Bench questions (id, label, task, turns), so import checks them against the question file
QUESTIONS = [(81, "writing", "mt_bench", 2), (161, "translation", "translation", 1)]


def _quick_bootstrap():
    """Summaries with 20 bootstrap samples: the text under test never reaches the CI's numbers."""
    return mock.patch.object(metrics, "bootstrap_ci", functools.partial(metrics.bootstrap_ci, samples=20))


@contextmanager
def _scratch():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


# -- JSON lines -------------------------------------------------------------------------------------------------
JSON_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), LONG_TEXT),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
                           max_leaves=8)


@FAST
@given(st.lists(st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=4), min_size=1, max_size=6), st.integers(0, 5))
def test_jsonl_round_trips_any_record(rows, split):
    with _scratch() as d:
        append_jsonl(d / "a.jsonl", rows[:split])
        with open(d / "a.jsonl", "ab") as f:
            f.write(b'{"torn": "')  # a killed writer
        append_jsonl(d / "a.jsonl", rows[split:])
        assert read_jsonl(d / "a.jsonl") == rows
        write_jsonl(d / "w.jsonl", rows)
        assert read_jsonl(d / "w.jsonl") == rows
        with open(d / "w.jsonl", encoding="utf-8") as f:  # how other tools (Spec-Bench's scripts) read lines
            assert len(f.readlines()) == len(rows)


# -- regen corpus -----------------------------------------------------------------------------------------------
def _fake_target(responses: list[str]):
    """Just enough of a Target for regen's I/O: prompt k decodes to `responses[k]`."""
    return SimpleNamespace(name="fake", fingerprint="fake0000", dtype=torch.float32, device=torch.device("cpu"),
                           chat=ChatSettings(), eos_token_ids=[0], render=lambda messages: [1, 2],
                           decode=lambda ids: responses[ids[0]])


def _fake_generate(decoder, prompts, max_new_tokens, eos_ids, timer):
    _fake_generate.next += len(prompts)
    rows = [RowOutput(tokens=[k], stopped_by="length") for k in range(_fake_generate.next - len(prompts),
                                                                      _fake_generate.next)]
    return BatchOutput(rows, 0.0, 0.0, {}, [1] * len(rows))


@FAST
@given(st.lists(st.tuples(MODEL_TEXT, MODEL_TEXT), min_size=1, max_size=4))
def test_regen_corpus_round_trips_prompts_and_responses(pairs):
    prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
    with _scratch() as d, mock.patch.dict(os.environ, {"SPECBENCH_CACHE_DIR": str(d)}), \
            mock.patch("specbench.decode.generate", _fake_generate):
        _fake_generate.next = 0
        prompt_file = d / "mine.jsonl"
        write_jsonl(prompt_file, [{"id": f"q{i}", "prompt": p} for i, p in enumerate(prompts)])
        source, target, regen = DataSource(str(prompt_file)), _fake_target(responses), RegenSettings(max_new_tokens=4)
        regenerate(target, source, regen, batch_size=3, progress=False)
        records = load_corpus(target, [source], regen)
        assert [r["messages"] for r in records] == [[{"role": "user", "content": p}] for p in prompts]
        assert [r["response"] for r in records] == responses


# -- run records, resume and summary -----------------------------------------------------------------------------
def _turn(text: str, n: int = 4) -> dict:
    return {"prompt_tokens": 5, "output_ids": list(range(n)), "text": text, "ttft_s": 0.01, "decode_s": 0.03,
            "steps": n - 1, "accept_lengths": [1] * (n - 1), "draft_lengths": [0] * (n - 1), "stopped_by": "length",
            "batch_spans_ms": None, "new_tokens": n}


def _records(texts: list[str], categories: list[str] | None = None) -> list[dict]:
    """Both arms of len(QUESTIONS) prompts; the texts fill their turns in order (cycled)."""
    out, k = [], 0
    for i, (qid, label, task, n_turns) in enumerate(QUESTIONS):
        for arm in ("method", "baseline"):
            turns = []
            for _ in range(n_turns):
                turns.append(_turn(texts[k % len(texts)]))
                k += 1
            out.append({"prompt_id": f"spec_bench-{qid}", "arm": arm, "method": "pld" if arm == "method" else "ar",
                        "batch_id": f"b{i}", "batch_size": 1, "row": 0, "turns": turns, "score": None,
                        "exact_match": True, "first_divergence": None,
                        "meta": {"category": categories[i] if categories else task, "question_category": label,
                                 "question_id": qid}})
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MODEL_TEXT, min_size=1, max_size=6), st.lists(MODEL_TEXT, min_size=2, max_size=2, unique=True))
def test_run_records_resume_and_summary_round_trip(texts, categories):
    records = _records(texts, categories)
    with _scratch() as d, _quick_bootstrap():
        run_dir = ResultStore(d).create("r")
        run_dir.append_records(records[:2])
        run_dir.append_records(records[2:3])  # a prompt with one arm only: resume drops it
        with open(run_dir.records_path, "ab") as f:
            f.write(b'{"prompt_id": "torn", "tu')
        assert run_dir.compact_for_resume() == 1 and run_dir.load_records() == records[:2]
        run_dir.append_records(records[2:])
        assert run_dir.load_records() == records
        summary = summarize(records)
        run_dir.write_summary(summary)
        assert set(run_dir.read_summary()["per_category"]) == set(categories)
        assert json.dumps(run_dir.read_summary(), sort_keys=True) == json.dumps(summary, sort_keys=True, default=str)


# -- Spec-Bench export / import -----------------------------------------------------------------------------------
def _spec_bench_run(root: Path, records: list[dict]):
    config = RunConfig(method="pld", suite="spec_bench", target="tiny-random-llama")
    run_dir = ResultStore(root).create("native")
    run_dir.write_manifest({"run_id": "native", "status": "complete", "config": dataclasses.asdict(config),
                            "target": {"name": "tiny-random-llama"}, "method": {"name": "pld", "depth": 3},
                            "provenance": {"created": "2026-01-01T00:00:00+00:00"}})
    run_dir.append_records(records)
    return run_dir


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MODEL_TEXT, min_size=1, max_size=6), MODEL_TEXT.filter(str.strip), MODEL_TEXT.filter(str.strip))
def test_spec_bench_export_then_import_keeps_every_answer(texts, method, target):
    records = _records(texts)
    with _scratch() as d, _quick_bootstrap():
        paths = export_spec_bench(_spec_bench_run(d / "results", records), d / "answers")
        for path in paths.values():  # Spec-Bench's scripts read `for line in open(path)`
            with open(path, encoding="utf-8") as f:
                assert len(f.readlines()) == len(QUESTIONS)
        imported = import_spec_bench(paths["method"], paths["baseline"], method, target, d / "results",
                                     run_id="imported")
        back = {(r["prompt_id"], r["arm"]): [t["text"] for t in r["turns"]] for r in imported.load_records()}
        assert back == {(r["prompt_id"], r["arm"]): [t["text"] for t in r["turns"]] for r in records}
        assert imported.read_manifest()["config"]["method"] == method


# -- tables and the report page -----------------------------------------------------------------------------------
class _Page(HTMLParser):
    """Every start tag with its attributes, and the text of each cell of each table."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.cells, self._text = [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("td", "th"):
            self._text = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._text is not None:
            self.cells.append("".join(self._text))
            self._text = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)


def _md_cells(line: str) -> list[str]:
    """A Markdown table row split the way GFM does: a backslash escapes the next character."""
    cells, cur, i = [], "", 0
    while i < len(line):
        if line[i] == "\\" and i + 1 < len(line):
            cur += line[i + 1]
            i += 2
            continue
        if line[i] == "|":
            cells.append(cur)
            cur = ""
        else:
            cur += line[i]
        i += 1
    return [c.strip() for c in cells[1:]] if line.endswith("|") else cells[1:] + [cur]


def _shown(text: str) -> str:
    """What one Markdown line can show of `text`: line breaks as spaces, NUL as U+FFFD."""
    return re.sub("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+", " ", text).replace("\x00", "\ufffd")


TEMPLATE_TAGS = {"html", "head", "meta", "title", "style", "body", "main", "header", "h1", "h2", "h3", "h4", "p", "div",
                 "b", "span", "nav", "a", "section", "table", "thead", "tbody", "tr", "th", "td", "details",
                 "summary", "figure", "img", "figcaption", "footer", "code"}


@FAST
@given(st.lists(MODEL_TEXT, min_size=6, max_size=6))
def test_tables_and_page_show_any_text_escaped_and_csv_keeps_it_exactly(t):
    cells = [[Cell(t[2], sub=t[3]), Cell(t[4])], [Cell(t[5]), Cell("1.00×")]]
    table = Table("fuzz", t[0], [t[1], "speedup"], cells,
                  pd.DataFrame({"label": [t[2], t[5]], "note": [t[4], t[3]]}), caption=t[3], footnotes=[t[4]])
    section = Section("s", t[0], intro=t[1], items=[Heading(t[2]), Note(t[3], "warn"), table])
    with _scratch() as d:
        files = write_report([section], d / "r.html", title=t[5], facts=[("runs", t[4])], alerts=[t[0]],
                             n_runs=1, n_incomplete=0)
        page = _Page()
        page.feed(files.html.read_bytes().decode("utf-8"))  # no newline translation
        assert {tag for tag, _ in page.tags} <= TEMPLATE_TAGS
        assert not [a for _, attrs in page.tags for a in attrs if a.startswith("on")]
        assert page.cells == [t[1], "speedup", t[2] + t[3], t[4], t[5], "1.00×"]
        md = files.markdown.read_bytes().decode("utf-8")
        assert "<" not in md
        lines = md.splitlines()
        header = next(i for i, line in enumerate(lines) if line.startswith("| ") and line.endswith("| speedup |"))
        rows = [lines[header], lines[header + 2], lines[header + 3]]  # the separator line between
        first = f"{t[2]} {t[3]}" if t[3] else t[2]
        assert [[html.unescape(c) for c in _md_cells(line)] for line in rows] == [
            [_shown(t[1]).strip(), "speedup"], [_shown(first).strip(), _shown(t[4]).strip()],
            [_shown(t[5]).strip(), "1.00×"]]
        back = pd.read_csv(files.csv_dir / "fuzz.csv", keep_default_na=False, dtype=str)
        assert back.to_dict("list") == {"label": [t[2], t[5]], "note": [t[4], t[3]]}
        with open(files.csv_dir / "fuzz.csv", newline="", encoding="utf-8") as f:
            assert list(csv.reader(f))[1:] == [[t[2], t[4]], [t[5], t[3]]]


# -- end to end, once, through a tiny model -------------------------------------------------------------------------
def test_a_tiny_models_hazardous_output_survives_regen_run_resume_export_import_and_report(tiny_llama, tmp_path,
                                                                                            monkeypatch):
    """The real pipeline with the tiny model's decoded text followed by every hazard above."""
    from specbench.report import build_report
    from specbench.runner import Runner

    hazard = "".join(NASTY)
    real_decode = tiny_llama.decode
    monkeypatch.setattr(tiny_llama, "decode", lambda ids: real_decode(ids) + hazard)
    monkeypatch.setenv("SPECBENCH_CACHE_DIR", str(tmp_path / "cache"))
    torch.set_num_threads(1)

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"id": "a", "prompt": "Say " + hazard}, {"id": "b", "prompt": hazard}])
    source, regen = DataSource(str(prompts)), RegenSettings(max_new_tokens=6)
    regenerate(tiny_llama, source, regen, batch_size=2, progress=False)
    corpus = load_corpus(tiny_llama, [source], regen)
    assert [r["response"] for r in corpus] == [real_decode(r["response_ids"]) + hazard for r in corpus]
    assert corpus[1]["messages"] == [{"role": "user", "content": hazard}]

    questions = tmp_path / "question.jsonl"  # two real Spec-Bench questions, turns cut short
    by_id = {row["question_id"]: row for row in read_jsonl(data_dir_file("spec_bench/question.jsonl"))}
    write_jsonl(questions, [{**by_id[qid], "turns": [t[:60] for t in by_id[qid]["turns"]]} for qid, *_ in QUESTIONS])
    store = ResultStore(tmp_path / "results")
    config = dict(method="pld", suite="spec_bench", target="tiny-random-llama", data_file=str(questions),
                  max_new_tokens=6, warmup=False)
    runner = Runner(RunConfig(**config), store, progress=False, target=tiny_llama)
    first_batch = runner.run_batch
    monkeypatch.setattr(runner, "run_batch", lambda k, batch: first_batch(k, batch) if k == 0 else
                        (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        runner.run(run_id="native")
    native = Runner(RunConfig(**config), store, progress=False, target=tiny_llama).run(resume=store.open("native"))
    records = native.load_records()
    assert len(records) == 4 and all(t["text"] == real_decode(t["output_ids"]) + hazard
                                     for r in records for t in r["turns"])

    paths = export_spec_bench(native, tmp_path / "answers")
    name = "pld <script>alert(1)</script> | \x85\u2028, \"q\""
    imported = import_spec_bench(paths["method"], paths["baseline"], name, name, tmp_path / "results",
                                 run_id="imported")
    texts = {(r["prompt_id"], r["arm"]): [t["text"] for t in r["turns"]] for r in imported.load_records()}
    assert texts == {(r["prompt_id"], r["arm"]): [t["text"] for t in r["turns"]] for r in records}

    files = build_report(results_dir=tmp_path / "results", out=tmp_path / "report.html")
    page = _Page()
    page.feed(files.html.read_bytes().decode("utf-8"))
    assert {tag for tag, _ in page.tags} <= TEMPLATE_TAGS
    assert not [a for _, attrs in page.tags for a in attrs if a.startswith("on")]
    assert any(name in cell for cell in page.cells)
    assert "<" not in files.markdown.read_bytes().decode("utf-8")
    with open(files.csv_dir / "runs.csv", newline="", encoding="utf-8") as f:
        assert any(name in cell for row in csv.reader(f) for cell in row)
