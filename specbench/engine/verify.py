"""Verification: one target forward over the drafts, acceptance, and the cache commit.

Both verifiers follow DESIGN.md §3 ("Engine"): a method only proposes; these functions run the
target, apply the shared acceptance rules and leave the cache holding exactly the committed tokens.
The bonus token is returned but not written to the cache: it is the first input of the next step
(the "last" token), just as in the AR decoder.

* `verify_chain` feeds `[last, d1..dk]` per row (rows may carry fewer drafts; the padding is
  computed and dropped) and commits `last` plus the accepted drafts with `commit_prefix`.
* `verify_tree` feeds a flattened tree with its ancestor mask and depth positions and gathers the
  accepted root-to-node path into contiguous slots with `commit_slots` — a crop alone is wrong for
  trees (eagle3_dflash.md A.3.5, pitfall A.5-15).

`forward` defaults to `target.forward`; a method that needs the target's hidden states (EAGLE-3,
DFlash) passes a wrapper that captures them. Only the forward is timed as "verify"; acceptance and
cache work count as "other" (DESIGN.md §4).

Two rules hold for every method because they live here (issue 19):

* **Stopped rows stop.** With `active` given, a stopped row commits nothing: its cache length (and,
  through the decoders, its history and drafter state) stays frozen while the others run.
* **One host read per step.** Acceptance stays on the device; the per-row counts, committed tokens
  and drafts offered are read back in a single transfer (`counts`, `committed`, `drafted`), which is
  what the cache commit, the history and the decode loop use. The AR arm reads its new tokens once
  per token; a method now reads once per step, not once per bookkeeping call.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from specbench.engine.acceptance import accept_greedy, accept_speculative, accept_tree, accept_tree_greedy
from specbench.engine.tree import TreeBatch
from specbench.sampling import SamplingConfig, logits_to_probs


@dataclass
class Proposal:
    """Chain drafts of a batch: `tokens [B, k]` (row b valid up to `lengths[b]`), optional draft
    distributions `probs [B, k, V]` the tokens were sampled from (None = deterministic, one-hot)."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    probs: torch.Tensor | None = None

    @classmethod
    def from_lists(cls, drafts: list[list[int]], device, probs: torch.Tensor | None = None, pad_id: int = 0):
        k = max((len(d) for d in drafts), default=0)
        tokens = torch.full((len(drafts), k), pad_id, dtype=torch.long)
        for b, d in enumerate(drafts):
            tokens[b, : len(d)] = torch.tensor(d, dtype=torch.long)
        return cls(tokens.to(device), torch.tensor([len(d) for d in drafts], device=device), probs)

    @classmethod
    def empty(cls, batch: int, device) -> "Proposal":
        return cls(torch.zeros(batch, 0, dtype=torch.long, device=device),
                   torch.zeros(batch, dtype=torch.long, device=device))

    def only(self, active: torch.Tensor) -> "Proposal":
        """The same drafts with rows outside `active` emptied (stopped rows verify nothing)."""
        return Proposal(self.tokens, torch.where(active, self.lengths, 0), self.probs)

    def trimmed(self, width: int) -> "Proposal":
        """The drafts cut to `width` columns (the longest row's draft, read on the host by a proposer whose
        drafts vary in length, e.g. PLD without a match): padding columns are verified for nothing."""
        return Proposal(self.tokens[:, :width], self.lengths.clamp(max=width),
                        None if self.probs is None else self.probs[:, :width])


@dataclass
class ChainResult:
    n_accepted: torch.Tensor  # [B]
    bonus: torch.Tensor  # [B]
    emitted: torch.Tensor  # [B, k+1]: accepted drafts then the bonus; row b valid up to n_accepted[b] + 1
    logits: torch.Tensor  # [B, k+1, V] target logits at [last, d1..dk]
    counts: list[int]  # tokens committed per row: n_accepted + 1, 0 for a stopped row
    committed: list[list[int]]  # those tokens (accepted drafts + bonus) per row
    drafted: list[int]  # drafts the row offered this step (0 for a stopped row)
    device_counts: torch.Tensor | None = None  # `counts` on the device


@dataclass
class TreeResult:
    path: torch.Tensor  # [B, D+1] accepted node indices, root first, −1 beyond
    n_accepted: torch.Tensor  # [B]
    bonus: torch.Tensor  # [B]
    emitted: torch.Tensor  # [B, D+1] accepted path tokens (root excluded) then the bonus
    logits: torch.Tensor  # [B, N, V] target logits at every node
    counts: list[int]
    committed: list[list[int]]
    drafted: list[int]  # draft positions offered along the accepted path (`offered_path_lengths`)
    device_counts: torch.Tensor | None = None


def read_step(counts: torch.Tensor, emitted: torch.Tensor, drafted: torch.Tensor):
    """The step's one host read: `(counts, committed tokens, drafts offered)` per row as lists."""
    rows = torch.cat([counts[:, None], drafted[:, None].to(counts.dtype), emitted], 1).tolist()
    return [r[0] for r in rows], [r[2:2 + r[0]] for r in rows], [r[1] for r in rows]


def commit_counts(n: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
    """Tokens each row commits: its accepted drafts + the bonus, nothing for a stopped row."""
    return n + 1 if active is None else torch.where(active, n + 1, 0)


def with_bonus(tokens: torch.Tensor, n: torch.Tensor, bonus: torch.Tensor) -> torch.Tensor:
    """`tokens [B, k]` with `bonus[b]` written at column `n[b]` (one column appended): `[B, k+1]`."""
    out = torch.cat([tokens, tokens.new_zeros(tokens.shape[0], 1)], dim=1)
    return out.scatter(1, n[:, None], bonus[:, None])


def accept_chain(logits: torch.Tensor, proposal: Proposal, sampling: SamplingConfig,
                 generator: torch.Generator | None, rule=accept_speculative):
    """Greedy acceptance at T = 0, `rule` (speculative sampling) otherwise; `(n [B], bonus [B])`."""
    if sampling.greedy:
        return accept_greedy(logits.argmax(-1), proposal.tokens, proposal.lengths)
    return rule(logits_to_probs(logits, sampling), proposal.tokens, proposal.lengths, proposal.probs, generator)


def verify_chain(target, cache, last: torch.Tensor, proposal: Proposal, sampling: SamplingConfig,
                 generator: torch.Generator | None, forward=None, timer=None, rule=accept_speculative,
                 active: torch.Tensor | None = None) -> ChainResult:
    """Verify `[last, d1..dk]` in one forward and commit `last` + accepted drafts per active row."""
    if active is not None:
        proposal = proposal.only(active)
    ids = torch.cat([last[:, None], proposal.tokens], dim=1)  # [B, k+1]
    with timer.span("verify") if timer else nullcontext():
        logits = (forward or target.forward)(ids, cache)  # [B, k+1, V]
    n, bonus = accept_chain(logits, proposal, sampling, generator, rule)
    emitted = with_bonus(proposal.tokens, n, bonus)
    device_counts = commit_counts(n, active)
    counts, committed, drafted = read_step(device_counts, emitted, proposal.lengths)
    cache.commit_prefix(counts, device_counts)
    return ChainResult(n, bonus, emitted, logits, counts, committed, drafted, device_counts)


def verify_tree(target, cache, trees: TreeBatch, sampling: SamplingConfig, generator: torch.Generator | None,
                forward=None, timer=None, active: torch.Tensor | None = None) -> TreeResult:
    """Verify a batch of trees (root = last token) and gather each active row's accepted path."""
    if active is not None:
        trees = trees.only(active)
    with timer.span("verify") if timer else nullcontext():
        logits = (forward or target.forward)(trees.tokens, cache, intra=trees.intra, depths=trees.depths)  # [B, N, V]
    if sampling.greedy:
        path, n, bonus = accept_tree_greedy(logits.argmax(-1), trees)
    else:
        path, n, bonus = accept_tree(logits_to_probs(logits, sampling), trees, generator)
    drafted_tokens = trees.tokens.gather(1, path[:, 1:].clamp_min(0))  # [B, D], valid up to n
    emitted = with_bonus(drafted_tokens, n, bonus)
    device_counts = commit_counts(n, active)
    counts, committed, drafted = read_step(device_counts, emitted, offered_path_lengths(trees, path, n))
    cache.commit_slots(path, device_counts, host_counts=counts)
    return TreeResult(path, n, bonus, emitted, logits, counts, committed, drafted, device_counts)


def offered_path_lengths(trees: TreeBatch, path: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Per row, draft positions the tree offered along its accepted path: the accepted nodes, plus one
    when the last accepted node has children (a position tried and rejected). A chain's draft length
    for per-position acceptance: a full-path acceptance at a leaf rejected nothing, however many nodes
    the tree had. `[B]`."""
    rows = torch.arange(path.shape[0], device=path.device)
    last = path[rows, n]  # the last accepted node (the root when none was)
    has_child = (trees.children[rows, last] >= 0).any(-1)
    return n + has_child.long()
