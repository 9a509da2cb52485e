"""User-facing errors.

Anything raised as `SpecbenchError` is bad input or a missing resource the user can fix; the CLI
prints its message as one line and exits non-zero, without a traceback (DESIGN.md §6).
"""


class SpecbenchError(Exception):
    """A problem the user can fix; its message is one self-contained line."""
