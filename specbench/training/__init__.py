"""Drafter training: self-distillation data, the shared trainer, feature capture and the drafter store.

Every trainable method is trained by the same loop on the same data under the same budget (issue 5);
a method contributes only a `Drafter` subclass with its `loss()` (style.md, nanoGPT). Imports are
lazy so that the CLI starts without torch.
"""


def __getattr__(name):
    if name == "Drafter":
        from specbench.training.drafter import Drafter

        return Drafter
    raise AttributeError(name)


__all__ = ["Drafter"]
