"""Metrics that more than one task reports, written once (torchmetrics, synced across ranks)."""

from __future__ import annotations

import torch
import torchmetrics as tm


class LanguageModelMetrics(tm.Metric):
    """Token-weighted ``loss`` (mean cross-entropy over every predicted token), ``perplexity`` (its
    exponential) and top-1 ``accuracy``, accumulated over an evaluation epoch.

    Causal LM predicts every next token, masked LM only the masked positions: the task says which
    positions count by passing their logits and targets (``ignore_index`` targets are skipped).
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, ignore_index: int = -100, **kwargs):
        super().__init__(**kwargs)
        self.ignore_index = ignore_index
        self.add_state("loss_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits = logits.reshape(-1, logits.shape[-1]).float()
        targets = targets.reshape(-1)
        keep = targets != self.ignore_index
        logits, targets = logits[keep], targets[keep]
        self.loss_sum += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").double()
        self.correct += (logits.argmax(-1) == targets).sum()
        self.count += targets.numel()

    def compute(self) -> dict[str, torch.Tensor]:
        loss = (self.loss_sum / self.count.clamp(min=1)).float()
        return {"loss": loss, "perplexity": torch.exp(loss), "accuracy": self.correct.float() / self.count.clamp(min=1)}
