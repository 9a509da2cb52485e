"""Acceptance rules: which drafted tokens the target keeps, and which bonus token it adds.

Pure functions over tensors (style.md, gpt-fast), shared by every method (vLLM: methods only propose).
Each rule returns, per row, the number of accepted drafts and the bonus token, drawn so that the
committed tokens are distributed exactly as the target's own samples (DESIGN.md §5):

* `accept_greedy` — T = 0: longest prefix of drafts equal to the target's argmax (a cumulative
  product of matches, never a sum: bita_mtp_flexdraft.md B.5.1 pitfall); the bonus is the argmax
  after the last accepted draft.
* `accept_speculative` — T > 0 chain: accept draft `x` with probability min(1, p(x)/q(x)) and, on
  the first rejection, resample from the normalised residual max(0, p − q). Without draft
  probabilities the proposal is treated as one-hot (q(x) = 1): accept with probability p(x), resample
  from p with `x` removed. That rule is lossless for any draft chosen independently of the verifier's
  randomness (eagle3_dflash.md B.3, "sample-and-match" ≡ one-hot rule).
* `accept_tree` / `accept_tree_greedy` — multi-candidate trees: at each node the children are tried
  in index order; after each rejection the residual is renormalised and the next sibling is tried
  against it (SpecInfer-style recursive rejection, eagle3_dflash.md A.3.4 and pitfall A.5-14). The
  bonus comes from the residual when a sibling was rejected, otherwise from the target at the last
  accepted node.

`p` is always the warped target distribution from `sampling.logits_to_probs`, so temperature, top-p
and top-k act identically in the AR arm and here.
"""

from __future__ import annotations

import torch

from specbench.engine.tree import TreeBatch


def accept_greedy(target_tokens: torch.Tensor, drafts: torch.Tensor, lengths: torch.Tensor):
    """Greedy chain acceptance.

    target_tokens `[B, k+1]`: argmax of the target at [last, d1..dk]; drafts `[B, k]`; lengths `[B]`:
    valid drafts per row. Returns `(n_accepted [B], bonus [B])`.
    """
    k = drafts.shape[1]
    valid = torch.arange(k, device=drafts.device)[None, :] < lengths[:, None]
    match = (drafts == target_tokens[:, :k]) & valid
    n = match.long().cumprod(1).sum(1)
    bonus = target_tokens.gather(1, n[:, None])[:, 0]
    return n, bonus


def _normalise(dist: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Rows of `dist` rescaled to sum 1; rows with no mass left take `fallback` (rejection had
    probability 0 there, so the choice only guards against round-off)."""
    total = dist.sum(-1, keepdim=True)
    return torch.where(total > 0, dist / total.clamp_min(torch.finfo(dist.dtype).tiny), fallback)


def residual(p: torch.Tensor, x: torch.Tensor, q: torch.Tensor | None) -> torch.Tensor:
    """Distribution to resample from after rejecting draft `x`: norm(max(0, p − q)); one-hot q when
    `q` is None. p, q `[N, V]`; x `[N]`."""
    if q is None:
        r = p.scatter(-1, x[:, None], 0.0)
    else:
        r = (p - q).clamp_min(0.0)
    return _normalise(r, p)


def accept_probability(p: torch.Tensor, x: torch.Tensor, q: torch.Tensor | None) -> torch.Tensor:
    """min(1, p(x)/q(x)); p(x) for one-hot proposals. p, q `[..., V]`; x `[...]`."""
    px = p.gather(-1, x[..., None])[..., 0]
    if q is None:
        return px
    qx = q.gather(-1, x[..., None])[..., 0]
    return torch.where(qx > 0, (px / qx.clamp_min(torch.finfo(p.dtype).tiny)).clamp(max=1.0), torch.ones_like(px))


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of `[N, V]` probabilities."""
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def accept_speculative(p: torch.Tensor, drafts: torch.Tensor, lengths: torch.Tensor, q: torch.Tensor | None,
                       generator: torch.Generator | None):
    """Chain speculative sampling (Leviathan et al.; gpt-fast `speculative_decode`).

    p `[B, k+1, V]`: target distributions at [last, d1..dk]; drafts `[B, k]`; lengths `[B]`;
    q `[B, k, V]` draft distributions or None (deterministic / one-hot proposals).
    Returns `(n_accepted [B], bonus [B])`.
    """
    b, k = drafts.shape
    rows = torch.arange(b, device=drafts.device)
    u = torch.rand((b, k), generator=generator, device=p.device)
    ratio = accept_probability(p[:, :k], drafts, q)  # [B, k]
    valid = torch.arange(k, device=drafts.device)[None, :] < lengths[:, None]
    accepted = (u < ratio) & valid
    n = accepted.long().cumprod(1).sum(1)
    p_at = p[rows, n]  # [B, V] target distribution after the accepted prefix
    rejected = n < lengths
    if rejected.any():
        at = n.clamp(max=max(k - 1, 0))
        x = drafts[rows, at]
        r = residual(p_at, x, None if q is None else q[rows, at])
        p_at = torch.where(rejected[:, None], r, p_at)
    return n, sample(p_at, generator)


def accept_tree_greedy(target_tokens: torch.Tensor, trees: TreeBatch):
    """Greedy tree acceptance: from the root, follow the first child equal to the target's argmax.

    target_tokens `[B, N]`: argmax at every tree node. Returns `(path [B, D+1], n_accepted [B],
    bonus [B])`; `path[b, :n+1]` are node indices, root first, −1 beyond.

    Vectorised over the tree (no walk level by level, nothing read back): a node is taken when its token
    is the target's argmax at its parent and no earlier sibling's is (the first child that matches);
    the accepted path is the deepest node all of whose ancestors were taken (`trees.intra`).
    """
    b, n = trees.tokens.shape
    rows = torch.arange(b, device=trees.tokens.device)
    parent = trees.parents.clamp_min(0)
    linked = trees.parents >= 0
    match = linked & (trees.tokens == target_tokens.gather(1, parent))  # [B, N]
    node = torch.arange(n, device=trees.tokens.device)
    earlier_sibling = ((trees.parents[:, None, :] == trees.parents[:, :, None]) & (node[None, :] < node[:, None])
                       & linked[:, None, :])  # [B, N (node), N (sibling)]
    taken = match & ~(earlier_sibling & match[:, None, :]).any(-1)
    taken[:, 0] = True  # the root
    accepted = ~(trees.intra & ~taken[:, None, :]).any(-1)  # every ancestor taken, itself included
    depth = torch.where(accepted, trees.depths, -1)
    deepest = depth.argmax(1)  # [B]; the accepted nodes form one path, so the deepest is unique
    n_acc = trees.depths[rows, deepest]
    on_path = trees.intra[rows, deepest]  # [B, N]: the path's nodes
    levels = torch.arange(trees.max_depth + 1, device=trees.tokens.device)
    at_level = on_path[:, None, :] & (trees.depths[:, None, :] == levels[None, :, None])  # [B, D+1, N]
    path = torch.where(at_level.any(-1), at_level.float().argmax(-1), -1)
    return path, n_acc, target_tokens[rows, deepest]


def accept_tree(p: torch.Tensor, trees: TreeBatch, generator: torch.Generator | None):
    """Multi-candidate tree acceptance with recursive rejection (SpecInfer; eagle3_dflash.md A.3.4).

    p `[B, N, V]`: target distributions at every node. At each node the children are tried in index
    order: accept child `x` with probability min(1, r(x)/q(x)), where r starts as p at the node and
    becomes norm(max(0, r − q)) after each rejection (q one-hot when `trees.probs` is None: r with x
    removed). Lossless when siblings are deterministic (in any order) or i.i.d. samples of their
    `probs`. The bonus is drawn from r at the last node: the residual if a sibling was rejected there,
    else the target. Returns `(path [B, D+1], n_accepted [B], bonus [B])`.
    """
    rows, cur, alive, path, n = _walk_start(trees)
    q = trees.probs
    r = p[:, 0]  # [B, V]
    for level in range(1, trees.max_depth + 1):
        nxt = torch.full_like(cur, -1)
        for j in range(trees.children.shape[2]):
            child = trees.children[rows, cur, j]
            live = alive & (nxt < 0) & (child >= 0)
            if not live.any():
                break
            c = child.clamp_min(0)
            x = trees.tokens[rows, c]
            qc = None if q is None else q[rows, c]
            u = torch.rand(len(rows), generator=generator, device=p.device)
            ok = live & (u < accept_probability(r, x, qc))
            r = torch.where((live & ~ok)[:, None], residual(r, x, qc), r)
            nxt = torch.where(ok, c, nxt)
        r = torch.where((nxt >= 0)[:, None], p[rows, nxt.clamp_min(0)], r)
        cur, alive = _walk_advance(cur, nxt, alive, path, n, level)
        if not alive.any():
            break
    return path, n, sample(r, generator)


def _walk_start(trees: TreeBatch):
    b = trees.tokens.shape[0]
    dev = trees.tokens.device
    path = torch.full((b, trees.max_depth + 1), -1, dtype=torch.long, device=dev)
    path[:, 0] = 0
    return (torch.arange(b, device=dev), torch.zeros(b, dtype=torch.long, device=dev),
            torch.ones(b, dtype=torch.bool, device=dev), path, torch.zeros(b, dtype=torch.long, device=dev))


def _walk_advance(cur, nxt, alive, path, n, level):
    """Move rows that accepted a child (`nxt` ≥ 0) one level down; the others stop for good."""
    moved = nxt >= 0
    path[:, level] = torch.where(moved, nxt, path[:, level])
    n += moved.long()
    return torch.where(moved, nxt, cur), alive & moved
