"""Throughput that counts what matters: samples/s and non-padding tokens/s, without a host sync per step.

Counts accumulate on the device and are read (one sync) only every ``log_every_n_steps``.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch


class Throughput(L.Callback):
    def __init__(self, log_every_n_steps: int | None = None):
        self.every = log_every_n_steps
        self._reset()

    def _reset(self) -> None:
        self.samples = 0
        self.tokens: torch.Tensor | int = 0
        self.t0: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        ids = batch["input_ids"]
        self.samples += ids.shape[0]
        mask = batch.get("attention_mask")
        self.tokens = self.tokens + (mask.sum() if mask is not None else ids.numel())
        every = self.every or trainer.log_every_n_steps
        if (batch_idx + 1) % every == 0 and self.t0 is not None:
            dt = time.perf_counter() - self.t0
            world = trainer.world_size
            tokens = float(self.tokens) * world  # one sync, every `every` steps
            pl_module.log_dict({"perf/samples_per_sec": self.samples * world / dt,
                                "perf/tokens_per_sec": tokens / dt}, on_step=True, on_epoch=False,
                               rank_zero_only=True)
