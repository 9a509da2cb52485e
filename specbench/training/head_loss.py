"""Vocabulary-sized heads over many mask rows, in chunks (flexdraft E.10.3 "chunk the LM-head/CE over
rows"; mtp B.3).

A drafter that shares the target's full LM head scores thousands of mask rows per step; at V = 49152
(smollm2) or 151936 (Qwen3) keeping all `[rows, V]` logits for backward costs gigabytes. The rows are
cut into chunks whose logits are recomputed in backward (activation checkpointing) whenever there is
more than one chunk, so memory holds one chunk's logits at a time.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def chunked_head_terms(terms, *rows: torch.Tensor, chunk: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run `terms(*row_chunks) -> ((sums...), (hits...))` over chunks of `chunk` rows of `rows` (each
    `[R, ...]`); returns the sums added over chunks and the per-row hits concatenated (`[R]` each)."""
    n = rows[0].shape[0]
    sums, hits = None, []
    for i in range(0, max(n, 1), chunk):  # no rows: one empty chunk, so the sums are zero tensors
        part = [r[i:i + chunk] for r in rows]
        s, h = checkpoint(terms, *part, use_reentrant=False) if n > chunk else terms(*part)
        sums = list(s) if sums is None else [a + b for a, b in zip(sums, s)]
        hits.append(h)
    return sums, [torch.cat(h) for h in zip(*hits)]
