"""Acceptance rules against brute-force references (specbench/engine/acceptance.py).

Each sampling rule is checked twice: (a) the implementation's outcome frequencies over many rows
match an exact enumeration of the rule, and (b) the enumeration itself is lossless — the tokens it
commits have exactly the target's probabilities (DESIGN.md §5).
"""

import itertools

import pytest
import torch

from specbench.engine import DraftTree, TreeBatch, accept_greedy, accept_speculative, accept_tree, accept_tree_greedy
from specbench.testing.lossless import histogram_test, one_thread

V = 5
N_ROWS = 200_000


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_thread(pause_gc=False):
        yield


def _dist(*shape, seed, sharp=1.5):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(sharp * torch.randn(*shape, V, generator=g), -1)


# -- greedy ------------------------------------------------------------------------------------------

def _greedy_ref(target, drafts, length):
    n = 0
    while n < length and drafts[n] == target[n]:
        n += 1
    return n, target[n]


def test_accept_greedy_is_the_longest_matching_prefix():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (500, 6), generator=g)
    drafts = torch.randint(0, 3, (500, 5), generator=g)
    lengths = torch.randint(0, 6, (500,), generator=g)
    n, bonus = accept_greedy(target, drafts, lengths)
    for b in range(500):
        assert (int(n[b]), int(bonus[b])) == _greedy_ref(target[b].tolist(), drafts[b].tolist(), int(lengths[b]))


def test_accept_greedy_does_not_count_matches_after_a_mismatch():
    # BatchSpec's bug (bita_mtp_flexdraft.md B.5.1): summing matches would give 2 here
    n, bonus = accept_greedy(torch.tensor([[1, 9, 3, 4]]), torch.tensor([[1, 2, 3]]), torch.tensor([3]))
    assert n.tolist() == [1] and bonus.tolist() == [9]


# -- chain speculative sampling ---------------------------------------------------------------------------

def _chain_ref(p, drafts, length, q):
    """Exact {(n, bonus): probability} of the chain rule, by enumeration."""
    out, reach = {}, 1.0
    for i in range(length + 1):
        if i == length:
            for y in range(V):
                out[(i, y)] = out.get((i, y), 0) + reach * float(p[i, y])
            break
        x = drafts[i]
        qx = 1.0 if q is None else float(q[i, x])
        a = min(1.0, float(p[i, x]) / qx) if qx > 0 else 1.0
        r = p[i].clone()
        if q is None:
            r[x] = 0
        else:
            r = (p[i] - q[i]).clamp_min(0)
        r = r / r.sum() if r.sum() > 0 else p[i]
        for y in range(V):
            out[(i, y)] = out.get((i, y), 0) + reach * (1 - a) * float(r[y])
        reach *= a
    return out


def _sequence_probs(outcomes, drafts, p, upto):
    """Distribution of the first `upto` tokens when a step's committed tokens are followed by plain
    sampling from the (position-dependent, context-free) target p: lossless iff it is Π p_i."""
    probs = {}
    for (n, y), pr in outcomes.items():
        head = tuple(drafts[:n]) + (y,)
        for tail in itertools.product(range(V), repeat=max(upto - len(head), 0)):
            seq = (head + tail)[:upto]
            w = pr * float(torch.prod(torch.stack([p[len(head) + i, t] for i, t in enumerate(tail)]))) if tail else pr
            probs[seq] = probs.get(seq, 0.0) + w
    return probs


def _assert_chain_lossless(table, p, upto):
    for seq in itertools.product(range(V), repeat=upto):
        exact = float(torch.prod(torch.stack([p[i, t] for i, t in enumerate(seq)])))
        assert table.get(seq, 0.0) == pytest.approx(exact, abs=1e-6), seq


@pytest.mark.parametrize("length", [3, 1])
def test_chain_reference_is_lossless_for_any_fixed_draft_when_one_hot(length):
    p = _dist(4, seed=1)
    for drafts in ([2, 0, 4], [4, 4, 4]):
        _assert_chain_lossless(_sequence_probs(_chain_ref(p, drafts, length, None), drafts, p, 3), p, 3)


def test_chain_reference_is_lossless_averaged_over_drafts_from_q():
    p, q = _dist(3, seed=1), _dist(2, seed=2)
    table = {}
    for drafts in itertools.product(range(V), repeat=2):
        weight = float(q[0, drafts[0]] * q[1, drafts[1]])
        for seq, pr in _sequence_probs(_chain_ref(p, list(drafts), 2, q), list(drafts), p, 3).items():
            table[seq] = table.get(seq, 0.0) + weight * pr
    _assert_chain_lossless(table, p, 3)


@pytest.mark.parametrize("with_q", [False, True])
def test_accept_speculative_matches_the_reference(with_q):
    p, q = _dist(4, seed=3), _dist(3, seed=4) if with_q else None
    drafts, lengths = [1, 3, 0], [3, 2]  # two row kinds: full and ragged
    for length in lengths:
        n, bonus = accept_speculative(p.expand(N_ROWS, -1, -1), torch.tensor([drafts]).expand(N_ROWS, -1),
                                      torch.full((N_ROWS,), length), None if q is None else q.expand(N_ROWS, -1, -1),
                                      torch.Generator().manual_seed(length))
        ref = _chain_ref(p, drafts, length, q)
        keys = sorted(ref)
        counts = torch.bincount(n * V + bonus, minlength=(len(drafts) + 1) * V)
        report = histogram_test("n,bonus", counts[[a * V + b for a, b in keys]], torch.tensor([ref[k] for k in keys]))
        assert report.passed, report


def test_accept_speculative_equal_p_and_q_accepts_everything():
    p = _dist(4, seed=5)
    n, _ = accept_speculative(p.expand(1000, -1, -1), torch.tensor([[1, 2, 3]]).expand(1000, -1),
                              torch.full((1000,), 3), p[:3].expand(1000, -1, -1), torch.Generator().manual_seed(0))
    assert n.tolist() == [3] * 1000


def test_accept_speculative_with_one_hot_p_is_greedy():
    target = torch.tensor([[1, 4, 2, 0]])
    p = torch.nn.functional.one_hot(target, V).float()
    for drafts in ([1, 4, 2], [1, 3, 2], [0, 4, 2]):
        d = torch.tensor([drafts])
        got = accept_speculative(p, d, torch.tensor([3]), None, torch.Generator().manual_seed(0))
        assert [t.tolist() for t in got] == [t.tolist() for t in accept_greedy(target, d, torch.tensor([3]))]


# -- trees -----------------------------------------------------------------------------------------

TREE = DraftTree([0, 3, 1, 3, 2, 4, 0], [-1, 0, 0, 0, 1, 1, 2])  # a duplicate sibling token (3) on purpose


def _tree_ref(p, tree, q):
    """Exact {(path, bonus): probability} of recursive rejection, by enumeration."""
    out = {}

    def visit(node, path, reach):
        r = p[node].clone()
        for c in tree.children(node):
            x = tree.tokens[c]
            qx = 1.0 if q is None else float(q[c, x])
            a = min(1.0, float(r[x]) / qx) if qx > 0 else 1.0
            if a > 0:
                visit(c, path + (c,), reach * a)
            reach *= 1 - a
            nr = r.clone()
            if q is None:
                nr[x] = 0
            else:
                nr = (r - q[c]).clamp_min(0)
            r = nr / nr.sum() if nr.sum() > 0 else r
        for y in range(V):
            out[(path, y)] = out.get((path, y), 0) + reach * float(r[y])

    visit(0, (0,), 1.0)
    return out


def _first_two(table, tree, p_child):
    """P(t1), P(t1, t2) when a tree step is followed by plain sampling (t2 ~ p_child[t1] when the
    step committed only its bonus)."""
    first, pair = torch.zeros(V, dtype=torch.float64), torch.zeros(V, V, dtype=torch.float64)
    for (path, y), pr in table.items():
        toks = [tree.tokens[i] for i in path[1:]] + [y]
        first[toks[0]] += pr
        if len(toks) > 1:
            pair[toks[0], toks[1]] += pr
        else:
            pair[toks[0]] += pr * p_child[toks[0]].double()
    return first, pair


def test_tree_reference_is_lossless_for_fixed_siblings_when_one_hot():
    # depth-1 tree with a duplicate sibling; p of a child depends on its token only (its context)
    p_root, p_child = _dist(1, seed=6)[0], _dist(V, seed=7)
    tree = DraftTree([0, 3, 1, 3, 2], [-1, 0, 0, 0, 0])
    p = torch.stack([p_root] + [p_child[t] for t in tree.tokens[1:]])
    first, pair = _first_two(_tree_ref(p, tree, None), tree, p_child)
    torch.testing.assert_close(first, p_root.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(pair, (p_root[:, None] * p_child).double(), atol=1e-6, rtol=0)


def test_tree_reference_is_lossless_averaged_over_iid_siblings_from_q():
    p_root, p_child, q = _dist(1, seed=6)[0], _dist(V, seed=7), _dist(1, seed=8)[0]
    first, pair = torch.zeros(V, dtype=torch.float64), torch.zeros(V, V, dtype=torch.float64)
    for kids in itertools.product(range(V), repeat=3):
        tree = DraftTree([0, *kids], [-1, 0, 0, 0])
        p = torch.stack([p_root] + [p_child[t] for t in kids])
        f, pr = _first_two(_tree_ref(p, tree, q.expand(4, V)), tree, p_child)
        weight = float(q[kids[0]] * q[kids[1]] * q[kids[2]])
        first += weight * f
        pair += weight * pr
    torch.testing.assert_close(first, p_root.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(pair, (p_root[:, None] * p_child).double(), atol=1e-6, rtol=0)


def _tree_p(seed):
    """Target distributions where sibling nodes with equal tokens (1 and 3) have equal p, as in a
    real tree (same context)."""
    p = _dist(len(TREE), seed=seed)
    p[3] = p[1]
    return p


@pytest.mark.parametrize("with_q", [False, True])
def test_accept_tree_matches_the_reference(with_q):
    p = _tree_p(8)
    q = _dist(len(TREE), seed=9) if with_q else None
    path, n, bonus = accept_tree(p.expand(N_ROWS, -1, -1), _repeat(TREE, N_ROWS, q), torch.Generator().manual_seed(1))
    ref = _tree_ref(p, TREE, q)
    keys = sorted(ref)
    codes = torch.tensor([_code(list(path_) + [-1] * (path.shape[1] - len(path_)), y) for path_, y in keys])
    got = (_code_rows(path, bonus)[:, None] == codes[None, :]).sum(0)
    assert int(got.sum()) == N_ROWS  # every outcome is one the enumeration knows
    report = histogram_test("path,bonus", got, torch.tensor([ref[k] for k in keys]))
    assert report.passed, report


def _repeat(tree, rows, q=None):
    one = TreeBatch.stack([tree])
    return TreeBatch(*(x.expand(rows, *x.shape[1:]) for x in
                       (one.tokens, one.parents, one.depths, one.intra, one.children, one.valid)),
                     probs=None if q is None else q.expand(rows, -1, -1))


def _code(path, bonus):
    return sum((node + 1) * 10 ** i for i, node in enumerate(path)) * 10 + bonus


def _code_rows(path, bonus):
    weights = 10 ** torch.arange(path.shape[1])
    return ((path + 1) * weights).sum(1) * 10 + bonus


def test_accept_tree_greedy_follows_the_argmax_through_later_siblings():
    # argmax at root is 1 (node 2), at node 2 it is 0 (node 6), at node 6 it is 4 -> bonus
    target = torch.tensor([[1, 0, 0, 0, 0, 0, 4]])
    path, n, bonus = accept_tree_greedy(target, TreeBatch.stack([TREE]))
    assert path.tolist() == [[0, 2, 6]] and n.tolist() == [2] and bonus.tolist() == [4]
    path, n, bonus = accept_tree_greedy(torch.tensor([[2, 0, 0, 0, 0, 0, 0]]), TreeBatch.stack([TREE]))
    assert path.tolist() == [[0, -1, -1]] and n.tolist() == [0] and bonus.tolist() == [2]


def test_accept_tree_on_a_chain_equals_accept_speculative_in_distribution():
    p = _dist(4, seed=10)
    drafts = [1, 3, 0]
    trees = _repeat(DraftTree.chain(0, drafts), 50_000)
    _, n_tree, b_tree = accept_tree(p.expand(50_000, -1, -1), trees, torch.Generator().manual_seed(2))
    ref = _chain_ref(p, drafts, 3, None)
    keys = sorted(ref)
    counts = torch.bincount(n_tree * V + b_tree, minlength=4 * V)
    report = histogram_test("n,bonus", counts[[a * V + b for a, b in keys]], torch.tensor([ref[k] for k in keys]))
    assert report.passed, report


def test_brute_force_enumerations_cover_every_outcome():
    p = _dist(len(TREE), seed=11)
    assert sum(_tree_ref(p, TREE, None).values()) == pytest.approx(1.0)
    q = _dist(3, seed=12)
    chain = _chain_ref(p[:4], [1, 2, 3], 3, q)
    assert sum(chain.values()) == pytest.approx(1.0)
    # independent closed forms for the chain: P(n = 0) = 1 - min(1, p1/q1), P(n = 3) = prod of the ratios
    ratio = [min(1.0, float(p[i, x] / q[i, x])) for i, x in enumerate([1, 2, 3])]
    assert sum(v for (n, _), v in chain.items() if n == 0) == pytest.approx(1 - ratio[0])
    assert sum(v for (n, _), v in chain.items() if n == 3) == pytest.approx(ratio[0] * ratio[1] * ratio[2])
    # every outcome is reachable: each accepted length 0..3 carries mass, each with a bonus distribution
    assert {n for n, _ in chain} == {0, 1, 2, 3} and len(chain) == 4 * V


def _greedy_walk(tokens, parents, valid, target):
    """Per-row reference: from the root, the first valid child (index order) whose token is the target's
    argmax at the current node; returns (path, n, bonus)."""
    path, cur = [0], 0
    while True:
        kids = [i for i, p in enumerate(parents) if p == cur and valid[i]]
        nxt = next((k for k in kids if tokens[k] == target[cur]), None)
        if nxt is None:
            return path, len(path) - 1, target[cur]
        path.append(nxt)
        cur = nxt


def test_vectorised_greedy_tree_acceptance_equals_the_walk_on_random_trees():
    """Random forests with duplicate sibling tokens (the first matching child wins), padded trees and rows
    cut by `TreeBatch.only` (stopped rows accept nothing)."""
    g = torch.Generator().manual_seed(0)
    for trial in range(400):
        n, b = int(torch.randint(1, 16, (1,), generator=g)), 4
        parents = torch.full((b, n), -1)
        for i in range(1, n):
            parents[:, i] = torch.randint(0, i, (b,), generator=g)
        valid = torch.ones(b, n, dtype=torch.bool)
        if trial % 3 == 0:
            k = int(torch.randint(1, n + 1, (1,), generator=g))
            valid[:, k:], parents[:, k:] = False, -1
        trees = TreeBatch.from_parents(torch.randint(0, 3, (b, n), generator=g), parents, valid)
        if trial % 5 == 0:
            trees = trees.only(torch.tensor([True, False, True, False]))
        target = torch.randint(0, 3, (b, n), generator=g)
        path, n_acc, bonus = accept_tree_greedy(target, trees)
        for r in range(b):
            want, want_n, want_bonus = _greedy_walk(trees.tokens[r].tolist(), trees.parents[r].tolist(),
                                                    trees.valid[r].tolist(), target[r].tolist())
            got = [x for x in path[r].tolist() if x >= 0]
            assert (got, int(n_acc[r]), int(bonus[r])) == (want, want_n, want_bonus), (trial, r)
