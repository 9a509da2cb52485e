"""The AR arm equals HF `generate` token for token (issue 2, "Must show")."""

import pytest
import torch

from specbench.decode import generate
from specbench.methods import build_method
from specbench.sampling import SamplingConfig
from specbench.timing import StepTimer

QUESTIONS = ["How many clips did Natalia sell altogether?", "def add(a, b):", "Write a story about a robot.",
             "Translate: the cat sleeps on the warm mat, and then it wakes up and eats."]


def _ar(target, prompts, max_new, sampling=SamplingConfig(), generator=None):
    dec = build_method("ar", target).make_decoder(sampling, generator)
    return generate(dec, prompts, max_new, target.eos_token_ids, StepTimer(target.device))


def _hf(target, prompt, max_new):
    out = target.model.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False,
                                eos_token_id=target.eos_token_ids, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen3"])
def test_ar_greedy_equals_hf_generate_batch1_and_ragged_batch(name, request):
    target = request.getfixturevalue(name)
    prompts = [target.render([{"role": "user", "content": q}]) for q in QUESTIONS]
    assert len({len(p) for p in prompts}) == len(prompts)  # ragged on purpose
    refs = [_hf(target, p, 40) for p in prompts]
    batched = _ar(target, prompts, 40)
    for p, ref, row in zip(prompts, refs, batched.rows):
        assert row.tokens == ref
        assert _ar(target, [p], 40).rows[0].tokens == ref
        assert row.accept_lengths == [1] * (len(ref) - 1)
    assert batched.active_steps == [len(r) - 1 for r in refs]


def test_rows_stop_independently_at_eos(tiny_llama):
    target = tiny_llama
    prompts = [target.render([{"role": "user", "content": q}]) for q in QUESTIONS[:2]]
    first = _ar(target, prompts, 12).rows[0].tokens
    target.eos_token_ids = [first[5]]  # make row 0 stop at its 6th token
    try:
        out = _ar(target, prompts, 12)
    finally:
        target.eos_token_ids = [target.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert out.rows[0].tokens == first[: first.index(first[5]) + 1] and out.rows[0].stopped_by == "eos"
    second = _ar(target, prompts[1:], 12).rows[0].tokens  # row 1 alone, without the new EOS
    if first[5] in second:
        want, why = second[: second.index(first[5]) + 1], "eos"
    else:
        want, why = second, "length"
    assert out.rows[1].tokens == want and out.rows[1].stopped_by == why
    assert len(out.rows[1].tokens) == 12 or why == "eos"
    assert len(out.steps["verify"]) == max(out.active_steps)


def test_stopped_rows_keep_their_cache_while_the_others_run(tiny_llama, tiny_qwen3):
    """The engine's rule for the AR arm too: a row that stopped commits nothing more (issue 19)."""
    from specbench.testing.lossless import check_stopped_rows

    for target in (tiny_llama, tiny_qwen3):
        check_stopped_rows(build_method("ar", target), target)


def test_sampling_is_seeded_and_uses_the_generator(tiny_llama):
    target = tiny_llama
    prompts = [target.render([{"role": "user", "content": QUESTIONS[0]}])]
    cfg = SamplingConfig(temperature=1.0)
    a = _ar(target, prompts, 20, cfg, torch.Generator().manual_seed(1)).rows[0].tokens
    b = _ar(target, prompts, 20, cfg, torch.Generator().manual_seed(1)).rows[0].tokens
    c = _ar(target, prompts, 20, cfg, torch.Generator().manual_seed(2)).rows[0].tokens
    assert a == b and a != c


def test_step_spans_are_recorded(tiny_llama):
    out = _ar(tiny_llama, [tiny_llama.render([{"role": "user", "content": "hi"}])], 10)
    n = len(out.steps["verify"])
    assert n == out.active_steps[0] and n > 0
    assert all(v > 0 for v in out.steps["verify"]) and out.steps["draft"] == [0.0] * n
    assert out.ttft_s > 0 and out.decode_s > 0


def test_smollm2_ar_equals_hf_generate(smollm2):
    prompts = [smollm2.render([{"role": "user", "content": q}]) for q in
               ["What is 12 times 7? Answer briefly.", "Write a Python function that reverses a string."]]
    batched = _ar(smollm2, prompts, 24)
    for p, row in zip(prompts, batched.rows):
        assert row.tokens == _hf(smollm2, p, 24)
