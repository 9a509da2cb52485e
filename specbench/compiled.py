"""The compiled regime (issue 20): a static KV cache and the target forward captured by `torch.compile`.

Eager PyTorch on a GPU launches every kernel from Python, so a small target's step measures launch
overhead more than the method (smollm2-135m: a 15 ms AR step on an H200 whose memory roofline is under
0.1 ms). Serving engines run captured graphs; this regime is the harness's version of that, applied to
both arms alike, so the speedups it reports describe the regime a deployment runs in:

* the cache is static (`RowKVCache(static=True)`): every decode forward attends over the whole reserved
  capacity (the run's longest need, rounded up to `CAPACITY_BUCKET`, so batches share shapes; a sweep's
  cells of other needs compile their own graphs in their warm-ups) with a mask built on the device from
  the row lengths, and writes each row's slots in place (`index_put_`: a `scatter_` into a graph input
  was compiled as a copy of the whole buffer and a copy back), so its shapes depend on (batch, q) only;
* decode forwards (AR's q = 1, each method's verification width) go through `torch.compile` of the
  target's forward (the direct forward where the target has it, else `model(...)`) — `mode="reduce-overhead"`
  on CUDA, which records CUDA graphs per shape; inductor's default on a CPU, where the mechanism is tested;
  the prompt's prefill (a new length every batch) stays eager;
* a compiled call costs host time before the device starts: dynamo re-checks its guards. `frozen_guards`
  drops those on the target's own modules (thousands per call) for every compiled function, both arms'
  alike;
* eager stays the default (`--regime eager`), measured exactly as before; the regime is recorded in the
  manifest (`target.regime`, `target.compile_mode`).

A method's own fixed-shape passes go through the same compiler (`run`): the mask-row passes that *are*
FlexDraft's and BiTA's verification and MTP's adapted target pass (the target's layers walked by the
method, not `model(...)`, so `compile_target` alone left them eager: a skew against the method), and the
drafters' passes (FlexDraft's mask pass and head, DFlash's block pass and EAGLE-3's extension and tree over
static draft caches). Each method's `COMPILED_PASSES` names what it captures and what still runs eager;
a compiled run's manifest records it (`method.compiled_passes`) with the number of graphs first traced
inside a timed step (`graphs_traced_while_timed`; `Decoder.warm_shapes` exists to keep it 0).

Under CUDA graphs (`reduce-overhead`) a replay writes its outputs into memory the next replay of the same
graph reuses; `run` therefore hands back copies of a method pass's outputs (verified rows' logits, draft
states: a device copy of at most a few MB), so nothing a step still reads can be overwritten by a later pass.
"""

from __future__ import annotations

import inspect
import types

import torch

#: static caches reserve a multiple of this many slots; a run's caches all reserve its longest need
#: (`Target.static_slots`, set by the runner), so its batches and its warm-up share one shape and no timed
#: batch compiles. Attention reads every reserved slot (the spare ones masked), so the bucket is kept small:
#: at 1024 (before) a GSM8K run attended over 2-4x the slots it used, per forward of both arms
CAPACITY_BUCKET = 256
REGIMES = ("eager", "compiled")
#: graphs kept per compiled function: one per (batch, q) shape a run or a profile grid uses. torch's default
#: (8) is fewer than a profile grid's points, and past it dynamo runs the rest eager without a word
RECOMPILE_LIMIT = 256


def default_mode(device: torch.device) -> str:
    return "reduce-overhead" if device.type == "cuda" else "default"


def set_regime(target, regime: str):
    """Put `target` in `regime` for the next run: a sweep shares one target across cells, so each cell sets
    its own; the captured graphs are kept for when the compiled regime comes back."""
    if regime == "compiled" and not target.is_compiled:
        compile_target(target)
    target.regime = regime
    _product_rule(target)
    return target


def _product_rule(target) -> None:
    """One product rule per regime for every pass of both arms: the compiled decode forwards run
    `F.linear` (inductor chooses the kernel), so compiled turns the CPU's skinny rule (`specbench.skinny`)
    off for the methods' passes and drafters too (they read `target.skinny_rows` when built); eager restores the
    measured rule. The manifest records the rule in force."""
    if target.regime == "compiled":
        if target.eager_product_rule is None:
            target.eager_product_rule = (target.skinny_rows, target.skinny_source)
        target.skinny_rows, target.skinny_source = 0, "off (compiled regime: F.linear)"
    elif target.eager_product_rule is not None:
        target.skinny_rows, target.skinny_source = target.eager_product_rule


def compile_target(target, mode: str | None = None, backend: str = "inductor"):
    """Switch `target` to the compiled regime (in place; returns it). `backend` other than inductor
    (e.g. "aot_eager") traces the same graphs without generating kernels: the tests' quick check.

    A target on the direct forward compiles `direct_forward.forward_with_layers` (the eager arm's own
    forward; layer features are an argument, not hooks) under `frozen_guards`; any other compiles
    `model(...)` with every guard, hooks included, and catches features through hooks."""
    target.compile_mode = mode or default_mode(target.device)
    target.compile_backend = backend
    target.regime = "compiled"
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # renamed in torch 2.6; older releases know the second
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
            break
    if target.forward_impl == "direct":
        from specbench.direct_forward import forward_with_layers

        target.compiled_forward = _compile(target, forward_with_layers)
    else:
        # `model(...)` reads EAGLE-3's and DFlash's features through forward hooks added per call; by default
        # dynamo does not guard on hooks, so a graph traced without them (the AR arm's) would run the
        # method's forward and leave its features empty
        config.skip_nnmodule_hook_guards = False
        target.compiled_model = torch.compile(target.model, backend=backend, dynamic=False, options=_options(target))
    _product_rule(target)
    return target


def _options(target) -> dict:
    """`torch.compile` options of the target's mode (`mode=` and `options=` cannot be given together)."""
    return torch._inductor.list_mode_options(target.compile_mode) if target.compile_backend == "inductor" else {}


def _compile(target, func, guard_filter=None):
    """`torch.compile(func)` with the target's backend and mode, and `frozen_guards` (or `guard_filter`), on a
    copy of `func` of the target's own: dynamo keeps compiled graphs on the code object, shared by every
    `torch.compile` of it, and without the guards on the target's modules another target's call could run
    this target's graph (two test targets of one shape and another layout would)."""
    options = {**_options(target), "guard_filter_fn": guard_filter or frozen_guards(target)}
    return torch.compile(_own_copy(func, target), backend=target.compile_backend, dynamic=False, options=options)


def _own_copy(func, target):
    """`func` with a code object of its own (named after the target, for dynamo's logs)."""
    tag = "".join(c if c.isalnum() else "_" for c in target.name)
    code = func.__code__.replace(co_name=f"{func.__name__}__{tag}")
    copy = types.FunctionType(code, func.__globals__, code.co_name, func.__defaults__, func.__closure__)
    copy.__kwdefaults__ = func.__kwdefaults__
    return copy


def frozen_guards(target):
    """A dynamo `guard_filter_fn` that drops every guard on the target's own modules (their parameters,
    buffers, attributes, hooks and config) and keeps the rest (inputs, caches, drafters).

    Dynamo re-checks each guard of a compiled function on every call. On the target, that is thousands:
    per module its hook dicts, type and attributes, per parameter its tensor properties (8,625 for the
    compiled `model(...)` of a 36-layer Qwen3-8B shape; 496 are left). On this project's 2-core CPU the check
    took 1.2 ms per call against 0.14 ms under this filter (`benchmarks/compiled_guard_overhead.py`); on a
    GPU that host time sits between two steps, and the device waits for it. The target is frozen while it
    decodes (no method changes its weights, config or structure), so these guards could only fail if
    something broke that contract. Hooks are the one way a method could: the compiled forward refuses a
    target with hooks (`Target.forward`; features are `forward_with_features`'s argument), and MTP's
    adapter hooks exist only inside its own compiled pass. A guard counts as the target's when its source
    is a target object (found by identity) or lies under one's source.
    """
    frozen = target_objects(target)

    def keep(entries):
        roots = {e.name for e in entries if e.has_value and id(e.value) in frozen}
        kept = [not _under(e.name, roots) for e in entries]
        target.guard_counts.append({"kept": sum(kept), "dropped": len(kept) - sum(kept)})
        return kept

    return keep


def target_objects(target) -> set[int]:
    """Ids of the target's modules, parameters, buffers and config (kept on the target: computed once)."""
    if target.frozen_ids is None:
        model = target.model
        objects = [*model.modules(), *model.parameters(), *model.buffers(), model.config]
        target.frozen_ids = {id(o) for o in objects}
    return target.frozen_ids


def _under(name: str, roots: set[str]) -> bool:
    """`name` is a root, or an attribute or item path below one (`root.x`, `root[...]`)."""
    if name in roots:
        return True
    for i, ch in enumerate(name):
        if ch in ".[" and name[:i] in roots:
            return True
    return False


def static_capacity(capacity: int) -> int:
    return -(-int(capacity) // CAPACITY_BUCKET) * CAPACITY_BUCKET


def run(target, fn, *args, **kwargs):
    """`fn(*args, **kwargs)` as `target`'s regime runs a method pass: itself when eager; when compiled, through
    `torch.compile` with the target's backend and mode (one compiled function per `fn`, kept on the target
    across cells as the target's graphs are). `fn` must read host state only for shapes that do not change
    step to step (the static cache's capacity, the verify width): dynamo guards on every Python value it
    reads, so a host length read inside would recompile every step. Bound methods are compiled as their
    function, so a new decoder or drafter object reuses the traced code. A decode pass never needs
    gradients: it runs under `torch.inference_mode` in both regimes' callers, and so here."""
    if target.regime != "compiled" or not target.is_compiled:
        return fn(*args, **kwargs)
    func = getattr(fn, "__func__", fn)
    if getattr(fn, "__self__", None) is not None:
        args = (fn.__self__, *args)
    compiled = target.compiled_passes.get(func)
    if compiled is None:
        # traced without its `inference_mode` decorator (dynamo cannot trace into one); run under it instead
        compiled = _compile(target, inspect.unwrap(func))
        target.compiled_passes[func] = compiled
    with torch.inference_mode():
        out = compiled(*args, **kwargs)
    if target.compile_mode == "reduce-overhead":
        out = torch.utils._pytree.tree_map_only(torch.Tensor, torch.clone, out)
    return out


def width(target, w: int, most: int) -> int:
    """The width a pass whose width changes step to step runs at (FlexDraft's selective verification):
    `w` itself when eager; when compiled the next power of two, at most `most`, so a run uses a handful of
    graphs instead of one per width, each compiled once, as serving engines pad a step to their CUDA-graph
    capture sizes. The extra columns are drafts no row verifies (`Proposal.lengths` stays per row), so
    the tokens are unchanged; the pass costs what the padded width costs, which the compiled step
    records."""
    if target.regime != "compiled":
        return w
    return min(1 << max(w - 1, 0).bit_length(), max(most, w))


def graphs_traced() -> int:
    """Graphs dynamo has traced in this process so far (compiled regime: targets' and methods' passes)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
