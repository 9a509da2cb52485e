"""`Drafter`: what a trainable method adds to the shared trainer (DESIGN.md §3).

A method's drafter is an `nn.Module` with a `loss(batch)`; the trainer owns everything else
(optimiser, schedule, data, checkpoints), so the five methods are trained identically (issue 5).

A subclass declares:
* `method` — its registry name, checked when a saved drafter is loaded;
* `config_class` — a dataclass with everything needed to rebuild it, and `default_config(target,
  **options)` — the method's standard configuration for a target (it keys the drafter store);
* `feature_layers()` — target layers whose outputs the trainer captures into `batch["features"]`
  (feature-conditioned drafters: EAGLE-3, DFlash), `needs_target_logits` for `batch["target_logits"]`;
* `training_defaults` — hyper-parameters that differ from the shared `TrainConfig` (e.g. BiTA's lr);
* optionally `init_from_target()` / `init_from_data(examples)` — initialisation from the target or
  from the training sequences before training.

The target is held by reference, never as a submodule: it stays frozen, outside `parameters()` and
outside saved weights. Drafters that tune parts of the target (FlexDraft, BiTA, MTP) run
`self.target.model` inside `loss()`; their own parameters are only the added ones.

Saved form: `model.safetensors` (the drafter's state dict) and `config.json` recording the method,
the drafter class, the target fingerprint, the config and how it was trained (data, budget,
hyper-parameters). Loading for another target fingerprint is refused with one line, and so is a
folder whose files do not hold a whole drafter (issue 24): `check_drafter_files` reads the
safetensors header first (a truncated copy or an interrupted save), and the tensors it lists must be
exactly the ones the config builds, shape for shape (a config.json from another drafter).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from specbench.errors import SpecbenchError
from specbench.skinny import use_skinny

FORMAT = "specbench-drafter/1"


class Drafter(nn.Module):
    method: str = ""
    config_class: type = dict
    needs_target_logits: bool = False
    training_defaults: dict = {}

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.target_fingerprint: str | None = None
        self.training_info: dict = {}
        self._target = None

    # -- what a method implements -------------------------------------------------------------------
    @classmethod
    def default_config(cls, target, **options):
        """The method's standard configuration for `target`; `options` override its fields."""
        raise NotImplementedError

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """`(scalar loss, metrics)` for a batch: `input_ids`, `loss_mask`, `attention_mask` `[B, S]`,
        `lengths [B]`, plus `features [B, S, L*H]` / `target_logits [B, S, V]` when requested.
        Metrics are floats; `acc` (draft top-1 accuracy) is shown by the trainer."""
        raise NotImplementedError

    def feature_layers(self) -> list[int] | None:
        """Target layers (0-based outputs, features.py) the trainer must capture; None for none."""
        return None

    def init_from_target(self) -> None:
        """Called once on a fresh drafter after `attach`, before training."""

    def init_from_data(self, examples) -> None:
        """Called once on a fresh drafter with the training sequences (`TrainExample`s) before training,
        e.g. for EAGLE-3's draft vocabulary from assistant-token counts (eagle3_dflash.md A.1.4)."""

    @property
    def cfg(self):
        """Short name for `config`, the one copy of the drafter's configuration."""
        return self.config

    # -- target coupling ----------------------------------------------------------------------------
    @property
    def target(self):
        if self._target is None:
            raise SpecbenchError(f"this {self.method or type(self).__name__} drafter is not attached to a target")
        return self._target

    def attach(self, target) -> "Drafter":
        """Bind to `target`; refuse a target other than the one this drafter was trained for."""
        if self.target_fingerprint and self.target_fingerprint != target.fingerprint:
            trained_for = self.training_info.get("target", {}).get("name", "another target")
            raise SpecbenchError(f"drafter {self.method} was trained for {trained_for} (fingerprint "
                                 f"{self.target_fingerprint}), not {target.name} ({target.fingerprint})")
        self.target_fingerprint = target.fingerprint
        self._target = target
        use_skinny(self, getattr(target, "skinny_rows", 0))  # the target's product rule for our own linears
        return self

    @classmethod
    def for_target(cls, target, **options) -> "Drafter":
        """A fresh, initialised drafter in float32 on the target's device."""
        drafter = cls(cls.default_config(target, **options)).attach(target)
        drafter.to(target.device, torch.float32)
        drafter.init_from_target()
        return drafter

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def config_dict(self) -> dict:
        return dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else dict(self.config)

    # -- save / load ----------------------------------------------------------------------------------
    def save(self, directory: str | Path, training: dict | None = None) -> Path:
        """Weights then `config.json` (written last: its presence marks a complete drafter)."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").clone().contiguous() for k, v in self.state_dict().items()}
        save_file(state, d / "model.safetensors")
        info = training if training is not None else self.training_info
        cfg = {"format": FORMAT, "method": self.method, "class": f"{type(self).__module__}:{type(self).__qualname__}",
               "target_fingerprint": self.target_fingerprint, "parameters": self.parameter_count(),
               "config": self.config_dict(), "training": info}
        tmp = d / "config.json.tmp"
        tmp.write_text(json.dumps(cfg, indent=2, default=str))
        os.replace(tmp, d / "config.json")
        return d

    @classmethod
    def load(cls, directory: str | Path, target=None, dtype: torch.dtype | None = None) -> "Drafter":
        """Rebuild from `directory`; with a target: check its fingerprint, attach, move to its device/dtype."""
        from safetensors.torch import load_file

        d = Path(directory)
        raw, shapes = check_drafter_files(d)
        if cls is Drafter:
            cls = drafter_class_from_path(raw["class"])
        elif cls.method and raw.get("method") != cls.method:
            raise SpecbenchError(f"{d} holds a {raw.get('method')!r} drafter, not {cls.method!r}")
        try:
            drafter = cls(cls.config_class(**raw["config"]))
        except (TypeError, ValueError, KeyError) as e:
            raise SpecbenchError(f"{d}/config.json does not describe a {cls.method or cls.__name__} drafter "
                                 f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); retrain it") from None
        built = {k: list(v.shape) for k, v in drafter.state_dict().items()}
        if built != shapes:
            name = sorted(k for k in built.keys() | shapes.keys() if built.get(k) != shapes.get(k))[0]
            raise SpecbenchError(f"{d}: config.json does not match model.safetensors ({name}: the config builds "
                                 f"{built.get(name, 'no such tensor')}, the weights hold {shapes.get(name, 'none')}); "
                                 "the two files come from different drafters: retrain it or copy the folder again")
        drafter.target_fingerprint = raw.get("target_fingerprint")
        drafter.training_info = raw.get("training") or {}
        if target is not None:
            drafter.attach(target)
        drafter.load_state_dict(load_file(d / "model.safetensors"))
        if target is not None:
            drafter.to(target.device, dtype or target.dtype)
        elif dtype is not None:
            drafter.to(dtype)
        return drafter


def drafter_provenance(directory: str | Path) -> dict | None:
    """How a drafter was trained, in a few fields, for a run's manifest: a drafter folder can be deleted
    or retrained, the result files must still say what produced their τ (data, steps, wall time, tokens
    seen, device, held-out accuracy). A `--save-at` snapshot reports its own point of the run (its step,
    training seconds and tokens so far, `snapshot` = the point asked for) and `run`, the folder of the
    run it belongs to, so learning curves can group its points (issue 22). None when `directory` holds
    no specbench drafter."""
    try:
        raw = read_drafter_config(Path(directory))
    except SpecbenchError:
        return None
    t = raw.get("training") or {}
    budget, final, env = t.get("budget") or {}, t.get("final_eval") or {}, t.get("environment") or {}
    snap = t.get("snapshot") or {}
    seconds = budget.get("train_seconds", budget.get("train_seconds_last_session"))
    tokens, estimated = budget.get("tokens_seen"), False
    if tokens is None and budget.get("tokens_per_s") and seconds == budget.get("train_seconds_last_session"):
        # drafters saved before tokens were counted over the run: one session's rate x its time
        tokens, estimated = round(budget["tokens_per_s"] * seconds), True
    info = {"path": str(directory), "method": raw.get("method"), "parameters": raw.get("parameters"),
            "data": (t.get("recipe") or {}).get("data") or (t.get("data") or {}).get("spec"),
            "steps": budget.get("steps"), "budget_minutes": budget.get("budget_minutes"), "train_seconds": seconds,
            "tokens_seen": tokens, "device": env.get("device"), "eval_loss": final.get("loss"),
            "eval_acc": final.get("acc"), "transfer": t.get("transfer"), "published": t.get("published"),
            "snapshot": None,
            "run": str(directory)}
    if estimated:
        info["tokens_seen_estimated"] = True
    if snap:
        info.update(steps=snap.get("step"), train_seconds=snap.get("train_seconds"), tokens_seen=snap.get("tokens_seen"),
                    budget_minutes=(t.get("hyper_parameters") or {}).get("budget_minutes"),
                    snapshot=snap.get("save_at"), total_steps=snap.get("total_steps"),
                    run=str(Path(directory).parent.parent))
    return info


def check_drafter_files(directory: Path) -> tuple[dict, dict[str, list[int]]]:
    """(config.json, {tensor: shape} of model.safetensors) of a specbench drafter folder, refused in one
    line when the weights file is missing, truncated or not safetensors: its header (8-byte length,
    JSON with each tensor's byte range) must describe exactly the file's size."""
    raw = read_drafter_config(directory)
    path = Path(directory) / "model.safetensors"
    redo = "retrain it or copy the folder again"
    if not path.is_file():
        raise SpecbenchError(f"{directory} has config.json but no model.safetensors; {redo}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        try:
            if not 0 < n <= size - 8:
                raise ValueError
            header = json.loads(f.read(n))
            tensors = {k: v for k, v in header.items() if k != "__metadata__"}
            end = 8 + n + max((v["data_offsets"][1] for v in tensors.values()), default=0)
            shapes = {k: list(v["shape"]) for k, v in tensors.items()}
        except (ValueError, KeyError, TypeError, IndexError):
            raise SpecbenchError(f"{path} is not a safetensors file (unreadable header); {redo}") from None
    if size != end:
        raise SpecbenchError(f"{path} is {'truncated' if size < end else 'longer than its header says'} "
                             f"({size} bytes, its header describes {end}); {redo}")
    return raw, shapes


def read_drafter_config(directory: Path) -> dict:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise SpecbenchError(f"no drafter at {directory} (config.json missing)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SpecbenchError(f"cannot parse {path} (damaged or cut short); retrain the drafter") from None
    found = raw.get("format") if isinstance(raw, dict) else None
    if found != FORMAT:
        raise SpecbenchError(f"{path} is not a specbench drafter (format {found!r}, expected {FORMAT})")
    return raw


def drafter_class_from_path(path: str) -> type[Drafter]:
    """`"module:Class"` -> the Drafter subclass (lets users train drafters outside the registry)."""
    module, _, name = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise SpecbenchError(f"cannot import drafter class {path!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, Drafter)):
        raise SpecbenchError(f"{path} is not a Drafter subclass")
    return cls


def drafter_class(method: str) -> type[Drafter]:
    """The Drafter class of a registered method, or of a `module:Class` path."""
    if ":" in method:
        return drafter_class_from_path(method)
    from specbench.methods import method_class

    cls = getattr(method_class(method), "drafter_class", None)
    if cls is None:
        raise SpecbenchError(f"method {method!r} declares no trainable drafter (Method.drafter_class); "
                             "pass --drafter PATH")
    return cls
