"""Validate at the end of training when the last step was not validated.

A run whose ``trainer.max_steps`` ends before its first validation (``max_steps=5`` with
``val_check_interval=50``), or whose last epoch ends between two validations, would otherwise end
without ``val/*`` metrics: early stopping, checkpoints by ``task.monitor`` and sweeps (``optimized_metric``)
have nothing to read. At the final optimizer step this callback sets ``trainer.should_stop``, which
makes Lightning's training loop validate right there (``_should_check_val_fx`` validates when a stop is
requested), inside ``fit``, so every callback sees that validation as it sees any other.
"""

from __future__ import annotations

from typing import Any

import lightning as L


class ValidateAtEnd(L.Callback):
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.should_stop or trainer.fast_dev_run or not self._final_step(trainer):
            return
        if not _has_validation(trainer):
            return
        loop = trainer.fit_loop.epoch_loop
        if loop._should_accumulate():  # the optimizer has not stepped on this batch
            return
        if loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            return  # Lightning validates this step anyway
        trainer.should_stop = True  # -> validation now, then the loops end as they were about to

    @staticmethod
    def _final_step(trainer: L.Trainer) -> bool:
        max_steps = trainer.max_steps
        if max_steps is not None and max_steps > 0 and trainer.global_step >= max_steps:
            return True
        loop = trainer.fit_loop
        max_epochs = loop.max_epochs
        last_epoch = max_epochs is not None and max_epochs >= 0 and trainer.current_epoch >= max_epochs - 1
        return last_epoch and loop.epoch_loop._num_ready_batches_reached()


def _has_validation(trainer: L.Trainer) -> bool:
    if not trainer.enable_validation:
        return False
    loop = trainer.fit_loop.epoch_loop
    if not loop._should_check_val_epoch():
        return False
    if isinstance(trainer.num_val_batches, (list, tuple)) and not trainer.num_val_batches:
        loop.val_loop.setup_data()  # no validation yet in this run (no sanity check): what the loop would load
    n = trainer.num_val_batches
    return bool(sum(n) if isinstance(n, (list, tuple)) else n)


def validate_if_missing(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule | None,
                        monitor: str | None) -> bool:
    """After ``trainer.fit``: validate the model as it is when ``monitor`` was not logged, which happens
    when ``fit`` trained no step at all (``ckpt_path`` of a run that had reached ``max_steps`` already).
    Returns whether it validated; the metrics are then in ``trainer.callback_metrics``."""
    if not monitor or not str(monitor).startswith("val") or monitor in trainer.callback_metrics:
        return False
    if trainer.limit_val_batches == 0:
        return False
    trainer.validate(module, datamodule=datamodule, verbose=False)
    return monitor in trainer.callback_metrics
