"""DFlash (issue 10): lossless decoding, draft-cache sync, training/inference layout agreement."""

import pytest
import torch
from torch import nn

from specbench.decode import generate
from specbench.methods import build_method
from specbench.methods.dflash import (DFlashConfig, DFlashDecoder, DFlashDrafter, DFlashMethod,
                                      build_target_layer_ids, choose_mask_token, fused, rotary)
from specbench.sampling import SamplingConfig
from specbench.testing.lossless import assert_lossless, check_cache
from specbench.timing import StepTimer
from specbench.training.features import capture_layers

QUESTIONS = ["How many clips did Natalia sell altogether?", "def add(a, b):", "Write a story about a robot.",
             "Translate: the cat sleeps on the warm mat, and then it wakes up and eats."]


def make_drafter(target, layers=2, block=5, std=0.2, seed=0, **kw):
    """A random drafter with weights large enough that layout mistakes change its outputs."""
    cfg = DFlashConfig.for_target(target, num_layers=layers, block_size=block,
                                  target_layer_ids=[0, target.num_layers // 2], **kw)
    torch.manual_seed(seed)
    drafter = DFlashDrafter(cfg).attach(target)
    for p in drafter.parameters():
        if p.dim() == 2:
            nn.init.normal_(p, std=std)
    drafter.init_mask_embedding()
    return drafter.eval()


def prompts_for(target, n):
    return [target.render([{"role": "user", "content": q}]) for q in QUESTIONS[:n]]


def run(method, target, prompts, max_new=40, sampling=SamplingConfig(), generator=None):
    dec = method.make_decoder(sampling, generator)
    return generate(dec, prompts, max_new, target.eos_token_ids, StepTimer(target.device)), dec


class NoisyOracleDecoder(DFlashDecoder):
    """Runs the real draft pass, then swaps in the AR continuation with seeded corruptions.

    Gives long and ragged accepted lengths (a random drafter accepts ~nothing), so commit and cache
    bookkeeping are exercised for every accepted count.
    """

    def __init__(self, *args, reference, prompt_lengths, corrupt=0.3, **kw):
        super().__init__(*args, **kw)
        self.reference, self.prompt_lengths, self.corrupt = reference, prompt_lengths, corrupt
        self.rng = torch.Generator().manual_seed(0)
        self.after_draft = []

    def _draft(self):
        drafts = super()._draft()
        self.after_draft.append((list(self.draft_cache.lengths), list(self.cache.lengths)))
        out = drafts.clone()
        for b in range(drafts.shape[0]):
            g = self.cache.lengths[b] - self.prompt_lengths[b]  # index of the bonus in the output
            ref = self.reference[b][g + 1: g + self.block] + [0] * self.block
            for j in range(drafts.shape[1]):
                if torch.rand((), generator=self.rng) > self.corrupt:
                    out[b, j] = ref[j]
        return out


def test_target_layer_ids_rule():
    assert build_target_layer_ids(36, 5) == [1, 9, 17, 25, 33]  # Qwen3-4B/8B, B.1.1
    assert build_target_layer_ids(30, 5) == [1, 8, 14, 20, 27]  # round half to even
    assert build_target_layer_ids(30, 1) == [15]
    assert build_target_layer_ids(30, 2) == [1, 27]


def test_mask_token_choice(tiny_llama, tiny_qwen3):
    class Tok:
        def __init__(self, n, added=None, template=""):
            self.n, self.added_tokens_decoder, self.chat_template = n, added or {}, template
            self.eos_token = self.bos_token = self.pad_token = self.unk_token = None

        def __len__(self):
            return self.n

    class Added:
        def __init__(self, content):
            self.content, self.special = content, True

    assert choose_mask_token(Tok(151669), 151936) == (151669, None)  # Qwen3: a row the tokenizer never emits
    llama3 = Tok(128256, {128000: Added("<|begin_of_text|>"), 128002: Added("<|reserved_special_token_0|>")})
    assert choose_mask_token(llama3, 128256) == (128002, "<|reserved_special_token_0|>")
    # a used special token is never the mask (B.1.3 asks for an unused row), even one the chat template
    # does not mention: tiny Llama's <think>, SmolLM2's <repo_name> -> a learned drafter row
    assert choose_mask_token(tiny_llama.tokenizer, tiny_llama.vocab_size) == (None, None)
    assert choose_mask_token(tiny_qwen3.tokenizer, tiny_qwen3.vocab_size) == (None, None)
    smollm2_like = Tok(49152, {0: Added("<|endoftext|>"), 3: Added("<repo_name>")})
    assert choose_mask_token(smollm2_like, 49152) == (None, None)
    for target in (tiny_qwen3, tiny_llama):
        assert "mask_embedding" in dict(make_drafter(target).named_parameters())
    # a target token when one is free: its row is the target's, the drafter owns no mask parameter
    assert "mask_embedding" not in dict(make_drafter(tiny_llama, mask_token=5).named_parameters())


_TRAINED: dict = {}


def trained_drafter(target, steps: int = 80):
    """A drafter fitted to the target's own greedy continuations of the kit prompts, so the kit's greedy
    and cache checks run through accepted drafts (a random drafter's are nearly all rejected at T = 0)."""
    from specbench.testing.lossless import ar_reference, kit_prompts

    if target.name in _TRAINED:
        return _TRAINED[target.name]
    prompts = kit_prompts(target)
    seqs = [p + r for p, r in zip(prompts, ar_reference(target, prompts, 40))]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    lm = torch.zeros_like(ids)
    for b, (p, seq) in enumerate(zip(prompts, seqs)):
        lm[b, len(p): len(seq)] = 1
    drafter = make_drafter(target, std=0.02, num_anchors=32).train()
    with torch.no_grad(), capture_layers(target.model, drafter.cfg.target_layer_ids) as got:
        target.model(input_ids=ids)
    batch = {"input_ids": ids, "loss_mask": lm, "features": fused(got, drafter.cfg.target_layer_ids),
             "lengths": torch.tensor([len(s) for s in seqs])}
    opt = torch.optim.AdamW(drafter.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(steps):
        loss, _ = drafter.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    _TRAINED[target.name] = drafter.eval()
    return _TRAINED[target.name]


def test_lossless_kit(tiny_llama, tiny_qwen3):
    """T = 0 equals AR (batch 1, 4, 8; tiny Llama and Qwen3) with a drafter whose drafts are accepted,
    target cache exact, stopped rows frozen, T > 0 distribution; plus the target-cache check at T > 0
    with a ragged batch of 4 on both families."""
    kit = {"tiny-random-llama": tiny_llama, "tiny-random-qwen3": tiny_qwen3}
    outputs = assert_lossless(lambda t: DFlashMethod(t, drafter=trained_drafter(t) if t.name in kit
                                                     else make_drafter(t)))
    for name, batches in outputs.items():
        lengths = [a for out in batches for row in out.rows for a in row.accept_lengths]
        assert sum(lengths) / len(lengths) > 1.5 and max(lengths) == 5, (name, sum(lengths) / len(lengths))
    for target in (tiny_llama, tiny_qwen3):
        check_cache(DFlashMethod(target, drafter=trained_drafter(target)), target, steps=6, batch_size=4,
                    sampling=SamplingConfig(temperature=1.0))


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen3"])
def test_draft_cache_holds_exactly_the_committed_context(name, request):
    """After every draft call the cache covers positions < start; cached K/V equal a fresh projection."""
    target = request.getfixturevalue(name)
    prompts = prompts_for(target, 4)
    drafter = make_drafter(target)
    ar = run(build_method("ar", target), target, prompts, 48)[0]
    dec = NoisyOracleDecoder(target, SamplingConfig(), None, drafter, 5, reference=[r.tokens for r in ar.rows],
                             prompt_lengths=[len(p) for p in prompts])
    outputs = [[t] for t in dec.prefill(prompts, 128)]
    accepted = set()
    for _ in range(10):
        for b, toks in enumerate(dec.step(StepTimer(target.device), [True] * len(prompts))):
            outputs[b] += toks
            accepted.add(len(toks))
        draft_len, start = dec.after_draft[-1]
        assert draft_len == start  # context strictly before the bonus, nothing of the block
        for b, prompt in enumerate(prompts):
            committed = prompt + outputs[b][:-1]  # the bonus has no target feature yet
            assert dec.cache.lengths[b] == len(committed)
            assert dec.draft_cache.lengths[b] + dec.pending_counts[b] == len(committed)
            ids = drafter.cfg.target_layer_ids
            with torch.no_grad(), capture_layers(target.model, ids) as got:
                target.model(input_ids=torch.tensor([committed]))
            feats = fused(got, ids)  # [1, n, L*H_t]
            n = dec.draft_cache.lengths[b]
            ctx = drafter.fuse(feats[:, :n])
            cos, sin = rotary(torch.arange(n)[None], drafter.cfg.head_dim, drafter.cfg.rope_theta, ctx.dtype)
            for i, layer in enumerate(drafter.layers):
                k, v = layer.context_kv(ctx, cos, sin)
                ck, cv = dec.draft_cache.layer_kv(i, b)
                torch.testing.assert_close(ck, k[0], atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(cv, v[0], atol=1e-4, rtol=1e-4)
            pend = dec.pending[b, : dec.pending_counts[b]]
            torch.testing.assert_close(pend, feats[0, n:], atol=1e-4, rtol=1e-4)
    for r, o in zip(ar.rows, outputs):  # rows run on past EOS here; AR stopped there
        n = min(len(o), len(r.tokens))
        assert o[:n] == r.tokens[:n]
    assert len(accepted) >= 3  # ragged acceptance really happened


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen3"])
def test_training_and_inference_layouts_agree(name, request):
    """The block from one B.2.2 training forward equals the inference draft for the same prefix."""
    target = request.getfixturevalue(name)
    prompts = prompts_for(target, 2)
    drafter = make_drafter(target, block=6)
    ar = run(build_method("ar", target), target, prompts, 48)[0]
    dec = NoisyOracleDecoder(target, SamplingConfig(), None, drafter, 6, reference=[r.tokens for r in ar.rows],
                             prompt_lengths=[len(p) for p in prompts])
    outputs = [[t] for t in dec.prefill(prompts, 128)]
    timer = StepTimer(target.device)
    for _ in range(4):
        for b, toks in enumerate(dec.step(timer, [True, True])):
            outputs[b] += toks
    with torch.inference_mode():
        dec._draft()
    inference = dec.last_draft_hidden  # [2, 6, H]
    for b, prompt in enumerate(prompts):
        seq = prompt + outputs[b]  # committed tokens, the bonus last
        p = len(seq) - 1
        ids = drafter.cfg.target_layer_ids
        with torch.no_grad(), capture_layers(target.model, ids) as got:
            target.model(input_ids=torch.tensor([seq]))
        # extra anchors before p (and a padding slot) must not leak into block p
        anchors = torch.tensor([[p - 7, p - 3, p, 0]])
        keep = torch.tensor([[True, True, True, False]])
        with torch.no_grad():
            h, pos = drafter.block_forward(torch.tensor([seq]), fused(got, ids), anchors, keep)
        assert pos[0, 2].tolist() == list(range(p, p + 6))
        torch.testing.assert_close(h[0, 2], inference[b], atol=1e-4, rtol=1e-4)
        assert (drafter.logits(h[0, 2, 1:]).argmax(-1) == drafter.logits(inference[b, 1:]).argmax(-1)).all()


def test_training_loss_goes_down_and_labels_are_same_position(tiny_llama):
    target = tiny_llama
    prompts = prompts_for(target, 2)
    ar = run(build_method("ar", target), target, prompts, 30)[0]
    seqs = [p + r.tokens for p, r in zip(prompts, ar.rows)]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    lm = torch.zeros_like(ids)
    for b, (p, s) in enumerate(zip(prompts, seqs)):
        lm[b, len(p): len(s)] = 1
    drafter = make_drafter(target, block=4, std=0.02, num_anchors=8).train()
    with torch.no_grad(), capture_layers(target.model, drafter.cfg.target_layer_ids) as got:
        target.model(input_ids=ids)
    batch = {"input_ids": ids, "loss_mask": lm, "features": fused(got, drafter.cfg.target_layer_ids),
             "lengths": torch.tensor([len(s) for s in seqs])}
    anchors, keep = drafter.sample_anchors(ids, lm, batch["lengths"], torch.Generator().manual_seed(0))
    assert (lm.gather(1, anchors)[keep] == 1).all() and (lm.gather(1, anchors + 1)[keep] == 1).all()
    batch.update(anchors=anchors, anchor_keep=keep)
    opt = torch.optim.AdamW(drafter.parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        loss, metrics = drafter.loss(batch)
        first = first or metrics["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["loss"] < 0.5 * first
    assert metrics["acc"] > 0.5
    # the embedding/LM head stay the target's and get no gradient
    assert target.model.get_output_embeddings().weight.grad is None


def test_describe_and_save_load_roundtrip(tiny_llama, tmp_path):
    drafter = make_drafter(tiny_llama)
    path = drafter.save(tmp_path / "d")
    method = build_method("dflash", tiny_llama, drafter=str(path))
    desc = method.describe()
    assert desc["depth"] == 5 and desc["tokens_per_target_forward"] == 5
    assert desc["drafter_parameters"] == sum(p.numel() for p in drafter.parameters())
    assert desc["mask_token"]["source"] == "learned drafter row" and desc["notes"]
    torch.testing.assert_close(method.drafter.fc.weight, drafter.fc.weight)
    assert build_method("dflash", tiny_llama, depth=3, drafter=str(path)).depth == 3


def test_the_block_head_is_draft_time(tiny_llama):
    """Timing contract (DESIGN.md §4): the draft pass and the LM head over the block are draft time."""
    from specbench.testing.spans import assert_draft_work_in_draft_span

    method = DFlashMethod(tiny_llama, drafter=make_drafter(tiny_llama))
    assert_draft_work_in_draft_span(method, tiny_llama, method.drafter, "logits")
