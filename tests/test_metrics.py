"""Metric definitions of DESIGN.md §4 on hand-made records."""

import pytest

from specbench.metrics import speedup_stats, summarize, tau_stats


def _rec(pid, arm, batch, new_tokens, steps, accept, ttft, decode, score=None, exact=True):
    return {"prompt_id": pid, "arm": arm, "batch_id": batch, "score": score, "exact_match": exact,
            "first_divergence": None,
            "turns": [{"new_tokens": new_tokens, "steps": steps, "accept_lengths": accept, "ttft_s": ttft,
                       "decode_s": decode, "batch_spans_ms": {"draft": [1.0] * steps, "verify": [2.0] * steps,
                                                              "other": [0.5] * steps}}]}


def test_tau_is_token_weighted_and_excludes_the_prefill_token():
    recs = [_rec("a", "method", "b0", 1 + 6, 2, [3, 3], 0.1, 1.0),
            _rec("b", "method", "b1", 1 + 2, 2, [1, 1], 0.1, 1.0)]
    s = tau_stats(recs)
    assert s["tau"] == pytest.approx(8 / 4)  # not the mean of per-prompt taus (3 and 1 -> 2 here too)
    recs[1] = _rec("b", "method", "b1", 1 + 4, 4, [1, 1, 1, 1], 0.1, 1.0)
    assert tau_stats(recs)["tau"] == pytest.approx(10 / 6)
    assert tau_stats(recs)["tau_histogram"] == {"1": 4, "3": 2}


def test_tau_differs_from_the_per_prompt_mean_and_from_the_mean_of_untruncated_rounds():
    """Three candidate definitions that agree on easy records are told apart: a long answer at 4 tokens
    per step, a short one at 1, and a last step cut by EOS (4 committed, 2 kept)."""
    recs = [_rec("a", "method", "b0", 1 + 10, 3, [4, 4, 4], 0.1, 1.0),  # 12 committed, 10 kept
            _rec("b", "method", "b1", 1 + 2, 2, [1, 1], 0.1, 1.0)]
    s = tau_stats(recs)
    assert s["tau"] == pytest.approx(12 / 5)  # Σ kept decode tokens / Σ forwards
    per_prompt_mean = (10 / 3 + 2 / 2) / 2
    assert s["tau"] != pytest.approx(per_prompt_mean)
    assert s["tau_rounds"] == pytest.approx(14 / 5)  # EAGLE/DFlash: accepted + 1 per round, uncut
    assert s["tau"] < s["tau_rounds"]


def test_per_position_conditional_acceptance():
    recs = [_rec("a", "method", "b0", 1 + 7, 4, [1, 2, 3, 1], 0.1, 1.0)]
    s = tau_stats(recs)
    # accepted drafts per step: 0, 1, 2, 0 -> P(pos1)=2/4, P(pos2 | pos1)=1/2
    assert s["per_position_acceptance"] == [pytest.approx(0.5), pytest.approx(0.5)]


def _with_drafts(rec, drafts):
    rec["turns"][0]["draft_lengths"] = drafts
    return rec


def test_per_position_acceptance_counts_only_steps_that_drafted_the_position():
    # PLD-like: two steps without an n-gram match (0 drafts), then 4 drafts with 2 and 1 accepted
    recs = [_with_drafts(_rec("a", "method", "b0", 1 + 7, 4, [1, 1, 3, 2], 0.1, 1.0), [0, 0, 4, 4])]
    s = tau_stats(recs)
    # pos 1: both drafting steps accept it (the empty steps rejected nothing); pos 2: 1 of 2; pos 3: 0 of 1
    assert s["per_position_acceptance"] == [pytest.approx(1.0), pytest.approx(0.5), pytest.approx(0.0)]
    assert s["per_position_steps"] == [2, 2, 1]  # position 4 was drafted but never reached
    assert s["steps_without_draft_lengths"] == 0


def test_per_position_acceptance_full_acceptance_is_no_rejection():
    # drafts of 2, 1 and 3 tokens, every one accepted: no position ever rejected
    recs = [_with_drafts(_rec("a", "method", "b0", 1 + 9, 3, [3, 2, 4], 0.1, 1.0), [2, 1, 3])]
    assert tau_stats(recs)["per_position_acceptance"] == [1.0, 1.0, 1.0]


def test_per_position_acceptance_of_records_without_draft_lengths():
    """Older records (no `draft_lengths`, or `None` as `load_records` fills it) keep the old reading:
    every step counts as drafting every position; mixed with new records, per step."""
    old = _rec("a", "method", "b0", 1 + 7, 4, [1, 2, 3, 1], 0.1, 1.0)
    s = tau_stats([old])
    assert s["per_position_acceptance"] == [pytest.approx(0.5), pytest.approx(0.5)]
    assert s["steps_without_draft_lengths"] == 4
    filled = _with_drafts(_rec("a", "method", "b0", 1 + 7, 4, [1, 2, 3, 1], 0.1, 1.0), None)
    assert tau_stats([filled])["per_position_acceptance"] == s["per_position_acceptance"]
    new = _with_drafts(_rec("b", "method", "b1", 1 + 2, 2, [1, 2], 0.1, 1.0), [0, 3])
    mixed = tau_stats([old, new])
    # pos 1: old steps 2 of 4 + new step 1 of 1 (its empty step is not counted); pos 2: 1/2 + 0/1
    assert mixed["per_position_acceptance"][:2] == [pytest.approx(3 / 5), pytest.approx(1 / 3)]
    assert mixed["steps_without_draft_lengths"] == 4


def test_speedup_is_ratio_of_sums_with_a_ci():
    recs = []
    for i in range(6):
        recs.append(_rec(f"p{i}", "baseline", f"b{i}", 11, 10, [1] * 10, 0.1, 1.0 + 0.01 * i))
        recs.append(_rec(f"p{i}", "method", f"b{i}", 11, 4, [3, 3, 2, 2], 0.1, 0.5 + 0.01 * i))
    s = speedup_stats(recs)
    want = (sum(1.0 + 0.01 * i for i in range(6)) / 60) / (sum(0.5 + 0.01 * i for i in range(6)) / 60)
    assert s["speedup_decode"] == pytest.approx(want)
    lo, hi = s["speedup_decode_ci95"]
    assert lo <= s["speedup_decode"] <= hi and hi - lo < 0.2
    assert s["speedup_e2e"] < s["speedup_decode"]


def test_batch_time_counted_once_per_batch():
    recs = []
    for row in range(4):  # one batch of 4: the batch wall time is shared, tokens add up
        recs.append(_rec(f"p{row}", "baseline", "b0", 11, 10, [1] * 10, 0.2, 2.0))
        recs.append(_rec(f"p{row}", "method", "b0", 11, 5, [2] * 5, 0.2, 1.0))
    s = speedup_stats(recs)
    assert s["speedup_decode"] == pytest.approx(2.0)
    assert s["baseline_decode_tokens_per_s"] == pytest.approx(40 / 2.0)


def test_summary_has_the_contract_keys():
    recs = [_rec("a", "baseline", "b0", 5, 4, [1] * 4, 0.1, 1.0, score=True),
            _rec("a", "method", "b0", 5, 2, [2, 2], 0.1, 0.6, score=False)]
    s = summarize(recs)
    for key in ("tau", "speedup_e2e", "speedup_decode", "tokens_per_s", "baseline_tokens_per_s",
                "exact_match_rate", "accuracy", "baseline_accuracy"):
        assert key in s
    assert s["accuracy"] == 0.0 and s["baseline_accuracy"] == 1.0
    assert s["latency_ms"]["method"]["other_share"] == pytest.approx(0.5 / 3.5)
