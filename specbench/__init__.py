"""specbench: implement, train and measure speculative-decoding methods in one runtime.

The package layout mirrors DESIGN.md §2: the core engine lives here, methods in
`specbench.methods` (top-level `methods/`), benchmarks in `specbench.suites` (top-level `suites/`).
"""

__version__ = "0.1.0"
