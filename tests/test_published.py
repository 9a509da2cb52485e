"""Published drafters (issue 21): each released layout imports onto the tiny targets, drafts exactly as the
same weights loaded natively, passes the lossless kit, and every variant specbench does not implement is
refused in one line; `hub:ORG/NAME` works offline from a populated Hugging Face cache.

The writers spell each release's tensor names and config keys as its authors' code does (SafeAILab/EAGLE
`cnets.py`, SpecForge `llama3_eagle.py`, speculators `eagle3`, z-lab `dflash/model.py`, Yaro1214/FlexDraft
`draft_model.py` / `draft_bias.py`), written out here rather than derived from the converters' mapping.
"""

import dataclasses
import hashlib
import json
import re

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from specbench import published
from specbench.cli import cli
from specbench.decode import generate
from specbench.errors import SpecbenchError
from specbench.methods import build_method
from specbench.methods.dflash import DFlashConfig, DFlashDrafter
from specbench.methods.eagle3 import Eagle3Drafter, build_draft_vocab
from specbench.methods.flexdraft import FlexDraftDrafter
from specbench.sampling import SamplingConfig
from specbench.testing.lossless import assert_lossless, kit_prompts, load_tiny, tiny_vocab_target
from specbench.timing import StepTimer
from specbench.training.drafter import Drafter, drafter_provenance

LLAMA, QWEN3 = "tiny-random-llama", "tiny-random-qwen3"


def randomize(drafter, seed=0, dtype=torch.bfloat16):
    """Weights large enough that a wrong mapping changes the drafts, exactly representable in the
    release's dtype so that native and imported weights are bit-identical."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in drafter.named_parameters():
            v = 0.5 + torch.rand(p.shape, generator=g) if "norm" in name else 0.15 * torch.randn(p.shape, generator=g)
            p.copy_(v.to(dtype).float())
    return drafter.eval()


def floats(tensors, dtype):
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}


def save_weights(folder, tensors, config, fmt="safetensors", shards=1):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if fmt == "bin":
        torch.save(tensors, folder / "pytorch_model.bin")
        return
    names, weight_map = sorted(tensors), {}
    for i in range(shards):
        name = "model.safetensors" if shards == 1 else f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: tensors[k] for k in names[i::shards]}, folder / name)
        weight_map.update(dict.fromkeys(names[i::shards], name))
    if shards > 1:
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def edit_config(folder, section=None, **changes):
    config = json.loads((folder / "config.json").read_text())
    (config.setdefault(section, {}) if section else config).update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def edit_tensors(folder, fn):
    from safetensors.torch import load_file

    tensors = load_file(folder / "model.safetensors")
    fn(tensors)
    save_file(tensors, folder / "model.safetensors")


# -- EAGLE-3 releases ------------------------------------------------------------------------------------

EAGLE_LAYER = ["hidden_norm.weight", "input_layernorm.weight", "post_attention_layernorm.weight",
               "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
               "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]


def native_eagle3(target, full_vocab=False, dtype=torch.bfloat16, **options):
    v = target.vocab_size
    d = randomize(Eagle3Drafter.for_target(target, draft_vocab_size=v if full_vocab else max(3, v // 4), **options),
                  dtype=dtype)
    d2t, t2d = build_draft_vocab(torch.randint(0, 50, (v,), generator=torch.Generator().manual_seed(1)),
                                 d.config.draft_vocab_size)
    d.d2t.copy_(d2t)
    d.t2d.copy_(t2d)
    return d


def eagle_tensors(d, layer_prefix):
    """The reference's names (eagle3_dflash.md A.1.2); speculators renames `midlayer.` to `layers.0.`."""
    sd = d.state_dict()
    names = EAGLE_LAYER + (["self_attn.q_norm.weight", "self_attn.k_norm.weight"] if d.config.qk_norm else [])
    out = {layer_prefix + n: sd["midlayer." + n] for n in names}
    out.update({n: sd[n] for n in ("fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d")})
    return out


def llama_layer_config(target, d, model_type="llama"):
    c = d.config
    out = {"model_type": model_type, "hidden_act": "silu", "hidden_size": c.hidden_size,
           "intermediate_size": c.intermediate_size, "num_attention_heads": c.num_heads,
           "num_key_value_heads": c.num_kv_heads, "num_hidden_layers": 1, "rms_norm_eps": c.rms_norm_eps,
           "vocab_size": target.vocab_size, "rope_scaling": None, "tie_word_embeddings": False}
    if c.rope_theta != 10000.0:  # Llama EAGLE-3 configs carry none (A.5-6)
        out["rope_theta"] = c.rope_theta
    return out


def write_eagle(folder, target, d):
    """SafeAILab/EAGLE release (yuhuili/EAGLE3-*): pytorch_model.bin in fp16, no feature ids."""
    config = {"architectures": ["LlamaForCausalLMEagle3"], **llama_layer_config(target, d),
              "draft_vocab_size": d.config.draft_vocab_size, "torch_dtype": "float16"}
    save_weights(folder, floats(eagle_tensors(d, "midlayer."), torch.float16), config, fmt="bin")


def write_specforge(folder, target, d):
    """SpecForge export: bf16 safetensors with the frozen embedding and output-of-layer ids; no head_dim in
    the config (the tensors say it)."""
    tensors = eagle_tensors(d, "midlayer.")
    tensors["embed_tokens.weight"] = target.model.get_input_embeddings().weight.detach()
    config = {"architectures": ["LlamaForCausalLMEagle3"], **llama_layer_config(target, d),
              "draft_vocab_size": d.config.draft_vocab_size, "torch_dtype": "bfloat16",
              "eagle_config": {"eagle_aux_hidden_state_layer_ids": d.config.feature_layers,
                               "use_aux_hidden_state": True}}
    save_weights(folder, floats(tensors, torch.bfloat16), config)


def write_speculators(folder, target, d):
    """speculators: `layers.0.*`, nested layer config, input-of-layer ids, two shards; the vocabulary map
    only when the draft vocabulary is reduced."""
    tensors = eagle_tensors(d, "layers.0.")
    tensors["embed_tokens.weight"] = target.model.get_input_embeddings().weight.detach()
    if d.config.draft_vocab_size == target.vocab_size:
        del tensors["d2t"], tensors["t2d"]
    layer = {**llama_layer_config(target, d, "qwen3" if d.config.qk_norm else "llama"), "head_dim": d.config.head_dim}
    config = {"architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3",
              "draft_vocab_size": d.config.draft_vocab_size, "norm_before_residual": d.config.norm_before_residual,
              "norm_before_fc": False, "fc_norm": False, "norm_output": False, "target_hidden_size": None,
              "eagle_aux_hidden_state_layer_ids": [i + 1 for i in d.config.feature_layers],
              "transformer_layer_config": layer}
    save_weights(folder, floats(tensors, torch.bfloat16), config, shards=2)


# -- z-lab DFlash -------------------------------------------------------------------------------------------

def native_dflash(target):
    n = target.num_layers
    cfg = DFlashConfig.for_target(target, num_layers=2, block_size=5, mask_token="learned",
                                  target_layer_ids=[min(1, n - 1), n - 1], num_anchors=512)
    mask = min(5, target.vocab_size - 1)
    cfg = dataclasses.replace(cfg, mask_token_id=mask, mask_token=published.dflash.token_text(target.tokenizer, mask))
    return randomize(DFlashDrafter(cfg).attach(target))


def write_dflash(folder, target, d):
    sd, c = d.state_dict(), d.config
    tensors = {n: sd[n] for n in ("fc.weight", "hidden_norm.weight", "norm.weight")}
    for i in range(c.num_layers):
        for n in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"):
            tensors[f"layers.{i}.self_attn.{n}.weight"] = sd[f"layers.{i}.{n}.weight"]
        for n in ("gate_proj", "up_proj", "down_proj"):
            tensors[f"layers.{i}.mlp.{n}.weight"] = sd[f"layers.{i}.{n}.weight"]
        for n in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"layers.{i}.{n}.weight"] = sd[f"layers.{i}.{n}.weight"]
    config = {"architectures": ["DFlashDraftModel"], "model_type": "qwen3", "hidden_size": c.hidden_size,
              "head_dim": c.head_dim, "intermediate_size": c.intermediate_size, "num_attention_heads": c.num_heads,
              "num_key_value_heads": c.num_kv_heads, "num_hidden_layers": c.num_layers,
              "num_target_layers": target.num_layers, "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
              "rope_scaling": None, "vocab_size": target.vocab_size, "block_size": c.block_size,
              "layer_types": ["full_attention"] * c.num_layers, "use_sliding_window": False, "sliding_window": None,
              "attention_bias": False, "hidden_act": "silu", "dtype": "bfloat16",
              "dflash_config": {"mask_token_id": c.mask_token_id, "target_layer_ids": c.target_layer_ids}}
    save_weights(folder, floats(tensors, torch.bfloat16), config)


# -- the FlexDraft release ----------------------------------------------------------------------------------

def native_flexdraft(target):
    n = min(2, target.num_layers)
    return randomize(FlexDraftDrafter.for_target(target, draft_layers=n, block_size=4, calib_rank=8))


def write_flexdraft(folder, target, d, section="dflash_config"):
    """Settings under `dflash_config` as released (E.11-1); per-layer MLP/norm copies the forward never reads."""
    sd, c = d.state_dict(), d.config
    h, inter = c.hidden_size, target.config.intermediate_size
    tensors = {"mask_embedding": sd["mask_embedding"], "norm.weight": torch.ones(h)}
    for i, mine in ((0, "calibration.fc1"), (2, "calibration.fc2")):
        tensors.update({f"anchor_bias_mlp.{i}.{p}": sd[f"{mine}.{p}"] for p in ("weight", "bias")})
    for i in range(c.draft_layers):
        for n in ("q_proj", "k_proj", "v_proj", "o_proj") + (("q_norm", "k_norm") if c.qk_norm else ()):
            tensors[f"layers.{i}.self_attn.{n}.weight"] = sd[f"attn.{i}.{n}.weight"]
        for n, shape in (("mlp.gate_proj", [inter, h]), ("mlp.up_proj", [inter, h]), ("mlp.down_proj", [h, inter]),
                         ("input_layernorm", [h]), ("post_attention_layernorm", [h])):
            tensors[f"layers.{i}.{n}.weight"] = torch.randn(shape)
    config = {"architectures": ["FlexDraftBiasModel"], "model_type": "qwen3", "hidden_size": h,
              "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim,
              "intermediate_size": inter, "num_hidden_layers": c.draft_layers, "num_target_layers": target.num_layers,
              "vocab_size": target.vocab_size, "block_size": c.block_size, "rms_norm_eps": c.rms_norm_eps,
              section: {"target_layer_ids": list(range(c.split, target.num_layers)), "mask_token_id": 0,
                        "enable_anchor_bias_logits": True, "anchor_bias_rank": c.calib_rank}}
    save_weights(folder, floats(tensors, torch.bfloat16), config)


def _native_eagle_for(layout, target):
    qwen = target.config.model_type == "qwen3"
    n = target.num_layers
    if layout == "eagle":
        return native_eagle3(target, dtype=torch.float16)
    if layout == "specforge":  # non-default output ids; a Qwen3-4B-like head_dim != H / heads
        return native_eagle3(target, feature_layers=[min(i, n - 1) for i in (0, 2, 3)],
                             **({"head_dim": 32} if qwen else {}))
    return native_eagle3(target, full_vocab=True, norm_before_residual=True, qk_norm=qwen,  # speculators
                         feature_layers=[min(i, n - 1) for i in (0, 1, 2)])


LAYOUTS = {  # layout -> (method, native drafter, writer)
    "eagle": ("eagle3", lambda t: _native_eagle_for("eagle", t), write_eagle),
    "specforge": ("eagle3", lambda t: _native_eagle_for("specforge", t), write_specforge),
    "speculators": ("eagle3", lambda t: _native_eagle_for("speculators", t), write_speculators),
    "dflash": ("dflash", native_dflash, write_dflash),
    "flexdraft": ("flexdraft", native_flexdraft, write_flexdraft),
}
DECODE = {"eagle3": {"depth": 3, "top_k": 2, "total_tokens": 7}, "dflash": {}, "flexdraft": {}}


def release(tmp_path, layout, target):
    """`(folder, native drafter)`: the native drafter written in `layout`."""
    _, native, write = LAYOUTS[layout]
    drafter = native(target)
    folder = tmp_path / f"{layout}-{target.name}"
    write(folder, target, drafter)
    return folder, drafter


#: the call that produces each decoder's drafts of a step (its output, or `decoder.drafts` after it)
DRAFT_CALLS = {"eagle3": "propose_tree", "dflash": "_draft", "flexdraft": "_set_drafts"}


def recorded_drafts(method, target, n_prompts=3, max_new_tokens=20) -> list[torch.Tensor]:
    decoder = method.make_decoder(SamplingConfig(), None)
    seen, original = [], getattr(decoder, DRAFT_CALLS[method.name])

    def record(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append((out.tokens if hasattr(out, "tokens") else out if out is not None else decoder.drafts).clone())
        return out

    setattr(decoder, DRAFT_CALLS[method.name], record)
    generate(decoder, kit_prompts(target)[:n_prompts], max_new_tokens, target.eos_token_ids, StepTimer(target.device))
    return seen


# -- import = the native drafter ----------------------------------------------------------------------------

@pytest.mark.parametrize("target_name", [LLAMA, QWEN3])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_release_imports_as_the_native_drafter(layout, target_name, tmp_path):
    """Detected layout, same config and tensors as the weights loaded natively, cast to the target's dtype,
    provenance with the files' sha256, and the same drafts at every step of a greedy decode."""
    target = load_tiny(target_name)
    method_name = LAYOUTS[layout][0]
    folder, native = release(tmp_path, layout, target)
    assert published.detect(published.Checkpoint(folder)) == (method_name, layout)
    method = build_method(method_name, target, drafter=str(folder), **DECODE[method_name])
    imported = method.drafter
    assert imported.config == native.config
    mine, theirs = native.state_dict(), imported.state_dict()
    assert mine.keys() == theirs.keys()
    for k in mine:
        assert torch.equal(mine[k], theirs[k]), k
    assert all(p.dtype == target.dtype for p in imported.parameters())
    info = imported.training_info["published"]
    files = sorted(p for p in folder.iterdir())
    assert info["layout"] == layout and info["source"] == str(folder.resolve()) and info["revision"] is None
    assert info["files"] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    assert info["dtype"] == ("float16" if layout == "eagle" else "bfloat16")
    expected = recorded_drafts(build_method(method_name, target, drafter=native, **DECODE[method_name]), target)
    got = recorded_drafts(method, target)
    assert len(got) == len(expected) > 3
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_layouts_name_what_their_configs_say(tmp_path, tiny_llama, tiny_qwen3):
    """The mappings the test above relies on, checked at their sources: speculators' input-of-layer ids,
    SpecForge's output-of-layer ids, head_dim from the q_proj rows, FlexDraft's split from
    `target_layer_ids[0]` (also when the settings sit under `flexdraft_config`), unused tensors ignored."""
    folder, native = release(tmp_path, "speculators", tiny_qwen3)
    cfg = json.loads((folder / "config.json").read_text())
    drafter = published.load_published("eagle3", str(folder), tiny_qwen3)
    assert drafter.config.feature_layers == [i - 1 for i in cfg["eagle_aux_hidden_state_layer_ids"]] == [0, 1, 2]
    assert drafter.config.norm_before_residual and drafter.config.qk_norm
    assert drafter.config.draft_vocab_size == tiny_qwen3.vocab_size and bool(drafter.t2d.all())
    folder, _ = release(tmp_path, "specforge", tiny_qwen3)
    drafter = published.load_published("eagle3", str(folder), tiny_qwen3)
    assert drafter.config.feature_layers == [0, 2, 3] and drafter.config.head_dim == 32 != 64 // 4
    assert not drafter.config.qk_norm
    assert drafter.training_info["published"]["ignored_tensors"] == ["embed_tokens.weight"]
    native = native_flexdraft(tiny_llama)
    write_flexdraft(tmp_path / "fd", tiny_llama, native, section="flexdraft_config")
    drafter = published.load_published("flexdraft", str(tmp_path / "fd"), tiny_llama)
    assert drafter.config.split == 2 and drafter.config.calibration and drafter.config.calib_rank == 8
    assert len(drafter.training_info["published"]["ignored_tensors"]) == 2 * 5 + 1


def test_cast_to_a_bfloat16_target(tmp_path):
    target = load_tiny(LLAMA)
    folder, native = release(tmp_path, "eagle", target)  # float16 weights
    bf16 = tiny_bf16()
    drafter = published.load_published("eagle3", str(folder), bf16)
    assert {p.dtype for p in drafter.parameters()} == {torch.bfloat16}
    assert drafter.d2t.dtype == torch.long and torch.equal(drafter.d2t, native.d2t)


def tiny_bf16():
    from specbench.targets import load_target

    return load_target(LLAMA, device="cpu", dtype="bfloat16")


# -- lossless with imported drafters --------------------------------------------------------------------------

@pytest.fixture(autouse=False)
def _one_thread():
    from specbench.testing.lossless import one_thread

    with one_thread(pause_gc=False):
        yield


@pytest.mark.parametrize("layout", ["speculators", "dflash", "flexdraft"])
def test_imported_drafters_pass_the_lossless_kit(layout, tmp_path, _one_thread):
    """The kit (greedy = AR at batch 1/4/8, exact cache, T > 0 distribution) on drafters loaded from
    releases written for each kit target, the one-layer tiny-vocabulary Llama included."""
    method_name = LAYOUTS[layout][0]

    def factory(target):
        folder = tmp_path / f"{layout}-{target.name}"
        if not folder.exists():
            release(tmp_path, layout, target)
        return build_method(method_name, target, drafter=str(folder), **DECODE[method_name])

    assert_lossless(factory)
    assert (tmp_path / f"{layout}-{tiny_vocab_target().name}").is_dir()


# -- refusals -------------------------------------------------------------------------------------------------

def _config(**changes):
    return lambda folder: edit_config(folder, **changes)


def _section(section, **changes):
    return lambda folder: edit_config(folder, section, **changes)


def _tensors(fn):
    return lambda folder: edit_tensors(folder, fn)


def _drop_vocab_map(t):
    del t["d2t"], t["t2d"]


def _perturb_embedding(t):
    t["embed_tokens.weight"][3, 0] += 1


def _norm_before_fc(folder):
    edit_config(folder, norm_before_fc=True)
    from safetensors.torch import load_file

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = folder / index["weight_map"]["fc.weight"]
    tensors = load_file(shard)
    tensors["input_norm.weight"] = torch.ones(3 * 64, dtype=torch.bfloat16)
    save_file(tensors, shard)


LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

REFUSALS = [  # (id, layout, target, change, message)
    ("eagle-rope-scaling", "eagle", LLAMA, _config(rope_scaling=LLAMA31_ROPE),
     "RoPE scaling 'llama3' is not implemented"),
    ("dflash-rope-scaling", "dflash", QWEN3, _config(rope_scaling={"rope_type": "yarn", "factor": 4.0}),
     "RoPE scaling 'yarn'"),
    ("dflash-sliding", "dflash", QWEN3, _config(layer_types=["sliding_attention", "full_attention"]), "sliding window"),
    ("dflash-causal", "dflash", QWEN3, _config(is_causal=True), "causal DFlash layers are not implemented"),
    ("dflash-embedding-scale", "dflash", QWEN3, _section("dflash_config", input_embedding_scale=2.0),
     "input_embedding_scale=2.0"),
    ("dflash2-tensors", "dflash", QWEN3,
     _tensors(lambda t: t.update({"candidate_selector.hidden_projection.weight": torch.zeros(2, 64)})),
     "unrecognised tensors for the dflash layout: candidate_selector"),
    ("fc-norm", "specforge", QWEN3, _config(fc_norm=True), "fc_norm=true"),
    ("norm-before-fc", "speculators", LLAMA, _norm_before_fc, "norm_before_fc=true"),
    ("norm-output", "specforge", LLAMA, _config(norm_output=True), "norm_output=true"),
    ("differing-embedding", "specforge", LLAMA, _tensors(_perturb_embedding),
     "embed_tokens.weight [384, 64] differs from the embedding"),
    ("hidden-size", "eagle", QWEN3, _config(hidden_size=32),
     "the draft hidden size is 32, but target tiny-random-qwen3 has 64"),
    ("vocabulary", "specforge", LLAMA, _config(vocab_size=385), "the vocabulary is 385"),
    ("multi-layer", "specforge", LLAMA, _config(num_hidden_layers=2), "multi-layer EAGLE-3 heads are not implemented"),
    ("missing-vocab-map", "specforge", LLAMA, _tensors(_drop_vocab_map), "needs d2t/t2d"),
    ("fc-bias", "specforge", LLAMA, _tensors(lambda t: t.update({"fc.bias": torch.zeros(64)})), "unrecognised tensors"),
    ("feature-ids", "speculators", QWEN3, _config(eagle_aux_hidden_state_layer_ids=[0, 2, 3]),
     "do not fit a target with 4 layers"),
    ("dflash-layer-count", "dflash", LLAMA, _config(num_target_layers=36), "the target layer count is 36"),
    ("dflash-layer-ids", "dflash", LLAMA, _section("dflash_config", target_layer_ids=[1, 4]),
     "do not fit a target with 4 layers"),
    ("flexdraft-split", "flexdraft", QWEN3, _section("dflash_config", target_layer_ids=[1, 2, 3]),
     "split layer 1 with 2 draft layers"),
    ("flexdraft-calibration", "flexdraft", QWEN3,
     _tensors(lambda t: [t.pop(k) for k in list(t) if k.startswith("anchor_bias_mlp")]),
     "enable_anchor_bias_logits is on but anchor_bias_mlp tensors are missing"),
]


@pytest.mark.parametrize("layout,target_name,change,message", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_unimplemented_variants_are_refused(layout, target_name, change, message, tmp_path):
    target = load_tiny(target_name)
    folder, _ = release(tmp_path, layout, target)
    published.load_published(LAYOUTS[layout][0], str(folder), target)  # the unchanged release loads
    change(folder)
    with pytest.raises(SpecbenchError, match=re.escape(message)) as e:
        published.load_published(LAYOUTS[layout][0], str(folder), target)
    assert "\n" not in str(e.value)


def test_a_release_for_another_family_or_method_is_refused(tmp_path, tiny_llama, tiny_qwen3):
    folder, _ = release(tmp_path, "flexdraft", tiny_qwen3)  # q/k norms a Llama target does not have
    with pytest.raises(SpecbenchError, match="no counterpart in a drafter for target tiny-random-llama"):
        published.load_published("flexdraft", str(folder), tiny_llama)
    folder, _ = release(tmp_path, "dflash", tiny_llama)
    with pytest.raises(SpecbenchError, match="holds a published dflash drafter .dflash layout., not a eagle3 one"):
        build_method("eagle3", tiny_llama, drafter=str(folder))
    save_weights(tmp_path / "other", {"wte.weight": torch.zeros(2, 2)}, {"model_type": "gpt2"})
    with pytest.raises(SpecbenchError, match="is not a published drafter specbench can read"):
        build_method("dflash", tiny_llama, drafter=str(tmp_path / "other"))


def test_cli_refusal_is_one_line_exit_2(tmp_path, tiny_llama):
    folder, _ = release(tmp_path, "dflash", tiny_llama)
    result = CliRunner().invoke(cli, ["import-drafter", str(folder), "--target", LLAMA, "--method", "eagle3",
                                      "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: ") and "holds a published dflash drafter" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# -- import-drafter, hub:ORG/NAME from an offline cache, provenance in runs ---------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An HF hub cache laid out as huggingface_hub writes it (refs/main -> snapshots/<commit>/), offline."""
    from huggingface_hub import constants

    from specbench.hub import hub_reachable

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    hub_reachable.cache_clear()
    yield cache
    hub_reachable.cache_clear()


def cache_repo(cache, repo, write, target, drafter):
    storage = cache / f"models--{repo.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    write(storage / "snapshots" / COMMIT, target, drafter)
    return storage / "snapshots" / COMMIT


def test_hub_drafter_from_an_offline_cache_and_import_drafter(offline_hub, tmp_path, tiny_llama):
    from specbench.results import ResultStore
    from specbench.runner import RunConfig, Runner

    native = native_dflash(tiny_llama)
    snapshot = cache_repo(offline_hub, "z-lab/tiny-DFlash-b5", write_dflash, tiny_llama, native)
    method = build_method("dflash", tiny_llama, drafter="hub:z-lab/tiny-DFlash-b5")
    assert method.drafter_path == str(snapshot)
    info = method.drafter.training_info["published"]
    assert (info["source"], info["revision"], info["layout"]) == ("hub:z-lab/tiny-DFlash-b5", COMMIT, "dflash")
    assert all(torch.equal(a, b) for a, b in zip(native.state_dict().values(), method.drafter.state_dict().values()))

    out = tmp_path / "imported"
    result = CliRunner().invoke(cli, ["import-drafter", "hub:z-lab/tiny-DFlash-b5", "--target", LLAMA, "--out",
                                      str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["method"] == "dflash" and saved["target_fingerprint"] == tiny_llama.fingerprint
    assert saved["training"]["published"]["files"] == {
        "config.json": hashlib.sha256((snapshot / "config.json").read_bytes()).hexdigest(),
        "model.safetensors": hashlib.sha256((snapshot / "model.safetensors").read_bytes()).hexdigest()}
    loaded = Drafter.load(out, tiny_llama)
    assert all(torch.equal(a, b) for a, b in zip(native.state_dict().values(), loaded.state_dict().values()))
    assert drafter_provenance(out)["published"]["revision"] == COMMIT
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:  # saved in the release's own dtype
        assert f.get_tensor("fc.weight").dtype == torch.bfloat16

    config = RunConfig(method="dflash", suite="gsm8k", target=LLAMA, limit=1, max_new_tokens=6,
                       drafter="hub:z-lab/tiny-DFlash-b5", warmup=False)
    run_dir = Runner(config, ResultStore(tmp_path / "results"), progress=False, target=tiny_llama).run(run_id="h")
    record = run_dir.read_manifest()["drafter"]
    assert record["method"] == "dflash" and record["published"]["source"] == "hub:z-lab/tiny-DFlash-b5"
    assert record["published"]["revision"] == COMMIT

    with pytest.raises(SpecbenchError, match="hub:z-lab/missing is not in the local Hugging Face cache"):
        build_method("dflash", tiny_llama, drafter="hub:z-lab/missing")
