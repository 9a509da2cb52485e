"""The narrow interface every method implements (style.md: one interface the runner never special-cases).

A `Method` is built once per run for a target; it makes one `Decoder` per batch. Trainable methods
later add a drafter (`nn.Module` with `loss`, saved as safetensors + JSON); the runner only sees
`make_decoder` and `describe`.
"""

from __future__ import annotations

import dataclasses

import torch

from specbench.decode import Decoder
from specbench.errors import SpecbenchError
from specbench.sampling import SamplingConfig


def option_bool(value, name: str) -> bool:
    """A switch given as `-o NAME=VALUE` (JSON-parsed, so `true`/`false` arrive as bools; YAML and
    hand-typed spellings as strings): one reading for every method, and a clear error on anything else
    instead of silently picking a side."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
        raise SpecbenchError(f"{name} must be true or false, got {value!r}")
    return bool(value)


class Method:
    name: str = ""
    description: str = ""
    #: True when the method needs a trained drafter (resolved through the drafter store)
    needs_drafter: bool = False
    #: its `specbench.training.Drafter` subclass; the runner resolves `--drafter auto` with it (issue 5)
    drafter_class = None
    #: depth used when the user passes none (None: the method has no depth)
    default_depth: int | None = None
    #: decode-time options (`-o KEY=VALUE`) and their defaults
    DECODE_OPTIONS: dict = {}
    #: the options that choose a drafter (its config fields); None: every field of its config
    DRAFTER_OPTIONS: tuple[str, ...] | None = None

    def __init__(self, target, depth: int | None = None, **options):
        self.target = target
        self.depth = depth if depth is not None else self.default_depth
        self.options = options

    def split_options(self, options: dict) -> dict:
        """The decode options with their defaults filled in. Every other option must name a drafter
        option (`drafter_option_names`): it picks the drafter for `--drafter auto` and must match a
        given one (`attach_drafter`). One message for every method on anything else."""
        unknown = set(options) - set(self.DECODE_OPTIONS) - set(self.drafter_option_names())
        if unknown:
            raise SpecbenchError(f"{self.name} takes decode options {', '.join(self.DECODE_OPTIONS) or 'none'} and "
                                 f"drafter options {', '.join(self.drafter_option_names())}; got {sorted(unknown)}")
        return {**self.DECODE_OPTIONS, **{k: v for k, v in options.items() if k in self.DECODE_OPTIONS}}

    @classmethod
    def drafter_option_names(cls) -> tuple[str, ...]:
        """`DRAFTER_OPTIONS`, else every field of the drafter's config."""
        if cls.DRAFTER_OPTIONS is not None:
            return tuple(cls.DRAFTER_OPTIONS)
        config = getattr(cls.drafter_class, "config_class", None)
        return tuple(f.name for f in dataclasses.fields(config)) if dataclasses.is_dataclass(config) else ()

    def attach_drafter(self, drafter) -> None:
        """Set `self.drafter` from a drafter object, a saved drafter folder (checked against the target's
        fingerprint on load), a published one (converted, issue 21), or `auto` / a folder of drafters /
        `hub:ORG/NAME` (resolved through the drafter store), in
        eval mode; then refuse drafter options the drafter was not trained with. One message for every
        method when there is no drafter or an option clashes."""
        cls = self.drafter_class
        if isinstance(drafter, cls):
            self.drafter, self.drafter_path = drafter.attach(self.target), None
        elif drafter:
            from specbench.training.store import load_drafter, resolve_drafter

            path = resolve_drafter(self.name, self.target, str(drafter), options=self.options)
            self.drafter, self.drafter_path = load_drafter(cls, path, self.target), path
        else:
            raise SpecbenchError(f"{self.name} needs a trained drafter: pass --drafter PATH|auto (train one with "
                                 f"`specbench train --method {self.name}`)")
        self.drafter.eval()
        self.check_trained_options()

    def check_trained_options(self) -> None:
        """Drafter options are part of the drafter, fixed when it was trained: each one given must equal
        the attached drafter's value, compared through `default_config` so that spellings the config
        normalises (`gamma=0` -> the default, `mask_token=learned`) compare as the values they stand for.
        Decode options that share a config field's name (FlexDraft's `calibration`) are not checked."""
        wanted = {k: v for k, v in self.options.items()
                  if k in self.drafter_option_names() and k not in self.DECODE_OPTIONS}
        if not wanted:
            return
        expected, trained = self.drafter_class.default_config(self.target, **wanted), self.drafter.config
        clash = [f"{k}={wanted[k]} (trained with {getattr(trained, k)})" for k in wanted
                 if getattr(expected, k) != getattr(trained, k)]
        if clash:
            raise SpecbenchError(f"drafter options are fixed at training time: {', '.join(clash)}")

    def make_decoder(self, sampling: SamplingConfig, generator: torch.Generator | None) -> Decoder:
        raise NotImplementedError

    def describe(self) -> dict:
        """Method configuration and cost (DESIGN.md §4: drafter parameters, tokens per target forward)."""
        return {"name": self.name, "depth": self.depth, "options": self.options,
                "drafter_parameters": 0, "tokens_per_target_forward": 1}
