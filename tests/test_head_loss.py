"""specbench/training/head_loss.py: chunking the vocabulary head changes memory, never the numbers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from specbench.training.head_loss import chunked_head_terms


def _terms(head):
    def terms(h, labels, w):
        z = head(h)
        return ((w * F.cross_entropy(z, labels, reduction="none")).sum(), F.cross_entropy(z, labels, reduction="sum")), \
               (z.argmax(-1) == labels, z.argmax(-1))
    return terms


def test_chunks_with_recompute_equal_one_pass_in_value_and_gradient():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50)
    h = torch.randn(37, 8, requires_grad=True)
    labels, w = torch.randint(0, 50, (37,)), torch.rand(37)
    grads, outs = [], []
    for chunk in (64, 10, 1):  # one chunk (no checkpoint), uneven chunks, one row each
        head.zero_grad()
        h.grad = None
        sums, hits = chunked_head_terms(_terms(head), h, labels, w, chunk=chunk)
        (sums[0] + 0.5 * sums[1]).backward()
        outs.append((sums, hits))
        grads.append((h.grad.clone(), head.weight.grad.clone()))
    for (sums, hits), (gh, gw) in zip(outs[1:], grads[1:]):
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(sums, outs[0][0]))
        assert all(torch.equal(a, b) for a, b in zip(hits, outs[0][1])) and hits[0].shape == (37,)
        assert torch.allclose(gh, grads[0][0], atol=1e-6) and torch.allclose(gw, grads[0][1], atol=1e-6)


def test_no_rows_gives_zero_sums_and_empty_hits():
    head = torch.nn.Linear(8, 50)
    sums, hits = chunked_head_terms(_terms(head), torch.zeros(0, 8), torch.zeros(0, dtype=torch.long), torch.zeros(0),
                                    chunk=4)
    assert [float(s.detach()) for s in sums] == [0.0, 0.0] and all(h.numel() == 0 for h in hits)
