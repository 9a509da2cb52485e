"""Tiny seeded random targets for tests (`tiny-random-llama`, `tiny-random-qwen3`).

They are real architectures (GQA, Qwen3 q/k norms) with a real byte-level BPE tokenizer and a chat
template, built offline in a second: the tokenizer is trained on a fixed in-code corpus, the weights
come from `torch.manual_seed`. Greedy outputs are therefore identical on every machine with the same
torch build, which is what the lossless kit needs.
"""

from __future__ import annotations

import functools

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Qwen3's convention: with thinking switched off, the template pre-fills an empty think block.
QWEN3_TEMPLATE = CHATML_TEMPLATE.replace(
    "{{ '<|im_start|>assistant\n' }}{% endif %}",
    "{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}")

_CORPUS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May? Let's think step by step.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "The answer is \\boxed{72}. 0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ? ' \"",
    "Write a story about a robot who learns to paint. Summarize the text in one sentence.",
    "Translate the following sentence into French: the cat sleeps on the warm mat.",
    "for i in range(10):\n    if i % 2 == 0:\n        yield i * i",
]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


@functools.lru_cache(maxsize=4)
def build_tokenizer(family: str = "llama", vocab_size: int = 384):
    """A byte-level BPE tokenizer trained deterministically on `_CORPUS` (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    fast.chat_template = QWEN3_TEMPLATE if family == "qwen3" else CHATML_TEMPLATE
    return fast


def build_tiny_model(family: str, vocab_size: int, seed: int = 0, num_layers: int = 4):
    """A tiny random `LlamaForCausalLM` or `Qwen3ForCausalLM` in float32."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=2,
        pad_token_id=0,
        bos_token_id=None,
        tie_word_embeddings=False,
        # std 0.02 gives near-uniform logits and greedy decoding collapses to one repeated token;
        # 0.2 gives decisive, varied generations, closer to a real model's behaviour.
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    if family == "llama":
        config, cls = LlamaConfig(**common, rope_theta=10000.0), LlamaForCausalLM
    elif family == "qwen3":
        config, cls = Qwen3Config(**common, head_dim=16, rope_theta=10000.0), Qwen3ForCausalLM
    else:
        raise ValueError(f"unknown tiny family {family!r}")
    model = cls(config)
    return model.float().eval()
