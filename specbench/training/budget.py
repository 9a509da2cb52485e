"""The standard training recipe: the same data and budget for every method (issue 5).

The FlexDraft paper's comparison is fair because every drafter sees the same data under the same
budget; specbench keeps that rule with one recipe, used by `specbench train` without `--steps` /
`--budget-minutes` and by `--drafter auto`:

* **data** — smollm2-135m's own greedy responses (max 256 new tokens, fp32, default system prompt) to
  the first 912 GSM8K train prompts and the first 2400 prompts of the round-robin mix of instruction,
  stdlib-code and non-test MBPP prompts: exactly what `shared/data/regen/smollm2-135m/` ships
  (DESIGN.md §9), so the default target needs no generation. Other targets regenerate the same prompts.
* **sequences** — at most 384 tokens (prompt + response); 64 held-out sequences for eval.
* **budget** — 25 minutes of training on the machine at hand (2 CPU cores here): wall time on a GPU, and
  on a CPU this process's CPU time per torch thread (`trainer._clock`), which equals the wall time of a
  run alone on the machine but is not eaten by other work sharing the cores (two drafters trained side
  by side, or anything else running, each still get 25 minutes of compute). Turned into
  a fixed step count from the steady-state step time (an untimed warm-up micro-batch, then the
  median of timed micro-batches plus the optimizer step), and re-planned after the first few real
  steps and at 1/4, 1/2 and 3/4 of the run from the measured time of the steps since the previous
  plan, so the total fits what is left of the budget even when the speed changes; micro-batches
  of 8 sequences, no accumulation. Both plans, the final step count, the training seconds and the
  throughput are recorded with the drafter. `--steps N` gives a machine-independent run instead.

A method may change optimiser hyper-parameters through `Drafter.training_defaults` (e.g. BiTA's lr),
never the data or the budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from specbench.training.trainer import TrainConfig


@dataclass(frozen=True)
class TrainingRecipe:
    data: str
    max_new_tokens: int  # of the regenerated responses
    max_length: int  # tokens per training sequence
    budget_minutes: float | None
    steps: int | None
    batch_size: int
    grad_accum: int
    eval_size: int
    seed: int = 0
    lr: float | None = None  # None: the method's `training_defaults` or the shared default

    def train_config(self, drafter_cls, **overrides) -> TrainConfig:
        """Shared defaults, then the method's `training_defaults`, then explicit overrides."""
        fields = {"steps": self.steps, "budget_minutes": self.budget_minutes, "batch_size": self.batch_size,
                  "grad_accum": self.grad_accum, "eval_size": self.eval_size, "seed": self.seed}
        fields.update(drafter_cls.training_defaults)
        if self.lr is not None:
            fields["lr"] = self.lr
        fields.update({k: v for k, v in overrides.items() if v is not None})
        if overrides.get("steps") is not None:
            fields["budget_minutes"] = None
        elif overrides.get("budget_minutes") is not None:
            fields["steps"] = None
        return TrainConfig(**fields)

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        budget = f"{self.steps} steps" if self.steps else f"{self.budget_minutes:g} min"
        return (f"data {self.data} (responses <= {self.max_new_tokens} tokens, sequences <= {self.max_length}), "
                f"{budget}, micro-batch {self.batch_size} x {self.grad_accum}")


STANDARD_CPU = TrainingRecipe(data="gsm8k:912,mix:2400", max_new_tokens=256, max_length=384,
                              budget_minutes=25.0, steps=None, batch_size=8, grad_accum=1, eval_size=64)

#: data preparation (template rendering, tokenisation) and the final eval on top of the budget, for the
#: time announced before an automatic training run
OVERHEAD_MINUTES = 2.0
