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
    def step(self, timer: StepTimer, active) -> list[list[int]]:
        """One draft → verify → accept → commit step; tokens committed per row (bonus included).

        `active` (`ActiveRows`, or a list of bools) says which rows still decode. A stopped row drafts
        nothing and commits nothing: its cache, history and drafter state stay frozen and it returns
        `[]` (the engine's rule, `specbench.engine`; issue 19 "stopped rows stop").
        """

    #: tokens a method may commit in one step beyond the first; the loop reserves cache room for it
    max_step_tokens: int = 1

    def warm_shapes(self) -> None:
        """The compiled regime's warm-up of shapes a short decode may not meet (a width that changes step to
        step): the runner calls it after the warm-up decode, on that decode's finished state, so no graph is
        first traced inside a timed step. Pending writes it makes are never committed. Most decoders' shapes
        are fixed per batch: nothing to do."""


class ActiveRows:
    """Which rows of a batch still decode, on the host (`host`, list of bools) and on the device
    (`device`, bool `[B]`). `generate` owns one and updates both when a row stops, so a step reads
    either without a transfer."""

    def __init__(self, flags, device):
        self.host = [bool(f) for f in flags]
        self.device = torch.tensor(self.host, dtype=torch.bool, device=device)

    @classmethod
    def of(cls, active, device) -> "ActiveRows":
        """`active` as given to `Decoder.step`: an `ActiveRows` or a list of bools (tests)."""
        return active if isinstance(active, ActiveRows) else cls(active, device)

    def stop(self, rows: list[int]) -> None:
        for b in rows:
            self.host[b] = False
        self.device[rows] = False

    @property
    def all(self) -> bool:
        return all(self.host)

    def counts(self, n: int = 1) -> list[int]:
        """`n` for each active row, 0 for each stopped one (what an AR-like step commits)."""
        return [n if a else 0 for a in self.host]


def prefill_batch(target, prompts: list[list[int]], capacity: int, sampling: SamplingConfig,
                  generator: torch.Generator | None, forward=None):
    """The prompts, right-padded, through one target forward into a fresh cache; each row's first token.

    Every decoder's prefill, the AR arm's included, is this computation, so both arms of a run start
    from the same first token (DESIGN.md §4). `forward` (default `target.forward`) lets a drafter see
    the prompt pass. Logits are computed at each row's last prompt position only (`logits_at`); a
    `forward` that returns every position is read there. Returns `(cache, last logits [B, V], first
    tokens [B])`.
    """
    forward = forward or target.forward
    lengths = [len(p) for p in prompts]
    width = max(lengths)
    pad = target.tokenizer.pad_token_id or 0
    ids = torch.tensor([p + [pad] * (width - len(p)) for p in prompts], device=target.device)
    cache = target.new_cache(len(prompts), capacity)
    last = [n - 1 for n in lengths]
    logits = forward(ids, cache, logits_at=last)  # [B, 1, V] (or [B, width, V])
    cache.commit_prefix(lengths)
    if logits.shape[1] == 1:
        logits = logits[:, 0]
    else:
        logits = logits[torch.arange(len(prompts), device=target.device), torch.tensor(last, device=target.device)]
    return cache, logits, next_tokens(logits, sampling, generator)


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
    for r in rows:
        r.stopped_by = "eos" if r.tokens[0] in eos else ("length" if max_new_tokens <= 1 else "")
    active = ActiveRows([not r.stopped_by for r in rows], decoder.target.device)
    active_steps = [0] * len(rows)
    while any(active.host):
        timer.start_step()
        committed = decoder.step(timer, active)
        timer.end_step()
        drafted = getattr(decoder, "step_drafts", None)  # set by specbench.engine decoders
        stopped = []
        for b, toks in enumerate(committed):
            if not active.host[b]:
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
                    stopped.append(b)
                    break
        if stopped:
            active.stop(stopped)
    t2 = timer.now()
    return BatchOutput(rows, t1 - t0, t2 - t1, timer.resolve(), active_steps)
