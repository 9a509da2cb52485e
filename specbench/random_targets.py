"""Random-weight targets: a real architecture at its real size, built from a config alone (DESIGN.md §8).

Step latency depends on shapes, not on weight values, so `random:qwen3-8b` lets a GPU profile (and a
timing-only run) use the paper's target sizes on any machine, with no download. The package carries the
architecture fields of four published configs in `specbench/configs/` (each names its hub repo; one is the
embedded default's, for a machine its GGUF cannot reach); a path to any other `config.json` (or a
directory holding one) works too. Random weights repeat one token at T = 0 (the H200 check of issue 20),
so τ on such a target says nothing: time only.

The build is fast and never goes through float32: the model is allocated on the device, in the requested
dtype, with transformers' initialisation switched off; then every weight is filled in place (matrices
normal(0, initializer_range), norms 1, biases 0), seeded. Random values, not uninitialised memory: on CPU,
denormals or NaNs in garbage memory would change the timings.

Prompts still need token ids, so the tiny test tokenizer (byte-level BPE, ids < 384) stands in: a run on a
random target measures time only; its text means nothing. The fingerprint hashes (config, seed, dtype,
device type) instead of 16 GB of random numbers, which would identify nothing more.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import torch

from specbench.errors import SpecbenchError
from specbench.targets import ChatSettings, Target, resolve_device, resolve_dtype

RANDOM_PREFIX = "random:"


def packaged_configs() -> dict[str, str]:
    """Name -> JSON text of the configs shipped in `specbench/configs/` (`qwen3-8b`, ...)."""
    folder = resources.files("specbench") / "configs"
    return {f.name[: -len(".json")]: f.read_text() for f in folder.iterdir() if f.name.endswith(".json")}


def read_config(name_or_path: str) -> tuple[str, dict]:
    """(short name, architecture fields) of a packaged config name or a config.json path.

    Keys starting with `_` (the packaged files' source notes) are dropped.
    """
    name = name_or_path.removeprefix(RANDOM_PREFIX)
    shipped = packaged_configs()
    if name in shipped:
        text = shipped[name]
    else:
        path = Path(name)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise SpecbenchError(f"unknown random-weights config {name!r}: use one of {', '.join(sorted(shipped))} "
                                 f"or a path to a config.json")
        text, name = path.read_text(), path.parent.name if path.name == "config.json" else path.stem
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecbenchError(f"cannot parse config {name_or_path!r}: {e}") from None
    if not isinstance(fields, dict) or "model_type" not in fields:
        raise SpecbenchError(f"config {name_or_path!r} has no model_type")
    return name, {k: v for k, v in fields.items() if not k.startswith("_")}


def _no_init_weights():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5.x layout
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


@torch.no_grad()
def build_random_model(fields: dict, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """An HF causal LM of the config's architecture, allocated on `device` in `dtype`, seeded random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.for_model(**fields)
    except (ValueError, KeyError, TypeError) as e:
        raise SpecbenchError(f"cannot build a config from these fields: {str(e).splitlines()[0]}") from None
    with _no_init_weights(), torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # skipped together with the initialisation above
    std = getattr(config, "initializer_range", 0.02)
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.zero_()
        elif p.dim() == 1:  # RMSNorm / q-k norm scales
            p.fill_(1.0)
        else:
            p.normal_(0.0, std)
    return model.eval()


def load_random_target(name: str, device: str = "auto", dtype: str = "auto", chat: ChatSettings | None = None,
                       seed: int = 0) -> Target:
    """`random:qwen3-8b` (or a config path) as a `Target` the rest of the harness can time."""
    from specbench.tiny_models import build_tokenizer

    short, fields = read_config(name)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    model = build_random_model(fields, dev, dt, seed)
    tok = build_tokenizer("qwen3" if fields["model_type"].startswith("qwen3") else "llama")
    identity = json.dumps({"config": fields, "seed": seed, "dtype": str(dt), "device": dev.type}, sort_keys=True)
    fingerprint = "random-" + hashlib.sha256(identity.encode()).hexdigest()[:17]
    return Target(f"{RANDOM_PREFIX}{short}", f"random-weights:{name.removeprefix(RANDOM_PREFIX)}", model, tok,
                  dev, dt, chat or ChatSettings(), fingerprint)
