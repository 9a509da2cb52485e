"""Step timers: draft / verify / other spans of every decode step (DESIGN.md §4, latency per step).

On CPU spans are `time.perf_counter` intervals. On CUDA they are CUDA events, resolved once at the
end of a generation, so timing never adds a synchronisation inside the step.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

SPANS = ("draft", "verify")


class StepTimer:
    """Collects per-step span durations in milliseconds; `other` = step total − draft − verify."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._steps: list[dict] = []
        self._current: dict | None = None

    def _mark(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    @staticmethod
    def _elapsed_ms(a, b) -> float:
        if isinstance(a, float):
            return (b - a) * 1e3
        return a.elapsed_time(b)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def now(self) -> float:
        """Wall time after draining the device queue (for TTFT and per-batch totals)."""
        self.sync()
        return time.perf_counter()

    def start_step(self):
        self._current = {"start": self._mark(), "spans": []}

    @contextmanager
    def span(self, name: str):
        if name not in SPANS:
            raise ValueError(f"unknown span {name!r}")
        a = self._mark()
        try:
            yield
        finally:
            if self._current is not None:
                self._current["spans"].append((name, a, self._mark()))

    def end_step(self):
        self._current["end"] = self._mark()
        self._steps.append(self._current)
        self._current = None

    def resolve(self) -> dict[str, list[float]]:
        """Per-step arrays `{"draft": [...], "verify": [...], "other": [...]}` in ms."""
        self.sync()
        out = {"draft": [], "verify": [], "other": []}
        for step in self._steps:
            total = self._elapsed_ms(step["start"], step["end"])
            parts = {"draft": 0.0, "verify": 0.0}
            for name, a, b in step["spans"]:
                parts[name] += self._elapsed_ms(a, b)
            out["draft"].append(round(parts["draft"], 4))
            out["verify"].append(round(parts["verify"], 4))
            out["other"].append(round(max(total - parts["draft"] - parts["verify"], 0.0), 4))
        return out
