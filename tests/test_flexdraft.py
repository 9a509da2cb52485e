"""FlexDraft (methods/flexdraft.py): the spec's layouts and invariants (bita_mtp_flexdraft.md E.3, E.5.2,
E.10.1, E.12), the training forward and loss, and the lossless kit in every decoding mode."""

from __future__ import annotations

import functools

import pytest
import torch

from specbench.errors import SpecbenchError
from specbench.methods import build_method
from specbench.methods.flexdraft import (FlexDraftDrafter, FlexDraftMethod, mask_visibility, parallel_layout,
                                         selective_length, training_layout)
from specbench.sampling import SamplingConfig
from specbench.testing import lossless
from specbench.timing import StepTimer

FAMILIES = ["tiny-random-llama", "tiny-random-qwen3"]
BLOCK = 4


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, which spin against other processes on a shared
    machine (see `lossless.one_thread`)."""
    with lossless.one_thread(pause_gc=False):
        yield


def _grid(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in r.split()] for r in rows])


TEXTS = ["hi", "def add(a, b):", "How many clips did Natalia sell altogether?",
         "Write a story about a robot who learns to paint.", "for i in range(10):\n    if i % 2 == 0:",
         "Translate the following sentence into French: the cat sleeps on the warm mat."]


def prompts_for(target) -> list[list[int]]:
    return [target.render([{"role": "user", "content": t}]) for t in TEXTS]


@functools.lru_cache(maxsize=4)
def ar_tokens(name: str, max_new_tokens: int = 32) -> tuple:
    from specbench.decode import generate

    target = lossless.load_tiny(name)
    ar = build_method("ar", target)
    out = generate(ar.make_decoder(SamplingConfig(), None), prompts_for(target), max_new_tokens,
                   target.eos_token_ids, StepTimer(target.device))
    return tuple(tuple(r.tokens) for r in out.rows)


@functools.lru_cache(maxsize=4)
def trained_drafter(name: str) -> FlexDraftDrafter:
    """A tiny drafter (block 4, 2 of 4 layers) self-distilled for a few seconds on the target's own greedy
    continuations: enough acceptance (tau ~1.5) that groups a > 0 are selected."""
    target = lossless.load_tiny(name)
    prompts = prompts_for(target)
    outputs = [list(o) for o in ar_tokens(name)]
    seqs = [p + o for p, o in zip(prompts, outputs)]
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    loss_mask = torch.zeros_like(ids)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        ids[i, : len(s)] = torch.tensor(s)
        loss_mask[i, len(p): len(s)] = 1
    batch = {"input_ids": ids, "loss_mask": loss_mask, "lengths": torch.tensor(list(map(len, seqs)))}
    torch.manual_seed(0)
    drafter = FlexDraftDrafter.for_target(target, block_size=BLOCK, draft_layers=2, calib_rank=32, num_anchors=12)
    opt = torch.optim.AdamW(drafter.parameters(), lr=1.5e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        loss, _ = drafter.loss(batch, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return drafter.eval()


def flex(target, **options) -> FlexDraftMethod:
    """The method on a trained tiny drafter (kit targets) or a fresh one (the kit's 8-token target)."""
    if target.name in FAMILIES:
        drafter = trained_drafter(target.name)
    else:
        torch.manual_seed(0)
        drafter = FlexDraftDrafter.for_target(target, block_size=BLOCK, calib_rank=8).eval()
    options.setdefault("batch_threshold", 2)  # the paper's switch, so batch 1 exercises the parallel pass
    return build_method("flexdraft", target, drafter=drafter, **options)


def test_flex_switch_defaults_to_sequential_on_cpu():
    """E.9's parallel-at-small-batch assumes idle GPU compute; on CPU the default flex is sequential."""
    target = lossless.load_tiny("tiny-random-llama")
    method = build_method("flexdraft", target, drafter=trained_drafter(target.name))
    assert method.opts["batch_threshold"] == 0
    assert method.describe()["mask_rows_per_pass"] == method.describe()["depth"]  # sequential: B mask rows


# -- layouts against the spec's diagrams -----------------------------------------------------------------

def test_parallel_layout_is_the_e52_diagram():
    """E.5.2 (B = 3, G = 3, empty cache): candidates causal, group g sees c_0..c_g and its own group."""
    lengths = torch.tensor([0])
    positions, see, groups = parallel_layout(lengths, width=3, groups=3, block=3)
    clean = torch.ones(3, 3, dtype=torch.bool).tril()
    full = torch.cat([torch.cat([clean, torch.zeros(3, 9, dtype=torch.bool)], 1), see[0, 0]], 0)
    expected = _grid(["1 . . . . . . . . . . .", "1 1 . . . . . . . . . .", "1 1 1 . . . . . . . . .",
                      "1 . . 1 1 1 . . . . . .", "1 . . 1 1 1 . . . . . .", "1 . . 1 1 1 . . . . . .",
                      "1 1 . . . . 1 1 1 . . .", "1 1 . . . . 1 1 1 . . .", "1 1 . . . . 1 1 1 . . .",
                      "1 1 1 . . . . . . 1 1 1", "1 1 1 . . . . . . 1 1 1", "1 1 1 . . . . . . 1 1 1"])
    assert torch.equal(full, expected)
    assert positions[0].tolist() == [1, 2, 3, 2, 3, 4, 3, 4, 5]
    assert groups.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_parallel_layout_sees_committed_cache_per_row():
    """Rows of a batch have their own cache lengths; mask rows see exactly their row's committed slots."""
    lengths = torch.tensor([2, 4])
    positions, see, _ = parallel_layout(lengths, width=2, groups=2, block=2)
    assert positions.tolist() == [[3, 4, 4, 5], [5, 6, 6, 7]]
    # keys: slots 0..5 (max length 4 + width 2), then the 4 mask rows
    assert see[0, 0, 0].tolist() == [True, True, True, False, False, False, True, True, False, False]
    assert see[0, 0, 2].tolist() == [True, True, True, True, False, False, False, False, True, True]
    assert see[1, 0, 0].tolist() == [True] * 5 + [False] + [True, True, False, False]


def test_training_layout_is_the_e101_diagram():
    """E.10.1 (T = 6, anchors 1 and 3, B = 3): block k sees clean <= q_k and its own block."""
    positions, see = training_layout(6, torch.tensor([[1, 3]]), torch.tensor([[True, True]]), 3)
    expected = _grid(["1 1 . . . . 1 1 1 . . .", "1 1 . . . . 1 1 1 . . .", "1 1 . . . . 1 1 1 . . .",
                      "1 1 1 1 . . . . . 1 1 1", "1 1 1 1 . . . . . 1 1 1", "1 1 1 1 . . . . . 1 1 1"])
    assert torch.equal(see[0, 0], expected)
    assert positions[0].tolist() == [2, 3, 4, 4, 5, 6]


def test_sequential_visibility_is_committed_cache_plus_block():
    see = mask_visibility(torch.tensor([3]), 5, torch.zeros(2, dtype=torch.long))
    assert see[0, 0].tolist() == [[True, True, True, False, False, True, True]] * 2


def test_selective_length_uses_the_cumulative_product():
    conf = torch.tensor([[0.9, 0.5, 0.1, 0.9], [0.001, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    assert selective_length(conf, 0.042).tolist() == [3, 1, 4]  # 0.9, 0.45, 0.045, 0.0405 | clamp to 1 | all
    assert selective_length(conf, 0.0).tolist() == [4, 4, 4]


# -- the architecture ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_joint_forward_is_the_target_and_masks_are_invisible(name):
    """Clean rows of the fused pass give the target's logits and cache, with or without mask rows
    (E.2.3 / E.12-1); the cache receives clean K/V only (E.12-2)."""
    target = lossless.load_tiny(name)
    drafter = trained_drafter(name)
    ids = torch.randint(5, 300, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref_cache = target.new_cache(2, 16)
        ref = target.forward(ids, ref_cache)
        cache = target.new_cache(2, 16)
        lengths = torch.zeros(2, dtype=torch.long)
        positions, see, _ = parallel_layout(lengths, 6, 6, BLOCK)
        logits, hm = drafter.joint_forward(ids, cache, drafter.mask_rows(2, 6 * BLOCK), positions, see)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    assert hm.shape == (2, 6 * BLOCK, target.config.hidden_size)
    for layer in range(target.num_layers):
        torch.testing.assert_close(cache.layers[layer].keys[:, :, :6], ref_cache.layers[layer].keys[:, :, :6])
        torch.testing.assert_close(cache.layers[layer].values[:, :, :6], ref_cache.layers[layer].values[:, :, :6])
    assert cache.view_end == 6, "mask rows must not take cache slots"


@pytest.mark.parametrize("name", FAMILIES)
def test_fresh_drafter_copies_the_target_attention_and_trains_only_its_own(name):
    target = lossless.load_tiny(name)
    torch.manual_seed(0)
    drafter = FlexDraftDrafter.for_target(target, block_size=BLOCK, calib_rank=8)
    split = drafter.cfg.split
    assert drafter.cfg.draft_layers == 1 and split == 3  # a third of 4 layers, rounded
    src = target.model.model.layers[split].self_attn
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert torch.equal(getattr(drafter.attn[0], proj).weight, getattr(src, proj).weight)
    assert (drafter.attn[0].q_norm is not None) == name.endswith("qwen3")
    if drafter.attn[0].q_norm is not None:
        assert torch.equal(drafter.attn[0].k_norm.weight, src.k_norm.weight)
    assert not any(p.requires_grad for p in target.model.parameters())
    assert set(drafter.state_dict()) == {n for n, _ in drafter.named_parameters()}
    assert not any(k.startswith(("t.", "_target")) for k in drafter.state_dict())
    h = torch.randn(2, 3, target.config.hidden_size)
    raw = drafter.draft_logits(h, torch.tensor([5, 6]), calibrate=False)
    cal = drafter.draft_logits(h, torch.tensor([5, 6]), calibrate=True)
    assert torch.equal(raw, cal), "zero-initialised calibration output layer starts from the attention drafter"


@pytest.mark.parametrize("name", FAMILIES)
def test_group_isolation(name):
    """E.12-3: perturbing group g's mask inputs changes neither candidate logits nor any other group."""
    target = lossless.load_tiny(name)
    drafter = trained_drafter(name)
    ids = torch.randint(5, 300, (1, 10), generator=torch.Generator().manual_seed(2))
    w = BLOCK
    with torch.inference_mode():
        cache = target.new_cache(1, 32)
        target.forward(ids[:, :6], cache)
        cache.commit_prefix([6])
        lengths = torch.tensor(cache.lengths)
        positions, see, _ = parallel_layout(lengths, w, w, BLOCK)
        x = drafter.mask_rows(1, w * BLOCK).clone()

        def run(inputs):
            out = drafter.joint_forward(ids[:, 6:6 + w], cache, inputs, positions, see)
            cache.commit_prefix([0])
            return out

        logits, hm = run(x)
        g = 2
        y = x.clone()
        y[:, g * BLOCK:(g + 1) * BLOCK] += torch.randn(1, BLOCK, x.shape[-1])
        logits2, hm2 = run(y)
    assert torch.equal(logits, logits2)
    other = torch.ones(w * BLOCK, dtype=torch.bool)
    other[g * BLOCK:(g + 1) * BLOCK] = False
    torch.testing.assert_close(hm[:, other], hm2[:, other], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(hm[:, ~other], hm2[:, ~other])


@pytest.mark.parametrize("name", FAMILIES)
def test_parallel_group_drafts_equal_sequential_drafts(name):
    """E.8 / E.12-4: group g of a parallel pass (hypothesis "c_0..c_g committed") equals a sequential
    draft over a cache holding exactly those tokens, for every g, hidden states and drafts."""
    target = lossless.load_tiny(name)
    drafter = trained_drafter(name)
    prompt = prompts_for(target)[2]
    cands = list(ar_tokens(name)[2][3:3 + BLOCK])
    cands[2] = (cands[2] + 7) % target.vocab_size  # a rejected candidate does not matter to groups before it
    ids = torch.tensor([prompt + cands])
    n = len(prompt)
    with torch.inference_mode():
        cache = target.new_cache(1, n + 2 * BLOCK)
        target.forward(ids[:, :n], cache)
        cache.commit_prefix([n])
        positions, see, _ = parallel_layout(torch.tensor([n]), BLOCK, BLOCK, BLOCK)
        logits, hm = drafter.joint_forward(ids[:, n:], cache, drafter.mask_rows(1, BLOCK * BLOCK), positions, see)
        groups = hm.view(1, BLOCK, BLOCK, -1)
        bonus = logits.argmax(-1)  # P[g] = the bonus of hypothesis g
        for g in range(BLOCK):
            fresh = target.new_cache(1, n + 2 * BLOCK)
            target.forward(ids[:, : n + g + 1], fresh)
            fresh.commit_prefix([n + g + 1])
            start = n + g + 1
            seq_see = mask_visibility(torch.tensor([start]), start, torch.zeros(BLOCK, dtype=torch.long))
            seq_pos = start + torch.arange(BLOCK)[None]
            hs = drafter.mask_forward(fresh, start, drafter.mask_rows(1, BLOCK), seq_pos, seq_see)
            torch.testing.assert_close(groups[:, g], hs, atol=1e-4, rtol=1e-4)
            z_par = drafter.draft_logits(groups[:, g, 1:], bonus[:, g])
            z_seq = drafter.draft_logits(hs[:, 1:], bonus[:, g])
            assert torch.equal(z_par.argmax(-1), z_seq.argmax(-1))


# -- training -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_efficient_training_forward_equals_the_joint_pass(name):
    """E.10.3: clean K/V once without gradients + mask rows alone == one joint pass of clean and mask rows."""
    target = lossless.load_tiny(name)
    drafter = trained_drafter(name)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 300, (2, 12), generator=gen)
    anchors = torch.tensor([[1, 4, 7], [0, 2, 0]])
    keep = torch.tensor([[True, True, True], [True, True, False]])
    with torch.no_grad():
        fast = drafter.packed_forward(ids, anchors, keep)  # [N, K, B, H]
        cache = target.new_cache(2, 12)
        positions, see = training_layout(12, anchors, keep, BLOCK)
        _, joint = drafter.joint_forward(ids, cache, drafter.mask_rows(2, 3 * BLOCK), positions, see)
    joint = joint.view(2, 3, BLOCK, -1)
    torch.testing.assert_close(fast[keep], joint[keep], atol=1e-5, rtol=1e-5)


def test_loss_is_the_decayed_block_ce_and_trains_only_the_drafter():
    target = lossless.load_tiny("tiny-random-llama")
    torch.manual_seed(0)
    drafter = FlexDraftDrafter.for_target(target, block_size=BLOCK, calib_rank=8, gamma=2.0)
    with torch.no_grad():  # a calibration that moves the logits, so calibrated and raw CE differ
        torch.nn.init.normal_(drafter.calibration.fc2.weight, std=0.5)
    ids = torch.randint(5, 300, (2, 16), generator=torch.Generator().manual_seed(4))
    loss_mask = torch.zeros_like(ids)
    loss_mask[:, 5:] = 1
    batch = {"input_ids": ids, "loss_mask": loss_mask, "lengths": torch.tensor([16, 12]),
             "anchors": torch.tensor([[4, 9], [6, 6]]), "anchor_keep": torch.tensor([[True, True], [True, False]])}
    loss, metrics = drafter.loss(batch)
    assert metrics["blocks"] == 3
    # reference: slots 1..3 of each kept block, weights exp(-(j-1)/gamma), labels x_{q+1+j}, inside the row,
    # CE on the calibrated logits with the ground-truth x_{q+1} as the bonus (E.10.2)
    h = drafter.packed_forward(ids, batch["anchors"], batch["anchor_keep"])
    ref = {True: [0.0, 0.0], False: [0.0, 0.0]}
    for r, k, q in [(0, 0, 4), (0, 1, 9), (1, 0, 6)]:
        for j in range(1, BLOCK):
            pos = q + 1 + j
            if pos >= int(batch["lengths"][r]):
                continue
            w = torch.exp(torch.tensor(-(j - 1) / 2.0))
            for calibrate in (True, False):
                logits = drafter.draft_logits(h[r, k, j][None, None], ids[r, q + 1][None], calibrate=calibrate)[0, 0]
                ref[calibrate][0] = ref[calibrate][0] + w * torch.nn.functional.cross_entropy(logits[None],
                                                                                               ids[r, pos][None])
                ref[calibrate][1] = ref[calibrate][1] + w
    calibrated, raw = ref[True][0] / ref[True][1], ref[False][0] / ref[False][1]
    assert abs(float(calibrated - raw)) > 1e-3
    torch.testing.assert_close(loss, calibrated)  # E.10.2: the loss is on the calibrated logits alone
    drafter.cfg.raw_loss_weight = 0.5  # the optional uncalibrated term
    torch.testing.assert_close(drafter.loss(batch)[0], calibrated + 0.5 * raw)
    drafter.cfg.raw_loss_weight = 0.0
    loss.backward()
    assert all(p.grad is not None for p in drafter.parameters())
    assert all(p.grad is None for p in target.model.parameters())
    opt = torch.optim.AdamW(drafter.parameters(), lr=1e-2)
    first = float(loss.detach())
    for _ in range(3):
        opt.zero_grad()
        loss, _ = drafter.loss(batch)
        loss.backward()
        opt.step()
    assert float(drafter.loss(batch)[0].detach()) < first


def test_anchors_leave_room_for_a_bonus_and_one_draft():
    target = lossless.load_tiny("tiny-random-llama")
    torch.manual_seed(0)
    drafter = FlexDraftDrafter.for_target(target, block_size=BLOCK, calib_rank=8, num_anchors=50)
    loss_mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0]])
    anchors, keep = drafter.sample_anchors(loss_mask, torch.tensor([6]))
    assert anchors[keep].tolist() == [1, 2, 3]  # x_{q+1}, x_{q+2} response tokens inside the row


def test_save_load_roundtrip_and_target_check(tmp_path):
    target = lossless.load_tiny("tiny-random-llama")
    drafter = trained_drafter("tiny-random-llama")
    drafter.save(tmp_path / "d")
    loaded = FlexDraftDrafter.load(tmp_path / "d", target)
    for (k, a), (_, b) in zip(sorted(drafter.state_dict().items()), sorted(loaded.state_dict().items())):
        assert torch.equal(a, b), k
    method = build_method("flexdraft", target, drafter=str(tmp_path / "d"), mode="sequential")
    assert method.describe()["drafter"] == str(tmp_path / "d")
    with pytest.raises(SpecbenchError, match="trained for"):
        FlexDraftDrafter.load(tmp_path / "d", lossless.load_tiny("tiny-random-qwen3"))


# -- the method ------------------------------------------------------------------------------------------------

def test_options_and_describe():
    target = lossless.load_tiny("tiny-random-llama")
    m = flex(target, mode="parallel", threshold="0", no_calibration=True)
    d = m.describe()
    assert d["options"]["mode"] == "parallel" and d["options"]["calibration"] is False
    assert d["options"]["threshold"] == 0.0 and d["depth"] == BLOCK
    assert d["drafter_parameters"] == sum(p.numel() for p in m.drafter.parameters())
    assert d["faithful"] is False and any("reconstructed" in n for n in d["notes"])
    assert d["mask_rows_per_pass"] == BLOCK * BLOCK and isinstance(d["tokens_per_target_forward"], float)
    assert flex(target, mode="sequential").describe()["mask_rows_per_pass"] == BLOCK
    for bad in ({"mode": "fast"}, {"draft_sampling": "x"}, {"speed": 1}, {"draft_layers": 3}):
        with pytest.raises(SpecbenchError):
            flex(target, **bad)
    with pytest.raises(SpecbenchError, match="needs a trained drafter"):
        build_method("flexdraft", target)


def test_flex_mode_switches_on_batch_size_and_modes_agree():
    """E.9: parallel at batch <= batch_threshold, sequential above; both modes draft the same tokens,
    so per-row acceptance is identical (tau > 1: groups a > 0 are selected)."""
    target = lossless.load_tiny("tiny-random-llama")
    prompts = prompts_for(target)[:3]
    outs = {}
    for mode, threshold in [("flex", 2), ("flex", 1)]:
        dec = flex(target, mode=mode, batch_threshold=threshold, threshold=0).make_decoder(SamplingConfig(), None)
        from specbench.decode import generate

        out = generate(dec, prompts[:2], 30, target.eos_token_ids, StepTimer(target.device))
        outs[mode, threshold] = [r.accept_lengths for r in out.rows]
        expected = "parallel" if threshold >= 2 else "sequential"
        assert set(dec.modes_used) == {expected}
    assert len({str(v) for v in outs.values()}) == 1
    lengths = [a for row in outs["flex", 2] for a in row]
    assert max(lengths) >= 3 and sum(lengths) / len(lengths) > 1.2


# -- lossless (the shared kit) ---------------------------------------------------------------------------------

def test_lossless_flex():
    """T = 0 at batch 1 (parallel), 4 and 8 (sequential), cache after every step, T = 1 distribution."""
    outputs = lossless.assert_lossless(lambda t: flex(t))
    steps = sum(len(r.accept_lengths) for o in outputs["tiny-random-llama"] for r in o.rows)
    tokens = sum(sum(r.accept_lengths) for o in outputs["tiny-random-llama"] for r in o.rows)
    assert tokens / steps > 1.1


def test_lossless_parallel_batched_and_sampled_drafts():
    """Parallel mode with a ragged batch (per-row accepted lengths and groups) and with drafts sampled
    from the calibrated distribution (acceptance with their probabilities)."""
    for name in FAMILIES:
        target = lossless.load_tiny(name)
        method = flex(target, mode="parallel")
        lossless.check_greedy(method, target, batch_sizes=(4,))
        lossless.check_cache(method, target, steps=6, batch_size=4)
    reports = lossless.check_distribution(lambda t: flex(t, mode="parallel", draft_sampling="sample"),
                                          n_samples=2 ** 16)
    assert all(r.passed for r in reports), "\n".join(map(str, reports))


@pytest.mark.parametrize("chunk", [4, 1])
def test_teacher_forced_acceptance_equals_decoding(chunk, monkeypatch):
    """`greedy_accept_lengths` (the cheap held-out tau) reproduces the decoder's per-step acceptance,
    also when the decoder stops drafting slots early under selective verification (chunk 1)."""
    from specbench.decode import generate

    monkeypatch.setattr("specbench.methods.flexdraft.DRAFT_CHUNK", chunk)
    name = "tiny-random-llama"
    target = lossless.load_tiny(name)
    drafter = trained_drafter(name)
    prompts = prompts_for(target)[:3]
    seqs = [p + list(o) for p, o in zip(prompts, ar_tokens(name)[:3])]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    starts = torch.tensor([len(p) for p in prompts])
    lengths = torch.tensor(list(map(len, seqs)))
    for calibrate, threshold in [(True, 0.01), (False, 0.0)]:
        sim = drafter.greedy_accept_lengths(ids, starts, lengths, calibrate, threshold)
        method = flex(target, mode="sequential", calibration=calibrate, threshold=threshold)
        for b, p in enumerate(prompts):
            out = generate(method.make_decoder(SamplingConfig(), None), [p], len(seqs[b]) - len(p),
                           [], StepTimer(target.device))
            assert out.rows[0].tokens == seqs[b][len(p):]
            real = out.rows[0].accept_lengths
            assert sim[b][:-1] == real[:len(sim[b]) - 1] and sum(sim[b]) == len(seqs[b]) - len(p) - 1


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_the_head_and_calibration_after_the_pass_are_draft_time(mode):
    """Timing contract (DESIGN.md §4): in parallel mode the mask rows ride in the verify pass, but the LM
    head and calibration of the selected group run after it and are draft time; in sequential mode the
    mask pass is draft time too."""
    from specbench.testing.spans import assert_draft_work_in_draft_span

    target = lossless.load_tiny("tiny-random-llama")
    method = flex(target, mode=mode)
    assert_draft_work_in_draft_span(method, target, method.drafter, "draft_logits")
    if mode == "sequential":
        assert_draft_work_in_draft_span(method, target, method.drafter, "mask_forward")


def test_padded_verify_width_of_the_compiled_regime_keeps_the_target_distribution(monkeypatch):
    """The compiled regime pads the verify width to a power of two (`specbench.compiled.width`): acceptance
    draws uniforms for columns no row verifies, so samples differ from eager's; their distribution must not.
    The padding alone, on the eager cache (the static one would hold a bucket of slots per sampled row)."""
    from types import SimpleNamespace

    from specbench import compiled

    padded, compiled_width = [], compiled.width

    def width(target, w, most):  # the compiled regime's own rule, on the eager target
        padded.append((w, compiled_width(SimpleNamespace(regime="compiled"), w, most)))
        return padded[-1][1]

    def wide_blocks(target):  # 7 drafts: widths 3, 5 and 6 are padded (block 4's 1-3 never are)
        torch.manual_seed(0)
        drafter = FlexDraftDrafter.for_target(target, block_size=8, calib_rank=8).eval()
        return build_method("flexdraft", target, drafter=drafter, mode="parallel", draft_sampling="sample",
                            batch_threshold=2, threshold=0.5)  # a high bar: v varies step to step

    monkeypatch.setattr(compiled, "width", width)
    reports = lossless.check_distribution(wide_blocks, n_samples=2 ** 14)
    assert all(r.passed for r in reports), "\n".join(map(str, reports))
    assert any(p > w for w, p in padded), sorted(set(padded))  # some steps verified padded columns
