import pytest
import torch

from specbench.sampling import SamplingConfig, logits_to_probs, next_tokens


def test_greedy_is_one_hot_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.9]])
    probs = logits_to_probs(logits, SamplingConfig(0.0))
    assert probs.tolist() == [[0.0, 1.0, 0.0, 0.0]]
    assert next_tokens(logits, SamplingConfig(0.0), None).tolist() == [1]


def test_temperature_top_k_top_p_match_brute_force():
    torch.manual_seed(0)
    logits = torch.randn(3, 11)
    cfg = SamplingConfig(temperature=0.7, top_p=0.8, top_k=6)
    got = logits_to_probs(logits, cfg)
    for row in range(3):
        scaled = logits[row] / 0.7
        keep = set(torch.topk(scaled, 6).indices.tolist())
        p = torch.where(torch.tensor([i in keep for i in range(11)]), scaled, torch.tensor(float("-inf"))).softmax(-1)
        order = torch.argsort(p, descending=True).tolist()
        mass, nucleus = 0.0, []
        for i in order:
            if mass >= 0.8:
                break
            nucleus.append(i)
            mass += float(p[i])
        want = torch.zeros(11)
        want[nucleus] = p[nucleus] / p[nucleus].sum()
        assert torch.allclose(got[row], want, atol=1e-6)


def test_seeded_sampling_is_reproducible():
    logits = torch.randn(4, 50)
    cfg = SamplingConfig(temperature=1.0)
    a = next_tokens(logits, cfg, torch.Generator().manual_seed(3))
    b = next_tokens(logits, cfg, torch.Generator().manual_seed(3))
    assert a.tolist() == b.tolist()


@pytest.mark.parametrize("kwargs", [dict(temperature=-0.1), dict(top_p=0.0), dict(top_k=-1)])
def test_invalid_sampling_rejected(kwargs):
    with pytest.raises(ValueError):
        SamplingConfig(**kwargs)
