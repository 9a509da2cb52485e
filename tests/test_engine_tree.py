"""Flattened candidate trees (specbench/engine/tree.py) against brute-force definitions."""

import pytest
import torch

from specbench.engine import DraftTree, TreeBatch
from specbench.engine.verify import offered_path_lengths
from specbench.testing.drafters import bfs_parents

TREE = DraftTree([10, 11, 12, 13, 14, 15, 16, 17], [-1, 0, 0, 1, 1, 2, 4, 0])


def _ancestors(tree, n):
    out = {n}
    while tree.parents[n] >= 0:
        n = tree.parents[n]
        out.add(n)
    return out


def test_draft_tree_depths_paths_and_leaves():
    assert TREE.depths == [0, 1, 1, 2, 2, 2, 3, 1]
    assert TREE.path(6) == [0, 1, 4, 6] and TREE.path(0) == [0]
    assert TREE.children(0) == [1, 2, 7] and TREE.children(4) == [6]
    assert TREE.leaves() == [3, 5, 6, 7]
    assert TREE.retrieve_indices() == [[0, 1, 3], [0, 2, 5], [0, 1, 4, 6], [0, 7]]


@pytest.mark.parametrize("parents", [[0], [-1, 0, -5], [-1, 2, 0]])
def test_draft_tree_rejects_bad_parents(parents):
    with pytest.raises(ValueError):
        DraftTree(list(range(len(parents))), parents)


def test_tree_batch_mask_depths_children_match_brute_force():
    other = DraftTree.chain(20, [21, 22])
    batch = TreeBatch.stack([TREE, other], pad_id=0)
    n = len(TREE)
    for i in range(n):
        for j in range(n):
            assert bool(batch.intra[0, i, j]) == (j in _ancestors(TREE, i))
    assert batch.depths[0].tolist() == TREE.depths
    for node in range(n):
        kids = [c for c in batch.children[0, node].tolist() if c >= 0]
        assert kids == TREE.children(node)
    # the chain row: causal mask over its 3 nodes; pad nodes see only themselves and are nobody's child
    assert batch.intra[1, :3, :3].equal(torch.ones(3, 3, dtype=torch.bool).tril())
    assert batch.valid[1].tolist() == [True] * 3 + [False] * (n - 3)
    assert batch.intra[1, 3:].sum(-1).tolist() == [1] * (n - 3)
    assert not batch.intra[1, :3, 3:].any()
    assert set(batch.children[1].flatten().tolist()) == {-1, 1, 2}
    assert batch.max_depth == 3


def test_tree_batch_stacks_draft_probabilities_or_refuses_a_mix():
    probs = torch.full((3, 4), 0.25)
    batch = TreeBatch.stack([DraftTree.chain(0, [1, 2], probs), DraftTree.chain(0, [3], probs[:2])])
    assert batch.probs.shape == (2, 3, 4)
    with pytest.raises(ValueError):
        TreeBatch.stack([DraftTree.chain(0, [1], probs[:2]), DraftTree.chain(0, [1])])


def test_bfs_parents_builds_full_trees():
    parents = bfs_parents((3, 2))
    tree = DraftTree(list(range(len(parents))), parents)
    assert len(tree) == 1 + 3 + 6 and tree.depths.count(2) == 6
    assert [len(tree.children(i)) for i in range(4)] == [3, 2, 2, 2]


def test_offered_path_lengths_count_positions_the_accepted_path_could_reach():
    """A tree step's draft length (per-position acceptance) is the accepted path plus one tried child,
    not the node count: full acceptance at a leaf rejected nothing."""
    # root 0 -> {1, 2}, 1 -> {3}: 3 drafted nodes, depth 2
    parents = torch.tensor([[-1, 0, 0, 1]] * 4)
    trees = TreeBatch.from_parents(torch.arange(4).expand(4, 4), parents)
    path = torch.tensor([[0, 1, 3], [0, 1, -1], [0, -1, -1], [0, 2, -1]])
    n = torch.tensor([2, 1, 0, 1])
    # leaf 3 after 2 accepted; node 1 has a child; the root has children; leaf 2 after 1 accepted
    assert offered_path_lengths(trees, path, n).tolist() == [2, 2, 1, 1]
    # a stopped row's tree offers nothing below its root
    stopped = trees.only(torch.tensor([True, True, False, True]))
    assert offered_path_lengths(stopped, path, n).tolist()[2] == 0
