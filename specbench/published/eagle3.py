"""EAGLE-3 heads as released (eagle3_dflash.md A.1, A.5): three layouts, one specbench `Eagle3Drafter`.

* `eagle` — SafeAILab/EAGLE (`eagle/model/cnets.py`): `fc`, `midlayer.*`, `norm`, `lm_head`, `d2t`, `t2d`,
  a Llama config with `draft_vocab_size`; the fused features are the inputs of layers 2, N//2, N-3 (A.1.1).
* `specforge` — SpecForge exports (`llama3_eagle.py`): the same tensors plus `embed_tokens.weight` and/or
  `eagle_config.eagle_aux_hidden_state_layer_ids`, which SpecForge counts as outputs of layers (its
  default [1, N//2-1, N-4] names the same features, A.5-1).
* `speculators` — vllm-project/speculators: `layers.0.*` for `midlayer.*`, the layer config nested under
  `transformer_layer_config`, `eagle_aux_hidden_state_layer_ids` counted as inputs of layers (vLLM
  captures before a layer), and `norm_before_residual`.

Geometry comes from the tensors, not the config: `head_dim` = q_proj rows / heads (published Qwen3-4B
heads use 128, not H / heads), the MLP width, the draft vocabulary; q/k norms exist iff shipped (the
reference has none, Qwen3 heads included). RoPE base from the draft config, 10000 when absent (A.5-6).
No `d2t`/`t2d` means the draft vocabulary is the full one. The embedding is always the target's; a
shipped `embed_tokens.weight` must equal it. Refused: RoPE scaling, more than one layer, a draft hidden
size other than the target's, `fc_norm`/`norm_before_fc`/`norm_output` (SpecForge's and NVIDIA's later
variants), an activation other than SiLU, and any tensor none of this names (biases included).
"""

from __future__ import annotations

import torch

from specbench.methods.eagle3 import Eagle3Config, Eagle3Drafter, feature_layer_ids
from specbench.published.checkpoint import (Checkpoint, assemble, check_embedding, default_rope_theta, expect,
                                            refuse_flags)

LAYER_PREFIX = {"eagle": "midlayer.", "specforge": "midlayer.", "speculators": "layers.0."}
LAYER_TENSORS = ("hidden_norm.weight", "input_layernorm.weight", "post_attention_layernorm.weight",
                 "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                 "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")
QK_NORMS = ("self_attn.q_norm.weight", "self_attn.k_norm.weight")
VARIANTS = {"fc_norm": "a norm on each fused feature", "norm_before_fc": "a norm on the fused features before fc",
            "norm_output": "a normalised fed-back feature"}
#: the speculators trainer's frozen copies of the target's final norm and head, never used to draft
SPECULATORS_UNUSED = ("verifier_norm.weight", "verifier_lm_head.weight")


def detect(ckpt: Checkpoint) -> str | None:
    keys = ckpt.keys()
    if "midlayer.self_attn.q_proj.weight" in keys:
        ids = (ckpt.config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
        return "specforge" if ids is not None or "embed_tokens.weight" in keys else "eagle"
    if ckpt.config.get("speculators_model_type") == "eagle3" or "layers.0.hidden_norm.weight" in keys:
        return "speculators"
    return None


def feature_layers(ckpt: Checkpoint, layout: str, num_layers: int) -> list[int]:
    """The fused layers as specbench's 0-based outputs of layers (`training/features.py`)."""
    if layout == "speculators":
        ids = ckpt.config.get("eagle_aux_hidden_state_layer_ids")
        out = None if ids is None else [int(i) - 1 for i in ids]  # input of layer i = output of layer i - 1
    else:
        ids = (ckpt.config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
        out = None if ids is None else [int(i) for i in ids]
    if out is None:
        return feature_layer_ids(num_layers)  # inputs of layers 2, N//2, N-3
    if any(not 0 <= i < num_layers for i in out):
        raise ckpt.refuse(f"feature layer ids {ids} ({layout}: {'inputs' if layout == 'speculators' else 'outputs'} "
                          f"of layers) do not fit a target with {num_layers} layers")
    return out


def convert(ckpt: Checkpoint, layout: str, target) -> Eagle3Drafter:
    sec = ("transformer_layer_config",) if layout == "speculators" else ()
    keys, prefix, c = ckpt.keys(), LAYER_PREFIX[layout], target.config
    refuse_flags(ckpt, VARIANTS, "eagle_config")
    if int(ckpt.setting("num_hidden_layers", 1, *sec)) != 1:
        raise ckpt.refuse("multi-layer EAGLE-3 heads are not implemented (one draft layer, A.1.2)")
    if ckpt.setting("hidden_act", "silu", *sec) != "silu":
        raise ckpt.refuse(f"activation {ckpt.setting('hidden_act', None, *sec)!r} is not implemented (SiLU MLP)")
    hidden = ckpt.require("hidden_size", *sec)
    expect(ckpt, "the draft hidden size", hidden, c.hidden_size, target)
    expect(ckpt, "the feature hidden size", ckpt.setting("target_hidden_size", hidden), c.hidden_size, target)
    expect(ckpt, "the vocabulary", ckpt.setting("vocab_size", target.vocab_size, *sec), target.vocab_size, target)
    heads = int(ckpt.require("num_attention_heads", *sec))
    kv_heads = int(ckpt.setting("num_key_value_heads", heads, *sec))
    q_rows = ckpt.shape(prefix + "self_attn.q_proj.weight")[0]
    if q_rows % heads:
        raise ckpt.refuse(f"q_proj has {q_rows} rows, not a multiple of {heads} heads")
    layers = feature_layers(ckpt, layout, target.num_layers)
    qk_norm = prefix + QK_NORMS[0] in keys
    draft_vocab = ckpt.shape("lm_head.weight")[0]
    config = Eagle3Config(
        target_hidden_size=c.hidden_size, hidden_size=hidden, num_heads=heads, num_kv_heads=kv_heads,
        head_dim=q_rows // heads, intermediate_size=ckpt.shape(prefix + "mlp.gate_proj.weight")[0],
        rms_norm_eps=float(ckpt.setting("rms_norm_eps", 1e-6, *sec)),
        rope_theta=default_rope_theta(ckpt, 10000.0, *sec),
        vocab_size=target.vocab_size, draft_vocab_size=draft_vocab, feature_layers=layers, qk_norm=qk_norm,
        norm_before_residual=bool(ckpt.setting("norm_before_residual", False)))
    rename = {name: name for name in ("fc.weight", "norm.weight", "lm_head.weight")}
    rename.update({prefix + t: "midlayer." + t for t in LAYER_TENSORS + (QK_NORMS if qk_norm else ())})
    extra = None
    if "d2t" in keys or "t2d" in keys:
        rename.update({"d2t": "d2t", "t2d": "t2d"})
        d2t = ckpt.tensor("d2t") if "d2t" in keys else None
        ids = torch.arange(draft_vocab) + d2t if d2t is not None and d2t.shape == (draft_vocab,) else None
        if ids is not None and not 0 <= int(ids.min()) <= int(ids.max()) < target.vocab_size:  # id i + d2t[i]
            raise ckpt.refuse(f"d2t maps draft ids outside the target vocabulary of {target.vocab_size}")
    elif draft_vocab == target.vocab_size:  # a full draft vocabulary ships no map (A.1.4 step 6)
        extra = {"d2t": torch.zeros(draft_vocab, dtype=torch.long), "t2d": torch.ones(draft_vocab, dtype=torch.bool)}
    else:
        raise ckpt.refuse(f"a draft vocabulary of {draft_vocab} < {target.vocab_size} needs d2t/t2d, which are missing")
    ignored = {k for k in SPECULATORS_UNUSED if k in keys} if layout == "speculators" else set()
    if "embed_tokens.weight" in keys:
        check_embedding(ckpt, "embed_tokens.weight", target)
        ignored.add("embed_tokens.weight")
    return assemble(Eagle3Drafter, config, ckpt, target, layout, rename, ignored, extra)
