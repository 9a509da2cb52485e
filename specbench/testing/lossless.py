"""The lossless test kit: one line in each method's tests proves DESIGN.md §5 for that method.

    from specbench.testing.lossless import assert_lossless
    def test_lossless():
        assert_lossless(lambda target: build_method("pld", target, depth=4))

`method_factory(target)` returns a `Method` (anything with `make_decoder(sampling, generator)`).
Its decoders must keep the engine's invariant (`specbench/engine/decoder.py`): `decoder.cache` is a
`RowKVCache` holding the prompt and every emitted token except the newest. Three checks:

1. **Greedy** (`check_greedy`): at T = 0 in float32 the tokens equal the AR arm's (decoded at batch
   1) exactly, for the method at batch 1, 4 and 8 with prompts of different lengths, on tiny random
   Llama and Qwen3.
2. **Cache** (`check_cache`): after every step of a ragged batch, each row's committed K/V equals a
   fresh forward over its committed tokens, layer by layer; and (`check_stopped_rows`) a row that
   stopped keeps its cache, history and drafter state frozen while the others run.
3. **Distribution** (`check_distribution`): at T > 0 the first five generated tokens after a fixed
   prompt follow the target's exact distribution. The target is a one-layer Llama over 4 tokens, so
   the exact distribution of (t1..t5) is enumerated (256 continuations, one forward) and compared
   with the histograms of `n_samples` seeded generations: the marginals of t1 (prefill) to t5 and the
   joints (t2, t3) and (t4, t5). Five tokens reach past the first speculative step, so what a method
   carries from one step to the next after accepting drafts (drafter caches, selected mask groups,
   the bonus) is tested too; the check requires that a stated share of the samples accepted a draft in
   their first step, so a method that never accepts cannot pass it vacuously (issue 19).

Why `n_samples = 2**17` catches a 1 % bias. For a histogram of n samples with K bins, Pearson's
X² = n Σ (p̂ − p)²/p is χ²(K−1) for a lossless method and non-central χ²(K−1, λ) for a method whose
distribution is p + δ, with λ = n Σ δ²/p. By Cauchy–Schwarz, (Σ|δ|)² ≤ Σ δ²/p · Σ p, so a total-
variation bias ε = ½ Σ|δ| gives λ ≥ 4 n ε² whatever its shape. With ε = 0.01 and n = 2^17:
λ ≥ 52.4. We reject at α = 1e-4 per histogram (4 histograms, family-wise ≤ 4e-4), critical values
from Wilson–Hilferty (a little above the exact quantiles, so slightly conservative):
K = 4, df = 3: critical 21.8 (exact 21.1); P(χ²(3, 52.4) > 21.8) = 0.997.
K = 16, df = 15: critical 44.6 (exact 44.3); P(χ²(15, 52.4) > 44.6) = 0.94.
A 1 % bias in any tested marginal therefore fails with probability ≥ 0.997. The bound is tight for
the worst-shaped bias δ ∝ ±p, which `worst_case_bias` builds for the negative control. (8 tokens
would need 2^18 samples for the same power: the vocabulary is kept at 4 to keep the test fast.) With
7 histograms the family-wise false-alarm rate is ≤ 7e-4.
Bins with expected count < 5 are pooled; a sample on a probability-0 bin fails at once. Seeds are
fixed, so the outcome is deterministic.
"""

from __future__ import annotations

import functools
import gc
import math
from contextlib import contextmanager
from dataclasses import dataclass
from statistics import NormalDist

import torch

from specbench.decode import generate
from specbench.sampling import SamplingConfig, logits_to_probs
from specbench.timing import StepTimer

PROMPT_TEXTS = [
    "hi",
    "def add(a, b):",
    "How many clips did Natalia sell altogether?",
    "Write a story about a robot who learns to paint.",
    "the cat the cat the cat sleeps on the mat",
    "for i in range(10):\n    if i % 2 == 0:\n        yield i * i",
    "Translate the following sentence into French: the cat sleeps on the warm mat.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
]
DISTRIBUTION_PROMPT = [1, 2, 1]
ALPHA = 1e-4


# -- 1. greedy equality ----------------------------------------------------------------------------

def _generate(method, target, prompts, max_new_tokens, sampling=SamplingConfig(), generator=None,
              eos_ids=None):
    decoder = method.make_decoder(sampling, generator)
    eos = target.eos_token_ids if eos_ids is None else eos_ids
    return generate(decoder, prompts, max_new_tokens, eos, StepTimer(target.device))


def kit_prompts(target) -> list[list[int]]:
    prompts = [target.render([{"role": "user", "content": t}]) for t in PROMPT_TEXTS]
    assert len({len(p) for p in prompts}) == len(prompts), "kit prompts must have different lengths"
    return prompts


_AR_CACHE: dict = {}


def ar_reference(target, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """AR greedy tokens per prompt, each decoded at batch 1 (the reference of DESIGN.md §5); cached
    per target object for the process."""
    from specbench.methods import build_method

    key = (id(target), tuple(map(tuple, prompts)), max_new_tokens)
    if key not in _AR_CACHE:
        ar = build_method("ar", target)
        _AR_CACHE[key] = (target, [_generate(ar, target, [p], max_new_tokens).rows[0].tokens for p in prompts])
    return [list(r) for r in _AR_CACHE[key][1]]


def check_greedy(method, target, max_new_tokens: int = 40, batch_sizes=(1, 4, 8)) -> list:
    """T = 0 outputs equal AR greedy (batch 1) exactly: the shortest and longest prompt alone, the
    first 4 prompts together and all 8 together (ragged lengths); returns the batch outputs."""
    prompts = kit_prompts(target)
    ref = ar_reference(target, prompts, max_new_tokens)
    outs = []
    for bs in batch_sizes:
        for start in (0, len(prompts) - 1) if bs == 1 else [0]:
            out = _generate(method, target, prompts[start:start + bs], max_new_tokens)
            outs.append(out)
            for j, row in enumerate(out.rows):
                i = start + j
                assert row.tokens == ref[i], (
                    f"{target.name}: batch {bs}, prompt {i}: first divergence at "
                    f"{_first_diff(row.tokens, ref[i])}: {row.tokens} != AR {ref[i]}")
                assert sum(row.accept_lengths) + 1 >= len(row.tokens), "accept_lengths must cover every token"
    return outs


def _first_diff(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# -- 2. cache equals a fresh forward ---------------------------------------------------------------

@torch.inference_mode()
def check_cache(method, target, steps: int = 6, batch_size: int = 4, sampling=SamplingConfig()) -> None:
    """After each step, every row's committed K/V equals a plain forward over its committed tokens."""
    prompts = kit_prompts(target)[:batch_size]
    gen = None if sampling.greedy else torch.Generator(device=target.device).manual_seed(0)
    decoder = method.make_decoder(sampling, gen)
    emitted = [[t] for t in decoder.prefill(prompts, max(map(len, prompts)) + 8)]
    timer = StepTimer(target.device)
    for step in range(steps):
        timer.start_step()
        for b, toks in enumerate(decoder.step(timer, [True] * len(prompts))):
            emitted[b] += toks
        timer.end_step()
        for b, prompt in enumerate(prompts):
            assert_cache_row(decoder.cache, target, b, prompt + emitted[b][:-1], f"step {step}")


@torch.inference_mode()
def assert_cache_row(cache, target, row: int, committed: list[int], where: str = "") -> None:
    """Row `row` of a `RowKVCache` holds exactly the K/V of a plain forward over `committed`."""
    assert cache.lengths[row] == len(committed), (
        f"{where} row {row}: cache holds {cache.lengths[row]} tokens, expected {len(committed)}")
    fresh = target.model(input_ids=torch.tensor([committed], device=target.device), use_cache=True).past_key_values
    for layer in range(target.num_layers):
        k, v = cache.layer_kv(layer, row)
        for name, got, want in (("keys", k, fresh.layers[layer].keys[0]), ("values", v, fresh.layers[layer].values[0])):
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4,
                                       msg=lambda m: f"{where} row {row} layer {layer} {name}: {m}")


def _row_state(decoder, row: int) -> tuple:
    """Everything a stopped row must keep: cache length (host and device), committed tokens, last
    token, and any drafter cache's length."""
    state = [decoder.cache.lengths[row], int(decoder.cache.device_lengths[row]), int(decoder.last[row])]
    history = getattr(decoder, "history", None)
    if history is not None:
        state += [history.row(row), int(history.lengths[row])]
    draft = getattr(decoder, "draft_cache", None)
    if draft is not None:
        state += [draft.lengths[row], int(draft.device_lengths[row])]
    return tuple(map(str, state))


@torch.inference_mode()
def check_stopped_rows(method, target, max_new_tokens: int = 24) -> None:
    """Stopped rows stop (issue 19): in a ragged batch where row 1 hits EOS at its first token and the
    other rows run on (stopping at that token too, if they meet it), every row's cache, history and
    drafter state stay exactly as they were when it stopped, and the outputs still equal AR's."""
    prompts = kit_prompts(target)
    ref = ar_reference(target, prompts, max_new_tokens)
    stop = ref[1][0]
    if stop in ref[0][:4] or stop in ref[2][:4]:  # the other rows must decode for a while
        raise AssertionError("pick kit prompts whose first tokens differ for this check")
    expect = [r[: r.index(stop) + 1] if stop in r else r for r in ref[:3]]
    decoder = method.make_decoder(SamplingConfig(), None)
    frozen: dict[int, tuple] = {}
    step = decoder.step

    def watched(timer, active):
        stopped = [b for b, live in enumerate(getattr(active, "host", active)) if not live]
        for b in stopped:  # the state it stopped with, before any step it sits out
            frozen.setdefault(b, _row_state(decoder, b))
        out = step(timer, active)
        for b in stopped:
            state = _row_state(decoder, b)
            assert frozen[b] == state, f"stopped row {b} changed: {frozen[b]} -> {state}"
            assert out[b] == [], f"stopped row {b} committed {out[b]}"
        return out

    decoder.step = watched
    out = generate(decoder, prompts[:3], max_new_tokens, [*target.eos_token_ids, stop], StepTimer(target.device))
    assert [r.tokens for r in out.rows] == expect
    assert 1 in frozen and out.active_steps[1] == 0 and len(out.steps["verify"]) >= 2, (
        f"the other rows must decode for a few steps while row 1 is stopped: {out.active_steps}")


# -- 3. the distribution at T > 0 --------------------------------------------------------------------

class _IdTokenizer:
    """Stand-in tokenizer for the tiny-vocabulary target: ids are the text."""

    pad_token_id = 0
    eos_token_id = None
    chat_template = None

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))

    def __len__(self):
        return 4


@functools.lru_cache(maxsize=2)
def tiny_vocab_target(vocab_size: int = 4, seed: int = 1):
    """A one-layer Llama (GQA) over 4 tokens, no EOS: cheap enough for 2^17 samples per check.
    Seed 1 and initializer 0.3 give context-dependent next-token distributions with most mass
    spread over 2-4 tokens, so drafts are neither always nor never accepted."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from specbench.targets import Target

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, initializer_range=0.3, eos_token_id=None,
                      pad_token_id=0, bos_token_id=None, tie_word_embeddings=False, max_position_embeddings=256)
    model = LlamaForCausalLM(cfg).float().eval()
    return Target(f"tiny-vocab-{vocab_size}", f"builtin:tiny-vocab-{vocab_size}-seed{seed}", model,
                  _IdTokenizer(), torch.device("cpu"), torch.float32)


@torch.inference_mode()
def exact_joint(target, prompt: list[int], n_tokens: int, sampling: SamplingConfig) -> torch.Tensor:
    """Exact probability of every continuation t1..tn, `[V] * n_tokens`, by enumeration."""
    v = target.vocab_size
    seqs = torch.cartesian_prod(*[torch.arange(v)] * (n_tokens - 1)).reshape(-1, n_tokens - 1)  # [V^(n-1), n-1]
    ids = torch.cat([torch.tensor(prompt).expand(len(seqs), -1), seqs], 1)
    logits = target.model(input_ids=ids).logits[:, len(prompt) - 1:]  # [V^(n-1), n, V]
    p = logits_to_probs(logits, sampling).double()
    joint = p[0, 0]
    for i in range(1, n_tokens):
        # p(t_{i+1} | t_1..t_i): rows with equal first i tokens share it; pick one per prefix
        cond = p[:, i].reshape([v] * (n_tokens - 1) + [v])
        cond = cond[(slice(None),) * i + (0,) * (n_tokens - 1 - i)]  # [V]*i + [V]
        joint = joint.reshape(joint.shape + (1,)) * cond
    return joint


def sample_continuations(method, target, prompt: list[int], n_samples: int, n_tokens: int,
                         sampling: SamplingConfig, seed: int = 0, batch_size: int = 2 ** 17,
                         first_steps: list | None = None) -> torch.Tensor:
    """`[n_samples, n_tokens]` generated tokens, one seeded batch of identical prompts at a time;
    `first_steps` (a list) collects the tokens each sample committed in its first step."""
    chunks = []
    for i, start in enumerate(range(0, n_samples, batch_size)):
        rows = min(batch_size, n_samples - start)
        gen = torch.Generator(device=target.device).manual_seed(seed * 1000003 + i)
        out = _generate(method, target, [list(prompt)] * rows, n_tokens, sampling, gen, eos_ids=[])
        chunks.append(torch.tensor([r.tokens for r in out.rows]))
        if first_steps is not None:
            first_steps += [r.accept_lengths[0] if r.accept_lengths else 0 for r in out.rows]
    return torch.cat(chunks)


@dataclass
class HistogramReport:
    name: str
    n: int
    tv: float  # total variation between the histogram and the exact distribution
    chi2: float
    df: int
    critical: float

    @property
    def passed(self) -> bool:
        return self.chi2 <= self.critical

    def __str__(self):
        verdict = "ok" if self.passed else "FAIL"
        return (f"{self.name}: n={self.n} TV={self.tv:.4f} X2={self.chi2:.1f} "
                f"(df {self.df}, critical {self.critical:.1f}) {verdict}")


def chi2_critical(df: int, alpha: float = ALPHA) -> float:
    """Upper-α quantile of χ²(df), Wilson–Hilferty (slightly conservative; no scipy needed)."""
    z = NormalDist().inv_cdf(1 - alpha)
    a = 2.0 / (9 * df)
    return df * (1 - a + z * math.sqrt(a)) ** 3


def histogram_test(name: str, counts: torch.Tensor, probs: torch.Tensor, alpha: float = ALPHA) -> HistogramReport:
    """Pearson X² of `counts` against exact `probs` (flattened), pooling bins with expected < 5."""
    counts, probs = counts.flatten().double(), probs.flatten().double()
    n = int(counts.sum())
    tv = 0.5 * float((counts / n - probs).abs().sum())
    if bool((counts[probs == 0] > 0).any()):
        return HistogramReport(name, n, tv, math.inf, 0, 0.0)
    expected = probs * n
    order = torch.argsort(expected)
    small = torch.zeros_like(expected, dtype=torch.bool)
    pooled = 0.0
    for i in order.tolist():  # pool the smallest bins until the pool is worth a bin of its own
        if pooled >= 5 or expected[i] >= 5:
            break
        small[i] = True
        pooled += float(expected[i])
    e = torch.cat([expected[~small], expected[small].sum()[None]]) if small.any() else expected
    o = torch.cat([counts[~small], counts[small].sum()[None]]) if small.any() else counts
    keep = e > 0
    chi2 = float(((o[keep] - e[keep]) ** 2 / e[keep]).sum())
    df = int(keep.sum()) - 1
    return HistogramReport(name, n, tv, chi2, df, chi2_critical(max(df, 1), alpha))


def histogram_reports(samples: torch.Tensor, joint: torch.Tensor) -> list[HistogramReport]:
    """Marginals t1..tn and the joint (t2, t3) of `samples [n, tokens]` against the exact `joint`."""
    v, n_tok = joint.shape[0], joint.dim()
    out = []
    for i in range(n_tok):
        marginal = joint.sum(dim=[d for d in range(n_tok) if d != i])
        out.append(histogram_test(f"t{i + 1}", torch.bincount(samples[:, i], minlength=v), marginal))
    for a, b in ((1, 2), (3, 4)):
        if b < n_tok:
            pair = joint.sum(dim=[d for d in range(n_tok) if d not in (a, b)])  # [V, V]
            counts = torch.bincount(samples[:, a] * v + samples[:, b], minlength=v * v)
            out.append(histogram_test(f"t{a + 1},t{b + 1}", counts, pair))
    return out


#: share of samples that must have accepted at least one draft in their first step, so that the tokens
#: after it test the state a method carries past an acceptance (not only its first draft)
MIN_FIRST_STEP_ACCEPTANCE = 0.05


def check_distribution(method_factory, sampling: SamplingConfig = SamplingConfig(temperature=1.0),
                       n_samples: int = 2 ** 17, n_tokens: int = 5, seed: int = 0,
                       min_accepted: float = MIN_FIRST_STEP_ACCEPTANCE) -> list[HistogramReport]:
    """Histogram reports for the method on the tiny-vocabulary target (see the module docstring); the
    share of samples whose first step accepted a draft must reach `min_accepted` (0 disables it, for
    negative controls and methods that draft nothing)."""
    target = tiny_vocab_target()
    joint = exact_joint(target, DISTRIBUTION_PROMPT, n_tokens, sampling)
    first_steps: list[int] = []
    with one_thread():
        samples = sample_continuations(method_factory(target), target, DISTRIBUTION_PROMPT, n_samples, n_tokens,
                                       sampling, seed, first_steps=first_steps)
    accepted = sum(n > 1 for n in first_steps) / max(len(first_steps), 1)
    assert accepted >= min_accepted, (
        f"only {accepted:.1%} of the samples accepted a draft in their first step: the distribution check "
        f"would not reach the state after an acceptance (need {min_accepted:.0%})")
    return histogram_reports(samples, joint)


@contextmanager
def one_thread(pause_gc: bool = True):
    """Tiny models gain nothing from intra-op threads, and on a shared machine those threads spin
    against other processes (measured 3-12x slower with 2 threads under load); tests of tiny models
    run inside this. With `pause_gc` the garbage collector waits too: 10^5 rows of small lists made it
    rescan the heap again and again (a third of the sampling time)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    if pause_gc:
        gc.disable()
    try:
        yield
    finally:
        if pause_gc:
            gc.enable()
        torch.set_num_threads(before)


def worst_case_bias(probs: torch.Tensor, tv: float) -> torch.Tensor:
    """p + δ with TV(p, p + δ) = tv and δ ∝ ±p on two halves of the mass: the bias shape that
    minimises Pearson's non-centrality, i.e. the hardest 1 % bias for the test to see."""
    p = probs.flatten().double()
    sign = torch.zeros_like(p)
    plus = minus = 0.0
    for i in torch.argsort(p, descending=True).tolist():
        if plus <= minus:
            sign[i], plus = 1.0, plus + float(p[i])
        else:
            sign[i], minus = -1.0, minus + float(p[i])
    delta = torch.where(sign > 0, tv * p / plus, -tv * p / minus)
    return (p + delta).reshape(probs.shape)


# -- the one-liner ------------------------------------------------------------------------------------

def assert_lossless(method_factory, targets=("tiny-random-llama", "tiny-random-qwen3"), max_new_tokens: int = 40,
                    sampling: SamplingConfig | None = SamplingConfig(temperature=1.0), n_samples: int = 2 ** 17,
                    cache_steps: int = 6) -> dict:
    """Run checks 1-3; returns `{target: [greedy BatchOutputs]}` for extra assertions (e.g. τ)."""
    outputs = {}
    with one_thread(pause_gc=False):
        for name in targets:
            target = load_tiny(name)
            method = method_factory(target)
            outputs[name] = check_greedy(method, target, max_new_tokens)
            check_cache(method, target, cache_steps)
            check_stopped_rows(method, target)
    if sampling is not None:
        reports = check_distribution(method_factory, sampling, n_samples)
        failed = [str(r) for r in reports if not r.passed]
        assert not failed, "distribution differs from the target's:\n" + "\n".join(map(str, reports))
    return outputs


@functools.lru_cache(maxsize=4)
def load_tiny(name: str):
    """A tiny test target in float32 on CPU, loaded once per process."""
    from specbench.targets import load_target

    return load_target(name, device="cpu", dtype="float32")
