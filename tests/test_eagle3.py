"""EAGLE-3 (issue 6): drafter layout, TTT training, dynamic tree, lossless decoding through the engine."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from specbench.decode import generate
from specbench.kv_cache import RowKVCache
from specbench.methods import build_method
from specbench.methods.eagle3 import (Eagle3Decoder, Eagle3Drafter, Eagle3Method, build_draft_vocab, draft_tree,
                                      feature_layer_ids, ttt_attention)
from specbench.sampling import SamplingConfig
from specbench.timing import StepTimer
from specbench.training.features import target_features

QUESTIONS = ["How many clips did Natalia sell altogether?", "def add(a, b):", "Write a story about a robot.",
             "Translate: the cat sleeps on the warm mat, and then it wakes up and eats."]


def make_drafter(target, std=0.15, seed=0, **options):
    """A random drafter with weights large enough that layout mistakes change its outputs."""
    torch.manual_seed(seed)
    drafter = Eagle3Drafter.for_target(target, **options)
    for name, p in drafter.named_parameters():
        if p.dim() == 2:
            nn.init.normal_(p, std=std)
        elif "norm" in name:
            nn.init.uniform_(p, 0.5, 1.5)
    return drafter.eval()


def prompts_for(target, n):
    return [target.render([{"role": "user", "content": q}]) for q in QUESTIONS[:n]]


def run(method, target, prompts, max_new=32, sampling=SamplingConfig(), generator=None):
    decoder = method.make_decoder(sampling, generator)
    return generate(decoder, prompts, max_new, target.eos_token_ids, StepTimer(target.device)), decoder


# -- configuration ----------------------------------------------------------------------------------------

def test_feature_layers_are_inputs_of_2_mid_and_n_minus_3():
    """A.1.1 table: HF hidden_states 2/16/29 (N=32), 2/18/33 (N=36), 2/40/77 (N=80)."""
    for n, hf in [(32, [2, 16, 29]), (36, [2, 18, 33]), (80, [2, 40, 77]), (30, [2, 15, 27])]:
        assert [i + 1 for i in feature_layer_ids(n)] == hf


def test_draft_vocab_offsets_ties_and_top_up():
    counts = torch.tensor([0, 5, 3, 5, 0, 9, 1, 0])
    d2t, t2d = build_draft_vocab(counts, 4)
    used = torch.arange(4) + d2t
    assert used.tolist() == [1, 2, 3, 5]  # most frequent, ascending; tie 5/5 both kept
    assert t2d.tolist() == [False, True, True, True, False, True, False, False]
    d2t, _ = build_draft_vocab(torch.tensor([0, 0, 7, 0, 0]), 3)  # one seen id, topped up with 0, 1
    assert (torch.arange(3) + d2t).tolist() == [0, 1, 2]
    d2t, _ = build_draft_vocab(torch.tensor([0, 1, 1, 0, 0]), 2)  # tie broken by the lower id
    assert (torch.arange(2) + d2t).tolist() == [1, 2]
    d2t, t2d = build_draft_vocab(counts, 8)
    assert not d2t.any() and t2d.all()


def test_init_from_data_counts_assistant_tokens_only(tiny_llama):
    from specbench.training.data import TrainExample

    drafter = Eagle3Drafter.for_target(tiny_llama, draft_vocab_size=3)
    examples = [TrainExample("a", [7, 7, 7, 9, 10, 10], [0, 0, 0, 1, 1, 1]), TrainExample("b", [11, 12], [0, 1])]
    drafter.init_from_data(examples)
    assert drafter.draft_token_ids().tolist() == [9, 10, 12]
    assert drafter.config.vocab_coverage == 1.0
    assert not torch.equal(drafter.lm_head.weight, tiny_llama.model.lm_head.weight[[9, 10, 12]])
    ablation = Eagle3Drafter.for_target(tiny_llama, draft_vocab_size=3, head_from_target=True)
    ablation.init_from_data(examples)
    assert torch.equal(ablation.lm_head.weight, tiny_llama.model.lm_head.weight[[9, 10, 12]])


def test_config_follows_target_family(tiny_llama, tiny_qwen3):
    llama = Eagle3Drafter.default_config(tiny_llama)
    qwen = Eagle3Drafter.default_config(tiny_qwen3)
    assert not llama.qk_norm and not qwen.qk_norm  # the reference layer is Llama attention for Qwen3 too
    assert llama.rope_theta == 10000.0  # A.5-6: not the target's
    assert qwen.head_dim == tiny_qwen3.config.head_dim
    assert llama.draft_vocab_size == tiny_llama.vocab_size // 4
    names = {n for n, _ in Eagle3Drafter(qwen).named_parameters()}
    assert names == {"fc.weight", "midlayer.hidden_norm.weight", "midlayer.input_layernorm.weight",
                     "midlayer.self_attn.q_proj.weight", "midlayer.self_attn.k_proj.weight",
                     "midlayer.self_attn.v_proj.weight", "midlayer.self_attn.o_proj.weight",
                     "midlayer.post_attention_layernorm.weight", "midlayer.mlp.gate_proj.weight",
                     "midlayer.mlp.up_proj.weight", "midlayer.mlp.down_proj.weight", "norm.weight", "lm_head.weight"}
    # older specbench Qwen3 drafters were saved with q/k norms: the field still builds them
    old = Eagle3Drafter(dataclasses.replace(qwen, qk_norm=True))
    assert {"midlayer.self_attn.q_norm.weight", "midlayer.self_attn.k_norm.weight"} <= dict(old.named_parameters()).keys()


def test_norm_before_residual_takes_the_normalised_feature_as_residual(tiny_llama):
    """speculators' variant: the residual around attention is hidden_norm(h), not h."""
    drafter = make_drafter(tiny_llama, norm_before_residual=True)
    layer = drafter.midlayer
    h, attn_out = torch.randn(2, 3, 64), torch.randn(2, 4, 3, 16)
    o = layer.self_attn.o_proj(attn_out.transpose(1, 2).reshape(2, 3, -1))
    h1 = layer.hidden_norm(h) + o
    torch.testing.assert_close(layer.finish(h, attn_out), h1 + layer.mlp(layer.post_attention_layernorm(h1)))
    layer.cfg.norm_before_residual = False
    h1 = h + o
    torch.testing.assert_close(layer.finish(h, attn_out), h1 + layer.mlp(layer.post_attention_layernorm(h1)))
    # a field added after drafters were cached: at its default it leaves the store key (and the cache) as it was
    from specbench.training.store import key_fields

    assert "norm_before_residual" not in key_fields(Eagle3Drafter.default_config(tiny_llama))
    assert key_fields(Eagle3Drafter.default_config(tiny_llama, norm_before_residual=True))["norm_before_residual"]


# -- training-time test ----------------------------------------------------------------------------------

def test_ttt_attention_is_the_spec_layout():
    """Dense attention with the A.2.3 mask (prefix causal at step 0, own row at later steps)."""
    torch.manual_seed(0)
    b, h, t, d, j = 2, 3, 4, 8, 2
    q = torch.randn(b, h, t, d)
    keys = [torch.randn(b, h, t, d) for _ in range(j + 1)]
    values = [torch.randn(b, h, t, d) for _ in range(j + 1)]
    mask = torch.cat([torch.ones(t, t).tril()] + [torch.eye(t)] * j, 1).bool()  # [T, T*(j+1)]
    assert mask.int().tolist()[1] == [1, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0]  # spec's row 1
    dense = torch.softmax((q @ torch.cat(keys, 2).transpose(-1, -2) / math.sqrt(d)).masked_fill(~mask, -math.inf), -1)
    expected = dense @ torch.cat(values, 2)
    torch.testing.assert_close(ttt_attention(q, keys, values), expected)


@pytest.mark.parametrize("target_name", ["tiny_llama", "tiny_qwen3"])
def test_ttt_step_j_equals_a_depth_j_chain_at_inference(target_name, request):
    """Row t at TTT step j sees exactly what a depth-j drafted node sees when drafting after x_{t+1}."""
    target = request.getfixturevalue(target_name)
    drafter = make_drafter(target)
    ids = torch.tensor([prompts_for(target, 1)[0][:24]])
    feats, _ = target_features(target, ids, drafter.feature_layers())
    with torch.no_grad():
        steps = [h for _, h in drafter.unroll(ids, feats)]
    for t in (3, 10, 15):
        cache = RowKVCache(1, 1, 64, "cpu")
        with torch.inference_mode():
            h = drafter.extend(cache, feats[:, : t + 1], ids[:, 1: t + 2], [t + 1])[:, -1:]  # pairs 0..t
            torch.testing.assert_close(h[:, 0], steps[0][:, t], atol=1e-5, rtol=1e-5)
            scratch = []
            for j in range(1, drafter.config.ttt_steps):
                visible = torch.ones(1, 1, j, dtype=torch.bool)
                h = drafter.expand(cache, scratch, visible, h, ids[:, t + j + 1: t + j + 2], j - 1)
                torch.testing.assert_close(h[:, 0], steps[j][:, t], atol=1e-5, rtol=1e-5,
                                           msg=lambda m: f"row {t}, step {j}: {m}")


def test_loss_is_soft_label_over_all_rows_with_decay(tiny_llama):
    """A.2.3 items 5-6 written out row by row, against `loss` (A.5-8, A.5-9, A.5-11)."""
    drafter = make_drafter(tiny_llama, std=0.05, draft_vocab_size=64)
    counts = torch.zeros(tiny_llama.vocab_size)
    counts[torch.randperm(tiny_llama.vocab_size, generator=torch.Generator().manual_seed(1))[:64]] = 1
    d2t, t2d = build_draft_vocab(counts, 64)
    drafter.d2t.copy_(d2t)
    drafter.t2d.copy_(t2d)
    prompts = prompts_for(tiny_llama, 2)
    width = max(map(len, prompts))
    ids = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
    mask = torch.zeros_like(ids)
    mask[0, 20:len(prompts[0])] = 1
    mask[1, 5:30] = 1
    feats, logits = target_features(tiny_llama, ids, drafter.feature_layers(), with_logits=True)
    batch = {"input_ids": ids, "loss_mask": mask, "features": feats, "target_logits": logits}
    with torch.no_grad():
        loss, metrics = drafter.loss(batch)
        steps = [drafter.head(h) for _, h in drafter.unroll(ids, feats)]
    used = drafter.draft_token_ids()
    b, s = ids.shape
    expected = 0.0
    for j, q in enumerate(steps):
        total = 0.0
        for r in range(b):
            for t in range(s):
                if t + j >= s or not mask[r, t + j]:
                    continue
                z = logits[r, t + j + 1] if t + j + 1 < s else torch.zeros(logits.shape[-1])
                if z.argmax() not in used:
                    continue
                total -= (torch.softmax(z[used], -1) * torch.log_softmax(q[r, t], -1)).sum()
        expected += 0.8 ** j * total / (b * s)
    torch.testing.assert_close(loss, torch.as_tensor(expected, dtype=loss.dtype), rtol=1e-4, atol=1e-5)
    assert set(metrics) >= {"acc", "acc_0", "acc_6", "loss_6"}


# -- the dynamic tree --------------------------------------------------------------------------------------

def _chain_logprobs(drafter, cache, last_h, path_tokens):
    """Draft log-probs after each prefix of `path_tokens` (target ids), drafted as a plain chain."""
    out = [torch.log_softmax(drafter.head(last_h).float(), -1)]
    h, scratch = last_h[:, None], []
    for i, tok in enumerate(path_tokens[:-1]):
        visible = torch.ones(1, 1, i + 1, dtype=torch.bool)
        h = drafter.expand(cache, scratch, visible, h, torch.tensor([[tok]]), i)
        out.append(torch.log_softmax(drafter.head(h[:, 0]).float(), -1))
    return out


@pytest.mark.parametrize("top_k,depth,total", [(3, 4, 12), (4, 3, 30), (1, 5, 9)])
def test_tree_nodes_are_top_k_children_ranked_by_cumulative_score(tiny_qwen3, top_k, depth, total):
    """Every node is among its parent's top-k draft tokens and carries the sum of raw draft
    log-probs along its path; the tree is ancestor-closed, parents first, and siblings descend."""
    drafter = make_drafter(tiny_qwen3)
    prompt = torch.tensor([prompts_for(tiny_qwen3, 1)[0]])
    feats, _ = target_features(tiny_qwen3, prompt, drafter.feature_layers())
    n = prompt.shape[1]
    with torch.inference_mode():
        cache = RowKVCache(2, 1, 128, "cpu")  # two rows with different lengths
        pairs = torch.cat([feats, feats])[:, : n - 1], torch.cat([prompt, prompt])[:, 1:]
        h = drafter.extend(cache, *pairs, [n - 1, n - 5])
        last = h[torch.arange(2), torch.tensor([n - 2, n - 6])]
        root = torch.tensor([11, 12])
        tree, scores = draft_tree(drafter, cache, root, last, top_k, depth, total, return_scores=True)
        k = top_k
        expected_n = min(total, 1 + k + (depth - 1) * k * k)
        assert tree.tokens.shape == (2, expected_n)
        assert tree.tokens[:, 0].tolist() == [11, 12]
        assert int(tree.depths.max()) <= depth
        for row in range(2):
            single = RowKVCache(1, 1, 128, "cpu")
            length = cache.lengths[row]
            drafter.extend(single, feats[:, :length], prompt[:, 1: length + 1], [length])
            parents = tree.parents[row].tolist()
            tokens = tree.tokens[row].tolist()
            for node in range(1, expected_n):
                path = [node]
                while parents[path[-1]] > 0:
                    path.append(parents[path[-1]])
                path = path[::-1]
                lps = _chain_logprobs(drafter, single, last[row: row + 1], [tokens[i] for i in path])
                draft_ids = [int((drafter.t2d.cumsum(0) - 1)[tokens[i]]) for i in path]
                cum = sum(float(lp[0, d]) for lp, d in zip(lps, draft_ids))
                assert abs(cum - float(scores[row, node])) < 1e-4
                top = lps[-1][0].topk(min(k, drafter.config.draft_vocab_size)).indices.tolist()
                assert draft_ids[-1] in top
                assert parents[node] < node
            for parent in range(expected_n):
                kids = [i for i in range(expected_n) if parents[i] == parent]
                assert scores[row, kids].tolist() == sorted(scores[row, kids].tolist(), reverse=True)
                assert len({tokens[i] for i in kids}) == len(kids)
        if k == 1:
            assert tree.parents[0].tolist() == list(range(-1, expected_n - 1))


def test_tree_keeps_the_best_candidates(tiny_llama):
    """Brute force: the kept nodes are the `total - 1` best of all k + (depth-1)·k² candidates."""
    drafter = make_drafter(tiny_llama)
    prompt = torch.tensor([prompts_for(tiny_llama, 1)[0]])
    feats, _ = target_features(tiny_llama, prompt, drafter.feature_layers())
    with torch.inference_mode():
        cache = RowKVCache(1, 1, 128, "cpu")
        n = prompt.shape[1] - 1
        last = drafter.extend(cache, feats[:, :n], prompt[:, 1:], [n])[:, -1]
        _, all_scores = draft_tree(drafter, cache, torch.tensor([3]), last, 3, 3, 1 + 3 + 2 * 9, return_scores=True)
        _, kept = draft_tree(drafter, cache, torch.tensor([3]), last, 3, 3, 8, return_scores=True)
    best = sorted(all_scores[0, 1:].tolist(), reverse=True)[:7]
    assert sorted(kept[0, 1:].tolist(), reverse=True) == pytest.approx(best)


# -- decoding through the engine ---------------------------------------------------------------------------

class OracleEagle3Decoder(Eagle3Decoder):
    """The real drafter's tree, with one random deepest path overwritten by the target's greedy
    continuation (cut at a random depth). A random drafter accepts almost nothing; this gives long,
    ragged accepted paths that are not contiguous in tree order, so the path-order gather of features
    and caches is exercised at every accepted length."""

    def propose_tree(self, active):
        from specbench.engine import TreeBatch
        from specbench.testing.drafters import history_logits

        tree = super().propose_tree(active)
        b, n = tree.tokens.shape
        g = getattr(self, "oracle_gen", None) or torch.Generator().manual_seed(0)
        self.oracle_gen = g
        tokens = tree.tokens.clone()
        h = self.history
        for row in range(b):
            depth = int(tree.depths[row].max())
            deepest = (tree.depths[row] == depth).nonzero().flatten()
            node = int(deepest[torch.randint(len(deepest), (1,), generator=g)])
            path = [node]
            while int(tree.parents[row, path[-1]]) > 0:
                path.append(int(tree.parents[row, path[-1]]))
            path = path[::-1]
            cut = int(torch.randint(len(path) + 1, (1,), generator=g))
            ctx = h.ids[row, : h.lengths[row]].tolist()
            for i, node in enumerate(path[:cut]):
                tok = int(history_logits(self.target, torch.tensor([ctx]), torch.tensor([len(ctx)]))[0].argmax())
                tokens[row, node] = tok
                ctx.append(tok)
        self.tree = TreeBatch.from_parents(tokens, tree.parents)
        return self.tree


class OracleEagle3Method(Eagle3Method):
    def make_decoder(self, sampling, generator):
        t = self.tree
        return OracleEagle3Decoder(self.target, sampling, generator, self.drafter, t["top_k"], t["tree_depth"],
                                   t["total_tokens"])


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    from specbench.testing.lossless import one_thread

    with one_thread(pause_gc=False):
        yield


def test_eagle3_tree_is_lossless():
    """Kit: greedy = AR at batch 1/4/8, cache = fresh forward, T > 0 distribution (tiny Llama, Qwen3)."""
    from specbench.testing.lossless import assert_lossless

    assert_lossless(lambda target: Eagle3Method(target, depth=3, drafter=make_drafter(target, draft_vocab_size=3),
                                                top_k=2, total_tokens=7))


def test_eagle3_with_long_accepted_paths_is_lossless():
    """Kit greedy and cache checks with oracle paths through the real tree (ragged acceptance)."""
    from specbench.testing.lossless import assert_lossless

    outputs = assert_lossless(lambda target: OracleEagle3Method(target, depth=4, drafter=make_drafter(target),
                                                                top_k=3, total_tokens=12),
                              sampling=None, max_new_tokens=24)
    accepted = [a for outs in outputs.values() for out in outs for r in out.rows for a in r.accept_lengths]
    assert max(accepted) >= 4 and min(accepted) == 1


def test_eagle3_chain_mode_is_lossless():
    """top_k = 1 is a chain through the same code; T > 0 acceptance is the tree rule checked above."""
    from specbench.testing.lossless import assert_lossless

    outputs = assert_lossless(lambda target: OracleEagle3Method(target, depth=3, drafter=make_drafter(target),
                                                                top_k=1), targets=("tiny-random-qwen3",),
                              sampling=None, max_new_tokens=24)
    accepted = [a for outs in outputs.values() for out in outs for r in out.rows for a in r.accept_lengths]
    assert max(accepted) == 4


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_draft_cache_holds_the_committed_pairs(tiny_llama, temperature):
    """A.3.5: after every step the draft cache equals a fresh draft pass over (f_t, x_{t+1}) of all
    committed positions, with target features from a fresh forward; lengths match the target cache."""
    method = OracleEagle3Method(tiny_llama, depth=4, drafter=make_drafter(tiny_llama), top_k=3, total_tokens=10)
    prompts = prompts_for(tiny_llama, 4)
    sampling = SamplingConfig(temperature=temperature)
    gen = torch.Generator().manual_seed(0)
    decoder = method.make_decoder(sampling, gen)
    emitted = [[t] for t in decoder.prefill(prompts, max(map(len, prompts)) + 64)]
    timer = StepTimer(tiny_llama.device)
    seen = set()
    for step in range(8):
        timer.start_step()
        for b, toks in enumerate(decoder.step(timer, [True] * 4)):
            emitted[b] += toks
            seen.add(len(toks))
        timer.end_step()
        decoder.sync_draft()
        assert decoder.draft_cache.lengths == decoder.cache.lengths
        for b, prompt in enumerate(prompts):
            committed = torch.tensor([prompt + emitted[b][:-1]])
            feats, _ = target_features(tiny_llama, committed, method.drafter.feature_layers())
            fresh = RowKVCache(1, 1, committed.shape[1] + 1, "cpu")
            with torch.inference_mode():
                h = method.drafter.extend(fresh, feats, torch.tensor([prompt + emitted[b]])[:, 1:],
                                          [committed.shape[1]])
            n = committed.shape[1]
            k, v = decoder.draft_cache.layer_kv(0, b)
            fk, fv = fresh.layer_kv(0, 0)
            torch.testing.assert_close(k, fk, atol=1e-4, rtol=1e-4, msg=lambda m: f"step {step} row {b}: {m}")
            torch.testing.assert_close(v, fv, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(decoder.last_h[b], h[0, n - 1], atol=1e-4, rtol=1e-4)
    assert len(seen) >= (3 if temperature == 0 else 2)


def test_save_load_registry_and_describe(tiny_qwen3, tmp_path):
    drafter = make_drafter(tiny_qwen3)
    drafter.save(tmp_path / "d")
    method = build_method("eagle3", tiny_qwen3, drafter=str(tmp_path / "d"))
    loaded = method.drafter
    for (name, a), (_, b) in zip(drafter.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    info = method.describe()
    assert info["tree"] == {"mode": "chain", "top_k": 1, "tree_depth": 3, "eagle_depth": 2, "total_tokens": 4,
                            "defaults": "cpu"}
    assert info["tokens_per_target_forward"] == 4
    assert info["drafter_parameters"] == drafter.parameter_count() > 0
    assert info["faithful"] is False and info["notes"]
    tree = build_method("eagle3", tiny_qwen3, depth=5, drafter=drafter, top_k=4, total_tokens=16).describe()["tree"]
    assert tree["mode"] == "tree" and tree["total_tokens"] == 16
    deep = build_method("eagle3", tiny_qwen3, drafter=drafter, tree="deep").describe()
    assert {k: deep["tree"][k] for k in ("top_k", "tree_depth", "eagle_depth", "total_tokens")} == {
        "top_k": 10, "tree_depth": 9, "eagle_depth": 8, "total_tokens": 60}
    assert any("deep preset, EAGLE depth 8" in n for n in deep["notes"])
    paper = build_method("eagle3", tiny_qwen3, drafter=drafter, tree="paper", top_k=4).describe()["tree"]
    assert (paper["top_k"], paper["tree_depth"], paper["total_tokens"]) == (4, 6, 60)  # a preset, one field overridden
    from specbench.errors import SpecbenchError

    with pytest.raises(SpecbenchError):
        build_method("eagle3", tiny_qwen3)
    with pytest.raises(SpecbenchError):
        build_method("eagle3", tiny_qwen3, drafter=drafter, topk=3)
    with pytest.raises(SpecbenchError, match="tree takes one of paper, deep, cpu"):
        build_method("eagle3", tiny_qwen3, drafter=drafter, tree="wide")


def test_the_tree_draft_with_its_head_and_top_k_is_draft_time(tiny_llama):
    """Timing contract (DESIGN.md §4): the dynamic tree (draft layer, head, top-k) is draft time."""
    import specbench.methods.eagle3 as eagle3
    from specbench.testing.spans import assert_draft_work_in_draft_span

    method = Eagle3Method(tiny_llama, depth=3, drafter=make_drafter(tiny_llama))
    assert_draft_work_in_draft_span(method, tiny_llama, eagle3, "draft_tree")
