"""FlexDraft drafters as the authors release them (Yaro1214/FlexDraft `draft_model.py`, `draft_bias.py`;
bita_mtp_flexdraft.md Part E).

Tensors: `layers.{i}.self_attn.{q,k,v,o}_proj` (+ `q_norm`, `k_norm`) — the tuned attention of draft
layer i, paired with target layer `split + i` (E.2.1) —, `mask_embedding [H]`, and `anchor_bias_mlp.{0,2}`,
the calibration MLP `W2 SiLU(W1 [embed(bonus); hn])` (E.2.4) = specbench's `calibration.fc1/fc2`. The
release also stores an MLP and norms per draft layer and a final norm that its forward never reads; they
are ignored, as E.11-8 says (the target's own norms and FFN are used).

Settings: `target_layer_ids` (its first entry is the split layer), `enable_anchor_bias_logits`,
`anchor_bias_rank`; the checkpoint keeps them under `dflash_config` while the code reads
`flexdraft_config` (E.11-1), so both are read, `flexdraft_config` first. `block_size` is top level.
Refused: a split that does not leave exactly the draft layers after it (the release pairs draft layer i
with target layer split + i up to the last), a calibration switched on without its tensors, shapes that
are not the target's (q/k norms included: they must match the target family).
"""

from __future__ import annotations

import re

from specbench.methods.flexdraft import PAPER_DEFAULTS, FlexDraftDrafter
from specbench.published.checkpoint import Checkpoint, assemble, expect

SECTIONS = ("flexdraft_config", "dflash_config")
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")
CALIBRATION = {"anchor_bias_mlp.0": "calibration.fc1", "anchor_bias_mlp.2": "calibration.fc2"}


def detect(ckpt: Checkpoint) -> str | None:
    keys = ckpt.keys()
    if {"mask_embedding", "layers.0.self_attn.q_proj.weight"} <= keys and "fc.weight" not in keys:
        return "flexdraft"
    return None


def convert(ckpt: Checkpoint, layout: str, target) -> FlexDraftDrafter:
    keys = ckpt.keys()
    n = len({int(m.group(1)) for k in keys if (m := re.match(r"layers\.(\d+)\.self_attn\.", k))})
    ids = ckpt.setting("target_layer_ids", None, *SECTIONS)
    if not ids:
        raise ckpt.refuse("target_layer_ids (under flexdraft_config or dflash_config) is required: its first "
                          "entry is the split layer")
    split = int(ids[0])
    expect(ckpt, "the target layer count", int(ckpt.setting("num_target_layers", target.num_layers)),
           target.num_layers, target)
    if split + n != target.num_layers:
        raise ckpt.refuse(f"split layer {split} with {n} draft layers does not end at the target's last layer "
                          f"({target.num_layers} layers): draft layer i pairs with target layer split + i")
    expect(ckpt, "the hidden size", ckpt.require("hidden_size"), target.config.hidden_size, target)
    expect(ckpt, "the vocabulary", ckpt.setting("vocab_size", target.vocab_size), target.vocab_size, target)
    calibrated = "anchor_bias_mlp.0.weight" in keys
    if ckpt.setting("enable_anchor_bias_logits", False, *SECTIONS) and not calibrated:
        raise ckpt.refuse("enable_anchor_bias_logits is on but anchor_bias_mlp tensors are missing")
    options = dict(draft_layers=n, block_size=int(ckpt.setting("block_size", PAPER_DEFAULTS["block_size"], *SECTIONS)),
                   calibration=calibrated)
    if calibrated:
        options["calib_rank"] = ckpt.shape("anchor_bias_mlp.0.weight")[0]
    config = FlexDraftDrafter.default_config(target, **options)
    rename = {"mask_embedding": "mask_embedding"}
    for i in range(n):
        for t in ATTENTION:
            rename.update({f"layers.{i}.self_attn.{t}.{p}": f"attn.{i}.{t}.{p}" for p in ("weight", "bias")})
    for theirs, mine in CALIBRATION.items():
        rename.update({f"{theirs}.{p}": f"{mine}.{p}" for p in ("weight", "bias")})
    rename = {k: v for k, v in rename.items() if k in keys}
    ignored = {k for k in keys if re.match(r"layers\.\d+\.(mlp\.|input_layernorm\.|post_attention_layernorm\.)", k)}
    ignored |= {"norm.weight"} & keys
    return assemble(FlexDraftDrafter, config, ckpt, target, layout, rename, ignored)
