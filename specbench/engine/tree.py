"""Candidate trees for tree verification (EAGLE-3, BiTA; eagle3_dflash.md A.3.2-A.3.3).

A tree is flattened in index order: node 0 is the root — the last emitted token, not yet in the
target cache — and every other node names its parent, which has a smaller index. From the parents
follow everything verification needs:

* `intra [N, N]`: node n sees its ancestors and itself (`mask[n] = eye[n] | mask[parent[n]]`); the
  committed prefix is always visible (the cache adds it);
* `depths [N]`: position offset of each node after the prefix (root 0), so siblings share a position;
* `children [N, C]`: each node's children in index order (−1 padded): the order in which siblings
  are tried by `accept_tree`.

`DraftTree` is one row, convenient to build; `TreeBatch` stacks rows (padding with inert nodes that
nobody sees and nobody tries) into the tensors the verifier and the acceptance rules use. A chain is
the tree whose node i has parent i − 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class DraftTree:
    """One row's candidate tree: `tokens[0]` is the root; `parents[0] == -1`, `parents[i] < i`.

    `probs` `[N, V]` (row 0 unused) are the distributions the nodes were sampled from, i.i.d. per
    sibling group; None means deterministic proposals (e.g. top-k children), verified as one-hot.
    """

    tokens: list[int]
    parents: list[int]
    probs: torch.Tensor | None = None

    def __post_init__(self):
        if len(self.tokens) != len(self.parents) or not self.tokens:
            raise ValueError("a tree needs one parent per token and at least a root")
        if self.parents[0] != -1 or any(not 0 <= p < i for i, p in enumerate(self.parents) if i):
            raise ValueError(f"parents must be topologically ordered with the root first: {self.parents}")

    @classmethod
    def chain(cls, root: int, drafts: list[int], probs: torch.Tensor | None = None) -> "DraftTree":
        return cls([root, *drafts], list(range(-1, len(drafts))), probs)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def depths(self) -> list[int]:
        d = [0] * len(self)
        for i in range(1, len(self)):
            d[i] = d[self.parents[i]] + 1
        return d

    def children(self, node: int) -> list[int]:
        return [i for i, p in enumerate(self.parents) if p == node]

    def path(self, node: int) -> list[int]:
        """Node indices from the root to `node`, root first."""
        out = [node]
        while self.parents[out[-1]] >= 0:
            out.append(self.parents[out[-1]])
        return out[::-1]

    def leaves(self) -> list[int]:
        inner = set(self.parents)
        return [i for i in range(len(self)) if i not in inner]

    def retrieve_indices(self) -> list[list[int]]:
        """Root-to-leaf paths, one per leaf (EAGLE's `retrieve_indices`, unpadded)."""
        return [self.path(leaf) for leaf in self.leaves()]


@dataclass
class TreeBatch:
    """Trees of a batch as tensors (N = largest tree; pad nodes have `valid` False)."""

    tokens: torch.Tensor  # [B, N]
    parents: torch.Tensor  # [B, N], root and pad nodes −1
    depths: torch.Tensor  # [B, N]
    intra: torch.Tensor  # [B, N, N] bool, node sees ancestors + itself
    children: torch.Tensor  # [B, N, C], −1 padded, index order
    valid: torch.Tensor  # [B, N] bool
    probs: torch.Tensor | None = None  # [B, N, V]

    @property
    def max_depth(self) -> int:
        return int(self.depths.max()) if self.depths.numel() else 0

    @classmethod
    def from_parents(cls, tokens: torch.Tensor, parents: torch.Tensor, valid: torch.Tensor | None = None,
                     probs: torch.Tensor | None = None) -> "TreeBatch":
        """Build masks, depths and child tables from `[B, N]` parents (−1 for root and pads)."""
        b, n = tokens.shape
        dev = tokens.device
        if valid is None:
            valid = torch.ones(b, n, dtype=torch.bool, device=dev)
        valid = valid.clone()
        valid[:, 0] = True
        rows = torch.arange(b, device=dev)
        # pointer jumping instead of a Python loop over nodes: after round r each node knows its ancestors
        # up to 2^r levels up and `up`, its 2^r-th ancestor (the root, or itself for the root and pads);
        # depth <= N - 1, so ceil(log2(N)) rounds reach every root without reading anything back
        has = valid & (parents >= 0)
        node = torch.arange(n, device=dev).expand(b, n)
        up = torch.where(has, parents.clamp_min(0), node)  # [B, N]
        intra = torch.eye(n, dtype=torch.bool, device=dev).repeat(b, 1, 1)
        intra[rows[:, None], node, up] = True
        depths = has.long()  # steps from each node to `up`
        for _ in range(max(1, (n - 1).bit_length())):
            intra |= torch.gather(intra, 1, up[:, :, None].expand(b, n, n))  # my ancestors' ancestors
            depths = depths + depths.gather(1, up)
            up = up.gather(1, up)
        # rank of each node among its parent's children, in index order
        linked = has
        parent_of = torch.where(linked, parents, n)  # n = "no parent" bucket
        onehot = torch.nn.functional.one_hot(parent_of, n + 1)  # [B, N(child), N+1(parent)]
        rank = onehot.cumsum(1).gather(2, parent_of[:, :, None])[:, :, 0] - 1  # [B, N]
        width = int(rank[linked].max()) + 1 if linked.any() else 1
        children = torch.full((b, n + 1, width), -1, dtype=torch.long, device=dev)
        slot = torch.where(linked, rank, 0)
        children[rows[:, None].expand(b, n)[linked], parent_of[linked], slot[linked]] = node[linked]
        return cls(tokens, torch.where(linked, parents, -1), depths, intra, children[:, :n], valid, probs)

    @classmethod
    def stack(cls, trees: list[DraftTree], pad_id: int = 0) -> "TreeBatch":
        n = max(len(t) for t in trees)
        dev = trees[0].probs.device if trees[0].probs is not None else "cpu"
        tokens = torch.full((len(trees), n), pad_id, dtype=torch.long)
        parents = torch.full((len(trees), n), -1, dtype=torch.long)
        valid = torch.zeros(len(trees), n, dtype=torch.bool)
        for i, t in enumerate(trees):
            tokens[i, : len(t)] = torch.tensor(t.tokens)
            parents[i, : len(t)] = torch.tensor(t.parents)
            valid[i, : len(t)] = True
        probs = None
        if any(t.probs is not None for t in trees):
            if not all(t.probs is not None for t in trees):
                raise ValueError("either every tree of a batch carries draft probabilities or none does")
            v = trees[0].probs.shape[-1]
            probs = torch.zeros(len(trees), n, v, device=dev)
            for i, t in enumerate(trees):
                probs[i, : len(t)] = t.probs
        return cls.from_parents(tokens.to(dev), parents.to(dev), valid.to(dev), probs)

    def only(self, active: torch.Tensor) -> "TreeBatch":
        """The same trees with nothing offered below the root of rows outside `active` (bool `[B]`):
        a stopped row's root has no children to try, so it accepts nothing (issue 19)."""
        keep = active[:, None]
        root = torch.zeros_like(self.valid)
        root[:, 0] = True
        return dataclasses.replace(self, children=torch.where(active[:, None, None], self.children, -1),
                                   parents=torch.where(keep, self.parents, -1), valid=self.valid & (keep | root))

    def to(self, device) -> "TreeBatch":
        move = lambda x: None if x is None else x.to(device)  # noqa: E731
        return TreeBatch(*(move(getattr(self, f)) for f in
                           ("tokens", "parents", "depths", "intra", "children", "valid", "probs")))
