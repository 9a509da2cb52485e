"""`specbench profile`, random-weight targets and the report's latency-vs-roofline section (issue 20, item 3)."""

import json
import statistics
import sys
import types

import pytest
import torch
from click.testing import CliRunner
from test_report import fake_run

from specbench.cli import cli
from specbench.profile import Hardware, datasheet, fill_cache, kv_bytes_per_token, profile_grid
from specbench.random_targets import load_random_target, packaged_configs, read_config
from specbench.report import build_report
from specbench.report.roofline import roofline_section

TINY = ["profile", "--target", "tiny-random-llama", "--device", "cpu", "--q", "1,3", "--batch", "1,2",
        "--context", "8", "--repeats", "2", "--warmup", "1"]
FAKE_HW = Hardware("test", bandwidth_measured=1e9, bandwidth_datasheet=None, flops_measured=1e10, flops_datasheet=None)


def _profile(tmp_path, *args):
    result = CliRunner().invoke(cli, TINY + ["--out", str(tmp_path / "profile"), *args])
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "profile").glob("*.json")
    return path, json.loads(path.read_text())


def test_grid_writes_json_with_latency_and_roofline(tmp_path, tiny_llama):
    path, data = _profile(tmp_path)
    assert data["kind"] == "profile" and data["regime"] == "eager" and data["context"] == 8
    assert data["provenance"]["hardware"]["device"] == "cpu" and data["target"]["name"] == "tiny-random-llama"
    hw = data["hardware"]
    assert hw["bandwidth_used"] == "measured" and hw["bandwidth_datasheet"] is None and hw["bandwidth_measured"] > 0
    cfg = tiny_llama.config
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    params = sum(p.numel() for p in tiny_llama.model.parameters())
    embedding = tiny_llama.model.get_input_embeddings().weight.numel()  # untied: only b·q rows are gathered
    assert sorted((p["batch"], p["q"]) for p in data["points"]) == [(1, 1), (1, 3), (2, 1), (2, 3)]
    for p in data["points"]:
        assert p["status"] == "ok" and len(p["latency_ms_all"]) == 2 and len(p["host_ms_all"]) == 2
        assert p["host_ms"] == pytest.approx(statistics.median(p["host_ms_all"])) and p["host_ms"] > 0
        assert p["latency_ms"] == pytest.approx(statistics.median(p["latency_ms_all"])) and p["latency_ms"] > 0
        assert p["kv_bytes"] == per_token * p["batch"] * (8 + p["q"]) and p["attended_slots"] == 8 + p["q"]
        assert p["weight_bytes"] == 4 * (params - embedding)
        memory_ms = (p["weight_bytes"] + p["kv_bytes"]) / hw["bandwidth_measured"] * 1e3
        assert p["memory_roofline_ms"] == pytest.approx(memory_ms)
        assert p["latency_over_memory_roofline"] == pytest.approx(p["latency_ms"] / memory_ms)
        assert p["roofline_ms"] == pytest.approx(max(memory_ms, p["compute_roofline_ms"]))
    section = roofline_section(tmp_path)  # the report reads what the command writes
    assert section is not None and any(item.kind == "figure" for item in section.items)


def test_two_grids_in_one_folder_keep_both_files(tmp_path):
    """The H200 check profiles q = 1 and q = 8 compiled in two calls (one graph each fits its time cap): the
    second file once replaced the first."""
    out = tmp_path / "profile"
    for q in ("1", "2"):
        args = [a if a != "1,3" else q for a in TINY]
        result = CliRunner().invoke(cli, args + ["--out", str(out)])
        assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.json"))
    assert len(files) == 2 and [json.loads(f.read_text())["q"] for f in files] == [[1], [2]]


def test_cache_holds_the_context_and_kv_bytes_match_its_buffers(tiny_qwen3):
    cache = fill_cache(tiny_qwen3, batch=2, context=300, capacity=304, gen=torch.Generator().manual_seed(0))
    assert cache.lengths == [300, 300]  # two prefill chunks
    per_slot = sum(layer.keys[0, :, 0].numel() * layer.keys.element_size() * 2 for layer in cache.layers)
    assert kv_bytes_per_token(tiny_qwen3) == per_slot


def test_every_timed_forward_sees_the_same_context(tiny_llama, monkeypatch):
    seen = []
    forward = tiny_llama.forward

    def spy(ids, cache, *args, **kwargs):
        seen.append((ids.shape[1], list(cache.lengths)))
        return forward(ids, cache, *args, **kwargs)

    monkeypatch.setattr(tiny_llama, "forward", spy)
    points = profile_grid(tiny_llama, [1, 4], [2], context=6, repeats=3, warmup=2, hardware=FAKE_HW)
    assert [p["status"] for p in points] == ["ok", "ok"]
    prefill, timed = seen[:1], seen[1:]
    assert prefill == [(6, [0, 0])]
    assert timed == [(1, [6, 6])] * 5 + [(4, [6, 6])] * 5


def test_points_that_do_not_fit_are_skipped_with_the_reason(tiny_llama, monkeypatch):
    import specbench.profile as profile

    monkeypatch.setattr(profile, "free_bytes", lambda device: 400_000)  # fits batch 1, not a cache of 64 rows
    points = profile_grid(tiny_llama, [1], [1, 64], context=8, repeats=1, warmup=0, hardware=FAKE_HW)
    assert points[0]["status"] == "ok"
    assert points[1]["status"] == "skipped" and "does not fit: a cache of 64 x 9 tokens" in points[1]["reason"]

    monkeypatch.setattr(profile, "free_bytes", lambda device: None)
    forward = tiny_llama.forward

    def oom_at_q4(ids, cache, *args, **kwargs):
        if ids.shape[1] == 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(ids, cache, *args, **kwargs)

    monkeypatch.setattr(tiny_llama, "forward", oom_at_q4)
    points = profile_grid(tiny_llama, [1, 4, 5], [1], context=8, repeats=1, warmup=0, hardware=FAKE_HW)
    assert [p["status"] for p in points] == ["ok", "skipped", "ok"]
    assert points[1]["reason"].startswith("out of memory: CUDA out of memory")


@pytest.mark.parametrize("name, label, bandwidth", [
    ("NVIDIA H200", "H200", 4.8e12), ("NVIDIA H100 80GB HBM3", "H100 SXM", 3.35e12),
    ("NVIDIA H100 PCIe", "H100 PCIe", 2.0e12), ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM", 2.039e12),
    ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe", 1.935e12), ("NVIDIA A100-PCIE-40GB", "A100 40GB", 1.555e12),
])
def test_datasheet_bandwidth_of_known_gpus(name, label, bandwidth):
    assert datasheet(name)[:2] == (label, bandwidth)
    hw = Hardware(label, bandwidth_measured=1e12, bandwidth_datasheet=bandwidth, flops_measured=1e14, flops_datasheet=None)
    assert hw.bandwidth == bandwidth and hw.as_dict()["bandwidth_used"] == "datasheet"


def test_unknown_gpus_use_the_measured_bandwidth():
    assert datasheet("NVIDIA L4") is None
    assert Hardware("L4", 2.5e11, None, 1e14, None).bandwidth == 2.5e11


# -- random-weight targets -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, billions", [("qwen3-8b", 8.2), ("qwen3-1.7b", 1.7), ("llama-3.1-8b", 8.03),
                                            ("smollm2-135m", 0.1345)])
def test_packaged_configs_have_the_published_sizes(name, billions):
    """Built on the meta device (no memory): the parameter count is the model card's."""
    from transformers import AutoConfig, AutoModelForCausalLM

    assert name in packaged_configs()
    _, fields = read_config(f"random:{name}")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**fields))
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, rel=0.015)


def _shrunk(tmp_path, name, **extra):
    """A packaged config at toy size: same architecture and fields, small dimensions."""
    _, fields = read_config(name)
    fields.update(num_hidden_layers=2, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=512, bos_token_id=None, eos_token_id=2, **extra)
    path = tmp_path / f"{name}-tiny.json"
    path.write_text(json.dumps(fields))
    return path


def test_random_weights_build_in_the_requested_dtype_with_the_config_shapes(tmp_path):
    target = load_random_target(str(_shrunk(tmp_path, "qwen3-8b")), device="cpu", dtype="bfloat16")
    model = target.model
    assert type(model).__name__ == "Qwen3ForCausalLM" and target.name == "random:qwen3-8b-tiny"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    attn = model.model.layers[0].self_attn
    assert len(model.model.layers) == 2
    assert attn.q_proj.weight.shape == (4 * 16, 64) and attn.k_proj.weight.shape == (2 * 16, 64)
    assert model.model.layers[1].mlp.gate_proj.weight.shape == (96, 64)
    assert model.lm_head.weight.shape == (512, 64) and model.lm_head.weight is not model.model.embed_tokens.weight
    assert torch.equal(attn.q_norm.weight, torch.ones(16, dtype=torch.bfloat16))
    weight = attn.q_proj.weight.float()
    assert torch.isfinite(weight).all() and weight.std().item() == pytest.approx(0.02, rel=0.15)
    again = load_random_target(str(_shrunk(tmp_path, "qwen3-8b")), device="cpu", dtype="bfloat16")
    assert torch.equal(again.model.lm_head.weight, model.lm_head.weight)  # seeded
    assert target.fingerprint == again.fingerprint and target.fingerprint.startswith("random-")


def test_tied_config_ties_and_the_harness_can_decode_with_it(tmp_path):
    from specbench.decode import generate
    from specbench.methods import build_method
    from specbench.sampling import SamplingConfig
    from specbench.timing import StepTimer

    target = load_random_target(str(_shrunk(tmp_path, "qwen3-1.7b")), device="cpu", dtype="float32")
    assert target.model.lm_head.weight is target.model.model.embed_tokens.weight
    prompt = target.render([{"role": "user", "content": "How many clips did Natalia sell?"}])
    assert prompt and max(prompt) < 512
    out = generate(build_method("ar", target).make_decoder(SamplingConfig(), None), [prompt], 4,
                   target.eos_token_ids, StepTimer(target.device))
    assert 1 <= len(out.rows[0].tokens) <= 4


def test_profile_a_random_weights_target(tmp_path):
    config = _shrunk(tmp_path, "llama-3.1-8b")
    args = [a for a in TINY if a not in ("--target", "tiny-random-llama")]
    result = CliRunner().invoke(cli, args + ["--random-weights", str(config), "--out", str(tmp_path / "profile")])
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "profile").glob("*.json")
    data = json.loads(path.read_text())
    assert data["target"]["name"] == "random:llama-3.1-8b-tiny" and data["target"]["architecture"] == "LlamaForCausalLM"
    assert all(p["status"] == "ok" for p in data["points"])


# -- bad input and the compiled regime ------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (TINY + ["--q", "0"], "--q must be comma-separated positive integers"),
    (TINY + ["--q", "1,a"], "--q must be comma-separated positive integers"),
    (TINY + ["--batch", "-1"], "--batch must be comma-separated positive integers"),
    (TINY + ["--context", "-1"], "--context must be >= 0"),
    (TINY + ["--repeats", "0"], "--repeats must be >= 1"),
    (TINY + ["--context", "5000"], "exceeds the target's 4096 positions"),
    (TINY + ["--dtype", "int8"], "unknown dtype 'int8'"),
    (TINY + ["--random-weights", "qwen3-8b"], "give --target or --random-weights, not both"),
    (["profile", "--random-weights", "nope-9b"], "unknown random-weights config 'nope-9b'"),
    (TINY + ["--compiled"], "the compiled regime is not available in this build"),
])
def test_bad_input_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "specbench.compiled", None)  # as in a build without the compiled regime
    result = CliRunner().invoke(cli, args + ["--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not list(tmp_path.glob("*.json"))


def test_compiled_flag_profiles_what_compile_target_returns(tmp_path, monkeypatch):
    calls = []
    module = types.ModuleType("specbench.compiled")
    module.compile_target = lambda target: calls.append(target.name) or target
    monkeypatch.setitem(sys.modules, "specbench.compiled", module)
    path, data = _profile(tmp_path, "--compiled")
    assert calls == ["tiny-random-llama"] and data["regime"] == "compiled" and "-compiled-" in path.name


def test_a_compiled_profile_records_the_guards_each_graph_rechecks(tmp_path, monkeypatch):
    """One graph per (batch, q) point, each with the count of guards dynamo re-checks per call and of those
    on the target's modules it dropped (`compiled.frozen_guards`: the host time a compiled step pays)."""
    from specbench import compiled

    real = compiled.compile_target
    monkeypatch.setattr(compiled, "compile_target", lambda target: real(target, backend="aot_eager"))
    _, data = _profile(tmp_path, "--compiled")
    assert len(data["compiled_guards"]) == len(data["points"]) == 4
    assert {p["attended_slots"] for p in data["points"]} == {compiled.CAPACITY_BUCKET}  # the static cache's all
    assert all(g["dropped"] > 3 * g["kept"] > 0 for g in data["compiled_guards"]), data["compiled_guards"]


# -- the report ----------------------------------------------------------------------------------------------------
def synthetic_profile(regime: str, slowdown: float) -> dict:
    """A profile of a fake 8B target on an H200: latency = slowdown × roofline + 2 ms launch overhead."""
    points = []
    for batch in (1, 4):
        for q in (1, 2, 4, 8):
            memory = 3.4 + 0.01 * batch * q
            compute = 0.02 * batch * q
            latency = round(slowdown * max(memory, compute) + 2.0, 3)
            host = {"host_ms": 0.25 * batch + q / 1000} if regime == "compiled" else {}  # eager: an older file
            points.append({"batch": batch, "q": q, "tokens": batch * q, "status": "ok", "latency_ms": latency,
                           **host, "memory_roofline_ms": memory, "compute_roofline_ms": compute,
                           "roofline_ms": max(memory, compute), "latency_over_memory_roofline": latency / memory,
                           "latency_over_roofline": latency / max(memory, compute)})
    points.append({"batch": 64, "q": 8, "tokens": 512, "status": "skipped", "reason": "does not fit: 200 GiB"})
    return {"kind": "profile", "regime": regime, "target": {"name": "random:qwen3-8b"}, "context": 512,
            "dtype": "bfloat16", "hardware": {"name": "H200", "bandwidth_measured": 4.1e12, "bandwidth_datasheet": 4.8e12,
                                              "bandwidth_used": "datasheet"},
            "points": points, "provenance": {"created": "2026-12-01T00:00:00+00:00"}}


def test_report_draws_latency_per_step_vs_roofline(tmp_path):
    fake_run(tmp_path, "ar")
    plain = build_report(results_dir=tmp_path, out=tmp_path / "plain.html").html.read_text()
    assert "Latency per step vs roofline" not in plain
    (tmp_path / "profile").mkdir()
    for regime, slowdown in (("eager", 3.0), ("compiled", 1.2)):
        (tmp_path / "profile" / f"{regime}.json").write_text(json.dumps(synthetic_profile(regime, slowdown)))
    (tmp_path / "profile" / "broken.json").write_text("{not json")
    html = build_report(results_dir=tmp_path, out=tmp_path / "r.html").html.read_text()
    section = html[html.index('<section id="roofline">'):]
    section = section[: section.index("</section>")]
    assert "Latency per step vs roofline" in section and 'alt="random:qwen3-8b latency per forward vs roofline"' in section
    assert "eager × roofline" in section and "compiled × roofline" in section and "compiled host ms" in section
    eager, compiled = synthetic_profile("eager", 3.0), synthetic_profile("compiled", 1.2)
    assert f"{compiled['points'][-2]['host_ms']:.3f}" in section and "not recorded" in section  # eager: older file
    assert f"{eager['points'][0]['latency_ms']:.3f}" in section and f"{compiled['points'][0]['latency_ms']:.3f}" in section
    assert "skipped" in section and "broken.json" in section
    assert html.index('<section id="roofline">') < html.index('<section id="runs">')


def test_a_folder_of_profiles_alone_gets_its_page(tmp_path):
    """A GPU session that only profiled (issue 20's device check) still gets the roofline page; a folder with
    neither runs nor profiles is still a one-line error."""
    from specbench.errors import SpecbenchError

    with pytest.raises(SpecbenchError, match="no complete runs"):
        build_report(results_dir=tmp_path, out=tmp_path / "empty.html")
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "compiled.json").write_text(json.dumps(synthetic_profile("compiled", 1.2)))
    html = build_report(results_dir=tmp_path, out=tmp_path / "r.html").html.read_text()
    assert '<section id="roofline">' in html and "compiled × roofline" in html
    with pytest.raises(SpecbenchError, match="no run .nope."):  # asked for a run by name: not silently profiles
        build_report(["nope"], results_dir=tmp_path, out=tmp_path / "named.html")
