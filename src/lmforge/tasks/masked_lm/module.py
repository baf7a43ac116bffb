"""Masked-LM pretraining (BERT, RoBERTa): a thin layer over ``AutoModelForMaskedLM``.

From scratch (``model=bert|roberta model/size=...``) or continued from a checkpoint
(``model=minilm``: the MiniLM encoder has no MLM head, so the head starts fresh; loading says so).
Metrics: ``train/loss``; ``val/loss`` (mean cross-entropy over the masked positions),
``val/perplexity`` (its exponential) and ``val/accuracy`` (masked-token top-1).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torchmetrics as tm
from transformers import AutoModelForMaskedLM

from lmforge.data.masking import IGNORE_INDEX
from lmforge.tasks.base import LMForgeModule


class MaskedLMModule(LMForgeModule):
    auto_cls = AutoModelForMaskedLM

    def __init__(self, model: Mapping, optimizer: Mapping, scheduler: Mapping):
        super().__init__(model, optimizer, scheduler)
        self.metrics: torch.nn.ModuleDict | None = None

    def configure_model(self) -> None:
        super().configure_model()
        if self.metrics is None:
            self.metrics = torch.nn.ModuleDict({
                s: torch.nn.ModuleDict({"loss": tm.MeanMetric(), "accuracy": tm.MeanMetric()}) for s in ("val", "test")})

    def forward(self, batch: dict) -> Any:
        return self.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), labels=batch["labels"])

    def on_train_epoch_start(self) -> None:
        dm = self.trainer.datamodule
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)  # streaming datasets: Lightning only tells samplers

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self(batch).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        out = self(batch)
        labels = batch["labels"]
        masked = labels != IGNORE_INDEX
        n = int(masked.sum())
        correct = (out.logits.argmax(-1)[masked] == labels[masked]).float().mean()
        self.metrics[stage]["loss"].update(out.loss.detach().float(), weight=n)
        self.metrics[stage]["accuracy"].update(correct, weight=n)

    def _eval_epoch_end(self, stage: str) -> None:
        m = self.metrics[stage]
        loss, acc = m["loss"].compute(), m["accuracy"].compute()  # weighted by masked tokens, synced across ranks
        self.log_dict({f"{stage}/loss": loss, f"{stage}/perplexity": torch.exp(loss), f"{stage}/accuracy": acc},
                      prog_bar=stage == "val")
        m["loss"].reset()
        m["accuracy"].reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
