"""`ar`: the matched autoregressive baseline — the shared loop with speculation switched off.

It uses the same `Target.forward`, `RowKVCache` and sampling code as every speculative method, so a
speedup measures drafting, not a different kernel or cache (DESIGN.md §1, §4).
"""

from __future__ import annotations

from specbench.decode import Decoder, prefill_batch
from specbench.methods.base import Method
from specbench.sampling import next_tokens


class AutoregressiveDecoder(Decoder):
    max_step_tokens = 1

    def prefill(self, prompts, capacity):
        self.cache, _, self.last = prefill_batch(self.target, prompts, capacity, self.sampling, self.generator)
        self.step_drafts = [0] * len(prompts)  # recorded as every step's draft length: AR drafts nothing
        return self.last.tolist()

    def step(self, timer, active):
        with timer.span("verify"):
            logits = self.target.forward(self.last[:, None], self.cache)  # [B, 1, V]
        self.cache.commit_prefix([1] * len(active))
        self.last = next_tokens(logits[:, -1], self.sampling, self.generator)
        return [[t] for t in self.last.tolist()]


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
