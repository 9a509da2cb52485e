"""Norm and rotary-embedding pieces for drafters that own their decoder layers (eagle3, dflash, flexdraft).

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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


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
