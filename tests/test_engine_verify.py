"""Chain and tree verification (specbench/engine/verify.py) on tiny Llama and Qwen3 targets."""

import pytest
import torch

from specbench.engine import DraftTree, Proposal, TreeBatch, verify_chain, verify_tree
from specbench.sampling import SamplingConfig
from specbench.testing.lossless import assert_cache_row, load_tiny, one_thread
from specbench.timing import StepTimer

GREEDY = SamplingConfig()


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_thread(pause_gc=False):
        yield


@pytest.fixture(params=["tiny-random-llama", "tiny-random-qwen3"])
def target(request):
    return load_tiny(request.param)


def _prefill(target, prompts):
    cache = target.new_cache(len(prompts), 8)
    width = max(map(len, prompts))
    target.forward(torch.tensor([p + [0] * (width - len(p)) for p in prompts]), cache)
    cache.commit_prefix([len(p) for p in prompts])
    return cache


@torch.inference_mode()
def _last_logits(target, tokens):
    return target.model(input_ids=torch.tensor([tokens])).logits[0, -1]


@torch.inference_mode()
def _greedy(target, tokens, n):
    out = []
    for _ in range(n):
        out.append(int(_last_logits(target, tokens + out).argmax()))
    return out


def test_tree_logits_equal_a_causal_forward_along_each_path(target):
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    trees = [DraftTree([40, 41, 42, 43, 44, 45], [-1, 0, 0, 1, 1, 2]),
             DraftTree([50, 51, 52, 53], [-1, 0, 1, 0])]
    cache = _prefill(target, prompts)
    batch = TreeBatch.stack(trees)
    logits = target.forward(batch.tokens, cache, intra=batch.intra, depths=batch.depths)
    for b, tree in enumerate(trees):
        for node in range(len(tree)):
            path_tokens = [tree.tokens[i] for i in tree.path(node)]
            torch.testing.assert_close(logits[b, node], _last_logits(target, prompts[b] + path_tokens),
                                       atol=1e-4, rtol=1e-4)


def test_verify_tree_gathers_a_non_contiguous_accepted_path(target):
    prompt = [5, 6, 7, 8]
    root = _greedy(target, prompt, 1)[0]
    g1, g2, g3 = _greedy(target, prompt + [root], 3)
    bad = lambda t: (t + 1) % target.vocab_size  # noqa: E731
    # BFS: 0 root; 1 wrong, 2 = g1; 3 under 1; 4 wrong and 5 = g2 under 2 -> accepted path [0, 2, 5]
    tree = DraftTree([root, bad(g1), g1, g2, bad(g2), g2], [-1, 0, 0, 1, 2, 2])
    cache = _prefill(target, [prompt])
    timer = StepTimer(target.device)
    timer.start_step()
    result = verify_tree(target, cache, TreeBatch.stack([tree]), GREEDY, None, timer=timer)
    timer.end_step()
    assert result.path[0].tolist() == [0, 2, 5] and result.committed == [[g1, g2, g3]]
    assert_cache_row(cache, target, 0, prompt + [root, g1, g2])
    assert timer.resolve()["verify"][0] > 0


def test_verify_chain_with_ragged_draft_lengths(target):
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    lasts = [_greedy(target, p, 1)[0] for p in prompts]
    conts = [_greedy(target, p + [x], 4) for p, x in zip(prompts, lasts)]
    drafts = [conts[0][:3], [conts[1][0], bad := (conts[1][1] + 1) % target.vocab_size], []]
    cache = _prefill(target, prompts)
    result = verify_chain(target, cache, torch.tensor(lasts), Proposal.from_lists(drafts, "cpu"), GREEDY, None)
    assert result.n_accepted.tolist() == [3, 1, 0] and bad != conts[1][1]
    assert result.committed == [conts[0][:4], conts[1][:2], conts[2][:1]]
    for b, p in enumerate(prompts):
        assert_cache_row(cache, target, b, p + [lasts[b]] + result.committed[b][:-1])
