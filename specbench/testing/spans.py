"""The timing contract's test helper (DESIGN.md §4, issue 19 item 7).

Work a method does to draft — the drafter's passes, and the LM head, top-k or sampler it runs after a
target pass — must land in the `draft` span of the step, never in `verify` or `other`. The check makes
one chosen drafting function of a method cost a known, huge amount of clock time (it moves the clock
the step timer reads by one second per call instead of sleeping, so it is exact and costs nothing) and
asserts that the second shows up in the draft span of every step and nowhere else.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

from specbench.decode import generate
from specbench.sampling import SamplingConfig
from specbench.timing import StepTimer

SKEW_S = 1.0


@contextmanager
def skewed_clock(owner, name: str):
    """While active, every call of `owner.name` advances `time.perf_counter` (as the timer sees it) by
    `SKEW_S`. Yields a list that counts the calls."""
    import specbench.timing as timing

    real_clock, real_fn = time.perf_counter, getattr(owner, name)
    offset, calls = [0.0], []

    def fn(*args, **kwargs):
        calls.append(1)
        offset[0] += SKEW_S
        return real_fn(*args, **kwargs)

    class Clock:
        perf_counter = staticmethod(lambda: real_clock() + offset[0])

    setattr(owner, name, fn)
    timing.time = Clock
    try:
        yield calls
    finally:
        setattr(owner, name, real_fn)
        timing.time = time


def assert_draft_work_in_draft_span(method, target, owner, name: str, batch: int = 2, max_new_tokens: int = 12,
                                    sampling: SamplingConfig = SamplingConfig()) -> dict:
    """Every decode step's `draft` span holds the skew of its calls to `owner.name`; `verify` and
    `other` hold none. Returns the step spans (ms)."""
    prompts = [target.render([{"role": "user", "content": q}]) for q in ("hi", "def add(a, b):", "2 + 2 =")][:batch]
    with skewed_clock(owner, name) as calls:
        out = generate(method.make_decoder(sampling, None), prompts, max_new_tokens, target.eos_token_ids,
                       StepTimer(target.device))
    spans = out.steps
    steps = len(spans["draft"])
    assert steps >= 2 and calls, f"{name} was never called during {steps} decode steps"
    skew_ms = SKEW_S * 1e3
    assert min(spans["draft"]) >= skew_ms, f"a step's draft span lacks the skewed {name}: {spans['draft']}"
    assert max(spans["verify"]) < skew_ms / 2 and max(spans["other"]) < skew_ms / 2, (
        f"{name} leaked out of the draft span: verify {spans['verify']}, other {spans['other']}")
    assert statistics.median(spans["draft"]) < skew_ms * (len(calls) + 1)
    return spans
