"""Target features for feature-conditioned drafters, captured by forward hooks.

EAGLE-3 fuses the outputs of three target layers and DFlash of several (eagle3_dflash.md A.1, B.1.1).
`output_hidden_states=True` would keep all N + 1 hidden states of a long batch alive; hooks on the
chosen layers keep only those, and the forward stops right after the deepest one when no logits are
needed (issue 5: "not by materialising all hidden states").

Layer ids are 0-based "output of decoder layer i" (before the final norm), i.e. HF
`hidden_states[i + 1]` for every layer but the last (B.5-6).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from specbench.errors import SpecbenchError


class _StopForward(Exception):
    """Raised by the deepest hook to skip the layers (and LM head) nobody needs."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of an HF causal LM (`model.model.layers` for Llama, Qwen3 and most others)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if isinstance(layers, nn.ModuleList):
        return layers
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, nn.ModuleList):
            return module
    raise SpecbenchError(f"cannot find the decoder layers of {type(model).__name__} for feature capture")


def normalize_layer_ids(layer_ids, num_layers: int) -> list[int]:
    out = []
    for i in layer_ids:
        j = i + num_layers if i < 0 else i
        if not 0 <= j < num_layers:
            raise SpecbenchError(f"feature layer {i} is out of range for a target with {num_layers} layers")
        out.append(j)
    return out


@contextmanager
def capture_layers(model: nn.Module, layer_ids: list[int], stop_after_deepest: bool = False):
    """Yield a dict filled with `{layer id: output [B, S, H]}` by the forward run inside the block."""
    layers = decoder_layers(model)
    wanted = sorted(set(normalize_layer_ids(layer_ids, len(layers))))
    got: dict[int, torch.Tensor] = {}

    def hook(i):
        def fn(_module, _args, output):
            got[i] = output[0] if isinstance(output, tuple) else output
            if stop_after_deepest and i == wanted[-1]:
                raise _StopForward
        return fn

    handles = [layers[i].register_forward_hook(hook(i)) for i in wanted]
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def target_features(target, input_ids: torch.Tensor, layer_ids: list[int], with_logits: bool = False):
    """Frozen-target pass over right-padded `input_ids [B, S]`.

    Returns `(features [B, S, len(layer_ids) * H], logits [B, S, V] or None)`; features are the
    captured layers concatenated in `layer_ids` order (low to high for EAGLE-3, A.1).
    """
    model = target.model
    ids = normalize_layer_ids(layer_ids, len(decoder_layers(model)))
    with capture_layers(model, ids, stop_after_deepest=not with_logits) as got:
        logits = None
        try:
            if with_logits:
                logits = model(input_ids=input_ids, use_cache=False).logits
            else:
                model.base_model(input_ids=input_ids, use_cache=False)
        except _StopForward:
            pass
    return torch.cat([got[i] for i in ids], -1), logits
