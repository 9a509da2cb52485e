"""The target's forward, walked module by module instead of `model(...)` (issue 20, deliverable 1).

`model(...)` and HF `generate` do the same arithmetic the harness needs, so a loop around them can only
tie `generate` (0.99-1.00x, stop 26). Walking the modules ourselves is the one place where two things can
change: the kernel of each matrix product (`specbench.skinny`: on a CPU a decode step's few-row products
are the slow case of `F.linear`, and `W @ Xᵀ` is up to 2-3x faster there), and the per-call plumbing —
input checks, output containers, mask construction, decorators that rewrite keyword arguments and look
the attention function up by name in every layer (measured: within noise next to smollm2's 45-65 ms CPU
step; it matters where a step is launch-bound). `forward` runs the very same modules — embedding,
rotary, norms, projections, the attention function transformers itself would pick (`sdpa` or `eager`),
MLP, LM head — in the same order with the same arguments: with the product rule off the logits are
bit-identical to `model(...)` (tested per architecture and batch layout), with it on they differ by
float rounding only. Like gpt-fast's loop, the step is the model's math and the cache write.

Every method's target forward goes through it (`Target.forward`, `Target.decoder_states` for MTP's
rows), the mask-row methods' clean rows through `clean_attention` (`layers.joint_layer`) and the
drafters' own linears through the same product rule, so no arm gets a leaner target than another.

Scope: decoder-only models of the Llama layout (`LlamaForCausalLM`, `Qwen3ForCausalLM`) without sliding
windows or rope variants the rotary module does not own; anything else runs `model(...)`. `supported` says
why not, and `Target.describe` records which forward ran. The compiled regime compiles this same forward
(`forward_with_layers`). Eager, forward hooks on decoder layers still fire (`training.features`), as
`nn.Module.__call__` would fire them; a layer with pre-hooks sends the forward back to `model(...)`.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from specbench.skinny import linear

#: the architectures whose forward is walked here (each checked bit-exact in tests/test_direct_forward.py)
ARCHITECTURES = ("LlamaForCausalLM", "Qwen3ForCausalLM")


def supported(model: nn.Module) -> str | None:
    """None if `forward` reproduces `model(...)` for this model, else the reason it does not."""
    name = type(model).__name__
    if name not in ARCHITECTURES:
        return f"architecture {name} (walked directly: {', '.join(ARCHITECTURES)})"
    config = model.config
    impl = getattr(config, "_attn_implementation", None)
    if impl not in ("sdpa", "eager"):
        return f"attention implementation {impl!r}"
    if "sliding_attention" in (getattr(config, "layer_types", None) or []):
        return "sliding-window layers"
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    inner = getattr(model, "model", None)
    for part in ("embed_tokens", "rotary_emb", "layers", "norm"):
        if getattr(inner, part, None) is None:
            return f"no model.{part}"
    return None


def attention_function(module: nn.Module):
    """The attention function `model(...)` would call for `module` (the model or one of its attention
    modules): transformers' registered one (`sdpa`), or the modeling file's own `eager_attention_forward`."""
    impl = module.config._attn_implementation
    if impl == "eager":
        return sys.modules[type(module).__module__].eager_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[impl]


def clean_attention(attn: nn.Module, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    mask: torch.Tensor | None, cache, function=None, skinny_rows: int = 0) -> torch.Tensor:
    """`attn(h, (cos, sin), mask, cache)[0]` for a Llama / Qwen3 attention module, minus its wrappers:
    projections (Qwen3's per-head q/k norms before RoPE), rotary, the cache write, attention, `o_proj`.
    `h [B, q, H]` is input-normed; returns `[B, q, H]`."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    b, q, _ = h.shape
    shape = (b, q, -1, attn.head_dim)
    qs, ks = linear(attn.q_proj, h, skinny_rows).view(shape), linear(attn.k_proj, h, skinny_rows).view(shape)
    if getattr(attn, "q_norm", None) is not None:
        qs, ks = attn.q_norm(qs), attn.k_norm(ks)
    qs, ks = qs.transpose(1, 2), ks.transpose(1, 2)  # [B, heads, q, d]
    vs = linear(attn.v_proj, h, skinny_rows).view(shape).transpose(1, 2)
    qs, ks = apply_rotary_pos_emb(qs, ks, cos, sin)
    if cache is not None:
        ks, vs = cache.update(ks, vs, attn.layer_idx)
    if function is None:
        function = attention_function(attn)
    out, _ = function(attn, qs, ks, vs, mask, dropout=0.0, scaling=attn.scaling)  # [B, q, heads, d]
    return linear(attn.o_proj, out.reshape(b, q, -1).contiguous(), skinny_rows)


def mlp(module: nn.Module, x: torch.Tensor, skinny_rows: int = 0) -> torch.Tensor:
    """A Llama / Qwen3 MLP, `down(act(gate(x)) * up(x))`, its products through `skinny.linear`."""
    if module._forward_hooks or module._forward_pre_hooks:
        return module(x)
    gate = linear(module.gate_proj, x, skinny_rows)
    return linear(module.down_proj, module.act_fn(gate) * linear(module.up_proj, x, skinny_rows), skinny_rows)


def has_pre_hooks(model: nn.Module) -> bool:
    """Pre-hooks on the model or a decoder layer (e.g. a call counter) expect `model(...)` itself."""
    return bool(model._forward_pre_hooks) or any(layer._forward_pre_hooks for layer in model.model.layers)


def forward(model: nn.Module, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
            cache, keep, function, skinny_rows: int = 0) -> torch.Tensor:
    """Logits of `model(input_ids, attention_mask=mask, position_ids=positions, cache, logits_to_keep=keep)`.

    `mask` is the additive `[B, 1, q, window]` mask, or None for plain causal attention where that is
    what SDPA's causal flag computes (q = 1, or a write into an empty cache; `Target.forward` decides).
    `keep`: 0 = every position, an int k = the last k, a tensor = those positions (HF's `logits_to_keep`).
    """
    return forward_with_layers(model, input_ids, positions, mask, cache, keep, function, skinny_rows)[0]


def forward_with_layers(model: nn.Module, input_ids: torch.Tensor, positions: torch.Tensor,
                        mask: torch.Tensor | None, cache, keep, function, skinny_rows: int = 0,
                        capture: tuple[int, ...] = ()) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """`(forward(...), outputs [B, q, H] of the decoder layers in `capture`, in layer order)`: the layer
    features EAGLE-3 and DFlash read, as arguments and outputs instead of forward hooks, so a compiled
    forward is a pure function of its inputs (`specbench.compiled`: the target's modules are not re-checked
    per call, hooks included)."""
    inner = model.model
    caught: list[torch.Tensor] = []
    x = layers(model, inner.embed_tokens(input_ids), positions, mask, cache, function, skinny_rows, capture, caught)
    picked = x[:, slice(-keep, None) if isinstance(keep, int) else keep]  # the norm is per position
    return linear(model.lm_head, inner.norm(picked), skinny_rows), tuple(caught)


def layers(model: nn.Module, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, cache,
           function, skinny_rows: int = 0, capture: tuple[int, ...] = (), caught: list | None = None) -> torch.Tensor:
    """Every decoder layer on embeddings `x [B, q, H]`; the last layer's output, before the final norm.
    The outputs of the layers in `capture` are appended to `caught`, in layer order."""
    inner = model.model
    cos, sin = inner.rotary_emb(x, positions)
    for i, layer in enumerate(inner.layers):
        attn = layer.self_attn
        x = x + clean_attention(attn, layer.input_layernorm(x), cos, sin, mask, cache, function, skinny_rows)
        x = x + mlp(layer.mlp, layer.post_attention_layernorm(x), skinny_rows)
        if layer._forward_hooks:
            x = _fire_hooks(layer, x)
        if i in capture:
            caught.append(x)
    return x


def has_hooks(model: nn.Module) -> bool:
    """Any forward hook or pre-hook on the model or a decoder layer: what a compiled forward, whose module
    guards are dropped (`specbench.compiled`), would not see."""
    layers = model.model.layers
    return has_pre_hooks(model) or bool(model._forward_hooks) or any(layer._forward_hooks for layer in layers)


def _fire_hooks(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A decoder layer's forward hooks, as `nn.Module.__call__` runs them: (module, args, output), a
    returned value replaces the output."""
    for hook in list(layer._forward_hooks.values()):
        result = hook(layer, (x,), x)
        if result is not None:
            x = result[0] if isinstance(result, tuple) else result
    return x
