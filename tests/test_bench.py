"""`specbench bench` on the tiny target: every section runs, and the contenders agree token for token
(timings themselves are not asserted: they belong to the recorded benchmark output, not to a test)."""

import json

from click.testing import CliRunner

from specbench.cli import cli


def test_bench_sections_agree_with_hf_token_for_token(tmp_path):
    out = CliRunner().invoke(cli, ["bench", "--target", "tiny-random-llama", "--batch-sizes", "1,2", "--prompts", "2",
                                   "--max-new-tokens", "10", "--repeats", "1", "--pld-prompts", "2",
                                   "--pld-tokens", "16", "--pld-depth", "4", "--verify-q", "2,4",
                                   "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    result = json.loads((tmp_path / "bench-tiny-random-llama.json").read_text())
    loop = result["loop_vs_generate"]
    assert [r["batch_size"] for r in loop] == [1, 2]
    assert all(r["identical_batches"] == r["timed_batches"] > 0 and r["ratio"] > 0 for r in loop)
    assert all(r["forward"] == "direct" and r["ratio_direct_vs_transformers_forward"] > 0 for r in loop)
    pld = result["pld_vs_prompt_lookup"]
    assert pld["identical_outputs"] == pld["outputs"] == 2 and pld["pld_tau"] >= 1 and pld["hf_tau"] >= 1
    assert [r["q"] for r in result["verify_cost"]] == [1, 2, 4]
    assert result["verify_cost"][0]["relative_to_ar_step"] == result["verify_cost"][0]["relative_to_ar_step_tf"] == 1.0
    assert len(result["load_average_start"]) == len(result["load_average_end"]) == 3


def test_bench_refuses_bad_widths():
    out = CliRunner().invoke(cli, ["bench", "--target", "tiny-random-llama", "--verify-q", "two"])
    assert out.exit_code == 2 and "--verify-q takes positive integers" in out.output


def test_the_pld_contender_runs_the_direct_forward(tiny_llama, monkeypatch):
    """HF's forward counter must not turn the harness's loop into model(...) calls (a pre-hook on the
    model does: `direct_forward.has_pre_hooks`), or the pld row would time transformers' forward twice."""
    from specbench import direct_forward
    from specbench.bench import bench_pld_vs_prompt_lookup

    calls = []
    real = direct_forward.forward_with_layers
    monkeypatch.setattr(direct_forward, "forward_with_layers", lambda *a, **k: calls.append(1) or real(*a, **k))
    prompt = tiny_llama.render([{"role": "user", "content": "one two one two one two"}])
    result = bench_pld_vs_prompt_lookup(tiny_llama, [prompt], 8, 1, depth=3, max_ngram=2)
    assert result["identical_outputs"] == 1 and len(calls) >= 8
