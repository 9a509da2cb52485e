"""The shared decode loop that every method, AR included, runs through.

A `Decoder` owns one batch: `prefill` returns each row's first token, `step` drafts, verifies,
accepts and commits, returning the tokens committed per row. `generate` owns everything the methods
must not differ in: stopping (EOS, max tokens, per row), timing (TTFT, decode time, draft/verify/
other spans per step) and the per-step acceptance record (DESIGN.md §3). Like gpt-fast's loop it
fits on one screen.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from specbench.sampling import SamplingConfig, next_tokens
from specbench.timing import StepTimer


class Decoder(ABC):
    """One batch of prompts decoded by one method.

    Subclasses hold the target, the cache and any drafter state. `step` must wrap drafter work in
    `timer.span("draft")` and target verification forwards in `timer.span("verify")`; everything
    else in the step counts as `other`.
    """

    def __init__(self, target, sampling: SamplingConfig, generator: torch.Generator | None):
        self.target = target
        self.sampling = sampling
        self.generator = generator

    @abstractmethod
    def prefill(self, prompts: list[list[int]], capacity: int) -> list[int]:
        """Process the prompts; return each row's first generated token."""

    @abstractmethod
    def step(self, timer: StepTimer, active: list[bool]) -> list[list[int]]:
        """One draft → verify → accept → commit step; tokens committed per row (bonus included).

        `active[b]` is False for rows that already stopped; their output is ignored, and a decoder
        may skip work for them.
        """

    #: tokens a method may commit in one step beyond the first; the loop reserves cache room for it
    max_step_tokens: int = 1


def prefill_batch(target, prompts: list[list[int]], capacity: int, sampling: SamplingConfig,
                  generator: torch.Generator | None, forward=None):
    """The prompts, right-padded, through one target forward into a fresh cache; each row's first token.

    Every decoder's prefill, the AR arm's included, is this computation, so both arms of a run start
    from the same first token (DESIGN.md §4). `forward` (default `target.forward`) lets a drafter see
    the prompt pass. Returns `(cache, prompt logits [B, width, V], first tokens [B])`.
    """
    forward = forward or target.forward
    lengths = [len(p) for p in prompts]
    width = max(lengths)
    pad = target.tokenizer.pad_token_id or 0
    ids = torch.tensor([p + [pad] * (width - len(p)) for p in prompts], device=target.device)
    cache = target.new_cache(len(prompts), capacity)
    logits = forward(ids, cache)  # [B, width, V]
    cache.commit_prefix(lengths)
    rows = torch.arange(len(prompts), device=target.device)
    last = torch.tensor(lengths, device=target.device) - 1
    return cache, logits, next_tokens(logits[rows, last], sampling, generator)


@dataclass
class RowOutput:
    """What one prompt produced in one arm."""

    tokens: list[int] = field(default_factory=list)
    accept_lengths: list[int] = field(default_factory=list)  # tokens committed per step, untruncated
    draft_lengths: list[int] = field(default_factory=list)  # drafts per step (a tree: along the accepted path)
    stopped_by: str = ""  # "eos" | "length"


@dataclass
class BatchOutput:
    rows: list[RowOutput]
    ttft_s: float  # prefill until the first tokens exist (batch-level)
    decode_s: float  # first token until every row stopped
    steps: dict[str, list[float]]  # per-step span arrays in ms (batch-level)
    active_steps: list[int]  # steps each row took part in = its verification forwards


def generate(decoder: Decoder, prompts: list[list[int]], max_new_tokens: int, eos_ids: list[int],
             timer: StepTimer) -> BatchOutput:
    """Decode a batch until every row hits EOS or `max_new_tokens`."""
    eos = set(eos_ids)
    capacity = max(map(len, prompts)) + max_new_tokens + decoder.max_step_tokens + 1
    t0 = timer.now()
    first = decoder.prefill(prompts, capacity)
    t1 = timer.now()
    rows = [RowOutput(tokens=[t]) for t in first]
    active = []
    for r in rows:
        r.stopped_by = "eos" if r.tokens[0] in eos else ("length" if max_new_tokens <= 1 else "")
        active.append(not r.stopped_by)
    active_steps = [0] * len(rows)
    while any(active):
        timer.start_step()
        committed = decoder.step(timer, active)
        timer.end_step()
        drafted = getattr(decoder, "step_drafts", None)  # set by specbench.engine decoders
        for b, toks in enumerate(committed):
            if not active[b]:
                continue
            active_steps[b] += 1
            r = rows[b]
            r.accept_lengths.append(len(toks))
            if drafted is not None:
                r.draft_lengths.append(drafted[b])
            for t in toks:
                r.tokens.append(t)
                if t in eos:
                    r.stopped_by = "eos"
                elif len(r.tokens) >= max_new_tokens:
                    r.stopped_by = "length"
                if r.stopped_by:
                    active[b] = False
                    break
    t2 = timer.now()
    return BatchOutput(rows, t1 - t0, t2 - t1, timer.resolve(), active_steps)
