"""Suite registry: one line per benchmark, `name -> "module:Class"` (imported lazily)."""

from __future__ import annotations

import importlib

from specbench.errors import SpecbenchError

SUITES = {
    "gsm8k": "specbench.suites.gsm8k:GSM8K",
    "math500": "specbench.suites.math500:Math500",
    "humaneval": "specbench.suites.humaneval:HumanEval",
    "mbpp": "specbench.suites.mbpp:MBPP",
    "mtbench": "specbench.suites.mtbench:MTBench",
    "spec_bench": "specbench.suites.spec_bench:SpecBench",
}


def get_suite(name: str):
    if name not in SUITES:
        raise SpecbenchError(f"unknown suite {name!r}; known: {', '.join(sorted(SUITES))}")
    module, cls = SUITES[name].split(":")
    return getattr(importlib.import_module(module), cls)()
