"""The narrow interface every method implements (style.md: one interface the runner never special-cases).

A `Method` is built once per run for a target; it makes one `Decoder` per batch. Trainable methods
later add a drafter (`nn.Module` with `loss`, saved as safetensors + JSON); the runner only sees
`make_decoder` and `describe`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from specbench.decode import Decoder
from specbench.errors import SpecbenchError
from specbench.sampling import SamplingConfig


def _switch(value) -> bool:
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
        raise ValueError(value)
    if isinstance(value, (bool, int)) and value in (0, 1):
        return bool(value)
    raise ValueError(value)


def option_bool(value, name: str) -> bool:
    """A switch given as `-o NAME=VALUE` (JSON-parsed, so `true`/`false` arrive as bools; YAML and
    hand-typed spellings as strings): one reading for every method, and a clear error on anything else
    instead of silently picking a side."""
    try:
        return _switch(value)
    except ValueError:
        raise SpecbenchError(f"{name} must be true or false, got {value!r}") from None


@dataclasses.dataclass(frozen=True)
class OptionKind:
    """What one `-o KEY=VALUE` option accepts: `parse` returns the typed value or raises ValueError /
    TypeError, `accepts` says what it takes in the one-line error (issue 23: a bad value is one line,
    exit 2, never a traceback from deep inside a decoder)."""

    accepts: str
    parse: Callable[[object], object]


def _integer(value) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(value)


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(value)
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(value)
    return out


def _at_least(accepts: str, convert, minimum) -> OptionKind:
    def parse(value):
        out = convert(value)
        if minimum is not None and out < minimum:
            raise ValueError(value)
        return out
    return OptionKind(accepts + (f" >= {minimum:g}" if minimum is not None else ""), parse)


def integer(minimum: int | None = None) -> OptionKind:
    return _at_least("an integer", _integer, minimum)


def number(minimum: float | None = None) -> OptionKind:
    return _at_least("a number", _number, minimum)


def one_of(*choices: str) -> OptionKind:
    def parse(value):
        if value not in choices:
            raise ValueError(value)
        return value
    return OptionKind(" or ".join(choices) if len(choices) == 2 else f"one of {', '.join(choices)}", parse)


def _integers(value) -> list[int]:
    if not isinstance(value, (list, tuple)) or not value:
        raise TypeError(value)
    return [_integer(v) for v in value]


SWITCH = OptionKind("true or false", _switch)
#: drafter config field annotations -> the kind of their `-o` values (other fields: the config checks them)
_FIELD_KINDS = {"int": integer(), "float": number(), "bool": SWITCH,
                "list[int]": OptionKind("a list of integers such as [1,14,27]", _integers)}


class Method:
    name: str = ""
    description: str = ""
    #: True when the method needs a trained drafter (resolved through the drafter store)
    needs_drafter: bool = False
    #: its `specbench.training.Drafter` subclass; the runner resolves `--drafter auto` with it (issue 5)
    drafter_class = None
    #: depth used when the user passes none (None: the method has no depth)
    default_depth: int | None = None
    #: decode-time options (`-o KEY=VALUE`) and their defaults (None: chosen by device in `__init__`)
    DECODE_OPTIONS: dict = {}
    #: what each decode option accepts (`integer`, `number`, `one_of`, `SWITCH`); unlisted: any value
    OPTION_KINDS: dict = {}
    #: the options that choose a drafter (its config fields); None: every field of its config
    DRAFTER_OPTIONS: tuple[str, ...] | None = None
    #: what the compiled regime captures of this method and what still runs eager (`specbench.compiled`;
    #: recorded in a compiled run's manifest)
    COMPILED_PASSES: dict = {"captured": ["target decode forwards"], "eager": ["prefill"]}

    def __init__(self, target, depth: int | None = None, **options):
        self.target = target
        self.depth = depth if depth is not None else self.default_depth
        self.options = options

    @classmethod
    def split_options(cls, options: dict) -> dict:
        """Check `-o` options by name and value before anything loads or trains, and return the decode
        options, typed, with their defaults filled in. Every option must be a decode option or name a
        drafter option (`drafter_option_names`): it picks the drafter for `--drafter auto` and must match a
        given one (`attach_drafter`). One line for every method on an unknown name or a bad value,
        naming the option and what it accepts (`OPTION_KINDS`, drafter config field types)."""
        drafter_names = cls.drafter_option_names()
        unknown = set(options) - set(cls.DECODE_OPTIONS) - set(drafter_names)
        if unknown:
            takes = (f"decode options {', '.join(cls.DECODE_OPTIONS) or 'none'} and drafter options "
                     f"{', '.join(drafter_names)}" if cls.needs_drafter else
                     f"options {', '.join(cls.DECODE_OPTIONS)}" if cls.DECODE_OPTIONS else "no options")
            raise SpecbenchError(f"{cls.name} takes {takes}; got {sorted(unknown)}")
        kinds = {**cls.drafter_option_kinds(), **cls.OPTION_KINDS}
        typed = {}
        for key, value in options.items():
            kind = kinds.get(key)
            try:
                typed[key] = value if kind is None or value is None else kind.parse(value)
            except (TypeError, ValueError):
                raise SpecbenchError(f"{cls.name} option {key} takes {kind.accepts}, got {value!r}") from None
        return {**cls.DECODE_OPTIONS, **{k: v for k, v in typed.items() if k in cls.DECODE_OPTIONS}}

    @classmethod
    def drafter_option_kinds(cls) -> dict[str, OptionKind]:
        """Kinds of the drafter options from their config field types (int, float, bool)."""
        config = getattr(cls.drafter_class, "config_class", None)
        if not dataclasses.is_dataclass(config):
            return {}
        names = set(cls.drafter_option_names())
        kinds = {}
        for f in dataclasses.fields(config):
            kind = _FIELD_KINDS.get(str(getattr(f.type, "__name__", f.type)).removesuffix(" | None"))
            if f.name in names and kind is not None:
                kinds[f.name] = kind  # None stays allowed: `split_options` passes it through
        return kinds

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
