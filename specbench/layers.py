"""Norm, rotary and mask-row layer pieces for drafters that own or share decoder layers.

Why not reuse the target's modules: a drafter layer has its own weights and shapes (eagle3's `2H`-wide
attention input, dflash's injected context keys, flexdraft's mask-row attention), and its hidden states
and keys meet the target's (features fused from target layers, mask rows attending over the target's
own cached keys). So it must compute exactly what the HF Llama / Qwen3 layers compute, in the same
order and dtypes, and be independent of the installed transformers version:

* `RMSNorm`: statistics in float32, the result cast back to the input dtype before the scale (the
  order HF uses; in bfloat16 another order gives different bits);
* `rotary` / `apply_rotary`: the default RoPE (no scaling) in the "rotate half" layout, angles in
  float32, cos/sin cast to the activations' dtype.

`RMSNorm`'s parameter is named `weight`, as in HF: that name is part of the saved drafters' state-dict
keys, so it must not change. `attention_shape` / `DecoderLayerShape` read a target's layer geometry the
one way every drafter needs it (GQA head counts, an explicit Qwen3 `head_dim`, RoPE theta from either
transformers layout).

`mask_row_attention` / `joint_layer` are the layer math of the methods whose mask rows ride through the
frozen target's own layers next to the clean tokens (bita A.3, flexdraft E.2.3): clean rows run the
target's attention module unchanged, mask rows attend over the cached clean K/V plus their own, and
both share the target's norms and FFN. Only clean K/V ever reach the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from specbench.direct_forward import clean_attention, mlp
from specbench.skinny import linear


def attention_shape(config) -> dict:
    """`num_heads`, `num_kv_heads`, `head_dim` of a HF Llama / Qwen3 config."""
    n = config.num_attention_heads
    return {"num_heads": n, "num_kv_heads": getattr(config, "num_key_value_heads", None) or n,
            "head_dim": int(getattr(config, "head_dim", None) or config.hidden_size // n)}


def rope_theta(config) -> float:
    """RoPE base: `rope_parameters["rope_theta"]` (transformers 5) or `rope_theta`, default 10000."""
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)


@dataclass
class DecoderLayerShape:
    """The fields of a drafter that owns decoder layers shaped like the target's (eagle3 A.1.2, dflash
    B.1.2); method configs extend it, and saved configs keep these names."""

    target_hidden_size: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float

    @staticmethod
    def of_target(config) -> dict:
        """These fields for layers the size of the target's (a dict, to merge with a method's own)."""
        return {"target_hidden_size": config.hidden_size, "hidden_size": config.hidden_size,
                **attention_shape(config), "intermediate_size": config.intermediate_size,
                "rms_norm_eps": float(config.rms_norm_eps), "rope_theta": rope_theta(config)}


class RMSNorm(nn.Module):
    """HF Llama / Qwen3 RMSNorm: `weight * (x / rms(x))`, the statistics in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotary(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin `[B, q, d]` for integer positions `[B, q]` (default RoPE with base `theta`)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions[..., None].float() * inv  # [B, q, d/2]
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on `x [B, h, q, d]` with `cos/sin [B, q, d]`, "rotate half" layout (HF Llama / Qwen3)."""
    x1, x2 = x.chunk(2, -1)
    return x * cos[:, None] + torch.cat([-x2, x1], -1) * sin[:, None]


def attend_parts(q: torch.Tensor, parts: list, scale: float) -> torch.Tensor:
    """One softmax of `q [B, h, M, d]` over several key/value parts, each `(k [B, h_k, T, d], v, visible)`
    with `h % h_k == 0` (GQA: a query head group reads its kv head in place) and `visible` a bool
    `[B, 1, M, T]` or None (all visible). Each part's scores and log-sum-exp are computed on its own and
    the outputs merged by their share of the total mass (the flash-decoding merge), so the cached context
    is read where it lies: no per-layer concatenation with the rows' own keys or shared prompts, and no
    repeat of the context to per-query-head width (issue 20: BiTA copied its context three times per
    layer per step). Exact: the same softmax, in float32."""
    b, h, m, d = q.shape
    outs, lses = [], []
    for k, v, visible in parts:
        if k.shape[2] == 0:  # an empty part (no cached context yet) adds no mass
            continue
        hk = k.shape[1]
        qg = q.reshape(b, hk, (h // hk) * m, d)  # query heads of a group share their kv head
        scores = (qg @ k.transpose(-1, -2)).float().view(b, h, m, -1) * scale  # [B, h, M, T]
        if visible is not None:
            scores = scores.masked_fill(~visible, float("-inf"))
        lse = torch.logsumexp(scores, -1, keepdim=True)  # [B, h, M, 1]; -inf where nothing is visible
        p = torch.exp(scores - lse.clamp_min(torch.finfo(torch.float32).min)).to(v.dtype)
        outs.append((p.view(b, hk, -1, k.shape[2]) @ v).view(b, h, m, d))
        lses.append(lse)
    total = torch.logsumexp(torch.cat(lses, -1), -1, keepdim=True)  # [B, h, M, 1]
    return sum(o * torch.exp(lse - total).to(o.dtype) for o, lse in zip(outs, lses))


def mask_row_attention(attn: nn.Module, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       ctx_k: torch.Tensor, ctx_v: torch.Tensor, see: torch.Tensor, head_dim: int,
                       shared_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                       skinny_rows: int = 0) -> torch.Tensor:
    """Attention of mask rows `h [B, M, H]` (input-normed) through the projections of `attn` (q/k/v/o and
    Qwen3's optional q/k norms): the target layer's own module (bita A.3) or a trained copy (flexdraft
    E.2.3).

    Keys/values: `shared_kv` (`[B or 1, heads', P, d]` each, seen by every row: BiTA's prompts), the
    context `ctx_k/v [B, kv, T, d]` (cache slots), and the rows' own. `see [B, 1, M, T + M]` bool covers
    the context and own keys. The rows' K/V stay local: nothing here is written to a cache. The parts
    are attended in place and merged (`attend_parts`).
    """
    b, m, _ = h.shape
    shape = (b, m, -1, head_dim)
    q, k, v = (linear(p, h, skinny_rows).view(shape) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    if getattr(attn, "q_norm", None) is not None:  # Qwen3: per-head norms before RoPE
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, M, d]
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    t = ctx_k.shape[2]
    parts = [(ctx_k.to(k.dtype), ctx_v.to(v.dtype), see[..., :t]), (k, v, see[..., t:])]
    if shared_kv is not None:
        sk, sv = shared_kv
        parts.append((sk.to(k.dtype).expand(b, -1, -1, -1), sv.to(v.dtype).expand(b, -1, -1, -1), None))
    out = attend_parts(q, parts, float(getattr(attn, "scaling", head_dim ** -0.5)))
    return linear(attn.o_proj, out.transpose(1, 2).reshape(b, m, -1), skinny_rows)


def joint_layer(layer: nn.Module, x, xm, pe_c, mask_c, cache, attend_masks, skinny_rows: int = 0):
    """One pre-norm target layer (Llama / Qwen3) on clean rows `x [B, q, H]` and/or mask rows `xm [B, M, H]`
    (None where absent); returns `(x, xm)`.

    Clean rows run the layer's own attention (`direct_forward.clean_attention`), which writes their K/V
    into `cache` as pending slots: exactly `Target.forward`, products under the same `skinny_rows` rule. Mask rows attend through `attend_masks(input-normed xm)` (over cache
    slots that already hold this pass's clean K/V). Norms and FFN are the target's, one call for both.
    """
    if x is not None:
        # the target's attention minus its wrappers, as `Target.forward` runs it (direct_forward, issue 20)
        x = x + clean_attention(layer.self_attn, layer.input_layernorm(x), *pe_c, mask_c, cache,
                                skinny_rows=skinny_rows)
    if xm is not None:
        xm = xm + attend_masks(layer.input_layernorm(xm))
    h = xm if x is None else x if xm is None else torch.cat([x, xm], 1)
    h = h + mlp(layer.mlp, layer.post_attention_layernorm(h), skinny_rows)
    n = 0 if x is None else x.shape[1]
    return (None if x is None else h[:, :n]), (None if xm is None else h[:, n:])


@torch.no_grad()
def clean_cache(layers, embed: nn.Module, rotary: nn.Module, input_ids: torch.Tensor):
    """Every layer's clean K/V of `input_ids [N, S]` (causal, no gradients) in a fresh `RowKVCache`: the
    constant first half of the mask-row training forward (bita A.5.5, flexdraft E.10.3), since mask rows
    never reach clean rows."""
    from specbench.kv_cache import RowKVCache

    n, s = input_ids.shape
    cache = RowKVCache(n, len(layers), s, input_ids.device)
    positions = cache.begin_write(s)
    x = embed(input_ids)
    pe, mask = rotary(x, positions), cache.attention_mask(None, x.dtype)
    for layer in layers:
        x, _ = joint_layer(layer, x, None, pe, mask, cache, None)
    return cache
