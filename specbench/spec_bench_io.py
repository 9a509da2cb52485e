"""Spec-Bench answer files: export a run as two of them, import two of them as a run (issue 13).

The format (hemingkx/Spec-Bench `evaluation/eval.py`, FastChat's answer files): one JSON object a
line, sorted by `question_id`,

    {"question_id": 81, "category": "writing", "answer_id": "...", "model_id": "...", "tstamp": 1.7e9,
     "choices": [{"index": 0, "turns": [text, ...], "decoding_steps": [n, ...], "new_tokens": [n, ...],
                  "wall_time": [s, ...], "accept_lengths": [n, n, ...]}]}

`turns`, `decoding_steps`, `new_tokens` and `wall_time` hold one entry per turn; `accept_lengths` is
one flat list over all turns, one entry per verification step. Spec-Bench's `speed.py` reads the
method file's `new_tokens`, `wall_time` and `accept_lengths`, and the baseline file's `turns` (which
it re-tokenises) and `wall_time`.

accept_lengths convention. Spec-Bench's scripts append, per verification step, the number of tokens
that step added to the sequence (accepted drafts + the one token the target contributes), and cut
the last step at EOS; `speed.py` prints their mean over all steps of all questions as "#Mean accepted
tokens" (AR: 1.00). specbench exports exactly that: per turn, the tokens each decode step committed
and kept (`metrics.kept_accept_lengths`, the last step cut at EOS / max-new-tokens), the token made by
prefill in no step, so a turn's list sums to new_tokens − 1 and has `decoding_steps` entries. Its
mean over all steps is therefore Σ(new_tokens − 1) / Σ verification forwards = τ as DESIGN.md §4
defines it (token-weighted, prefill token excluded): the "#Mean accepted tokens" that `speed.py`
prints from an exported file equals specbench's τ exactly, per category and overall.

Timing. `wall_time` is a turn's prefill + decode (Spec-Bench times the whole generate call), i.e.
specbench's `ttft_s + decode_s`; at batch size > 1 it is the batch's time for that turn (every row
waited that long). `new_tokens` counts every output token, EOS included, as Spec-Bench's do. Each line
also carries a `specbench` block (ignored by `speed.py`) with the prefill/decode split, the batch, the
token ids and the AR-equality, so importing an exported pair reproduces the run's summary exactly.

Import. Files from elsewhere (Spec-Bench's scripts on a GPU) become a run in the results store,
marked imported (manifest `imported`, `executor`, method option `imported=spec-bench`) with the
files' sha256 and a list of what the files cannot tell (hardware, dtype, prefill/decode split, ...).
Both files are validated first; a malformed or mismatched pair is refused with a one-line reason.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import math
import re
import sys
from pathlib import Path

from specbench.errors import SpecbenchError
from specbench.jsonl import read_jsonl, write_jsonl
from specbench.metrics import kept_accept_lengths, summarize
from specbench.results import ResultStore, RunDir
from specbench.suites.spec_bench import example_id, task_of

FORMAT = "spec-bench answer file (hemingkx/Spec-Bench evaluation/eval.py)"
CHOICE_LISTS = ("turns", "decoding_steps", "new_tokens", "wall_time")
IMPORTED_OPTION = {"imported": "spec-bench"}
#: summary fields that need the prefill/decode split, which plain Spec-Bench files do not have
DECODE_ONLY_FIELDS = ("speedup_decode", "speedup_decode_ci95", "decode_tokens_per_s", "baseline_decode_tokens_per_s")
UNKNOWN_IN_PLAIN_FILES = [
    "hardware, dtype, threads, package versions and code version of the measurement",
    "target weights (no fingerprint) and chat template",
    "temperature (taken from --temperature) and max new tokens",
    "whether both files were measured on the same machine and process",
    "prefill vs decode time (wall_time is their sum): decode-only speedup not computed",
    "output token ids: AR equality compares the answer texts, first divergences unknown",
    "per-step draft / verify / other spans",
    "batching (Spec-Bench runs batch size 1; each question is its own timed unit)",
]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- export -------------------------------------------------------------------------------------------------
def model_id(target: str, method: str, temperature: float) -> str:
    """Spec-Bench names files by model id, e.g. `vicuna-7b-v1.3-pld-temp-0.0`; same shape here."""
    return f"{Path(target).name.replace('.gguf', '')}-{method}-temp-{float(temperature)}"


def answer_line(record: dict, run_id: str, model: str, tstamp: float, config: dict, depth=None) -> dict:
    """One record (one prompt, one arm) as one Spec-Bench answer line."""
    meta = record.get("meta") or {}
    turns = record["turns"]
    kept = [kept_accept_lengths(t) for t in turns]
    choice = {"index": 0, "turns": [t["text"] for t in turns], "decoding_steps": [t["steps"] for t in turns],
              "new_tokens": [t["new_tokens"] for t in turns],
              "wall_time": [t["ttft_s"] + t["decode_s"] for t in turns],
              "accept_lengths": [n for k in kept for n in k]}
    answer_id = hashlib.sha256(f"{run_id}:{record['arm']}:{record['prompt_id']}".encode()).hexdigest()[:22]
    return {"question_id": meta["question_id"], "category": meta["question_category"], "answer_id": answer_id,
            "model_id": model, "choices": [choice], "tstamp": tstamp,
            "specbench": {"run_id": run_id, "prompt_id": record["prompt_id"], "arm": record["arm"],
                          "method": record["method"], "batch_id": record["batch_id"],
                          "batch_size": record.get("batch_size"), "row": record.get("row"),
                          "ttft_s": [t["ttft_s"] for t in turns], "decode_s": [t["decode_s"] for t in turns],
                          "output_ids": [t["output_ids"] for t in turns],
                          "prompt_tokens": [t.get("prompt_tokens") for t in turns],
                          "stopped_by": [t.get("stopped_by") for t in turns],
                          "batch_spans_ms": [t.get("batch_spans_ms") for t in turns],
                          "accept_lengths": [t["accept_lengths"] for t in turns],  # as recorded, untruncated
                          "draft_lengths": [t.get("draft_lengths") for t in turns],
                          "exact_match": record.get("exact_match"), "temperature": config.get("temperature"),
                          "depth": depth,
                          "first_divergence": record.get("first_divergence")}}


def export_spec_bench(run_dir: RunDir, out_dir: str | Path) -> dict[str, Path]:
    """Write `<model_id>.jsonl` for the method arm and for the AR arm; returns {arm: path}."""
    manifest = run_dir.read_manifest()
    config = manifest.get("config") or {}
    if manifest.get("status") != "complete":
        raise SpecbenchError(f"run {run_dir.run_id} is not complete (status {manifest.get('status')}); "
                             f"finish it with --resume first")
    if config.get("suite") != "spec_bench":
        raise SpecbenchError(f"run {run_dir.run_id} ran suite {config.get('suite')!r}; Spec-Bench answer files "
                             f"need the spec_bench suite's question ids")
    records = run_dir.load_records()
    done = run_dir.completed_prompt_ids()
    created = (manifest.get("provenance") or {}).get("created")
    tstamp = _dt.datetime.fromisoformat(created).timestamp() if created else 0.0
    target = (manifest.get("target") or {}).get("name") or config.get("target", "target")
    temperature = config.get("temperature", 0.0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for arm, method in (("method", config["method"]), ("baseline", "ar")):
        model = model_id(target, method, temperature)
        depth = (manifest.get("method") or {}).get("depth") if arm == "method" else None
        lines = [answer_line(r, run_dir.run_id, model, tstamp, config, depth) for r in records
                 if r["arm"] == arm and r["prompt_id"] in done]
        lines.sort(key=lambda line: line["question_id"])
        path = out / f"{model}.jsonl"
        write_jsonl(path, lines)
        paths[arm] = path
    return paths


# -- reading and validating -----------------------------------------------------------------------------------
def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _is_time(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _check_line(obj, where: str) -> None:
    if not isinstance(obj, dict):
        raise SpecbenchError(f"{where}: not a JSON object")
    for key in ("question_id", "category", "choices"):
        if key not in obj:
            raise SpecbenchError(f"{where}: missing field {key!r}")
    if not isinstance(obj["question_id"], int) or isinstance(obj["question_id"], bool):
        raise SpecbenchError(f"{where}: question_id must be an integer")
    if not isinstance(obj["category"], str):
        raise SpecbenchError(f"{where}: category must be a string")
    if not isinstance(obj["choices"], list) or not obj["choices"] or not isinstance(obj["choices"][0], dict):
        raise SpecbenchError(f"{where}: choices must be a non-empty list of objects")
    choice = obj["choices"][0]
    for key in CHOICE_LISTS + ("accept_lengths",):
        if key not in choice:
            raise SpecbenchError(f"{where}: choices[0] is missing {key!r}")
        if not isinstance(choice[key], list):
            raise SpecbenchError(f"{where}: choices[0].{key} must be a list")
    n = len(choice["turns"])
    if n == 0 or not all(isinstance(t, str) for t in choice["turns"]):
        raise SpecbenchError(f"{where}: choices[0].turns must be a non-empty list of strings")
    for key in CHOICE_LISTS[1:]:
        if len(choice[key]) != n:
            raise SpecbenchError(f"{where}: choices[0].{key} has {len(choice[key])} entries for {n} turns")
    if not all(_is_count(x) for x in choice["decoding_steps"] + choice["new_tokens"] + choice["accept_lengths"]):
        raise SpecbenchError(f"{where}: decoding_steps, new_tokens and accept_lengths must be non-negative integers")
    if not all(_is_time(x) for x in choice["wall_time"]):
        raise SpecbenchError(f"{where}: wall_time must be positive numbers of seconds")


def read_answer_file(path: str | Path) -> list[dict]:
    """The lines of one answer file, validated; one-line SpecbenchError on the first problem."""
    path = Path(path)
    if not path.is_file():
        raise SpecbenchError(f"answer file not found: {path}")
    rows, seen = [], {}
    for k, obj in read_jsonl(path, fix="fix or regenerate the answer file", torn_tail=False, numbered=True):
        where = f"{path.name} line {k}"
        _check_line(obj, where)
        if obj["question_id"] in seen:
            raise SpecbenchError(f"{where}: question_id {obj['question_id']} repeats line {seen[obj['question_id']]} "
                                 f"(de-duplicate it as Spec-Bench's reorg_answer_file does)")
        seen[obj["question_id"]] = k
        rows.append(obj)
    if not rows:
        raise SpecbenchError(f"{path.name}: no answers")
    return rows


def _check_pair(answers: list[dict], baseline: list[dict], questions: dict | None) -> None:
    a = {r["question_id"]: r for r in answers}
    b = {r["question_id"]: r for r in baseline}
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise SpecbenchError(f"the files hold different questions ({len(only_a)} only in the answers, e.g. "
                             f"{only_a[:3]}; {len(only_b)} only in the baseline, e.g. {only_b[:3]})")
    for qid in sorted(a):
        ca, cb = a[qid], b[qid]
        if ca["category"] != cb["category"]:
            raise SpecbenchError(f"question {qid}: category {ca['category']!r} in the answers, {cb['category']!r} "
                                 f"in the baseline")
        if len(ca["choices"][0]["turns"]) != len(cb["choices"][0]["turns"]):
            raise SpecbenchError(f"question {qid}: {len(ca['choices'][0]['turns'])} turns in the answers, "
                                 f"{len(cb['choices'][0]['turns'])} in the baseline")
        if questions is None:
            continue
        q = questions.get(qid)
        if q is None:
            raise SpecbenchError(f"question {qid} is not a Spec-Bench question (ids 81-560)")
        if q.meta["question_category"] != ca["category"]:
            raise SpecbenchError(f"question {qid}: category {ca['category']!r}, Spec-Bench has "
                                 f"{q.meta['question_category']!r}")
        if len(q.turns) != len(ca["choices"][0]["turns"]):
            raise SpecbenchError(f"question {qid}: {len(ca['choices'][0]['turns'])} turns, Spec-Bench has {len(q.turns)}")


# -- import ------------------------------------------------------------------------------------------------
def _split_by_turn(choice: dict) -> list[list[int]] | None:
    """The flat accept_lengths cut into turns by decoding_steps; None when the counts disagree."""
    steps, flat = choice["decoding_steps"], choice["accept_lengths"]
    if sum(steps) != len(flat):
        return None
    out, i = [], 0
    for n in steps:
        out.append(flat[i : i + n])
        i += n
    return out


def _extras(line: dict) -> dict | None:
    """The `specbench` block of an exported line, if it is there and agrees with the standard fields."""
    block = line.get("specbench")
    choice = line["choices"][0]
    if not isinstance(block, dict):
        return None
    try:
        n = len(choice["turns"])
        ok = (len(block["ttft_s"]) == len(block["decode_s"]) == len(block["output_ids"]) == n
              and all(abs(t + d - w) <= 1e-9 * max(1.0, w)
                      for t, d, w in zip(block["ttft_s"], block["decode_s"], choice["wall_time"]))
              and all(len(ids) == k for ids, k in zip(block["output_ids"], choice["new_tokens"]))
              and isinstance(block["batch_id"], str) and isinstance(block["prompt_id"], str)
              and len(block["accept_lengths"]) == n
              and [x for raw, k in zip(block["accept_lengths"], choice["new_tokens"])
                   for x in kept_accept_lengths({"new_tokens": k, "accept_lengths": raw})] == choice["accept_lengths"])
    except (KeyError, TypeError):
        return None
    return block if ok else None


def _turns_of(line: dict, extras: dict | None) -> tuple[list[dict], bool]:
    """Record turns from an answer line; second value: whether accept_lengths split cleanly by turn."""
    choice = line["choices"][0]
    split = _split_by_turn(choice)
    n = len(choice["turns"])
    per_turn = split if split is not None else [list(choice["accept_lengths"])] + [[] for _ in range(n - 1)]
    turns = []
    for t in range(n):
        lengths = per_turn[t]
        turn = {"prompt_tokens": None, "output_ids": None, "text": choice["turns"][t], "ttft_s": 0.0,
                "decode_s": choice["wall_time"][t], "steps": choice["decoding_steps"][t], "accept_lengths": lengths,
                "stopped_by": None, "batch_spans_ms": None, "new_tokens": choice["new_tokens"][t]}
        if extras is not None:
            turn.update(ttft_s=extras["ttft_s"][t], decode_s=extras["decode_s"][t], output_ids=extras["output_ids"][t],
                        prompt_tokens=(extras.get("prompt_tokens") or [None] * n)[t],
                        stopped_by=(extras.get("stopped_by") or [None] * n)[t],
                        batch_spans_ms=(extras.get("batch_spans_ms") or [None] * n)[t],
                        accept_lengths=extras["accept_lengths"][t],
                        draft_lengths=(extras.get("draft_lengths") or [None] * n)[t])
        else:
            # τ counts what the file's steps committed (Spec-Bench's "#Mean accepted tokens"); the file
            # cannot say which token came from prefill (metrics.tau_stats reads `decode_tokens`)
            turn["decode_tokens"] = sum(lengths)
        turns.append(turn)
    return turns, split is not None


def _records(answers, baseline, method: str, exported: bool) -> tuple[list[dict], list[str]]:
    notes = []
    base = {r["question_id"]: r for r in baseline}
    records = []
    unsplit = 0
    for line in sorted(answers, key=lambda r: r["question_id"]):
        qid = line["question_id"]
        pair = {"method": line, "baseline": base[qid]}
        extras = {arm: _extras(pl) if exported else None for arm, pl in pair.items()}
        turns = {}
        for arm, pl in pair.items():
            turns[arm], clean = _turns_of(pl, extras[arm])
            unsplit += not clean
        if exported:
            exact, divergence = extras["method"].get("exact_match"), extras["method"].get("first_divergence")
        else:  # like Spec-Bench's equal.py: the answer texts
            exact, divergence = pair["method"]["choices"][0]["turns"] == pair["baseline"]["choices"][0]["turns"], None
        for arm in ("method", "baseline"):
            ex = extras[arm]
            records.append({
                "prompt_id": ex["prompt_id"] if ex else example_id(qid), "arm": arm,
                "method": method if arm == "method" else "ar",
                "batch_id": ex["batch_id"] if ex else f"q{qid}", "batch_size": (ex or {}).get("batch_size") or 1,
                "row": (ex or {}).get("row") or 0, "turns": turns[arm], "score": None,
                "exact_match": exact, "first_divergence": divergence if arm == "method" else None,
                "meta": {"category": task_of(line["category"]), "question_category": line["category"],
                         "question_id": qid, "answer_id": pair[arm].get("answer_id"),
                         "model_id": pair[arm].get("model_id"), "tstamp": pair[arm].get("tstamp")},
            })
    if unsplit:
        notes.append(f"{unsplit} answer lines have Σ decoding_steps ≠ len(accept_lengths): their accept_lengths "
                     f"are kept whole on turn 1 (τ = Σ accept_lengths / Σ decoding_steps there)")
    return records, notes


def _questions() -> tuple[dict | None, str]:
    """Spec-Bench's questions by id (to check the files against), or None when no copy is reachable."""
    from specbench.suites import get_suite

    try:
        loaded = get_suite("spec_bench").load()
    except SpecbenchError:
        return None, "not checked against Spec-Bench's question file (no copy found)"
    return {e.meta["question_id"]: e for e in loaded.examples}, f"checked against {loaded.source}"


def import_spec_bench(answers_path, baseline_path, method: str, target: str, results_dir="results",
                      run_id: str | None = None, temperature: float = 0.0) -> RunDir:
    """Validate both files, then write manifest, records and summary of an imported run."""
    if not method or not target:
        raise SpecbenchError("--method and --target must be non-empty names")
    paths = {"answers": Path(answers_path), "baseline": Path(baseline_path)}
    answers, baseline = read_answer_file(paths["answers"]), read_answer_file(paths["baseline"])
    questions, checked = _questions()
    _check_pair(answers, baseline, questions)
    exported = all(_extras(line) is not None for line in answers + baseline)
    depth = None
    if exported:  # the run's own settings travel in the specbench block
        depths = {line["specbench"].get("depth") for line in answers}
        depth = next(iter(depths)) if len(depths) == 1 else None
        stated = {line["specbench"].get("temperature") for line in answers + baseline}
        if len(stated) == 1 and isinstance(next(iter(stated)), (int, float)):
            temperature = float(next(iter(stated)))
    records, notes = _records(answers, baseline, method, exported)
    hashes = {name: _sha256(path) for name, path in paths.items()}
    names = re.sub(r"[^A-Za-z0-9._+-]+", "_", f"{method}-spec_bench-{Path(target).name[-40:]}")  # free-form names
    run_id = run_id or (f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-imported-{names}-"
                        f"{hashlib.sha256(''.join(hashes.values()).encode()).hexdigest()[:8]}")
    manifest = _imported_manifest(run_id, method, target, float(temperature), depth, records,
                                  {"answers": answers, "baseline": baseline}, paths, hashes, exported, checked, notes)
    run_dir = ResultStore(results_dir).create(run_id)
    run_dir.write_manifest(manifest)
    run_dir.append_records(records)
    summary = imported_summary(records, exported)
    summary.update({"run_id": run_id, "method": method, "suite": "spec_bench", "target": target,
                    "temperature": float(temperature), "batch_size": manifest["config"]["batch_size"], "depth": depth,
                    "imported": True,
                    "speedup_note": ("exported by specbench: decode-only excludes prefill; e2e includes it; AR "
                                     "through the same loop" if exported else
                                     "end-to-end from wall_time (prefill + decode), ratio of sums over questions, "
                                     "both arms counted with their own new_tokens; decode-only unknown")})
    run_dir.write_summary(summary)
    run_dir.update_manifest(status="complete")
    return run_dir


def _imported_manifest(run_id, method, target, temperature, depth, records, lines, paths, hashes, exported,
                       checked, notes) -> dict:
    """A manifest shaped like a native run's (so reports read it), marked imported, with provenance."""
    from specbench.runner import RunConfig

    config = RunConfig(method=method, suite="spec_bench", target=target, temperature=temperature, warmup=False,
                       method_options=dict(IMPORTED_OPTION), batch_size=max(r["batch_size"] for r in records))
    unknown = [] if exported else list(UNKNOWN_IN_PLAIN_FILES)
    if exported:
        unknown.append("the run's own manifest (hardware, versions, target fingerprint): see the original run "
                       + ", ".join(sorted({line["specbench"]["run_id"] for line in lines["answers"]})))
    every = lines["answers"] + lines["baseline"]
    tstamps = [line["tstamp"] for line in every if isinstance(line.get("tstamp"), (int, float))]
    files = {name: {"path": str(paths[name].resolve()), "sha256": hashes[name], "lines": len(lines[name]),
                    "model_ids": sorted({str(line.get("model_id")) for line in lines[name]})} for name in paths}
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return {
        "run_id": run_id, "status": "running", "config": dataclasses.asdict(config), "cell": config.cell_hash(),
        "resolved": {"max_new_tokens": None, "n_prompts": len(lines["answers"]),
                     "prompt_ids": [r["prompt_id"] for r in records if r["arm"] == "method"]},
        "target": {"name": target, "source": "imported", "fingerprint": None},
        "method": {"name": method, "depth": depth, "notes": "imported from Spec-Bench answer files"},
        "suite": {"name": "spec_bench", "description": "Spec-Bench answer files", "source": checked},
        "arms": {"method": method, "baseline": "ar"},
        "executor": {"name": "imported (spec-bench answer files)"},
        "imported": {"format": FORMAT, "from_specbench_export": exported, "files": files, "questions": checked,
                     "unknown": unknown, "notes": notes,
                     "temperature": ("from the files' specbench block" if exported
                                     else "stated by --temperature, not in the files"),
                     "answer_tstamps": [min(tstamps), max(tstamps)] if tstamps else None},
        "provenance": {"created": (_dt.datetime.fromtimestamp(min(tstamps), _dt.timezone.utc).isoformat(timespec="seconds")
                                   if tstamps else None), "imported_at": now, "argv": sys.argv},
    }


def imported_summary(records: list[dict], exported: bool) -> dict:
    """`metrics.summarize`, with what plain files cannot tell set to None rather than guessed."""
    summary = summarize(records)
    if not exported:
        for block in [summary] + list((summary.get("per_category") or {}).values()):
            for key in DECODE_ONLY_FIELDS:
                if key in block:
                    block[key] = None
    return summary


def export_then_paths(run_ref: str, out_dir: str, results_dir: str = "results") -> dict[str, Path]:
    """CLI helper: resolve a run by id or directory, then export it."""
    return export_spec_bench(ResultStore(results_dir).open(run_ref), out_dir)
