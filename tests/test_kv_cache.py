"""`RowKVCache`: per-row lengths, pending writes, prefix commits and tree-path gathers.

The property every test comes back to (issue 4): after any sequence of writes and commits, each
row's committed K/V equals a fresh forward over the row's committed tokens.
"""

import pytest
import torch

from specbench.testing.lossless import assert_cache_row, load_tiny, one_thread


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_thread(pause_gc=False):
        yield


@pytest.fixture(params=["tiny-random-llama", "tiny-random-qwen3"])
def target(request):
    return load_tiny(request.param)


def _prefill(target, prompts, capacity=4):
    cache = target.new_cache(len(prompts), capacity)
    width = max(map(len, prompts))
    target.forward(torch.tensor([p + [0] * (width - len(p)) for p in prompts]), cache)
    cache.commit_prefix([len(p) for p in prompts])
    return cache


def test_ragged_prefix_commits_match_a_fresh_forward(target):
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (5, 9, 2)]
    cache = _prefill(target, rows, capacity=4)  # capacity grows on demand
    for step in range(5):
        block = torch.randint(3, 300, (3, 4), generator=g)
        target.forward(block, cache)
        keep = [(step + b) % 5 for b in range(3)]  # 0..4 of the 4 pending tokens, different per row
        keep = [min(k, 4) for k in keep]
        cache.commit_prefix(keep)
        for b in range(3):
            rows[b] += block[b, : keep[b]].tolist()
            assert_cache_row(cache, target, b, rows[b], f"step {step}")


def test_commit_slots_gathers_a_tree_path_in_path_order(target):
    prompts = [[5, 6, 7, 8], [9, 10]]
    tree_tokens = torch.tensor([[20, 21, 22, 23, 24], [30, 31, 32, 33, 34]])
    parents = [-1, 0, 0, 2, 3]  # node 3 is a child of node 2, node 4 of node 3
    intra = torch.zeros(5, 5, dtype=torch.bool)
    for n in range(5):
        m = n
        while m >= 0:
            intra[n, m] = True
            m = parents[m]
    depths = torch.tensor([0, 1, 1, 2, 3])
    for form in ("lists", "tensor"):
        cache = _prefill(target, prompts)
        target.forward(tree_tokens, cache, intra=intra, depths=depths)
        if form == "lists":
            cache.commit_slots([[0, 2, 3, 4], [0, 1]])
        else:
            cache.commit_slots(torch.tensor([[0, 2, 3, 4], [0, 1, -1, -1]]), torch.tensor([4, 2]))
        assert_cache_row(cache, target, 0, prompts[0] + [20, 22, 23, 24], form)
        assert_cache_row(cache, target, 1, prompts[1] + [30, 31], form)


def test_bad_commits_are_refused(target):
    cache = _prefill(target, [[5, 6], [7]])
    target.forward(torch.tensor([[1, 2], [3, 4]]), cache)
    with pytest.raises(ValueError):
        cache.commit_prefix([3, 0])
    with pytest.raises(ValueError):
        cache.commit_slots([[0, 2], [0]])


def test_attention_mask_matches_the_visibility_rule(target):
    cache = _prefill(target, [[5, 6, 7], [8]])
    cache.begin_write(3)
    intra = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    mask = cache.attention_mask(intra, torch.float32)[:, 0]  # [B, q, end]
    lengths = [3, 1]
    for b in range(2):
        for j in range(3):
            for s in range(mask.shape[-1]):
                visible = s < lengths[b] or (0 <= s - lengths[b] < 3 and bool(intra[j, s - lengths[b]]))
                assert (mask[b, j, s] == 0) == visible, (b, j, s)


def test_a_compiled_write_into_a_static_cache_moves_only_the_written_slots():
    """The compiled regime writes a static cache inside the captured forward. A `scatter_` there was
    functionalised into a copy of the whole buffer and a copy back (two capacity-sized copies per layer per
    call, both arms, growing with batch and capacity); `index_put_` is written in place by inductor. The
    write must also land where the eager growing cache puts it."""
    from torch._inductor.utils import run_and_get_code

    from specbench.kv_cache import RowKVCache

    def write(cache, keys, values):
        cache.layers[0].update(keys, values, 0)

    def ragged(static):
        cache = RowKVCache(2, 1, 1000, "cpu", static=static)
        cache.lengths, cache.device_lengths = [5, 9], torch.tensor([5, 9])
        cache.begin_write(3)
        return cache

    keys, values = torch.randn(2, 3, 3, 16), torch.randn(2, 3, 3, 16)  # [B, heads, q, d]
    static, growing = ragged(True), ragged(False)
    with torch.inference_mode():
        write(growing, keys, values)
        static.layers[0].lazy_initialization(keys, values)
        _, code = run_and_get_code(torch.compile(write, dynamic=False), static, keys, values)
    for name in ("keys", "values"):
        got, want = getattr(static.layers[0], name), getattr(growing.layers[0], name)
        assert torch.equal(got[:, :, : want.shape[2]], want) and not got[:, :, want.shape[2]:].any()
    assert str(static.layers[0].keys.numel()) not in "\n".join(code), "a kernel spans a whole cache buffer"
