"""Published drafters: EAGLE-3, DFlash and FlexDraft checkpoints as their authors released them (issue 21).

`--drafter PATH` or `--drafter hub:ORG/NAME[@REVISION]` may name a released folder instead of a specbench
drafter. Its layout is detected from its tensors and config (`detect`), converted in memory to the
method's specbench drafter, cast to the target's dtype and checked against the target (hidden size,
vocabulary, layer count, a shipped embedding) — `load_published`, called where drafters are loaded
(`training/store.py:load_drafter`). `specbench import-drafter` writes the same conversion once as a
specbench drafter folder whose `training.published` records the source id, revision, layout and the
sha256 of every file (`import_drafter`).

One module per method family holds its layouts (`detect`, `convert`): `eagle3` (SafeAILab/EAGLE,
SpecForge exports, speculators), `dflash` (z-lab/dflash), `flexdraft` (Yaro1214/FlexDraft). What a
layout can express but specbench does not implement is refused with one line, never approximated.
"""

from __future__ import annotations

import json
from pathlib import Path

from specbench.errors import SpecbenchError
from specbench.published import dflash, eagle3, flexdraft
from specbench.published.checkpoint import HUB_PREFIX, Checkpoint, hub_folder

FAMILIES = {"eagle3": eagle3, "dflash": dflash, "flexdraft": flexdraft}

__all__ = ["FAMILIES", "HUB_PREFIX", "describe", "detect", "hub_folder", "import_drafter", "is_published",
           "load_published"]


def is_published(path) -> bool:
    """A folder with a config.json that is not specbench's own drafter format."""
    from specbench.training.drafter import FORMAT

    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("format") != FORMAT
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def open_checkpoint(spec: str) -> Checkpoint:
    return Checkpoint(hub_folder(spec) if spec.startswith(HUB_PREFIX) else Path(spec))


def detect(ckpt: Checkpoint, method: str | None = None) -> tuple[str, str]:
    """`(method, layout)` of a released folder; refuses one that no family recognises or that belongs to
    another method than the one asked for."""
    found = [(name, layout) for name, family in FAMILIES.items() if (layout := family.detect(ckpt))]
    if len(found) != 1:
        raise SpecbenchError(f"{ckpt.source} is not a published drafter specbench can read (layouts: EAGLE-3 "
                             "from SafeAILab/EAGLE, SpecForge or speculators; z-lab DFlash; the FlexDraft release)")
    if method is not None and found[0][0] != method:
        raise SpecbenchError(f"{ckpt.source} holds a published {found[0][0]} drafter ({found[0][1]} layout), "
                             f"not a {method} one")
    return found[0]


def load_published(method: str, spec: str, target):
    """The specbench drafter of `method` converted from a released folder (a path or `hub:ORG/NAME`)."""
    ckpt = open_checkpoint(spec)
    method, layout = detect(ckpt, method)
    return FAMILIES[method].convert(ckpt, layout, target)


def import_drafter(spec: str, target, out, method: str | None = None) -> Path:
    """Convert once and save as a specbench drafter for `target`, in the checkpoint's own float dtype, with
    the provenance under `training.published`."""
    import torch

    ckpt = open_checkpoint(spec)
    method, layout = detect(ckpt, method)
    drafter = FAMILIES[method].convert(ckpt, layout, target)
    info = drafter.training_info
    drafter.to(getattr(torch, info["published"]["dtype"]))
    return drafter.save(out, training=info)


def describe(path) -> dict:
    """The manifest's record of a released folder used as it is: what it is and where it came from."""
    ckpt = Checkpoint(Path(path))
    method, layout = detect(ckpt)
    return {"path": str(path), "method": method, "published": ckpt.provenance(layout)}
