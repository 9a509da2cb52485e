"""A KV cache whose rows have their own lengths.

Speculative decoding commits a different number of tokens per row at every step. HF's
`DynamicCache.crop` is global, so a batch would drift out of alignment (issue 4, "cache handling").
`RowKVCache` keeps preallocated `[B, H_kv, capacity, D]` buffers per layer and a length per row:

* a forward writes its `q` new tokens of row `b` at slots `lengths[b] .. lengths[b] + q - 1`
  ("pending" slots) and attends over slots `0 .. max(lengths) + q - 1` through an explicit 4-D mask
  built by `attention_mask`;
* nothing becomes part of the cache until `commit_prefix` (chain verification keeps the first `n`
  pending tokens in place) or `commit_slots` (tree verification gathers the accepted path's slots
  into contiguous positions, DESIGN.md §3: "a crop alone is wrong for trees").

Prompts are right-padded at prefill: a row's pad slots lie beyond its length and are overwritten by
its next write, so no left padding, no position shift and no padding drift exist. Position ids are
slot indices (the cache never has holes).

Lengths live twice, kept equal by every commit: `lengths` (a host list, for shapes: the attention
window and the capacity) and `device_lengths` (`[B]` on the model's device, for positions and masks),
so a forward never copies lengths to the device and a commit never reads them back (issue 19: the
AR arm must not pay per token a host round trip that a method pays per step). Masks are built from
`device_lengths` in a couple of kernels; a causal write into rows of equal length needs none at all
(`attention_mask(..., allow_none=True)`: SDPA's causal path, as in HF's own decoding).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool visibility -> the additive float mask HF attention takes (0 visible, `finfo.min` blocked)."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(~visible, torch.finfo(dtype).min)


def slot_visibility(lengths: torch.Tensor, end: int, pending_see: torch.Tensor | None = None) -> torch.Tensor:
    """Which cache slots `0..end-1` each query row sees, bool `[B, M, end]` (`[B, 1, end]` without
    `pending_see`): row `b`'s committed slots `< lengths[b]`, and its pending slot `lengths[b] + j` where
    `pending_see[b, m, j]` (`[B or 1, M, q]`). The one statement of "committed, plus the pending tokens
    I may see" behind the cache's own mask and every mask-row layout (bita, flexdraft)."""
    slot = torch.arange(end, device=lengths.device)
    committed = (slot[None, :] < lengths[:, None])[:, None, :]  # [B, 1, end]
    if pending_see is None:
        return committed
    b, (m, q) = lengths.shape[0], pending_see.shape[-2:]
    rel = slot[None, :] - lengths[:, None]  # pending index of each slot, [B, end]
    in_pending = (rel >= 0) & (rel < q)
    idx = rel.clamp(0, max(q - 1, 0))[:, None, :].expand(b, m, end)
    return committed | (torch.gather(pending_see.expand(b, m, q), 2, idx) & in_pending[:, None, :])


class _RowLayer(CacheLayerMixin):
    """One layer's buffers; slot bookkeeping lives in the owning `RowKVCache`."""

    is_compileable = False
    is_sliding = False

    def __init__(self, owner: "RowKVCache"):
        super().__init__()
        self.owner = owner

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        cap = self.owner.capacity
        self.device = key_states.device
        self.keys = key_states.new_zeros((b, h, cap, d))
        self.values = value_states.new_zeros((b, h, cap, value_states.shape[-1]))
        if self.owner.static and self.keys.is_cuda:  # captured graphs read and write these in place
            torch._dynamo.mark_static_address(self.keys)
            torch._dynamo.mark_static_address(self.values)
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.keys.shape[2] < self.owner.capacity:
            self._grow(self.owner.capacity)
        slots = self.owner.write_slots  # [B, q]
        if slots is None:  # all rows write at the same offset: a plain slice
            start = self.owner.write_start
            q = key_states.shape[2]
            self.keys[:, :, start : start + q] = key_states
            self.values[:, :, start : start + q] = value_states
        elif self.owner.static:
            # index_put_, which inductor writes in place; a scatter_ into a graph input is functionalised
            # to a copy of the whole buffer and a copy back, two capacity-sized copies per layer per call
            rows = self.owner.row_ids[:, None]  # [B, 1], broadcast against slots [B, q]
            self.keys[rows, :, slots] = key_states.transpose(1, 2)  # [B, q, H, D] at (row, slot)
            self.values[rows, :, slots] = value_states.transpose(1, 2)
        else:
            b, h, q, d = key_states.shape
            idx = slots[:, None, :, None]
            self.keys.scatter_(2, idx.expand(b, h, q, d), key_states)
            self.values.scatter_(2, idx.expand(b, h, q, value_states.shape[-1]), value_states)
        end = self.owner.view_end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def _grow(self, capacity: int) -> None:
        pad = capacity - self.keys.shape[2]
        self.keys = torch.nn.functional.pad(self.keys, (0, 0, 0, pad))
        self.values = torch.nn.functional.pad(self.values, (0, 0, 0, pad))

    def get_mask_sizes(self, query_length: int):
        return self.owner.view_end, 0

    def get_seq_length(self) -> int:
        return max(self.owner.lengths) if self.owner.lengths else 0

    def get_max_length(self) -> int:
        return -1


class RowKVCache(Cache):
    """KV cache with per-row lengths; see the module docstring for the slot discipline."""

    def __init__(self, batch_size: int, num_layers: int, capacity: int, device: torch.device | str,
                 static: bool = False):
        self.rows = batch_size
        self.capacity = max(int(capacity), 1)
        #: static: every forward attends over the whole capacity and writes at each row's slots, so a step's shapes
        #: depend on (batch, q) alone — what a captured graph needs (`specbench.compiled`); never grows
        self.static = static
        self.device = torch.device(device)
        self.lengths: list[int] = [0] * batch_size
        self.device_lengths = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.write_slots: torch.Tensor | None = None
        self.write_start = 0
        self.view_end = 0
        self.pending = 0
        self._steps = torch.arange(64, device=self.device)  # [0..63]: in-block offsets, grown on demand
        self.row_ids = torch.arange(batch_size, device=self.device)
        super().__init__(layers=[_RowLayer(self) for _ in range(num_layers)])

    def _offsets(self, q: int) -> torch.Tensor:
        if q > self._steps.numel():
            self._steps = torch.arange(max(q, 2 * self._steps.numel()), device=self.device)
        return self._steps[:q]

    @property
    def uniform(self) -> bool:
        """Every row holds the same number of tokens (always at batch 1)."""
        return min(self.lengths, default=0) == max(self.lengths, default=0)

    # -- forward bookkeeping -------------------------------------------------------------------
    def window(self, q: int) -> int:
        """The slots a write of `q` tokens will attend over (`view_end` after `begin_write(q)`)."""
        return self.capacity if self.static else max(self.lengths) + q

    def begin_write(self, q: int) -> torch.Tensor:
        """Reserve `q` pending slots per row; returns their position ids `[B, q]`."""
        need = max(self.lengths) + q
        if need > self.capacity:
            if self.static:
                raise ValueError(f"a static cache cannot grow: {need} slots needed, {self.capacity} reserved")
            self.capacity = max(need, 2 * self.capacity)
        positions = self.device_lengths[:, None] + self._offsets(q)[None, :]
        if self.uniform and not self.static:
            self.write_slots, self.write_start = None, self.lengths[0]
        else:
            self.write_slots = positions
        self.view_end = self.capacity if self.static else need
        self.pending = q
        return positions

    def attention_mask(self, intra: torch.Tensor | None, dtype: torch.dtype, allow_none: bool = False):
        """Additive mask `[B, 1, q, view_end]` for the pending write.

        Query `j` of row `b` sees the row's committed slots `< lengths[b]` and, among the pending
        tokens, those allowed by `intra` (`[q, q]` or `[B, q, q]` bool, True = visible; None = causal).
        A causal write (`intra` None) is one comparison; with `allow_none` and rows of equal length it
        is None, which the target's attention reads as plain causal attention over the window.
        """
        q, end = self.pending, self.view_end
        if intra is None:
            if allow_none and self.uniform and not self.static:
                return None
            slot = torch.arange(end, device=self.device)
            limit = self.device_lengths[:, None] + self._offsets(q)[None, :]  # [B, q]: last visible slot
            visible = slot[None, None, :] <= limit[:, :, None]  # [B, q, end]
        else:
            visible = slot_visibility(self.device_lengths, end, intra)  # [B, q, end]
        return additive_mask(visible, dtype)[:, None]  # [B, 1, q, end]

    # -- committing ----------------------------------------------------------------------------
    def _commit_lengths(self, counts: list[int], device_counts: torch.Tensor | None) -> None:
        """Add `counts` (host) to both copies of the lengths; `device_counts` saves the upload when
        the caller already holds them on the device."""
        self.lengths = [n + c for n, c in zip(self.lengths, counts)]
        if device_counts is None:
            device_counts = torch.tensor(counts, dtype=torch.long).to(self.device, non_blocking=True)
        self.device_lengths += device_counts.to(torch.long)
        self.pending = 0

    def commit_prefix(self, counts: list[int], device_counts: torch.Tensor | None = None) -> None:
        """Keep the first `counts[b]` pending tokens of each row (chain verification, prefill, AR)."""
        for b, n in enumerate(counts):
            if not 0 <= n <= self.pending:
                raise ValueError(f"row {b}: cannot commit {n} of {self.pending} pending tokens")
        self._commit_lengths(list(counts), device_counts)

    def commit_slots(self, keep, counts: torch.Tensor | None = None, host_counts: list[int] | None = None) -> None:
        """Keep the pending tokens with indices `keep[b]` (in order) for each row.

        `keep` is a list of index lists, or a `[B, M]` tensor of which row b uses the first
        `counts[b]` entries (`host_counts`: the same counts on the host, when the caller has them). The
        kept tokens move to contiguous slots after the row's committed prefix, in path order (the
        tree-path gather of issue 4; eagle3_dflash.md A.3.5). Their keys already carry the rotary phase
        of their depth position, which equals their new slot index when `keep[b]` is a root-to-node
        path. One gather + scatter per layer for the whole batch.
        """
        if counts is None:
            host_counts = [len(k) for k in keep]
            counts = torch.tensor(host_counts, dtype=torch.long)
            width = max(host_counts, default=0)
            keep = torch.tensor([list(k) + [0] * (width - len(k)) for k in keep], dtype=torch.long).reshape(-1, width)
        keep, counts = keep.to(self.device), counts.to(self.device)
        if host_counts is None:
            host_counts = counts.tolist()
        j = torch.arange(keep.shape[1], device=self.device)[None, :]
        valid = j < counts[:, None]
        if max(host_counts, default=0) > self.pending or bool((valid & ((keep < 0) | (keep >= self.pending))).any()):
            raise ValueError(f"pending index out of range (pending {self.pending}): {keep.tolist()}")
        lengths = self.device_lengths[:, None]
        src = lengths + torch.where(valid, keep, j)  # [B, M]; padding copies a slot onto itself
        dst = lengths + j
        if not torch.equal(src, dst):
            with torch.inference_mode():
                for layer in self.layers:
                    if layer.is_initialized:
                        for buf in (layer.keys, layer.values):
                            b, h, _, d = buf.shape
                            moved = buf.gather(2, src[:, None, :, None].expand(b, h, -1, d))
                            buf.scatter_(2, dst[:, None, :, None].expand(b, h, -1, d), moved)
        self._commit_lengths(host_counts, counts)

    # -- HF Cache API used by models ---------------------------------------------------------------
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(self.lengths) if self.lengths else 0

    def get_mask_sizes(self, query_length, layer_idx: int = 0):
        return self.view_end, 0

    @property
    def is_compileable(self) -> bool:
        return False

    def layer_kv(self, layer_idx: int, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Committed keys/values of one row, `[H_kv, length, D]` each (tests, feature drafters)."""
        layer = self.layers[layer_idx]
        n = self.lengths[row]
        return layer.keys[row, :, :n], layer.values[row, :, :n]
