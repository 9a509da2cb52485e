"""The compiled regime (issue 20): a static KV cache and the target forward captured by `torch.compile`.

Eager PyTorch on a GPU launches every kernel from Python, so a small target's step measures launch
overhead more than the method (smollm2-135m: a 15 ms AR step on an H200 whose memory roofline is under
0.1 ms). Serving engines run captured graphs; this regime is the harness's version of that, applied to
both arms alike, so the speedups it reports describe the regime a deployment runs in:

* the cache is static (`RowKVCache(static=True)`): every decode forward attends over the whole reserved
  capacity (rounded up to `CAPACITY_BUCKET` so batches share shapes) with a mask built on the device from
  the row lengths, and writes by scatter, so its shapes depend on (batch, q) only;
* decode forwards (AR's q = 1, each method's verification width) go through `torch.compile` of the
  target — `mode="reduce-overhead"` on CUDA, which records CUDA graphs per shape; inductor's default on a
  CPU, where the mechanism is tested; the prompt's prefill (a new length every batch) stays eager;
* eager stays the default (`--regime eager`), measured exactly as before; the regime is recorded in the
  manifest (`target.regime`, `target.compile_mode`).

Drafters' own passes are not captured yet (EAGLE-3 levels, DFlash blocks, mask passes run eager in both
regimes); `describe()` says so.
"""

from __future__ import annotations

import torch

#: static caches reserve a multiple of this many slots, so batches of different prompt lengths (and the
#: warm-up) share one shape, and no timed batch compiles; attention over the spare slots is masked
CAPACITY_BUCKET = 1024
REGIMES = ("eager", "compiled")
#: graphs kept per compiled function: one per (batch, q) shape a run or a profile grid uses. torch's default
#: (8) is fewer than a profile grid's points, and past it dynamo runs the rest eager without a word
RECOMPILE_LIMIT = 256


def default_mode(device: torch.device) -> str:
    return "reduce-overhead" if device.type == "cuda" else "default"


def set_regime(target, regime: str):
    """Put `target` in `regime` for the next run: a sweep shares one target across cells, so each cell sets
    its own; the captured graphs are kept for when the compiled regime comes back."""
    if regime == "compiled" and target.compiled_model is None:
        compile_target(target)
    target.regime = regime
    return target


def compile_target(target, mode: str | None = None, backend: str = "inductor"):
    """Switch `target` to the compiled regime (in place; returns it). `backend` other than inductor
    (e.g. "aot_eager") traces the same graphs without generating kernels: the tests' quick check."""
    target.compile_mode = mode or default_mode(target.device)
    target.regime = "compiled"
    options = {"mode": target.compile_mode} if backend == "inductor" else {}
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # renamed in torch 2.6; older releases know the second
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
            break
    # EAGLE-3, DFlash and FlexDraft read target layers through forward hooks added per call
    # (`capture_layers`); by default dynamo does not guard on hooks, so a graph traced without them (the
    # AR arm's, or pld's at the same width) ran the method's forward and left its features empty
    config.skip_nnmodule_hook_guards = False
    target.compiled_model = torch.compile(target.model, backend=backend, dynamic=False, **options)
    return target


def static_capacity(capacity: int) -> int:
    return -(-int(capacity) // CAPACITY_BUCKET) * CAPACITY_BUCKET
