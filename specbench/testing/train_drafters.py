"""A test-only trainable drafter that exercises the whole training pipeline (issue 5).

`SkipHeadDrafter` predicts token `t + 2` from the target's features at position `t` (outputs of two
chosen layers, captured by hooks) and the embedding of token `t + 1` — the shape of an EAGLE-style
feature-conditioned drafter in a dozen lines. It borrows the target's frozen embedding and LM head,
so its own parameters are one small MLP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from specbench.training.drafter import Drafter


@dataclass
class SkipHeadConfig:
    target_hidden_size: int
    hidden_size: int = 128
    feature_layers: list[int] = field(default_factory=lambda: [1, -2])
    dropout: float = 0.0  # > 0 makes the loss random, so tests see RNG state restored on resume


class SkipHeadDrafter(Drafter):
    method = "skiphead-test"
    config_class = SkipHeadConfig
    training_defaults = {"lr": 3e-3, "warmup_ratio": 0.1}

    def __init__(self, config: SkipHeadConfig):
        super().__init__(config)
        h = config.target_hidden_size
        self.fc_in = nn.Linear((len(config.feature_layers) + 1) * h, config.hidden_size)
        self.fc_out = nn.Linear(config.hidden_size, h)
        nn.init.zeros_(self.fc_out.weight)

    @classmethod
    def default_config(cls, target, **options) -> SkipHeadConfig:
        return SkipHeadConfig(target_hidden_size=target.config.hidden_size, **options)

    def feature_layers(self) -> list[int]:
        return self.config.feature_layers

    def logits(self, features: torch.Tensor, next_ids: torch.Tensor) -> torch.Tensor:
        """`features [..., L*H]` at `t` and ids `[...]` of `t + 1` -> logits `[..., V]` for `t + 2`."""
        model = self.target.model
        embed = F.embedding(next_ids, model.get_input_embeddings().weight)
        x = F.dropout(torch.cat([features, embed.to(features.dtype)], -1), self.config.dropout, self.training)
        h = self.fc_out(F.silu(self.fc_in(x)))
        h = h + features[..., -embed.shape[-1]:]
        return F.linear(model.model.norm(h), model.get_output_embeddings().weight)

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Cross-entropy for `t + 2` at every position whose label is an assistant token."""
        ids, mask = batch["input_ids"], batch["loss_mask"]
        valid = mask[:, 2:].bool()  # [B, S-2]: label x[t+2] is supervised
        logits = self.logits(batch["features"][:, :-2][valid], ids[:, 1:-1][valid])  # [M, V]
        labels = ids[:, 2:][valid]
        loss = F.cross_entropy(logits.float(), labels)
        acc = (logits.argmax(-1) == labels).float().mean()
        return loss, {"acc": float(acc), "supervised": int(valid.sum())}
