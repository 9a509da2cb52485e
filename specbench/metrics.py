"""Run summaries with the binding definitions of DESIGN.md §4.

* τ = Σ committed decode tokens / Σ verification forwards, token-weighted over the run; the token
  produced by prefill is excluded from both (AR has τ = 1 exactly). The EAGLE/DFlash papers instead
  average "accepted + 1" over rounds, counting a round's tokens in full even where EOS or the token
  limit cut the last one: that is `tau_rounds` (≥ τ; they differ only through each answer's last
  step, so by at most (τ_max − 1) / steps per answer).
* speedup = AR time per output token ÷ method time per output token, as a ratio of sums over the
  run, end-to-end (prefill + decode) and decode-only; 95% bootstrap CI over batches (a batch is the
  unit whose wall time is measured; at batch size 1 that is a prompt).
* latency per step: medians of the draft / verify / other spans.
* per category (issue 13): when records carry `meta.category`, the same τ and speedups per category
  in `summary["per_category"]`, plus Spec-Bench's "mean accepted tokens" (the mean over all steps of
  the tokens each step kept), which equals τ whenever a turn's kept lengths sum to new_tokens − 1.
* per-position acceptance: P(draft position i accepted | positions < i accepted), over the steps whose
  draft reached position i (`draft_lengths`), so a step that drafted fewer tokens is no rejection.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

BOOTSTRAP_SAMPLES = 2000


def _turns(records, arm):
    for rec in records:
        if rec["arm"] == arm:
            for t, turn in enumerate(rec["turns"]):
                yield rec, t, turn


def decode_tokens(turn: dict) -> int:
    """Tokens committed by decode steps: new_tokens − 1 (prefill's token excluded); imported answer
    files that cannot tell the prefill token apart state the count as `decode_tokens` (issue 13)."""
    stated = turn.get("decode_tokens")
    return int(stated) if stated is not None else max(turn["new_tokens"] - 1, 0)


def step_drafts(turn: dict) -> list[int | None]:
    """Drafts each step offered, `None` per step where the record does not say (records written before
    `draft_lengths` was stored, imported answer files): such steps count as drafting every position."""
    drafted = turn.get("draft_lengths")
    if drafted is None or len(drafted) != len(turn["accept_lengths"]):
        return [None] * len(turn["accept_lengths"])
    return list(drafted)


def per_position_acceptance(steps: list[tuple[int, int | None]]) -> tuple[list[float], list[int]]:
    """P(draft position i accepted | positions < i accepted) for i = 1, 2, ... and its denominators.

    `steps`: `(committed L = accepted + 1, drafts d or None)` per step. Position i is reached by the
    steps that accepted i - 1 drafts *and* drafted at least i (a step that drafted nothing, e.g. PLD
    without an n-gram match, rejected nothing); it passes when the step accepted i or more. Positions
    run to the last one any step reached.
    """
    width = max((d if d is not None else n - 1 for n, d in steps), default=0)
    rates, reached_counts = [], []
    for i in range(1, width + 1):
        reached = sum(1 for n, d in steps if n - 1 >= i - 1 and (d is None or d >= i))
        if not reached:  # nor is any later position
            break
        passed = sum(1 for n, d in steps if n - 1 >= i and (d is None or d >= i))
        rates.append(passed / reached)
        reached_counts.append(reached)
    return rates, reached_counts


def tau_stats(records: list[dict], arm: str = "method") -> dict:
    tokens = forwards = 0
    hist: Counter = Counter()
    steps: list[tuple[int, int | None]] = []
    for _, _, turn in _turns(records, arm):
        tokens += decode_tokens(turn)
        forwards += turn["steps"]
        hist.update(turn["accept_lengths"])
        steps += zip(turn["accept_lengths"], step_drafts(turn))
    tau = tokens / forwards if forwards else None
    per_position, reached = per_position_acceptance(steps)
    rounds = [n for n, _ in steps]
    return {"tau": tau, "tau_rounds": float(np.mean(rounds)) if rounds else None,
            "decode_tokens": tokens, "verify_forwards": forwards,
            "tau_histogram": {str(k): v for k, v in sorted(hist.items())},
            "per_position_acceptance": per_position, "per_position_steps": reached,
            "steps_without_draft_lengths": sum(d is None for _, d in steps)}


def batch_units(records: list[dict]) -> dict:
    """Per (batch, turn, arm): wall times and output tokens; the units that are timed together."""
    units: dict = defaultdict(lambda: {"ttft_s": 0.0, "decode_s": 0.0, "tokens": 0, "decode_tokens": 0})
    seen_time = set()
    for arm in ("method", "baseline"):
        for rec, t, turn in _turns(records, arm):
            key = (rec["batch_id"], t)
            u = units[(key, arm)]
            u["tokens"] += turn["new_tokens"]
            u["decode_tokens"] += max(turn["new_tokens"] - 1, 0)
            if (key, arm) not in seen_time:
                seen_time.add((key, arm))
                u["ttft_s"] += turn["ttft_s"]
                u["decode_s"] += turn["decode_s"]
    return units


def _ratio_of_sums(a_time, a_tok, m_time, m_tok):
    if a_tok.sum() == 0 or m_tok.sum() == 0 or m_time.sum() == 0:
        return float("nan")
    return (a_time.sum() / a_tok.sum()) / (m_time.sum() / m_tok.sum())


def bootstrap_ci(arrays: list[np.ndarray], stat, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES):
    n = len(arrays[0])
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(samples):
        idx = rng.integers(0, n, n)
        vals.append(stat(*(a[idx] for a in arrays)))
    vals = np.array(vals)
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return None
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


def speedup_stats(records: list[dict]) -> dict:
    units = batch_units(records)
    keys = sorted({k for k, arm in units if (k, "baseline") in units and (k, "method") in units})
    if not keys:
        return {}
    def col(arm, f):
        return np.array([f(units[(k, arm)]) for k in keys], dtype=float)
    e2e = lambda u: u["ttft_s"] + u["decode_s"]  # noqa: E731
    a_e2e, m_e2e = col("baseline", e2e), col("method", e2e)
    a_dec, m_dec = col("baseline", lambda u: u["decode_s"]), col("method", lambda u: u["decode_s"])
    a_tok, m_tok = col("baseline", lambda u: u["tokens"]), col("method", lambda u: u["tokens"])
    a_dtok, m_dtok = col("baseline", lambda u: u["decode_tokens"]), col("method", lambda u: u["decode_tokens"])
    return {
        "speedup_e2e": _ratio_of_sums(a_e2e, a_tok, m_e2e, m_tok),
        "speedup_e2e_ci95": bootstrap_ci([a_e2e, a_tok, m_e2e, m_tok], _ratio_of_sums),
        "speedup_decode": _ratio_of_sums(a_dec, a_dtok, m_dec, m_dtok),
        "speedup_decode_ci95": bootstrap_ci([a_dec, a_dtok, m_dec, m_dtok], _ratio_of_sums),
        "tokens_per_s": float(m_tok.sum() / m_e2e.sum()) if m_e2e.sum() else None,
        "baseline_tokens_per_s": float(a_tok.sum() / a_e2e.sum()) if a_e2e.sum() else None,
        "decode_tokens_per_s": float(m_dtok.sum() / m_dec.sum()) if m_dec.sum() else None,
        "baseline_decode_tokens_per_s": float(a_dtok.sum() / a_dec.sum()) if a_dec.sum() else None,
        "timed_units": len(keys),
    }


def latency_stats(records: list[dict], arm: str) -> dict:
    spans = {"draft": [], "verify": [], "other": []}
    for _, _, turn in _turns(records, arm):
        for name, values in (turn.get("batch_spans_ms") or {}).items():
            spans[name].extend(values)
    if not spans["verify"]:
        return {}
    total = [d + v + o for d, v, o in zip(spans["draft"], spans["verify"], spans["other"])]
    out = {f"{name}_ms_median": float(np.median(v)) for name, v in spans.items()}
    out["step_ms_median"] = float(np.median(total))
    out["other_share"] = float(np.sum(spans["other"]) / np.sum(total)) if np.sum(total) else None
    out["steps"] = len(total)
    return out


def _rate(values):
    values = [v for v in values if v is not None]
    return (sum(bool(v) for v in values) / len(values)) if values else None


def kept_accept_lengths(turn: dict) -> list[int]:
    """Tokens each step committed *and kept*: the loop stores untruncated counts, so the last step may
    exceed what EOS or max-new-tokens let through; cut it so they sum to new_tokens − 1 (prefill's
    token is in no step), Spec-Bench's convention (its scripts trim the last step after EOS the same way)."""
    budget = decode_tokens(turn)
    out = []
    for n in turn["accept_lengths"]:
        if budget <= 0:
            break
        out.append(min(n, budget))
        budget -= out[-1]
    return out


def _ratio(num, den):
    return float(num.sum() / den.sum()) if den.sum() else float("nan")


def category_stats(records: list[dict]) -> dict:
    """τ (with a 95% bootstrap CI over prompts), Spec-Bench's mean accepted tokens, and the speedups."""
    method = [r for r in records if r["arm"] == "method"]
    tokens = np.array([sum(decode_tokens(t) for t in r["turns"]) for r in method], dtype=float)
    forwards = np.array([sum(t["steps"] for t in r["turns"]) for r in method], dtype=float)
    kept = [n for r in method for t in r["turns"] for n in kept_accept_lengths(t)]
    out = {"n_prompts": len(method), "tau": tau_stats(records, "method")["tau"],
           "tau_ci95": bootstrap_ci([tokens, forwards], _ratio) if len(method) else None,
           "mean_accepted_tokens": float(np.mean(kept)) if kept else None, "accepted_steps": len(kept)}
    out.update(speedup_stats(records))
    return out


def per_category_stats(records: list[dict]) -> dict:
    """`category_stats` for each `meta.category` (issue 13: Spec-Bench's per-task leaderboard columns)."""
    groups: dict = defaultdict(list)
    for rec in records:
        category = (rec.get("meta") or {}).get("category")
        if category is not None:
            groups[str(category)].append(rec)
    return {category: category_stats(recs) for category, recs in sorted(groups.items())}


def summarize(records: list[dict]) -> dict:
    by_arm = {arm: [r for r in records if r["arm"] == arm] for arm in ("method", "baseline")}
    method = by_arm["method"]
    summary = {"n_prompts": len(method)}
    summary.update(tau_stats(records, "method"))
    summary.update(speedup_stats(records))
    summary["exact_match_rate"] = _rate([r.get("exact_match") for r in method])
    summary["divergences"] = [{"prompt_id": r["prompt_id"], **r["first_divergence"]}
                              for r in method if r.get("first_divergence")]
    summary["accuracy"] = _rate([r.get("score") for r in method])
    summary["baseline_accuracy"] = _rate([r.get("score") for r in by_arm["baseline"]])
    summary["latency_ms"] = {arm: latency_stats(records, arm) for arm in ("method", "baseline")}
    summary["mean_new_tokens"] = (float(np.mean([sum(t["new_tokens"] for t in r["turns"]) for r in method]))
                                  if method else None)
    if any((r.get("meta") or {}).get("category") is not None for r in method):
        summary["per_category"] = per_category_stats(records)
    return summary
