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
keys, so it must not change.
"""

from __future__ import annotations

import torch
from torch import nn


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
