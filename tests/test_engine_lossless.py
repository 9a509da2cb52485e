"""The lossless kit on the engine's test-only drafters, and negative controls proving the kit bites.

Bracketing drafters (issue 4): the oracle is always right (τ = depth + 1 at T = 0), the random
drafter almost never (τ ≈ 1); both must emit exactly what the target emits. The noisy oracle makes
rows of a batch accept different numbers of tokens at every step (ragged acceptance).
"""

import pytest
import torch

from specbench.engine import ChainSpeculativeDecoder, Proposal
from specbench.engine.acceptance import accept_probability, sample
from specbench.sampling import SamplingConfig
from specbench.testing.drafters import (NoisyOracleDrafter, OracleDrafter, RandomDrafter, RandomTreeDrafter,
                                        TreeOracleDrafter, drafter_factory)
from specbench.testing.lossless import (DISTRIBUTION_PROMPT, assert_lossless, check_distribution, exact_joint,
                                        histogram_reports, one_thread, sample_continuations, tiny_vocab_target,
                                        worst_case_bias)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_thread(pause_gc=False):
        yield


def _rows(outputs):
    return [row for batches in outputs.values() for out in batches for row in out.rows]


# -- T = 0: exact output, τ bracket, ragged batches, cache ------------------------------------------------

def test_oracle_chain_is_exact_and_accepts_every_draft():
    rows = _rows(assert_lossless(drafter_factory(OracleDrafter, 4), sampling=None, max_new_tokens=24))
    assert all(a == 5 for row in rows for a in row.accept_lengths)
    assert all(row.draft_lengths == [4] * len(row.accept_lengths) for row in rows)


def test_random_chain_is_exact_with_tau_near_one():
    rows = _rows(assert_lossless(drafter_factory(RandomDrafter, 4), sampling=None))
    lengths = [a for row in rows for a in row.accept_lengths]
    assert sum(lengths) / len(lengths) < 1.1


def test_ragged_acceptance_in_batches_of_8_equals_batch_1():
    """The kit compares batch 8 (and 4) with batch-1 AR; here every step of the batch is ragged."""
    outputs = assert_lossless(drafter_factory(NoisyOracleDrafter, 4), sampling=None)
    for batches in outputs.values():
        batch8 = batches[-1]
        assert len(batch8.rows) == 8
        ragged = sum(len({row.accept_lengths[s] for row in batch8.rows if len(row.accept_lengths) > s}) > 1
                     for s in range(5))
        assert ragged == 5  # rows accepted different numbers of tokens in each of the first 5 steps


def test_tree_oracle_is_exact_and_accepts_a_full_path_through_later_siblings():
    rows = _rows(assert_lossless(drafter_factory(TreeOracleDrafter, branching=(3, 2, 2)), sampling=None,
                                 max_new_tokens=24))
    assert all(a == 4 for row in rows for a in row.accept_lengths)


def test_random_tree_is_exact():
    assert_lossless(drafter_factory(RandomTreeDrafter, branching=(3, 2)), sampling=None)


# -- T > 0: distribution -------------------------------------------------------------------------------------

WARPED = SamplingConfig(temperature=0.8, top_p=0.9, top_k=3)


@pytest.mark.parametrize("factory,sampling", [
    (drafter_factory(RandomDrafter, 3), SamplingConfig(temperature=1.0)),
    (drafter_factory(RandomDrafter, 3, with_probs=True), SamplingConfig(temperature=1.0)),
    (drafter_factory(RandomTreeDrafter, branching=(2, 2)), SamplingConfig(temperature=1.0)),
    (drafter_factory(RandomTreeDrafter, branching=(2, 2), sampled=True), WARPED),
], ids=["chain-one-hot", "chain-uniform-q", "tree-one-hot", "tree-iid-q-top-p-top-k"])
def test_distribution_matches_the_target(factory, sampling):
    reports = check_distribution(factory, sampling)
    assert all(r.passed for r in reports), "\n".join(map(str, reports))


def test_oracle_with_its_probabilities_accepts_nearly_everything_at_t_above_0():
    target = tiny_vocab_target()
    method = drafter_factory(OracleDrafter, 4)(target)
    from specbench.decode import generate
    from specbench.timing import StepTimer

    out = generate(method.make_decoder(SamplingConfig(temperature=1.0), torch.Generator().manual_seed(0)),
                   [DISTRIBUTION_PROMPT] * 512, 11, [], StepTimer(target.device))
    lengths = [a for row in out.rows for a in row.accept_lengths]
    assert sum(lengths) / len(lengths) > 4.99


# -- negative controls -------------------------------------------------------------------------------------

def test_the_histogram_check_catches_a_worst_case_one_percent_bias():
    """Samples from the exact joint pass; samples from a joint 1 % away in TV (shaped to be as hard
    as possible for X², see `worst_case_bias`) fail — for every seed tried."""
    joint = exact_joint(tiny_vocab_target(), DISTRIBUTION_PROMPT, 3, SamplingConfig(temperature=1.0))
    flat = joint.flatten()
    marginal_t2 = joint.sum(dim=(0, 2))
    biased_t2 = worst_case_bias(marginal_t2, 0.01)
    # spread the t2 bias over the joint proportionally, leaving conditionals given t2 unchanged
    biased = (joint * (biased_t2 / marginal_t2)[None, :, None]).flatten()
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        for probs, should_pass in ((flat, True), (biased, False)):
            draws = torch.multinomial(probs.float(), 2 ** 17, replacement=True, generator=g)
            samples = torch.stack([draws // 16, draws // 4 % 4, draws % 4], 1)
            t2 = next(r for r in histogram_reports(samples, joint) if r.name == "t2")
            assert t2.passed == should_pass, (seed, str(t2))


def residual_free_rule(p, drafts, lengths, q, generator):
    """BiTA's released sampling rule (bita_mtp_flexdraft.md A.6.4): on rejection, resample from the
    unmodified target distribution instead of the residual. Not lossless."""
    b, k = drafts.shape
    u = torch.rand((b, k), generator=generator)
    valid = torch.arange(k)[None, :] < lengths[:, None]
    n = ((u < accept_probability(p[:, :k], drafts, q)) & valid).long().cumprod(1).sum(1)
    return n, sample(p[torch.arange(b), n], generator)


class ResidualFreeConstantDrafter(ChainSpeculativeDecoder):
    """Always drafts token 1 (uniformly random drafts would hide this bias in the marginals)."""

    rule = staticmethod(residual_free_rule)

    def propose(self, active):
        b = len(self.last)
        return Proposal(torch.ones(b, self.depth, dtype=torch.long), torch.full((b,), self.depth))


def test_the_kit_catches_a_biased_acceptance_rule():
    assert ChainSpeculativeDecoder.rule is not residual_free_rule
    reports = check_distribution(drafter_factory(ResidualFreeConstantDrafter, 3), n_samples=2 ** 15)
    assert not all(r.passed for r in reports), "\n".join(map(str, reports))


class LateBiasDrafter(ChainSpeculativeDecoder):
    """Always drafts token 1; exact speculative sampling in its first step, the residual-free rule after
    it: a bug in what a method carries past its first step, invisible to the first tokens alone."""

    def propose(self, active):
        b = len(self.last)
        self.steps = getattr(self, "steps", 0) + 1
        self.rule = residual_free_rule if self.steps > 1 else ChainSpeculativeDecoder.rule
        return Proposal(torch.ones(b, self.depth, dtype=torch.long), torch.full((b,), self.depth))


def test_the_kit_catches_a_bias_that_starts_after_the_first_step():
    """Five tokens reach the second step; the marginals of the later tokens expose the bias."""
    reports = check_distribution(drafter_factory(LateBiasDrafter, 2), n_samples=2 ** 15)
    failed = {r.name for r in reports if not r.passed}
    assert failed and failed <= {"t3", "t4", "t5", "t2,t3", "t4,t5"}, "\n".join(map(str, reports))


def test_the_kit_requires_accepted_drafts_before_its_later_tokens():
    """A drafter whose drafts are never accepted cannot pass the distribution check vacuously."""
    with pytest.raises(AssertionError, match="accepted a draft in their first step"):
        check_distribution(drafter_factory(NeverAcceptedDrafter, 2), n_samples=2 ** 12)


class NeverAcceptedDrafter(ChainSpeculativeDecoder):
    """Drafts nothing at all (a method that never gets a draft accepted looks like this to the kit)."""

    def propose(self, active):
        return Proposal.empty(len(self.last), self.target.device)


def test_sampling_is_deterministic_for_a_seed():
    target = tiny_vocab_target()
    method = drafter_factory(RandomDrafter, 3)(target)
    a, b = (sample_continuations(method, target, DISTRIBUTION_PROMPT, 64, 3, SamplingConfig(temperature=1.0), seed=3)
            for _ in range(2))
    assert torch.equal(a, b)
