"""The direct target forward (specbench/direct_forward.py) is `model(...)` minus plumbing: bit-identical
logits and cache contents for every write a decode loop makes (with the skinny-product rule off), the
same up to float rounding with it on, hooks still firing."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from specbench import direct_forward, skinny
from specbench.errors import SpecbenchError
from specbench.training.features import capture_layers


def _twin(target):
    """The same target object running transformers' own forward."""
    return dataclasses.replace(target, forward_impl="transformers")


@pytest.fixture
def exact(request):
    """Targets with the skinny-product rule off (`F.linear` everywhere), for bit-identity."""
    touched = []

    def off(target):
        touched.append((target, target.skinny_rows))
        target.skinny_rows = 0
        return target

    yield off
    for target, rows in touched:
        target.skinny_rows = rows


def _writes(target, generator):
    """A decode loop's writes on one cache: ragged prefill, AR step, a chain, a tree, logits_at."""
    v = target.vocab_size
    cache = target.new_cache(3, 64)
    prompt = torch.randint(0, v, (3, 9), generator=generator)
    outs = [target.forward(prompt, cache, logits_at=[8, 5, 3])]
    cache.commit_prefix([9, 6, 4])  # ragged rows from here on
    outs.append(target.forward(torch.randint(0, v, (3, 1), generator=generator), cache))
    cache.commit_prefix([1, 1, 1])
    outs.append(target.forward(torch.randint(0, v, (3, 4), generator=generator), cache))
    cache.commit_prefix([4, 2, 0])
    intra = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]], dtype=torch.bool)
    depths = torch.tensor([0, 1, 1, 2])
    outs.append(target.forward(torch.randint(0, v, (3, 4), generator=generator), cache, intra=intra, depths=depths))
    cache.commit_slots([[0, 1], [0, 2], [0]])
    return outs, cache


def _uniform_writes(target, generator):
    """Batch 1: the maskless paths (prefill into an empty cache, q = 1) and a causal chain over context."""
    v = target.vocab_size
    cache = target.new_cache(1, 64)
    outs = [target.forward(torch.randint(0, v, (1, 7), generator=generator), cache)]
    cache.commit_prefix([7])
    for q, n in ((1, 1), (5, 3), (1, 1)):
        outs.append(target.forward(torch.randint(0, v, (1, q), generator=generator), cache, logits_to_keep=0))
        cache.commit_prefix([n])
    return outs, cache


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen3", "smollm2"])
def test_direct_forward_is_bit_identical_to_transformers(name, request, exact):
    target = exact(request.getfixturevalue(name))
    assert target.forward_impl == "direct" and target.describe()["forward"] == "direct"
    for writes in (_writes, _uniform_writes):
        direct, d_cache = writes(target, torch.Generator().manual_seed(0))
        hf, h_cache = writes(_twin(target), torch.Generator().manual_seed(0))
        for a, b in zip(direct, hf):
            assert a.shape == b.shape and torch.equal(a, b)
        for la, lb in zip(d_cache.layers, h_cache.layers):
            assert torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values)
        assert d_cache.lengths == h_cache.lengths


def test_direct_forward_with_eager_attention():
    from specbench.tiny_models import build_tiny_model, build_tokenizer
    from specbench.targets import Target

    tok = build_tokenizer("llama")
    model = build_tiny_model("llama", len(tok))
    model.config._attn_implementation = "eager"
    target = Target("eager", "test", model, tok, torch.device("cpu"), torch.float32)
    target.skinny_rows = 0
    assert target._attention is direct_forward.attention_function(model)
    direct, _ = _writes(target, torch.Generator().manual_seed(1))
    hf, _ = _writes(_twin(target), torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(direct, hf))


@pytest.mark.parametrize("name", ["tiny_qwen3", "smollm2"])
def test_skinny_products_change_only_rounding(name, request):
    """The rule at its widest measured cut-off (W·Xᵀ up to 8 rows, the tests' `SPECBENCH_SKINNY_ROWS`)
    against transformers: the same logits to float32 rounding and the same argmax at every position, on
    every write of a decode loop."""
    target = request.getfixturevalue(name)
    assert target.skinny_rows == 8 and target.describe()["skinny_source"] == "env"
    for writes in (_writes, _uniform_writes):
        direct, _ = writes(target, torch.Generator().manual_seed(0))
        hf, _ = writes(_twin(target), torch.Generator().manual_seed(0))
        for a, b in zip(direct, hf):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
            assert torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.mark.parametrize("rows", [1, 2, 5, 8, 9])
def test_skinny_product_is_linear(rows):
    gen = torch.Generator().manual_seed(rows)
    layer = torch.nn.Linear(48, 40, bias=True)
    x = torch.randn(rows, 1, 48, generator=gen)
    assert torch.allclose(skinny.linear(layer, x, 8), layer(x), atol=1e-6)
    seen = []
    layer.register_forward_hook(lambda m, args, out: seen.append(args[0].shape) or out * 2)
    assert torch.allclose(skinny.linear(layer, x, 8), 2 * torch.nn.functional.linear(x, layer.weight, layer.bias),
                          atol=1e-6)
    assert seen == [x.shape]


def test_drafters_take_the_rule_without_changing_their_state():
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Sequential(torch.nn.Linear(8, 4)))
    keys, params = list(net.state_dict()), [id(p) for p in net.parameters()]
    skinny.use_skinny(net, 8)
    assert isinstance(net[0], skinny.SkinnyLinear) and net[2][0].skinny_rows == 8
    assert list(net.state_dict()) == keys and [id(p) for p in net.parameters()] == params
    x = torch.randn(3, 8)
    skinny.use_skinny(net, 0)
    assert net[0].skinny_rows == 0 and torch.equal(net(x), torch.nn.functional.linear(
        torch.relu(torch.nn.functional.linear(x, net[0].weight, net[0].bias)), net[2][0].weight, net[2][0].bias))


def test_skinny_rows_follow_device_dtype_and_override(monkeypatch, tmp_path):
    cpu, weights = torch.device("cpu"), [torch.randn(64, 64)]
    monkeypatch.delenv("SPECBENCH_SKINNY_ROWS", raising=False)
    monkeypatch.setattr(skinny, "measure", lambda w: {1: (2.0, 1.0), 2: (2.0, 1.0), 4: (2.0, 1.0), 8: (2.0, 1.0)})
    assert skinny.default_rows(cpu, torch.float32, weights, tmp_path) == (8, "measured")
    assert skinny.default_rows(cpu, torch.bfloat16, weights, tmp_path) == (0, "off")
    assert skinny.default_rows(torch.device("cuda"), torch.float32, weights, tmp_path) == (0, "off")
    monkeypatch.setenv("SPECBENCH_SKINNY_ROWS", "0")
    assert skinny.default_rows(cpu, torch.float32, weights, tmp_path) == (0, "env")
    monkeypatch.setenv("SPECBENCH_SKINNY_ROWS", "many")
    with pytest.raises(SpecbenchError, match="SPECBENCH_SKINNY_ROWS"):
        skinny.default_rows(cpu, torch.float32, weights, tmp_path)


@pytest.mark.parametrize("timings, rows", [
    # the first box (module docstring), 2 threads: W·Xᵀ wins at every width up to 8
    ({1: (34.8, 17.3), 2: (55.6, 15.9), 4: (53.5, 16.7), 8: (49.6, 35.4)}, 8),
    # the same box, 1 thread: a tie at 8 rows is not a win
    ({1: (34.7, 27.1), 2: (58.5, 32.2), 4: (56.0, 31.3), 8: (65.7, 65.6)}, 4),
    # the AVX-512 box, 2 threads: F.linear wins everywhere, the rule is off
    ({1: (20.4, 51.1), 2: (19.7, 50.1), 4: (33.1, 50.3), 8: (43.0, 48.9)}, 0),
    # a narrow loss stops the cut-off even if a wider width would win
    ({1: (30.0, 20.0), 2: (30.0, 29.0), 4: (60.0, 20.0), 8: (60.0, 20.0)}, 1),
])
def test_the_cut_off_is_the_widest_width_that_wins_all_the_way(timings, rows):
    assert skinny.choose_rows(timings) == rows


def test_the_measured_cut_off_is_stored_per_machine_and_reused(monkeypatch, tmp_path):
    monkeypatch.delenv("SPECBENCH_SKINNY_ROWS", raising=False)
    calls = []
    monkeypatch.setattr(skinny, "measure", lambda w: calls.append(1) or {1: (2.0, 1.0), 2: (2.0, 1.0), 4: (2.0, 3.0)})
    weights = [torch.randn(32, 16), torch.randn(16, 32)]
    assert skinny.calibrated_rows(weights, tmp_path) == 2 and len(calls) == 1
    stored = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert stored["rows"] == 2 and stored["threads"] == torch.get_num_threads() and "load_average" in stored
    assert skinny.calibrated_rows(weights, tmp_path) == 2 and len(calls) == 1  # read back, not measured
    assert skinny.calibrated_rows([torch.randn(64, 16)], tmp_path) == 2 and len(calls) == 2  # other shapes


def test_one_process_measures_and_the_others_read_its_cut_off(monkeypatch, tmp_path):
    """Two loads at once (two trainings started together) must not each time the products under the
    other's load and pick different rules: the second waits for the first's result."""
    import threading
    import time

    calls = []

    def slow_measure(w):
        calls.append(1)
        time.sleep(0.3)
        return {1: (2.0, 1.0), 2: (2.0, 3.0)}

    monkeypatch.setattr(skinny, "measure", slow_measure)
    weights, rows = [torch.randn(32, 16)], []
    threads = [threading.Thread(target=lambda: rows.append(skinny.calibrated_rows(weights, tmp_path)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert rows == [1, 1] and len(calls) == 1


def test_measure_times_both_products_at_each_width():
    timings = skinny.measure([torch.randn(128, 64), torch.randn(64, 128)], widths=(1, 4), repeats=1)
    assert set(timings) == {1, 4} and all(a > 0 and b > 0 for a, b in timings.values())


def test_a_wrong_causal_flag_would_be_caught(tiny_llama, monkeypatch, exact):
    """The mask rule bites: letting a q > 1 causal write over cached context go maskless (SDPA's causal
    flag aligns top-left) changes the logits, and the comparison above sees it."""
    from specbench.kv_cache import RowKVCache

    exact(tiny_llama)
    real = RowKVCache.attention_mask
    monkeypatch.setattr(RowKVCache, "attention_mask", lambda self, intra, dtype, allow_none=False:
                        real(self, intra, dtype, allow_none=intra is None))
    direct, _ = _uniform_writes(tiny_llama, torch.Generator().manual_seed(0))
    monkeypatch.setattr(RowKVCache, "attention_mask", real)
    hf, _ = _uniform_writes(_twin(tiny_llama), torch.Generator().manual_seed(0))
    assert not torch.equal(direct[2], hf[2])


def test_layer_hooks_fire_and_pre_hooks_fall_back(tiny_llama, exact):
    exact(tiny_llama)
    ids = torch.randint(0, tiny_llama.vocab_size, (1, 6), generator=torch.Generator().manual_seed(2))
    with capture_layers(tiny_llama.model, [0, -1]) as got:
        tiny_llama.forward(ids, tiny_llama.new_cache(1, 16))
    with capture_layers(tiny_llama.model, [0, -1]) as want:
        _twin(tiny_llama).forward(ids, tiny_llama.new_cache(1, 16))
    assert sorted(got) == sorted(want) == [0, 3]
    assert all(torch.equal(got[i], want[i]) for i in want)
    calls = []
    handle = tiny_llama.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        tiny_llama.forward(ids, tiny_llama.new_cache(1, 16))
    finally:
        handle.remove()
    assert calls == [1]  # model(...) ran, so a call counter on it still counts


def test_unsupported_architectures_say_why(tiny_llama):
    class Other(torch.nn.Module):
        config = tiny_llama.model.config

    assert "architecture Other" in direct_forward.supported(Other())
    config = tiny_llama.model.config
    old = getattr(config, "layer_types", None)
    config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    try:
        assert direct_forward.supported(tiny_llama.model) == "sliding-window layers"
        with pytest.raises(SpecbenchError, match="sliding-window"):
            dataclasses.replace(tiny_llama, forward_impl="direct")
    finally:
        config.layer_types = old
    assert direct_forward.supported(tiny_llama.model) is None


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen3"])
def test_decoder_states_of_embeddings_match_transformers(name, request, exact):
    """MTP's pass (rows of its own embeddings through the target) runs the same direct layers."""
    target = exact(request.getfixturevalue(name))
    gen = torch.Generator().manual_seed(3)
    embeds = torch.randn(2, 5, target.config.hidden_size, generator=gen)
    intra = torch.tril(torch.ones(5, 5, dtype=torch.bool))
    states = []
    for t in (target, _twin(target)):
        cache = t.new_cache(2, 16)
        cache.begin_write(3)
        cache.commit_prefix([3, 2])
        positions = cache.begin_write(5)
        states.append(t.decoder_states(embeds, positions, cache.attention_mask(intra, t.dtype), cache))
    assert torch.equal(states[0], states[1])
    assert torch.equal(target.head(states[0]), _twin(target).head(states[1]))
