"""DFlash drafters as z-lab releases them (`dflash/model.py` `DFlashDraftModel`; eagle3_dflash.md B.1).

Tensors: `fc` `[H, L·H]`, `hidden_norm`, `norm`, and per layer `self_attn.{q,k,v,o}_proj`,
`self_attn.{q,k}_norm`, `mlp.{gate,up,down}_proj`, `{input,post_attention}_layernorm`; no embedding, head
or vocabulary map (B.1.3). Config: a Qwen3 config with `block_size` and `dflash_config.{mask_token_id,
target_layer_ids}`, the ids being outputs of layers (B.5-6) as in specbench. The draft layers use the
draft config's RoPE base.

Refused, because specbench's DFlash layer is the non-causal full-attention block of B.1.2: sliding-window
or causal layers (`layer_types`, `is_causal`, `use_sliding_window`), RoPE scaling, embedding scales,
logit multipliers and soft-capping, attention biases, and DFlash-2's extra modules (any unrecognised
tensor).
"""

from __future__ import annotations

import re

from specbench.methods.dflash import PAPER_DEFAULTS, DFlashConfig, DFlashDrafter, default_gamma
from specbench.published.checkpoint import Checkpoint, assemble, default_rope_theta, expect

SECTION = "dflash_config"
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")
MLP = ("gate_proj", "up_proj", "down_proj")
NORMS = ("input_layernorm", "post_attention_layernorm")


def detect(ckpt: Checkpoint) -> str | None:
    keys = ckpt.keys()
    own = {"fc.weight", "hidden_norm.weight", "layers.0.self_attn.q_proj.weight"}
    if own <= keys and "mask_embedding" not in keys and "speculators_model_type" not in ckpt.config:
        return "dflash"
    return None


def num_layers(ckpt: Checkpoint) -> int:
    """Draft layers present in the tensors (`layers.{i}.`), checked against the config's count."""
    found = {int(m.group(1)) for k in ckpt.keys() if (m := re.match(r"layers\.(\d+)\.", k))}
    n = len(found)
    if found != set(range(n)) or int(ckpt.setting("num_hidden_layers", n)) != n:
        raise ckpt.refuse(f"draft layers {sorted(found)} do not match num_hidden_layers "
                          f"{ckpt.setting('num_hidden_layers', None)}")
    return n


def refuse_unimplemented(ckpt: Checkpoint) -> None:
    kinds = set(ckpt.setting("layer_types", None, SECTION) or ["full_attention"])
    if kinds != {"full_attention"} or ckpt.setting("use_sliding_window", False, SECTION):
        raise ckpt.refuse(f"draft layer types {sorted(kinds)} (sliding window) are not implemented: specbench's "
                          "DFlash layers attend to the whole context (B.1.2)")
    if ckpt.setting("is_causal", False, SECTION):
        raise ckpt.refuse("causal DFlash layers are not implemented: the block is bidirectional (B.5-3)")
    for name, neutral in (("input_embedding_scale", 1.0), ("output_multiplier", 1.0), ("final_logit_softcapping", 0)):
        if float(ckpt.setting(name, neutral, SECTION) or 0) != float(neutral):
            raise ckpt.refuse(f"{name}={ckpt.setting(name, None, SECTION)} is not implemented")
    if ckpt.setting("attention_bias", False) or ckpt.setting("hidden_act", "silu") != "silu":
        raise ckpt.refuse("attention biases and activations other than SiLU are not implemented")


def token_text(tokenizer, token_id: int) -> str | None:
    """The mask token's text for reports; None for an embedding row the tokenizer never produces (Qwen3's
    151669, B.1.3)."""
    if token_id >= len(tokenizer) or not hasattr(tokenizer, "convert_ids_to_tokens"):
        return None
    return tokenizer.convert_ids_to_tokens(token_id)


def convert(ckpt: Checkpoint, layout: str, target) -> DFlashDrafter:
    refuse_unimplemented(ckpt)
    c, n = target.config, num_layers(ckpt)
    ids = ckpt.setting("target_layer_ids", None, SECTION)
    mask_id = ckpt.setting("mask_token_id", None, SECTION)
    if ids is None or mask_id is None:
        raise ckpt.refuse("dflash_config.target_layer_ids and dflash_config.mask_token_id are required")
    ids = [int(i) for i in ids]
    expect(ckpt, "the target layer count", int(ckpt.setting("num_target_layers", target.num_layers)),
           target.num_layers, target)
    if any(not 0 <= i < target.num_layers for i in ids):
        raise ckpt.refuse(f"target_layer_ids {ids} do not fit a target with {target.num_layers} layers")
    expect(ckpt, "the hidden size", ckpt.require("hidden_size"), c.hidden_size, target)
    expect(ckpt, "the vocabulary", ckpt.setting("vocab_size", target.vocab_size), target.vocab_size, target)
    rows = target.model.get_input_embeddings().weight.shape[0]
    if not 0 <= int(mask_id) < rows:
        raise ckpt.refuse(f"mask_token_id {mask_id} is not a row of the target's {rows}-row embedding")
    heads = int(ckpt.require("num_attention_heads"))
    block = int(ckpt.setting("block_size", PAPER_DEFAULTS["block_size"], SECTION))
    config = DFlashConfig(
        target_hidden_size=c.hidden_size, hidden_size=c.hidden_size, num_heads=heads,
        num_kv_heads=int(ckpt.setting("num_key_value_heads", heads)),
        head_dim=ckpt.shape("layers.0.self_attn.q_norm.weight")[0],
        intermediate_size=ckpt.shape("layers.0.mlp.gate_proj.weight")[0],
        rms_norm_eps=float(ckpt.setting("rms_norm_eps", 1e-6)), rope_theta=default_rope_theta(ckpt, 10000.0),
        num_layers=n, block_size=block, target_layer_ids=ids, mask_token_id=int(mask_id),
        mask_token=token_text(target.tokenizer, int(mask_id)), gamma=default_gamma(block),
        num_anchors=PAPER_DEFAULTS["num_anchors"])
    rename = {name: name for name in ("fc.weight", "hidden_norm.weight", "norm.weight")}
    for i in range(n):
        rename.update({f"layers.{i}.self_attn.{t}.weight": f"layers.{i}.{t}.weight" for t in ATTENTION})
        rename.update({f"layers.{i}.mlp.{t}.weight": f"layers.{i}.{t}.weight" for t in MLP})
        rename.update({f"layers.{i}.{t}.weight": f"layers.{i}.{t}.weight" for t in NORMS})
    return assemble(DFlashDrafter, config, ckpt, target, layout, rename)
