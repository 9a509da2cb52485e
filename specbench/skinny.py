"""Skinny matrix products on the CPU: `W @ Xᵀ` for a handful of rows (issue 20).

A decode step multiplies every weight by a few rows: one per sequence for AR, `B × q` for a verify pass,
a handful for a drafter's level. On the CPU build torch ships (MKL), `x @ Wᵀ` (`F.linear`) is slow
exactly there: one row goes to a GEMV that runs on a single thread, and 2-8 rows to a GEMM that packs the
whole weight first. `W @ Xᵀ` streams each weight once, on every thread. Measured on the project's 2-core
box, smollm2-135m's 211 weights (540 MB, streamed from memory) per step, median of 5:

| rows | 1 | 2 | 3 | 4 | 6 | 8 | 12 | 16 |
|---|---|---|---|---|---|---|---|---|
| `F.linear`, 2 threads (ms) | 34.8 | 55.6 | 69.6 | 53.5 | 46.0 | 49.6 | 54.5 | 61.6 |
| `W @ Xᵀ`, 2 threads (ms) | 17.3 | 15.9 | 19.8 | 16.7 | 29.8 | 35.4 | 63.9 | 53.9 |
| `F.linear`, 1 thread (ms) | 34.7 | 58.5 | 93.6 | 56.0 | 65.2 | 65.7 | 83.9 | 94.6 |
| `W @ Xᵀ`, 1 thread (ms) | 27.1 | 32.2 | 36.2 | 31.3 | 58.5 | 65.6 | 127.4 | 102.2 |

Hence the rule: products of at most 8 rows (float32, CPU) run as `W @ Xᵀ`, a lone row doubled so it
stays a GEMM. The sums then run in another order than `F.linear`'s, so results differ from it in the
last bits; the rule is the same for every product of the process — the target's forward in both arms
(`direct_forward`) and the drafters' own linears (`use_skinny`, at attach) — so no arm gets faster
kernels than another. `SPECBENCH_SKINNY_ROWS` sets the cut-off (0: off, `F.linear` everywhere) for CPUs
unlike the measured one; the manifest records it (`Target.describe`).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

#: measured cut-off (module docstring): `W @ Xᵀ` wins up to 8 rows at 1 and 2 threads, loses at 12
CPU_ROWS = 8


def default_rows(device: torch.device, dtype: torch.dtype) -> int:
    """The cut-off for a target on `device` in `dtype`: `CPU_ROWS` for float32 on a CPU, else 0 (CUDA's
    GEMMs have no such cliff, and bfloat16 on a CPU was not measured); `SPECBENCH_SKINNY_ROWS` overrides."""
    env = os.environ.get("SPECBENCH_SKINNY_ROWS")
    if env is not None:
        try:
            return max(int(env), 0)
        except ValueError:
            from specbench.errors import SpecbenchError

            raise SpecbenchError(f"SPECBENCH_SKINNY_ROWS must be an integer, not {env!r}") from None
    return CPU_ROWS if device.type == "cpu" and dtype == torch.float32 else 0


def product(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor, skinny_rows: int) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, as `W @ Xᵀ` when `x` has at most `skinny_rows` rows."""
    rows = x.numel() // x.shape[-1]
    if rows > skinny_rows or rows == 0:
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, -1)
    if rows == 1:
        flat = torch.cat([flat, flat])  # [2, K]: one column would be a GEMV again
    y = (weight @ flat.t())[:, :rows].t()  # [N, rows] -> [rows, N]
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], -1)


def linear(module: nn.Linear, x: torch.Tensor, skinny_rows: int) -> torch.Tensor:
    """`module(x)` under the rule. Forward hooks (MTP's gated LoRA) run on the result as
    `nn.Module.__call__` would run them; a module with pre-hooks is called as itself."""
    if module._forward_pre_hooks or not skinny_rows:
        return module(x)
    y = product(module.weight, module.bias, x, skinny_rows)
    for hook in list(module._forward_hooks.values()):
        result = hook(module, (x,), y)
        if result is not None:
            y = result
    return y


class SkinnyLinear(nn.Linear):
    """An `nn.Linear` under the rule; same parameters and state-dict keys as the one it replaces (its
    hooks, if any, run as for any module: this is its `forward`)."""

    skinny_rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return product(self.weight, self.bias, x, self.skinny_rows)


def use_skinny(module: nn.Module, skinny_rows: int) -> nn.Module:
    """Put every plain `nn.Linear` under `module` (a drafter) under the rule, in place: each becomes a
    `SkinnyLinear` holding the very same parameters (optimizers and saved state dicts are unaffected)."""
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if type(child) in (nn.Linear, SkinnyLinear):
                if type(child) is nn.Linear:
                    skinny = SkinnyLinear.__new__(SkinnyLinear)
                    skinny.__dict__.update(child.__dict__)
                    setattr(parent, name, skinny)
                    child = skinny
                child.skinny_rows = skinny_rows
    return module
