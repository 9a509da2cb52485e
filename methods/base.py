"""The narrow interface every method implements (style.md: one interface the runner never special-cases).

A `Method` is built once per run for a target; it makes one `Decoder` per batch. Trainable methods
later add a drafter (`nn.Module` with `loss`, saved as safetensors + JSON); the runner only sees
`make_decoder` and `describe`.
"""

from __future__ import annotations

import torch

from specbench.decode import Decoder
from specbench.errors import SpecbenchError
from specbench.sampling import SamplingConfig


class Method:
    name: str = ""
    description: str = ""
    #: True when the method needs a trained drafter (resolved through the drafter store)
    needs_drafter: bool = False
    #: its `specbench.training.Drafter` subclass; the runner resolves `--drafter auto` with it (issue 5)
    drafter_class = None
    #: depth used when the user passes none (None: the method has no depth)
    default_depth: int | None = None

    def __init__(self, target, depth: int | None = None, **options):
        self.target = target
        self.depth = depth if depth is not None else self.default_depth
        self.options = options

    def attach_drafter(self, drafter) -> None:
        """Set `self.drafter` from a drafter object or a saved drafter folder (checked against the
        target's fingerprint on load), in eval mode; one message for every method when there is none."""
        cls = self.drafter_class
        if isinstance(drafter, cls):
            self.drafter, self.drafter_path = drafter.attach(self.target), None
        elif drafter:
            self.drafter, self.drafter_path = cls.load(drafter, self.target), str(drafter)
        else:
            raise SpecbenchError(f"{self.name} needs a trained drafter: pass --drafter PATH|auto (train one with "
                                 f"`specbench train --method {self.name}`)")
        self.drafter.eval()

    def make_decoder(self, sampling: SamplingConfig, generator: torch.Generator | None) -> Decoder:
        raise NotImplementedError

    def describe(self) -> dict:
        """Method configuration and cost (DESIGN.md §4: drafter parameters, tokens per target forward)."""
        return {"name": self.name, "depth": self.depth, "options": self.options,
                "drafter_parameters": 0, "tokens_per_target_forward": 1}
