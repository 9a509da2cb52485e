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

**Training-size rule** (issue 19, equal budget means equal rules): a method's per-sequence training size
(anchors for FlexDraft, DFlash and MTP; mask groups for BiTA; EAGLE-3 trains every position) is the
candidate of {16, 64} with the higher held-out accuracy at the 10-CPU-minute snapshot of this recipe on
`smollm2-135m` (one thread, micro-batch 8), among those that fit in memory beside one other run on the
24 GB machine. Measured 2026-12-03: DFlash 16 → 0.082 (62 steps), 64 → 0.068 (38 steps): 16. MTP 64 needs
16.7 GB (killed by the OOM killer beside another training) and FlexDraft 64 passed 13 GB and costs 53 s a
step against 8.4 s for 16 (stop 17): both keep 16, the 64 screens not yet measured alone. BiTA's
`max_groups` (64) is not screened yet.

Beside it, `PAPER` is the published scale (`specbench train --recipe paper`; issue 22): what the
papers state about data and budget, and, with `--dry-run`, what that would cost on the machine at
hand — GPU-hours from a step time measured there (or given with `--step-seconds`), never a guess.
"""

from __future__ import annotations

import math
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

#: The papers' scale. FlexDraft reports ~300K training samples and publishes nothing else about its
#: training (bita_mtp_flexdraft.md G.4); EAGLE-3 trains on ShareGPT (~68K) + UltraChat-200K with the
#: target's own responses (eagle3_dflash.md A.2.1); FlexDraft's block loss follows DFlash, whose
#: paper-aligned recipe is 6 epochs, sequences <= 3072 tokens, 4 sequences per GPU x 8 GPUs (B.2.3).
#: The learning rate stays each method's own, as in the standard recipe.
PAPER_SAMPLES = {"sharegpt": 68_000, "ultrachat": 232_000}
PAPER_EPOCHS = 6
PAPER = TrainingRecipe(data=",".join(f"{k}:{n}" for k, n in PAPER_SAMPLES.items()), max_new_tokens=2048,
                       max_length=3072, budget_minutes=None,
                       steps=math.ceil(sum(PAPER_SAMPLES.values()) * PAPER_EPOCHS / (4 * 8)),
                       batch_size=4, grad_accum=8, eval_size=256)
PAPER_STATEMENT = ("300K samples (FlexDraft; ShareGPT ~68K + UltraChat as in EAGLE-3, responses regenerated by the "
                   f"target), {PAPER_EPOCHS} epochs, global batch 32 = 4 sequences x 8 micro-batches (8 GPUs in "
                   "DFlash's recipe; any number of processes dividing 8 under torchrun), sequences <= 3072 tokens")

RECIPES = {"standard": STANDARD_CPU, "paper": PAPER}


def cost_estimate(steps: int, step_seconds: float, world_size: int = 1) -> str:
    """What `steps` optimizer steps cost at a measured `step_seconds` per step on one device (all of a
    step's micro-batches): device-hours, and the wall time on `world_size` devices sharing each step
    (their communication is not counted)."""
    hours = steps * step_seconds / 3600
    line = f"{steps:,} steps x {step_seconds:.3g} s/step = {hours:,.1f} device-hours"
    if world_size > 1:
        line += f" (~{hours / world_size:,.1f} h on {world_size} devices, communication not counted)"
    return line
