"""`ar`: the matched autoregressive baseline — the shared loop with speculation switched off.

It uses the same `Target.forward`, `RowKVCache` and sampling code as every speculative method, so a
speedup measures drafting, not a different kernel or cache (DESIGN.md §1, §4).
"""

from __future__ import annotations

import torch

from specbench.decode import ActiveRows, Decoder, prefill_batch
from specbench.methods.base import Method
from specbench.sampling import next_tokens


class AutoregressiveDecoder(Decoder):
    """One target forward per token. Per token it pays one forward and the one host read of the new
    tokens that any host-side stop check needs (HF `generate` pays the same); lengths stay on the
    device and a batch of equal-length rows runs without a mask (`RowKVCache`)."""

    max_step_tokens = 1

    def prefill(self, prompts, capacity):
        self.cache, _, self.last = prefill_batch(self.target, prompts, capacity, self.sampling, self.generator)
        self.step_drafts = [0] * len(prompts)  # recorded as every step's draft length: AR drafts nothing
        return self.last.tolist()

    def step(self, timer, active):
        active = ActiveRows.of(active, self.target.device)
        with timer.span("verify"):
            logits = self.target.forward(self.last[:, None], self.cache)  # [B, 1, V]
        nxt = next_tokens(logits[:, -1], self.sampling, self.generator)
        if active.all:
            self.cache.commit_prefix([1] * len(active.host), self._ones)
            self.last = nxt
        else:  # stopped rows keep their cache and their last token
            self.cache.commit_prefix(active.counts(), active.device.long())
            self.last = torch.where(active.device, nxt, self.last)
        return [[t] if a else [] for t, a in zip(self.last.tolist(), active.host)]

    @property
    def _ones(self) -> torch.Tensor:
        if getattr(self, "_ones_buf", None) is None or self._ones_buf.numel() != self.last.numel():
            self._ones_buf = torch.ones_like(self.last)
        return self._ones_buf


class AutoregressiveMethod(Method):
    name = "ar"
    description = "autoregressive baseline through the shared decode loop (tau = 1 by construction)"

    def __init__(self, target, depth: int | None = None, drafter=None, **options):
        """AR takes no options: a `-o` meant for another method is refused, not silently measured as AR.
        `drafter` is accepted and ignored, `depth` only recorded (a sweep's AR cells share its axes)."""
        self.split_options(options)
        super().__init__(target, depth)

    def make_decoder(self, sampling, generator):
        return AutoregressiveDecoder(self.target, sampling, generator)
