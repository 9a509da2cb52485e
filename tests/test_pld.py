"""`pld` (methods/pld.py): the n-gram lookup against a brute-force reference, and the lossless kit."""

import pytest
import torch

from specbench.errors import SpecbenchError
from specbench.methods import build_method
from specbench.methods.pld import prompt_lookup
from specbench.sampling import SamplingConfig
from specbench.testing.lossless import assert_lossless, load_tiny, one_thread


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_thread(pause_gc=False):
        yield


def _lookup_ref(ctx, depth, max_ngram, min_ngram, match):
    """HF `PromptLookupCandidateGenerator` / prompt-lookup-decoding, one row, plain Python."""
    for n in range(max_ngram, min_ngram - 1, -1):
        if len(ctx) < n + 1:
            continue
        gram = ctx[-n:]
        starts = [i for i in range(len(ctx) - n) if ctx[i:i + n] == gram]
        if starts:
            i = starts[0] if match == "first" else starts[-1]
            return ctx[i + n: i + n + depth]
    return []


@pytest.mark.parametrize("match", ["first", "last"])
def test_prompt_lookup_matches_the_reference_on_random_contexts(match):
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 4, (int(n),), generator=g).tolist() for n in torch.randint(1, 30, (300,), generator=g)]
    width = max(map(len, rows)) + 3
    ids = torch.tensor([r + [7] * (width - len(r)) for r in rows])  # padding must never match
    for depth, max_n, min_n in ((5, 3, 1), (2, 2, 2), (7, 4, 1)):
        out = prompt_lookup(ids, torch.tensor([len(r) for r in rows]), depth, max_n, min_n, match)
        for b, r in enumerate(rows):
            want = _lookup_ref(r, depth, max_n, min_n, match)
            assert out.tokens[b, : out.lengths[b]].tolist() == want, (r, depth, max_n, min_n)


def test_prompt_lookup_prefers_longer_ngrams_and_cuts_at_the_context_end():
    ctx = [1, 2, 3, 9, 9, 5, 2, 3, 8, 1, 2, 3]  # "1 2 3" occurs at 0; "2 3" also at 6
    out = prompt_lookup(torch.tensor([ctx]), torch.tensor([len(ctx)]), 4)
    assert out.tokens[0, : out.lengths[0]].tolist() == [9, 9, 5, 2]
    out = prompt_lookup(torch.tensor([[4, 5, 4]]), torch.tensor([3]), 4)
    assert out.tokens[0, : out.lengths[0]].tolist() == [5, 4]
    out = prompt_lookup(torch.tensor([[4, 5, 6]]), torch.tensor([3]), 4)
    assert out.lengths.tolist() == [0]


def test_pld_method_registry_and_options():
    tiny_llama = load_tiny("tiny-random-llama")
    method = build_method("pld", tiny_llama, drafter=None, max_ngram=2)
    assert method.depth == 7
    assert method.describe()["options"] == {"max_ngram": 2, "min_ngram": 1, "match": "first"}
    assert method.describe()["tokens_per_target_forward"] == 8
    with pytest.raises(SpecbenchError):
        build_method("pld", tiny_llama, ngram=3)


@pytest.mark.parametrize("match", ["first", "last"])
def test_pld_is_lossless(match):
    outputs = assert_lossless(lambda target: build_method("pld", target, depth=3, match=match),
                              sampling=None if match == "last" else SamplingConfig(temperature=1.0))
    rows = [row for batches in outputs.values() for out in batches for row in out.rows]
    assert max(a for row in rows for a in row.accept_lengths) > 1  # some drafts land on the kit prompts
    for row in rows:
        assert len(row.draft_lengths) == len(row.accept_lengths)
        assert all(a <= d + 1 and d <= 3 for a, d in zip(row.accept_lengths, row.draft_lengths))


def test_the_lookup_is_draft_time(tiny_llama):
    """Timing contract (DESIGN.md §4): the n-gram lookup lands in the draft span of every step."""
    import specbench.methods.pld as pld
    from specbench.testing.spans import assert_draft_work_in_draft_span

    assert_draft_work_in_draft_span(build_method("pld", tiny_llama, depth=3), tiny_llama, pld, "prompt_lookup")


def test_a_cpu_step_verifies_the_longest_active_draft_only():
    """No active row matched: a 1-token verify (as HF's prompt lookup). A match in a stopped row does not
    count; otherwise the width is the longest active draft (here cut at the context end: 3 of 4). The
    compiled regime verifies the full width, as a GPU does: one captured graph, not one per width."""
    from types import SimpleNamespace

    from specbench.methods.pld import PromptLookupDecoder

    decoder = PromptLookupDecoder.__new__(PromptLookupDecoder)
    decoder.depth, decoder.max_ngram, decoder.min_ngram, decoder.match = 4, 2, 1, "first"
    ids = torch.tensor([[1, 2, 3, 1, 2, 0], [5, 6, 7, 8, 0, 0]])  # row 0 repeats "1 2", row 1 never repeats
    decoder.history = SimpleNamespace(ids=ids, host_lengths=[5, 4], lengths=torch.tensor([5, 4]))
    decoder.target = SimpleNamespace(regime="compiled")
    assert decoder.propose(torch.tensor([False, True])).tokens.shape[1] == 4
    decoder.target.regime = "eager"
    both = decoder.propose(torch.tensor([True, True]))
    assert both.tokens.shape[1] == 3 and both.lengths.tolist() == [3, 0]
    assert both.tokens[0].tolist() == [3, 1, 2]
    only_unmatched = decoder.propose(torch.tensor([False, True]))
    assert only_unmatched.tokens.shape[1] == 0 and only_unmatched.lengths.tolist() == [0, 0]
