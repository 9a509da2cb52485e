"""Test-only drafters that bracket every real method (issue 4, "Must show").

* `OracleDrafter` drafts with the target itself: at T = 0 every draft is accepted, so each step
  commits depth + 1 tokens; at T > 0 it samples drafts from the target and passes those
  probabilities, so min(1, p/q) = 1 up to round-off.
* `RandomDrafter` drafts uniform random tokens (optionally declaring the uniform q): τ ≈ 1 at T = 0,
  and the output must still be exact — the verifier, not the drafter, guarantees losslessness.
* `NoisyOracleDrafter` corrupts the oracle's chain at a random position per row and step, so rows
  of a batch accept different numbers of tokens every step (ragged acceptance).
* `TreeOracleDrafter` proposes a tree of the target's top-k tokens with siblings in a rotated order
  (the argmax is not always tried first), or i.i.d. samples from a flattened target distribution
  with their probabilities; accepted paths are not contiguous in tree order, so the cache gather
  is exercised. `RandomTreeDrafter` does the same with random tokens and no target calls.

They recompute everything from the token history with a fresh cache each step: slow, obviously
correct, and independent of the engine state they test.
"""

from __future__ import annotations

import torch

from specbench.engine import ChainSpeculativeDecoder, Proposal, TreeBatch, TreeSpeculativeDecoder
from specbench.methods.base import Method
from specbench.sampling import SamplingConfig, logits_to_probs


def history_logits(target, contexts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Target logits after each row's context (`contexts [R, L]` right-padded); `[R, V]`."""
    cache = target.new_cache(contexts.shape[0], contexts.shape[1] + 1)
    logits = target.forward(contexts, cache)  # [R, L, V]
    return logits[torch.arange(contexts.shape[0]), lengths - 1]


def _gen(seed: int, device, generator: torch.Generator | None) -> torch.Generator:
    """The drafter's own random stream: drawn from the decoder's generator when there is one, so
    that batches decoded with different seeds also draft independently."""
    if generator is not None:
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device)) ^ seed
    return torch.Generator(device=device).manual_seed(seed)


class OracleDrafter(ChainSpeculativeDecoder):
    def __init__(self, target, sampling, generator, depth: int, seed: int = 1234):
        super().__init__(target, sampling, generator, depth)
        self.draft_gen = _gen(seed, target.device, generator)

    def rollout(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`depth` tokens continuing each row's history `[B, k]`, and their distributions at T > 0."""
        t = self.target
        b = len(self.last)
        cache = t.new_cache(b, self.history.ids.shape[1] + self.depth + 1)
        width = int(self.history.lengths.max())
        logits = t.forward(self.history.ids[:, :width], cache)  # [B, width, V]
        cache.commit_prefix(self.history.lengths.tolist())
        cur = logits[torch.arange(b), self.history.lengths - 1]
        tokens, probs = [], []
        for j in range(self.depth):
            if self.sampling.greedy:
                tok = cur.argmax(-1)
            else:
                p = logits_to_probs(cur, self.sampling)
                tok = torch.multinomial(p, 1, generator=self.draft_gen)[:, 0]
                probs.append(p)
            tokens.append(tok)
            if j + 1 < self.depth:
                cur = t.forward(tok[:, None], cache)[:, -1]
                cache.commit_prefix([1] * b)
        return torch.stack(tokens, 1), (torch.stack(probs, 1) if probs else None)

    def propose(self, active):
        tokens, probs = self.rollout()
        return Proposal(tokens, torch.full_like(active, self.depth, dtype=torch.long), probs)


class NoisyOracleDrafter(OracleDrafter):
    """Oracle drafts with position `j ~ U{0..depth}` replaced by a wrong token (`j = depth`: none)."""

    def propose(self, active):
        tokens, _ = self.rollout()
        b, k = tokens.shape
        cut = torch.randint(0, k + 1, (b,), generator=self.draft_gen, device=tokens.device)
        wrong = (tokens + 1 + torch.randint(0, self.target.vocab_size - 1, (b, k), generator=self.draft_gen,
                                            device=tokens.device)) % self.target.vocab_size
        bad = torch.arange(k, device=tokens.device)[None, :] == cut[:, None]
        return Proposal(torch.where(bad, wrong, tokens), torch.full((b,), k, device=tokens.device))


class RandomDrafter(ChainSpeculativeDecoder):
    def __init__(self, target, sampling, generator, depth: int, with_probs: bool = False, seed: int = 99):
        super().__init__(target, sampling, generator, depth)
        self.with_probs = with_probs
        self.draft_gen = _gen(seed, target.device, generator)

    def propose(self, active):
        b, v = len(self.last), self.target.vocab_size
        tokens = torch.randint(0, v, (b, self.depth), generator=self.draft_gen, device=self.last.device)
        probs = torch.full((b, self.depth, v), 1.0 / v, device=self.last.device) if self.with_probs else None
        return Proposal(tokens, torch.full((b,), self.depth, device=self.last.device), probs)


class TreeOracleDrafter(TreeSpeculativeDecoder):
    """Tree of width `branching[d]` at depth d. Deterministic mode: children are the target's top-w
    tokens, rotated by one (2nd, 3rd, …, 1st). Sampled mode: children are i.i.d. draws from the
    target distribution at temperature `2 T` (a deliberately different q), declared as probs."""

    def __init__(self, target, sampling, generator, branching=(3, 2, 1), sampled: bool = False, seed: int = 7):
        n_nodes, width = 1, 1
        for w in branching:
            width *= w
            n_nodes += width
        super().__init__(target, sampling, generator, len(branching), n_nodes)
        self.branching, self.sampled = tuple(branching), sampled
        self.draft_gen = _gen(seed, target.device, generator)

    def propose_tree(self, active):
        b, dev = len(self.last), self.last.device
        tokens, parents = [self.last], [torch.full((b,), -1, device=dev)]
        probs = [torch.zeros(b, self.target.vocab_size, device=dev)]
        frontier = [[]]  # node paths below the root (same shape in every row)
        for w in self.branching:
            paths = torch.stack([torch.stack([tokens[i] for i in path], 1) if path else
                                 torch.zeros(b, 0, dtype=torch.long, device=dev) for path in frontier])  # [F, B, d]
            logits = self._logits_after(paths)  # [F, B, V]
            new_frontier = []
            for f, path in enumerate(frontier):
                kids, q = self._children(logits[f], w)
                for j in range(w):
                    tokens.append(kids[:, j])
                    parents.append(torch.full((b,), path[-1] if path else 0, device=dev))
                    probs.append(q if q is not None else probs[0])
                    new_frontier.append(path + [len(tokens) - 1])
            frontier = new_frontier
        return TreeBatch.from_parents(torch.stack(tokens, 1), torch.stack(parents, 1),
                                      probs=torch.stack(probs, 1) if self.sampled else None)

    def _logits_after(self, paths: torch.Tensor) -> torch.Tensor:
        """Target logits after history + each path, for all frontier paths in one forward."""
        f, b, d = paths.shape
        h = self.history
        width = int(h.lengths.max()) + d
        ctx = torch.nn.functional.pad(h.ids, (0, max(0, width - h.ids.shape[1])))[:, :width]  # [B, width]
        ctx = ctx.repeat(f, 1)  # [F*B, width]
        lengths = h.lengths.repeat(f)
        rows = torch.arange(f * b, device=ctx.device)
        for i in range(d):
            ctx[rows, lengths + i] = paths[:, :, i].reshape(-1)
        return history_logits(self.target, ctx, lengths + d).reshape(f, b, -1)

    def _children(self, logits: torch.Tensor, w: int):
        if self.sampled:
            temp = max(self.sampling.temperature, 0.5) * 2
            q = logits_to_probs(logits, SamplingConfig(temperature=temp))
            return torch.multinomial(q, w, replacement=True, generator=self.draft_gen), q
        top = logits.topk(w, dim=-1).indices
        return torch.roll(top, -1, dims=1) if w > 1 else top, None


def bfs_parents(branching) -> list[int]:
    """Parents of the full tree with `branching[d]` children per node at depth d, in BFS order."""
    parents, level = [-1], [0]
    for w in branching:
        nxt = []
        for node in level:
            for _ in range(w):
                parents.append(node)
                nxt.append(len(parents) - 1)
        level = nxt
    return parents


class RandomTreeDrafter(TreeSpeculativeDecoder):
    """Trees of random tokens, no target calls (cheap enough for the distribution check).

    Deterministic mode: each node's children are distinct random tokens (one-hot proposals).
    Sampled mode: children are i.i.d. draws from a fixed random distribution q, declared as probs
    (duplicates among siblings happen and must be handled)."""

    def __init__(self, target, sampling, generator, branching=(3, 2), sampled: bool = False, seed: int = 5):
        parents = bfs_parents(branching)
        super().__init__(target, sampling, generator, len(branching), len(parents))
        self.parents, self.sampled = parents, sampled
        self.draft_gen = _gen(seed, target.device, generator)
        v = target.vocab_size
        self.q = torch.softmax(2 * torch.randn(v, generator=torch.Generator().manual_seed(seed)), -1).to(target.device)

    def propose_tree(self, active):
        b, n, v, dev = len(self.last), len(self.parents), self.target.vocab_size, self.last.device
        parents = torch.tensor(self.parents, device=dev).expand(b, n)
        if self.sampled:
            tokens = torch.multinomial(self.q.expand(b * n, v), 1, generator=self.draft_gen).reshape(b, n)
        else:  # rank of a random key per (row, parent, token): distinct tokens among siblings
            keys = torch.rand(b, n, v, generator=self.draft_gen, device=dev).argsort(-1)  # [B, N(parent), V]
            rank = torch.zeros(b, n, dtype=torch.long, device=dev)
            for i in range(1, n):
                rank[:, i] = sum(1 for j in range(1, i) if self.parents[j] == self.parents[i])
            tokens = keys.gather(1, parents.clamp_min(0)[:, :, None].expand(b, n, v))  # [B, N, V]
            tokens = tokens.gather(2, (rank % v)[:, :, None])[:, :, 0]
        tokens = torch.cat([self.last[:, None], tokens[:, 1:]], 1)
        probs = self.q.expand(b, n, v) if self.sampled else None
        return TreeBatch.from_parents(tokens, parents, probs=probs)


class DrafterMethod(Method):
    """Wraps a test drafter class as a `Method`, so the kit treats it like any registered method."""

    def __init__(self, target, decoder_cls, depth: int | None = None, **options):
        super().__init__(target, depth, **options)
        self.decoder_cls = decoder_cls
        self.name = decoder_cls.__name__

    def make_decoder(self, sampling, generator):
        if self.depth is None:
            return self.decoder_cls(self.target, sampling, generator, **self.options)
        return self.decoder_cls(self.target, sampling, generator, self.depth, **self.options)


def drafter_factory(decoder_cls, depth: int | None = None, **options):
    """`target -> Method` for the kit: `assert_lossless(drafter_factory(OracleDrafter, 4))`."""
    return lambda target: DrafterMethod(target, decoder_cls, depth, **options)
