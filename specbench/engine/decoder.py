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
along the accepted path (`offered_path_lengths`).
"""

from __future__ import annotations

import torch

from specbench.decode import Decoder, prefill_batch
from specbench.engine.acceptance import accept_speculative
from specbench.engine.tree import DraftTree, TreeBatch
from specbench.engine.verify import ChainResult, Proposal, TreeResult, verify_chain, verify_tree


class TokenHistory:
    """Prompt + emitted tokens of every row in one growing `[B, capacity]` buffer (drafters read it)."""

    def __init__(self, prompts: list[list[int]], device, capacity: int):
        width = max(max(map(len, prompts)), capacity)
        self.ids = torch.tensor([p + [0] * (width - len(p)) for p in prompts], dtype=torch.long, device=device)
        self.lengths = torch.tensor([len(p) for p in prompts], device=device)

    def append(self, tokens: torch.Tensor, counts: torch.Tensor) -> None:
        """Append the first `counts[b]` of `tokens [B, m]` to each row."""
        m = tokens.shape[1]
        need = int(self.lengths.max()) + m
        if need > self.ids.shape[1]:
            self.ids = torch.nn.functional.pad(self.ids, (0, max(need, 2 * self.ids.shape[1]) - self.ids.shape[1]))
        pos = self.lengths[:, None] + torch.arange(m, device=self.ids.device)[None, :]  # [B, m]
        keep = torch.arange(m, device=self.ids.device)[None, :] < counts[:, None]
        rows = torch.arange(tokens.shape[0], device=self.ids.device)[:, None].expand_as(pos)
        self.ids[rows[keep], pos[keep]] = tokens[keep]
        self.lengths += counts

    def row(self, b: int) -> list[int]:
        return self.ids[b, : self.lengths[b]].tolist()


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
        self.history = TokenHistory([p + [t] for p, t in zip(prompts, self.last.tolist())], self.target.device,
                                    capacity)
        self.on_prefill(logits)
        return self.last.tolist()

    def on_prefill(self, logits: torch.Tensor) -> None:
        """Drafter hook: prompt logits `[B, width, V]` (right-padded); the history is ready."""

    def on_commit(self, result) -> None:
        """Drafter hook after each step's commit (`ChainResult` or `TreeResult`)."""

    def _finish(self, result) -> list[list[int]]:
        self.last = result.bonus
        self.history.append(result.emitted, result.n_accepted + 1)
        self.on_commit(result)
        return result.committed


class ChainSpeculativeDecoder(SpeculativeDecoder):
    """A chain method implements `propose`; `rule` is the T > 0 acceptance (tests swap it)."""

    rule = staticmethod(accept_speculative)

    def propose(self, active: torch.Tensor) -> Proposal:
        """Drafts to follow `self.last` per row, at most `self.depth` each; `active` `[B]` bool."""
        raise NotImplementedError

    def step(self, timer, active) -> list[list[int]]:
        act = torch.tensor(active, device=self.target.device)
        with timer.span("draft"):
            proposal = self.propose(act)
        proposal = proposal.only(act)
        self.step_drafts = proposal.lengths.tolist()
        result: ChainResult = verify_chain(self.target, self.cache, self.last, proposal, self.sampling,
                                           self.generator, forward=self.forward, timer=timer, rule=self.rule)
        return self._finish(result)


class TreeSpeculativeDecoder(SpeculativeDecoder):
    """A tree method implements `propose_tree`; roots must be `self.last`. `depth` bounds the tree
    depth; `max_nodes` is the most nodes per row (for cache room)."""

    def __init__(self, target, sampling, generator, depth: int, max_nodes: int):
        super().__init__(target, sampling, generator, depth)
        self.max_step_tokens = max(int(max_nodes), self.depth + 1)

    def propose_tree(self, active: torch.Tensor) -> TreeBatch | list[DraftTree]:
        raise NotImplementedError

    def step(self, timer, active) -> list[list[int]]:
        act = torch.tensor(active, device=self.target.device)
        with timer.span("draft"):
            trees = self.propose_tree(act)
        if not isinstance(trees, TreeBatch):
            trees = TreeBatch.stack(trees, pad_id=self.target.tokenizer.pad_token_id or 0).to(self.target.device)
        if not torch.equal(trees.tokens[:, 0], self.last):
            raise ValueError("every tree's root must be the decoder's last emitted token")
        result: TreeResult = verify_tree(self.target, self.cache, trees, self.sampling, self.generator,
                                         forward=self.forward, timer=timer)
        self.step_drafts = offered_path_lengths(trees, result)
        return self._finish(result)


def offered_path_lengths(trees: TreeBatch, result: TreeResult) -> list[int]:
    """Per row, draft positions the tree offered along its accepted path: the accepted nodes, plus one
    when the last accepted node has children (a position tried and rejected). A chain's draft length
    for per-position acceptance: a full-path acceptance at a leaf rejected nothing, however many nodes
    the tree had."""
    rows = torch.arange(result.path.shape[0], device=result.path.device)
    last = result.path[rows, result.n_accepted]  # the last accepted node (the root when none was)
    has_child = (trees.children[rows, last] >= 0).any(-1)
    return (result.n_accepted + has_child.long()).tolist()
