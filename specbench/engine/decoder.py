"""Reusable speculative decoders: a method supplies a proposer, the engine does the rest.

`ChainSpeculativeDecoder` (PLD, DFlash, FlexDraft sequential mode) asks `propose(active)` for a
`Proposal` of chain drafts per row; `TreeSpeculativeDecoder` (EAGLE-3, BiTA) asks `propose_tree`
for a `TreeBatch` or one `DraftTree` per row. Prefill, verification, acceptance, the cache commit,
step timing and the token history are shared, so two methods differ only in their drafts (vLLM's
proposer / rejection-sampler split, style.md).

Invariant after every call: the cache holds the prompt and every emitted token except the newest
one, `last`, which is the first input of the next verification (the root of the next tree). The
lossless kit checks it (`specbench.testing.lossless`).

Hooks for drafters with state: `forward` (wrap `target.forward`, e.g. to capture hidden states),
`on_prefill(logits)` and `on_commit(result)`. `step_drafts` (drafts per row in the last step) lets
`generate` record `draft_lengths` next to `accept_lengths`, so per-position acceptance can tell
"rejected" from "nothing drafted" (PLD without a match): a chain's draft length, a tree's length
along the accepted path (`verify.offered_path_lengths`).

Stopped rows (`ActiveRows`) draft nothing and commit nothing: `verify_chain` / `verify_tree` empty
their proposals and commit 0 tokens for them, and `_finish` keeps their last token and history, so
drafters that sync their own caches from `result.counts` freeze them too (issue 19).
"""

from __future__ import annotations

import torch

from specbench.decode import ActiveRows, Decoder, prefill_batch
from specbench.engine.acceptance import accept_speculative
from specbench.engine.tree import DraftTree, TreeBatch
from specbench.engine.verify import ChainResult, Proposal, TreeResult, verify_chain, verify_tree


class TokenHistory:
    """Prompt + emitted tokens of every row in one growing `[B, capacity]` buffer (drafters read it).
    Lengths are kept on the device (`lengths`, drafters index with them) and on the host
    (`host_lengths`, for the buffer's size), so appending reads nothing back."""

    def __init__(self, prompts: list[list[int]], device, capacity: int):
        width = max(max(map(len, prompts)), capacity)
        self.ids = torch.tensor([p + [0] * (width - len(p)) for p in prompts], dtype=torch.long, device=device)
        self.host_lengths = [len(p) for p in prompts]
        self.lengths = torch.tensor(self.host_lengths, device=device)

    def append(self, tokens: torch.Tensor, counts: torch.Tensor, host_counts: list[int]) -> None:
        """Append the first `counts[b]` of `tokens [B, m]` to each row (`host_counts`: the same counts)."""
        m = tokens.shape[1]
        need = max(self.host_lengths) + m
        if need > self.ids.shape[1]:
            self.ids = torch.nn.functional.pad(self.ids, (0, max(need, 2 * self.ids.shape[1]) - self.ids.shape[1]))
        pos = self.lengths[:, None] + torch.arange(m, device=self.ids.device)[None, :]  # [B, m]
        keep = torch.arange(m, device=self.ids.device)[None, :] < counts[:, None]
        rows = torch.arange(tokens.shape[0], device=self.ids.device)[:, None].expand_as(pos)
        self.ids[rows[keep], pos[keep]] = tokens[keep]
        self.lengths += counts
        self.host_lengths = [n + c for n, c in zip(self.host_lengths, host_counts)]

    def row(self, b: int) -> list[int]:
        return self.ids[b, : self.host_lengths[b]].tolist()


class SpeculativeDecoder(Decoder):
    """Shared prefill and bookkeeping; `depth` = most drafts per step."""

    def __init__(self, target, sampling, generator, depth: int):
        super().__init__(target, sampling, generator)
        self.depth = int(depth)
        self.max_step_tokens = self.depth + 1

    def forward(self, ids: torch.Tensor, cache, **kwargs) -> torch.Tensor:
        return self.target.forward(ids, cache, **kwargs)

    def prefill(self, prompts, capacity):
        """`prefill_batch` (the AR arm's computation) through `self.forward`, then the token history."""
        self.cache, logits, self.last = prefill_batch(self.target, prompts, capacity, self.sampling,
                                                      self.generator, forward=self.forward)
        first = self.last.tolist()
        self.history = TokenHistory([p + [t] for p, t in zip(prompts, first)], self.target.device, capacity)
        self.on_prefill(logits)
        return first

    def on_prefill(self, logits: torch.Tensor) -> None:
        """Drafter hook: the prompts' last logits `[B, V]`; the history is ready."""

    def on_commit(self, result) -> None:
        """Drafter hook after each step's commit (`ChainResult` or `TreeResult`); stopped rows have
        `result.counts[b] == 0` and must keep their drafter state."""

    def _finish(self, result, active: ActiveRows) -> list[list[int]]:
        """The step's end for every speculative decoder: the new last tokens (a stopped row keeps its
        own), the history, the drafter hook, the drafts offered; returns the committed tokens."""
        self.last = result.bonus if active.all else torch.where(active.device, result.bonus, self.last)
        self.history.append(result.emitted, result.device_counts, result.counts)
        self.step_drafts = result.drafted
        self.on_commit(result)
        return result.committed


class ChainSpeculativeDecoder(SpeculativeDecoder):
    """A chain method implements `propose`; `rule` is the T > 0 acceptance (tests swap it)."""

    rule = staticmethod(accept_speculative)

    def propose(self, active: torch.Tensor) -> Proposal:
        """Drafts to follow `self.last` per row, at most `self.depth` each; `active` `[B]` bool."""
        raise NotImplementedError

    def step(self, timer, active) -> list[list[int]]:
        active = ActiveRows.of(active, self.target.device)
        with timer.span("draft"):
            proposal = self.propose(active.device)
        result: ChainResult = verify_chain(self.target, self.cache, self.last, proposal, self.sampling,
                                           self.generator, forward=self.forward, timer=timer, rule=self.rule,
                                           active=None if active.all else active.device)
        return self._finish(result, active)


class TreeSpeculativeDecoder(SpeculativeDecoder):
    """A tree method implements `propose_tree`; roots must be `self.last`. `depth` bounds the tree
    depth; `max_nodes` is the most nodes per row (for cache room)."""

    def __init__(self, target, sampling, generator, depth: int, max_nodes: int):
        super().__init__(target, sampling, generator, depth)
        self.max_step_tokens = max(int(max_nodes), self.depth + 1)

    def propose_tree(self, active: torch.Tensor) -> TreeBatch | list[DraftTree]:
        raise NotImplementedError

    def step(self, timer, active) -> list[list[int]]:
        active = ActiveRows.of(active, self.target.device)
        with timer.span("draft"):
            trees = self.propose_tree(active.device)
        if not isinstance(trees, TreeBatch):
            trees = TreeBatch.stack(trees, pad_id=self.target.tokenizer.pad_token_id or 0).to(self.target.device)
        result: TreeResult = verify_tree(self.target, self.cache, trees, self.sampling, self.generator,
                                         forward=self.forward, timer=timer,
                                         active=None if active.all else active.device)
        return self._finish(result, active)
