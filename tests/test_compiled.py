"""The compiled regime (issue 20): static cache + captured decode forwards give the eager tokens, and
shapes depend on (batch, q) only, so a new batch of other prompt lengths reuses the captured graphs.

Traced with the `aot_eager` backend here (seconds); inductor's C++ kernels were checked the same way by
hand on this CPU (about 5 minutes of compilation for the tiny target), CUDA graphs need a GPU."""

import copy

import torch

from specbench.decode import generate
from specbench.methods import build_method
from specbench.sampling import SamplingConfig
from specbench.targets import Target
from specbench.testing.lossless import kit_prompts, one_thread
from specbench.timing import StepTimer


def _tokens(target, method, prompts, n=16):
    m = build_method(method, target, depth=3) if method == "pld" else build_method(method, target)
    out = generate(m.make_decoder(SamplingConfig(), None), prompts, n, target.eos_token_ids, StepTimer(target.device))
    return [r.tokens for r in out.rows]


def _twin(target, name):
    """An own copy of a shared test target (compiling mutates it: a session fixture must stay eager)."""
    return Target(name, "test", copy.deepcopy(target.model), target.tokenizer, target.device, target.dtype)


def _method_factories():
    """One layout of each drafted method (the methods' own test drafters), pld's chain besides."""
    import test_bita
    import test_dflash
    import test_eagle3
    import test_flexdraft
    import test_mtp

    return {
        "pld": lambda t: build_method("pld", t, depth=4),
        "eagle3": lambda t: test_eagle3.Eagle3Method(t, depth=3, drafter=test_eagle3.make_drafter(t)),
        "dflash": lambda t: test_dflash.DFlashMethod(t, drafter=test_dflash.make_drafter(t)),
        "flexdraft": lambda t: test_flexdraft.flex(t, mode="parallel"),
        "mtp": lambda t: test_mtp.mtp(t, decoding="quadratic"),
        "bita": lambda t: test_bita.bita(t, tree="tree"),
    }


def test_compiled_regime_gives_the_eager_tokens_without_recompiling_per_batch(tiny_llama):
    from torch._dynamo.utils import counters

    from specbench.compiled import CAPACITY_BUCKET, compile_target

    prompts = kit_prompts(tiny_llama)
    eager = {m: _tokens(tiny_llama, m, prompts[:4]) for m in ("ar", "pld")}
    compiled = _twin(tiny_llama, "tiny-compiled")
    compile_target(compiled, backend="aot_eager")
    assert compiled.new_cache(2, 10).static and compiled.new_cache(2, 10).capacity == CAPACITY_BUCKET
    torch._dynamo.reset()
    with one_thread():
        assert {m: _tokens(compiled, m, prompts[:4]) for m in ("ar", "pld")} == eager
        graphs = counters["stats"]["unique_graphs"]
        assert graphs >= 2  # AR's q = 1 and pld's verify width
        # another batch of other prompts (other lengths, same capacity bucket): no new graph
        assert _tokens(compiled, "ar", prompts[4:8]) == _tokens(tiny_llama, "ar", prompts[4:8])
        assert _tokens(compiled, "pld", prompts[4:8]) == _tokens(tiny_llama, "pld", prompts[4:8])
        assert counters["stats"]["unique_graphs"] == graphs
    assert compiled.describe()["regime"] == "compiled"


def test_every_method_keeps_its_tokens_in_the_static_cache_layout():
    """The compiled regime's cache (attention over the whole reserved capacity, scatter writes) under every
    method's own layouts (mask rows, trees, draft caches): greedy = AR at batch 4, stopped rows frozen."""
    from specbench.testing import lossless

    factories = _method_factories()
    target = lossless.load_tiny("tiny-random-qwen3")
    target.regime = "compiled"  # the static cache with the eager model
    try:
        with one_thread():
            for factory in factories.values():
                method = factory(target)
                assert target.new_cache(1, 8).static
                lossless.check_greedy(method, target, 20, batch_sizes=(4,))
                lossless.check_stopped_rows(method, target)
    finally:
        target.regime = "eager"


def test_a_shared_target_takes_each_cells_regime(tiny_llama):
    """A sweep shares its target across cells: an eager cell after a compiled one runs eager again, under
    the eager product rule again."""
    from specbench.compiled import set_regime

    target = _twin(tiny_llama, "tiny-shared")
    target.skinny_rows, target.skinny_source = 4, "env"  # a CPU's measured W @ Xᵀ rule
    set_regime(target, "compiled")
    assert target.new_cache(1, 8).static and target.compiled_forward is not None
    # every pass under F.linear, the compiled forward's product, the methods' own and the drafters' too
    assert target.skinny_rows == 0 and target.describe()["forward"] == "direct"
    compiled = target.compiled_forward
    set_regime(target, "eager")
    assert not target.new_cache(1, 8).static and target.describe()["regime"] == "eager"
    assert (target.skinny_rows, target.skinny_source) == (4, "env") and target.describe()["forward"] == "direct"
    set_regime(target, "compiled")
    assert target.compiled_forward is compiled and target.skinny_rows == 0  # compiled once, kept


def test_a_compiled_profile_grid_captures_one_graph_per_shape_past_torchs_default_limit(tiny_llama):
    """Ten (batch, q) points: ten graphs, every point timed compiled (torch's default keeps 8 and runs the
    rest eager without a word), and the context's prefill eager as in the decode loop (no graph per chunk)."""
    from torch._dynamo.utils import counters

    from specbench.compiled import compile_target
    from specbench.profile import Hardware, profile_grid

    target = _twin(tiny_llama, "tiny-profile")
    compile_target(target, backend="aot_eager")
    torch._dynamo.reset()
    counters.clear()
    with one_thread():
        points = profile_grid(target, list(range(1, 11)), [1], context=12, repeats=1, warmup=0,
                              hardware=Hardware("cpu", 1e10, None, 1e11, None))
    assert [p["status"] for p in points] == ["ok"] * 10
    assert counters["stats"]["unique_graphs"] == 10


#: functional ops inductor turns back into in-place writes of a graph input (its reinplacing pass)
WRITTEN_IN_PLACE = {"aten.index_put.default", "aten._unsafe_index_put.default", "aten.slice_scatter.default",
                    "aten.select_scatter.default"}


def _aot_eager_noting_input_writes(writes):
    """`aot_eager` that keeps input mutations in the graph, as inductor does, and notes which functional op
    produces each value copied back into a graph input (`writes[op] += 1`)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def note(graph, inputs):
        for node in graph.graph.nodes:
            if node.target is torch.ops.aten.copy_.default and node.args[0].op == "placeholder":
                writes[str(node.args[1].target)] += 1
        return make_boxed_func(graph.forward)

    return aot_autograd(fw_compiler=note, keep_inference_input_mutations=True)


def test_every_method_keeps_the_eager_tokens_with_the_target_forward_traced():
    """Each method's verification through the captured path (dynamo-traced target, `aot_eager` backend):
    greedy = AR at batch 4, and that AR = the eager target's AR, so every method keeps the eager tokens.
    AR and pld run first, so graphs traced without forward hooks exist when the hook-reading methods come
    (as the AR arm's do in a run): dynamo's default skipped hook guards, and DFlash found no features.

    Every input a graph writes (the static caches) is written by an op inductor writes in place: a
    `scatter_` was copied whole and copied back, two capacity-sized copies per layer per call."""
    import collections

    from specbench.compiled import compile_target
    from specbench.testing import lossless

    eager = lossless.load_tiny("tiny-random-qwen3")
    target = _twin(eager, "tiny-traced-qwen3")
    writes = collections.Counter()
    compile_target(target, backend=_aot_eager_noting_input_writes(writes))
    factories = _method_factories()
    prompts = lossless.kit_prompts(eager)
    with one_thread():
        assert lossless.ar_reference(target, prompts, 20) == lossless.ar_reference(eager, prompts, 20)
        for factory in factories.values():
            lossless.check_greedy(factory(target), target, 20, batch_sizes=(4,))
    assert writes and set(writes) <= WRITTEN_IN_PLACE, writes


def test_layer_features_under_the_traced_target_are_each_calls_own_eager_ones():
    """EAGLE-3 and DFlash read target layers (`Target.forward_with_features`): an argument of the compiled
    direct forward, hooks around the compiled `model(...)` of a target without the direct forward. Each call
    must return that call's own features, equal to the eager ones (random drafters accept nothing, so equal
    tokens alone would not show stale features); and hooks on a target whose compiled forward drops the
    module guards are refused, not silently missed."""
    import dataclasses

    import pytest

    from specbench.compiled import compile_target
    from specbench.errors import SpecbenchError
    from specbench.testing import lossless
    from specbench.training.features import capture_layers

    eager = lossless.load_tiny("tiny-random-qwen3")
    direct = _twin(eager, "tiny-traced-direct")
    via_model = dataclasses.replace(_twin(eager, "tiny-traced-model"), forward_impl="transformers")
    for target in (direct, via_model):
        compile_target(target, backend="aot_eager")
    assert direct.compiled_forward is not None and via_model.compiled_model is not None
    prompt = torch.tensor([lossless.kit_prompts(eager)[2]])
    features = {}
    with one_thread():
        for target in (eager, direct, via_model):
            cache = target.new_cache(1, 64)
            target.forward(prompt, cache, logits_at=[prompt.shape[1] - 1])
            cache.commit_prefix([prompt.shape[1]])
            features[target.name] = []
            for step in range(3):
                ids = torch.tensor([[5 + step, 7 + step]])
                if step == 1:  # between two capturing calls, a plain one (the AR arm's) of the same shape
                    target.forward(ids, cache)
                _, got = target.forward_with_features(ids, cache, [0, -1])
                features[target.name].append({k: v.clone() for k, v in got.items()})
                cache.commit_prefix([2])
        with capture_layers(direct.model, [0]), pytest.raises(SpecbenchError, match="forward_with_features"):
            direct.forward(torch.tensor([[5]]), direct.new_cache(1, 8))
    for name in (direct.name, via_model.name):
        for want, have in zip(features[eager.name], features[name]):
            assert sorted(have) == [0, eager.num_layers - 1], name
            for k in want:  # static vs eager cache: float rounding apart
                torch.testing.assert_close(have[k], want[k], atol=1e-4, rtol=1e-4, msg=name)
    last = eager.num_layers - 1
    assert not torch.allclose(features[eager.name][0][last], features[eager.name][1][last])  # steps differ


def test_a_compiled_call_rechecks_no_guard_on_the_targets_modules_and_each_target_gets_its_own_graphs():
    """`frozen_guards`: the guards dynamo re-checks at every call of the compiled forward leave out the
    target's modules (thousands on a real model). Dynamo keeps graphs on the code object, so two targets
    that differ only inside their modules (here the MLP activation, as two configs' `hidden_act` would)
    must not share graphs: each gives its own eager logits."""
    from specbench.compiled import compile_target
    from specbench.testing import lossless

    silu = lossless.load_tiny("tiny-random-qwen3")
    gelu = _twin(silu, "tiny-gelu")
    for layer in gelu.model.model.layers:
        layer.mlp.act_fn = torch.nn.GELU()
    prompt = torch.tensor([lossless.kit_prompts(silu)[1]])
    with one_thread():
        for reference in (silu, gelu):
            target = compile_target(_twin(reference, reference.name + "-compiled"), backend="aot_eager")
            logits = {}
            for t in (reference, target):
                cache = t.new_cache(1, 64)
                t.forward(prompt, cache, logits_at=[prompt.shape[1] - 1])
                cache.commit_prefix([prompt.shape[1]])
                logits[t.name] = t.forward(torch.tensor([[5, 9, 11]]), cache)
            torch.testing.assert_close(logits[target.name], logits[reference.name], atol=1e-4, rtol=1e-4,
                                       msg=reference.name)
            (counts,) = target.guard_counts  # one graph: q = 3
            assert counts["dropped"] > 3 * counts["kept"], counts  # 4 layers; 36 on a Qwen3-8B: 7.7x


def test_every_captured_method_pass_computes_what_its_eager_call_computes(monkeypatch):
    """The methods' own passes in the compiled regime (`specbench.compiled.run`: FlexDraft's joint and mask
    passes, BiTA's joint pass, MTP's adapted target pass, DFlash's block pass, EAGLE-3's draft tree): at
    every call of a batch-4 decode, the traced pass's outputs equal the same call run eagerly (the passes'
    cache writes are idempotent: the same keys into the same pending slots). Random drafters accept next to
    nothing, so equal tokens alone would not show a pass that lost its adapters or read stale state; and a
    second batch traces no new graph (no host length read inside a pass)."""
    from torch._dynamo.utils import counters

    from specbench import compiled as compiled_module
    from specbench.compiled import compile_target
    from specbench.testing import lossless

    eager = lossless.load_tiny("tiny-random-qwen3")
    target = _twin(eager, "tiny-traced-passes")
    compile_target(target, backend="aot_eager")
    traced_run = compiled_module.run
    calls = {}

    def checked_run(t, fn, *args, **kwargs):
        out = traced_run(t, fn, *args, **kwargs)
        with torch.inference_mode():
            want = fn(*args, **kwargs)
        name = getattr(fn, "__qualname__", str(fn))
        calls[name] = calls.get(name, 0) + 1
        for have, ref in zip(torch.utils._pytree.tree_leaves(out), torch.utils._pytree.tree_leaves(want)):
            if ref.is_floating_point():
                torch.testing.assert_close(have, ref, atol=1e-4, rtol=1e-4, msg=name)
            else:
                assert torch.equal(have, ref), name
        return out

    monkeypatch.setattr(compiled_module, "run", checked_run)
    prompts = lossless.kit_prompts(eager)
    with one_thread():
        for name, factory in _method_factories().items():
            method = factory(target)
            lossless.check_greedy(method, target, 12, batch_sizes=(4,))
            graphs = counters["stats"]["unique_graphs"]
            generate(method.make_decoder(SamplingConfig(), None), prompts[4:8], 12, target.eos_token_ids,
                     StepTimer(target.device))
            assert counters["stats"]["unique_graphs"] == graphs, name
    assert {n.split(".")[0] for n in calls} >= {"FlexDraftDecoder", "FlexDraftDrafter", "BiTADrafter", "Target",
                                                "DFlashDecoder"}, calls


def test_a_compiled_run_records_its_captured_passes_and_graphs_traced_while_timed(tmp_path, tiny_llama):
    """The manifest of a compiled run says what the method's compiled regime captures and what runs eager,
    and how many graphs were traced inside timed decodes (a shape the warm-up did not meet is compiled in
    a timed step; pld's fixed verify width and AR's q = 1 are all met by the warm-up: 0)."""
    import json

    from specbench.compiled import compile_target
    from specbench.methods.pld import PromptLookupMethod
    from specbench.results import ResultStore
    from specbench.runner import RunConfig, Runner

    target = _twin(tiny_llama, "tiny-compiled-run")
    compile_target(target, backend="aot_eager")
    config = dict(method="pld", suite="gsm8k", target="tiny-random-llama", limit=4, max_new_tokens=12, batch_size=2,
                  regime="compiled")
    with one_thread():
        run_dir = Runner(RunConfig(**config), ResultStore(tmp_path), progress=False, target=target).run(run_id="c")
    manifest = json.loads((run_dir.path / "manifest.json").read_text())
    assert manifest["method"]["compiled_passes"] == PromptLookupMethod.COMPILED_PASSES
    assert manifest["graphs_traced_while_timed"] == 0
    assert manifest["target"]["regime"] == "compiled"
    runner = Runner(RunConfig(**{**config, "limit": 2, "batch_size": 1}), ResultStore(tmp_path / "b"),
                    progress=False, target=target)
    run_dir = runner.run(run_id="d")  # batch 1: shapes the first run never traced, met by this run's warm-up
    assert json.loads((run_dir.path / "manifest.json").read_text())["graphs_traced_while_timed"] == 0
    runner = Runner(RunConfig(**{**config, "limit": 3, "batch_size": 3, "warmup": False}), ResultStore(tmp_path / "c"),
                    progress=False, target=target)
    run_dir = runner.run(run_id="e")  # batch 3 without a warm-up: traced while timed, and counted
    assert json.loads((run_dir.path / "manifest.json").read_text())["graphs_traced_while_timed"] >= 1


def test_every_batch_of_a_compiled_run_reserves_the_runs_longest_need(tmp_path, tiny_llama, monkeypatch):
    """A static cache attends over every slot it reserves, so the compiled regime sizes them to the run: all
    batches reserve the longest conversation's need (rounded up to `CAPACITY_BUCKET`), one shape for every
    batch and the warm-up. Here the batches' own needs fall on both sides of a bucket boundary: sized per
    batch, the longer batch would get a larger cache and compile its graphs inside a timed step."""
    import json

    from specbench import compiled
    from specbench.results import ResultStore
    from specbench.runner import RunConfig, Runner

    target = _twin(tiny_llama, "tiny-compiled-capacity")
    compiled.compile_target(target, backend="aot_eager")
    config = dict(method="pld", suite="gsm8k", target="tiny-random-llama", limit=4, batch_size=1, regime="compiled")
    probe = Runner(RunConfig(**config, max_new_tokens=1), ResultStore(tmp_path / "probe"), progress=False,
                   target=target)
    lengths = sorted(len(target.render(probe._messages(e, [], 0))) for e in probe.examples)
    step = probe.method.make_decoder(probe.sampling, None).max_step_tokens
    new_tokens = compiled.CAPACITY_BUCKET - lengths[0] - step - 1  # the shortest prompt fills one bucket exactly
    assert lengths[-1] > lengths[0]
    reserved = []
    new_cache = Target.new_cache
    monkeypatch.setattr(Target, "new_cache", lambda t, b, c: reserved.append(new_cache(t, b, c).capacity) or
                        new_cache(t, b, c))
    with one_thread():
        runner = Runner(RunConfig(**config, max_new_tokens=new_tokens), ResultStore(tmp_path), progress=False,
                        target=target)
        run_dir = runner.run(run_id="c")
    manifest = json.loads((run_dir.path / "manifest.json").read_text())
    assert set(reserved) == {2 * compiled.CAPACITY_BUCKET} == {manifest["target"]["static_slots"]}, reserved
    assert manifest["graphs_traced_while_timed"] == 0


def test_a_compiled_run_warms_its_short_last_batch_too(tmp_path, tiny_llama):
    """3 prompts at batch 2: the last batch has one row, a shape of its own, which the warm-up decodes too;
    warming only the first batch compiled it inside a timed step."""
    import json

    from specbench.compiled import compile_target
    from specbench.results import ResultStore
    from specbench.runner import RunConfig, Runner

    target = compile_target(_twin(tiny_llama, "tiny-compiled-last-batch"), backend="aot_eager")
    config = RunConfig(method="pld", suite="gsm8k", target="tiny-random-llama", limit=3, max_new_tokens=12,
                       batch_size=2, regime="compiled")
    with one_thread():
        run_dir = Runner(config, ResultStore(tmp_path), progress=False, target=target).run(run_id="c")
    assert json.loads((run_dir.path / "manifest.json").read_text())["graphs_traced_while_timed"] == 0


def test_warm_shapes_traces_the_widths_a_short_decode_misses():
    """FlexDraft's padded verify widths (both flex modes, draft-head chunks) and MTP linear's two verify
    widths are met by `Decoder.warm_shapes`: after a prefill and `warm_shapes`, a whole decode of another
    batch traces no new graph, and without `warm_shapes` it does."""
    from torch._dynamo.utils import counters

    from specbench.compiled import compile_target
    from specbench.testing import lossless

    eager = lossless.load_tiny("tiny-random-qwen3")
    methods = {"flexdraft": _flex_both_modes, "mtp": _mtp_linear}
    prompts = lossless.kit_prompts(eager)
    with one_thread():
        for name, factory in methods.items():
            missed = []
            for warm in (False, True):
                target = _twin(eager, f"tiny-warm-{name}-{warm}")
                compile_target(target, backend="aot_eager")
                method = factory(target)
                first = method.make_decoder(SamplingConfig(), None)
                generate(first, prompts[:4], 1, target.eos_token_ids, StepTimer(target.device))  # prefill only
                if warm:
                    first.warm_shapes()
                graphs = counters["stats"]["unique_graphs"]
                second = method.make_decoder(SamplingConfig(), None)
                generate(second, prompts[4:8], 16, target.eos_token_ids, StepTimer(target.device))
                missed.append(counters["stats"]["unique_graphs"] - graphs)
            assert missed[0] > 0 and missed[1] == 0, (name, missed)


def _mtp_linear(target):
    import test_mtp

    return test_mtp.mtp(target, decoding="linear")


def _flex_both_modes(target):
    import test_flexdraft

    return test_flexdraft.flex(target, mode="flex", batch_threshold=2)  # batch 4: sequential until rows stop
