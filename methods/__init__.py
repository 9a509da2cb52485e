"""Method registry: one line per method, `name -> "module:Class"` (imported lazily)."""

from __future__ import annotations

import importlib

from specbench.errors import SpecbenchError

METHODS = {
    "ar": "specbench.methods.ar:AutoregressiveMethod",
    "bita": "specbench.methods.bita:BiTAMethod",
    "dflash": "specbench.methods.dflash:DFlashMethod",
    "eagle3": "specbench.methods.eagle3:Eagle3Method",
    "flexdraft": "specbench.methods.flexdraft:FlexDraftMethod",
    "mtp": "specbench.methods.mtp:MTPMethod",
    "pld": "specbench.methods.pld:PromptLookupMethod",
}


def method_class(name: str):
    if name not in METHODS:
        raise SpecbenchError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_method(name: str, target, depth: int | None = None, **options):
    return method_class(name)(target, depth=depth, **options)
