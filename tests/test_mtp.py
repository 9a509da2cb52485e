"""Apple MTP (methods/mtp.py): the spec's layouts (bita_mtp_flexdraft.md B.4, B.5.1, B.5.2), the gated
LoRA's isolation of clean rows, the training forward and losses (B.3), save/load, and the lossless kit
for quadratic and linear decoding."""

from __future__ import annotations

import functools

import pytest
import torch

from specbench.errors import SpecbenchError
from specbench.kv_cache import RowKVCache
from specbench.methods import build_method
from specbench.methods.mtp import CPU_DEFAULTS, MTPDrafter, MTPMethod, block_layout, device_defaults, training_visibility
from specbench.sampling import SamplingConfig
from specbench.testing import lossless
from specbench.training.data import TrainExample, collate

FAMILIES = ["tiny-random-llama", "tiny-random-qwen3"]
K = 3


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models on a shared machine: one intra-op thread (`lossless.one_thread`)."""
    with lossless.one_thread(pause_gc=False):
        yield


def visibility(rows: list[str]) -> torch.Tensor:
    """A spec diagram (`1` visible, `.` not) as a bool matrix."""
    return torch.tensor([[c == "1" for c in r.split()] for r in rows])


def self_distilled_batch(target, n: int = 6, max_new_tokens: int = 32) -> dict:
    """The target's own greedy continuations of kit prompts, as the shared trainer collates them."""
    prompts = lossless.kit_prompts(target)[:n]
    outs = lossless.ar_reference(target, prompts, max_new_tokens)
    return collate([TrainExample(str(i), p + o, [0] * len(p) + [1] * len(o))
                    for i, (p, o) in enumerate(zip(prompts, outs))], pad_id=0)


@functools.lru_cache(maxsize=4)
def trained_drafter(name: str, steps: int = 20) -> MTPDrafter:
    """k = 3, rank 4, self-distilled for a few seconds: teacher-forced tau ~2 of a possible 4, so steps
    accept every length 0..k and every mask block gets selected."""
    target = lossless.load_tiny(name)
    batch = self_distilled_batch(target)
    torch.manual_seed(0)
    drafter = MTPDrafter.for_target(target, num_masks=K, rank=4, num_anchors=12)
    opt = torch.optim.AdamW(drafter.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss, _ = drafter.loss(batch, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return drafter.eval()


def fresh_drafter(target, seed: int = 0) -> MTPDrafter:
    """Untrained, with random LoRA B so the adapters change the mask rows."""
    torch.manual_seed(seed)
    drafter = MTPDrafter.for_target(target, num_masks=K, rank=4)
    with torch.no_grad():
        for p in drafter.lora.parameters():
            p.normal_(0, 0.2)
    return drafter.eval()


def mtp(target, **options) -> MTPMethod:
    drafter = trained_drafter(target.name) if target.name in FAMILIES else fresh_drafter(target)
    return MTPMethod(target, drafter=drafter, **options)


# -- layouts -------------------------------------------------------------------------------------------------

def test_quadratic_layout_is_the_b51_diagram():
    """k = 2: B.5.1's visibility and positions, after reordering our token-first rows into the spec's
    interleaved order [x0, m, m, s1, m, m, s2, m, m]."""
    intra, depths = block_layout(torch.arange(3)[None], width=3, masks=2)
    order = torch.tensor([0, 3, 4, 1, 5, 6, 2, 7, 8])  # spec row -> our row
    want = visibility(["1 . . . . . . . .",
                  "1 1 . . . . . . .",
                  "1 1 1 . . . . . .",
                  "1 . . 1 . . . . .",
                  "1 . . 1 1 . . . .",
                  "1 . . 1 1 1 . . .",
                  "1 . . 1 . . 1 . .",
                  "1 . . 1 . . 1 1 .",
                  "1 . . 1 . . 1 1 1"])
    assert torch.equal(intra[0][order][:, order], want)
    assert depths[0][order].tolist() == [0, 1, 2, 1, 2, 3, 2, 3, 4]


def test_linear_layout_puts_one_block_after_each_rows_last_draft():
    """B.5.2 with a ragged batch: row 0 verifies 2 drafts, row 1 none (a stall step)."""
    intra, depths = block_layout(torch.tensor([[2], [0]]), width=3, masks=2)
    assert depths.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 1, 2]]
    assert intra[0, 3:].tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert intra[1, 3:].tolist() == [[True, False, False, True, False], [True, False, False, True, True]]
    assert not intra[:, :3, 3:].any()  # token rows never see masks


def test_prompt_block_sits_after_the_committed_cache():
    intra, depths = block_layout(torch.full((2, 1), -1), width=0, masks=3)
    assert depths.tolist() == [[0, 1, 2]] * 2 and torch.equal(intra[0], torch.ones(3, 3, dtype=torch.bool).tril())


def test_training_visibility_is_the_b4_layout():
    """Two anchors (t = 1, 3), k = 2, sequence of 5: block i sees clean <= t_i and itself causally."""
    see = training_visibility(torch.tensor([[1, 3]]), torch.tensor([[True, True]]), 5, 2)[0, 0]
    assert torch.equal(see, visibility(["1 1 . . . 1 . . .",
                                   "1 1 . . . 1 1 . .",
                                   "1 1 1 1 . . . 1 .",
                                   "1 1 1 1 . . . 1 1"]))
    dropped = training_visibility(torch.tensor([[1, 3]]), torch.tensor([[True, False]]), 5, 2)[0, 0]
    assert not dropped[2:, :5].any() and dropped[2:, 5:].any(1).all()  # padding blocks see only themselves


# -- the gated LoRA -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_clean_rows_are_bit_identical_with_adapters_attached(name):
    """Gate 0 leaves a pass bit-identical to the target; in a joint pass the token rows (and their cache
    K/V) are bit-identical with and without the adapters while the mask rows change; no hook outlives a pass."""
    target = lossless.load_tiny(name)
    drafter = fresh_drafter(target)
    ids = torch.tensor([lossless.kit_prompts(target)[2]])
    plain = target.forward(ids, target.new_cache(1, 64))
    with drafter.adapters(torch.zeros(ids.shape)):
        gated = target.forward(ids, target.new_cache(1, 64))
    assert torch.equal(plain, gated)

    tokens = ids[:, -(K + 1):]
    anchors = torch.arange(K + 1)[None]
    results = []
    with torch.inference_mode():
        for lora in (True, False):
            cache = target.new_cache(1, 64)
            target.forward(ids[:, :-(K + 1)], cache)
            cache.commit_prefix([ids.shape[1] - K - 1])
            logits, states = drafter.joint_forward(tokens, anchors, cache, lora=lora)
            cache.commit_prefix([K + 1])
            results.append((logits, states, [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]))
    (l1, s1, kv1), (l2, s2, kv2) = results
    assert torch.equal(l1, l2)
    n = ids.shape[1]
    assert all(torch.equal(a[0][..., :n, :], b[0][..., :n, :]) and torch.equal(a[1][..., :n, :], b[1][..., :n, :])
               for a, b in zip(kv1, kv2))
    assert not torch.allclose(s1, s2)
    torch.testing.assert_close(l1, plain[:, -(K + 1):], atol=1e-4, rtol=1e-4)
    assert all(not m._forward_hooks for m, _ in drafter._hooked)


def test_two_pass_training_equals_the_one_pass_layout():
    """The training forward (clean K/V without gradients, then only mask rows) equals B.4's single pass over
    the clean sequence followed by one block per anchor (our inference layout with every token a row)."""
    target = lossless.load_tiny("tiny-random-qwen3")
    drafter = fresh_drafter(target)
    batch = self_distilled_batch(target, n=2)
    ids = batch["input_ids"]
    anchors, keep = drafter.sample_anchors(batch["loss_mask"], batch["lengths"], torch.Generator().manual_seed(1))
    keep[:] = True
    with torch.no_grad():
        two_pass, h_clean = drafter.mask_states(ids, anchors, keep)
        cache = RowKVCache(2, target.num_layers, 256, "cpu")
        logits, one_pass = drafter.joint_forward(ids, anchors, cache)
    torch.testing.assert_close(two_pass, one_pass, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(target.model.lm_head(h_clean), logits, atol=2e-5, rtol=1e-4)


# -- training -------------------------------------------------------------------------------------------------

def test_loss_goes_down_and_trains_only_the_drafter():
    target = lossless.load_tiny("tiny-random-llama")
    batch = self_distilled_batch(target)
    torch.manual_seed(0)
    drafter = MTPDrafter.for_target(target, num_masks=K, rank=4, num_anchors=12)
    assert drafter.parameter_count() == drafter.parameter_counts()["total"]
    assert not any(p.requires_grad for p in target.model.parameters())
    opt = torch.optim.AdamW(drafter.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for step in range(12):
        loss, metrics = drafter.loss(batch, gen)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert all(lora.B.grad.abs().sum() > 0 for _, lora in drafter._hooked)  # every block linear adapted
            assert drafter.mask_embeddings.grad.abs().sum(1).gt(0).all()  # k distinct, all trained
            assert drafter.sampler.fc1.weight.grad.abs().sum() > 0
            assert all(p.grad is None for p in target.model.parameters())
            total = metrics["loss_base"] + metrics["loss_sampler"] + metrics["loss_lcm"]
            assert metrics["loss"] == pytest.approx(total, rel=1e-5)
        opt.step()
        losses.append(metrics["loss"])
    assert losses[-1] < 0.7 * losses[0]
    assert 1.0 <= metrics["tau_estimate"] <= K + 1 and metrics["blocks"] > 0


def test_loss_weights_and_stop_gradient_on_the_ntp_side():
    target = lossless.load_tiny("tiny-random-llama")
    batch = self_distilled_batch(target, n=2)
    torch.manual_seed(0)
    drafter = MTPDrafter.for_target(target, num_masks=K, rank=4, sampler_weight=0, base_weight=0, lcm_weight=2)
    loss, metrics = drafter.loss(batch, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(2 * metrics["loss_lcm"], rel=1e-6)
    _, h_clean = drafter.mask_states(batch["input_ids"], *drafter.sample_anchors(batch["loss_mask"], batch["lengths"]))
    assert not h_clean.requires_grad


def test_anchors_have_a_response_label_for_the_first_mask():
    target = lossless.load_tiny("tiny-random-llama")
    drafter = MTPDrafter.for_target(target, num_masks=K, num_anchors=50)
    lm = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0, 0, 0]])
    anchors, keep = drafter.sample_anchors(lm, torch.tensor([7, 3]))
    assert anchors[0][keep[0]].tolist() == [1, 2, 3, 4]  # x_{t+2} in the response and t + 2 < length 7
    assert anchors[1][keep[1]].tolist() == [0]
    assert not drafter.sample_anchors(lm, torch.tensor([7, 2]))[1][1].any()


def test_save_load_roundtrip_and_target_check(tmp_path):
    target = lossless.load_tiny("tiny-random-llama")
    drafter = trained_drafter("tiny-random-llama")
    drafter.save(tmp_path / "d")
    loaded = MTPDrafter.load(tmp_path / "d", target)
    assert loaded.state_dict().keys() == drafter.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), drafter.state_dict().values()))
    assert not any(k.startswith(("model.", "t.")) for k in loaded.state_dict())  # the target is not saved
    batch = self_distilled_batch(target, n=2)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    with torch.no_grad():
        assert drafter.loss(batch, gen())[1] == loaded.loss(batch, gen())[1]
    method = build_method("mtp", target, drafter=str(tmp_path / "d"))
    assert method.depth == K
    with pytest.raises(SpecbenchError, match="trained for"):
        MTPDrafter.load(tmp_path / "d", lossless.load_tiny("tiny-random-qwen3"))


def test_options_and_describe():
    target = lossless.load_tiny("tiny-random-llama")
    quad = mtp(target, decoding="quadratic").describe()
    assert quad["tokens_per_target_forward"] == (K + 1) ** 2 and quad["depth"] == K
    assert quad["drafter_parameters"] == trained_drafter("tiny-random-llama").parameter_count()
    assert mtp(target, decoding="linear").describe()["tokens_per_target_forward"] == 2 * K + 1
    assert MTPMethod(target, depth=2, drafter=trained_drafter(target.name), decoding="quadratic").describe()[
        "tokens_per_target_forward"] == 9
    with pytest.raises(SpecbenchError, match="decoding"):
        mtp(target, decoding="cubic")
    with pytest.raises(SpecbenchError, match="options"):
        mtp(target, bogus=1)
    with pytest.raises(SpecbenchError, match="depth"):
        MTPMethod(target, depth=K + 1, drafter=trained_drafter(target.name))
    with pytest.raises(SpecbenchError, match="fixed at training time: rank=16"):
        mtp(target, rank=16)
    with pytest.raises(SpecbenchError, match="needs a trained drafter"):
        MTPMethod(target)


def test_decoding_defaults_follow_the_device():
    """Issue 23: on a CPU the measured best (linear, depth 4, capped at the trained k); on CUDA the paper's."""
    assert device_defaults("cuda", 8) == {"depth": 8, "decoding": "quadratic"}
    assert device_defaults("cpu", 8) == CPU_DEFAULTS == {"depth": 4, "decoding": "linear"}
    assert device_defaults("cpu", 3) == {"depth": 3, "decoding": "linear"}
    target = lossless.load_tiny("tiny-random-llama")
    torch.manual_seed(0)
    d = MTPMethod(target, drafter=MTPDrafter.for_target(target, num_masks=6, rank=4).eval()).describe()
    assert d["depth"] == 4 and d["options"]["decoding"] == "linear" and d["tokens_per_target_forward"] == 9
    assert any("CPU defaults" in n for n in d["notes"])
    assert "CPU defaults" not in " ".join(mtp(target, decoding="quadratic", depth=2).describe()["notes"])


# -- lossless (the shared kit) ------------------------------------------------------------------------------

def test_lossless_quadratic():
    """T = 0 at batch 1, 4, 8 on both families, cache after every step, T = 1 distribution."""
    outputs = lossless.assert_lossless(lambda t: mtp(t, decoding="quadratic"))
    lengths = [a for o in outputs["tiny-random-llama"] for r in o.rows for a in r.accept_lengths]
    assert sum(lengths) / len(lengths) > 1.3 and set(range(1, K + 2)) <= set(lengths)  # every block used


def test_lossless_linear():
    outputs = lossless.assert_lossless(lambda t: mtp(t, decoding="linear"), n_samples=2 ** 16)
    lengths = [a for o in outputs["tiny-random-qwen3"] for r in o.rows for a in r.accept_lengths]
    assert sum(lengths) / len(lengths) > 1.3 and 1 in lengths and K + 1 in lengths


@pytest.mark.parametrize("decoding", ["quadratic", "linear"])
def test_cache_at_t1_and_sampler_ablation(decoding):
    """The cache invariant at T > 0 (one-hot acceptance, ragged accepts), and the no-sampler ablation at T = 0."""
    for name in FAMILIES:
        target = lossless.load_tiny(name)
        lossless.check_cache(mtp(target, decoding=decoding), target, steps=5, sampling=SamplingConfig(temperature=1.0))
    target = lossless.load_tiny("tiny-random-llama")
    lossless.check_greedy(mtp(target, decoding=decoding, sampler=False), target, batch_sizes=(4,))


def test_the_sampler_after_the_pass_is_draft_time():
    """Timing contract (DESIGN.md §4): the sampler head's decode after the MTP pass is draft time
    (quadratic decoding drafts every step; linear skips the sampler after a stall)."""
    from specbench.testing.spans import assert_draft_work_in_draft_span

    target = lossless.load_tiny("tiny-random-llama")
    method = mtp(target, decoding="quadratic")
    assert_draft_work_in_draft_span(method, target, method.drafter, "draft")
