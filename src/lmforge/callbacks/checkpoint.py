"""Checkpoints: the best state (by ``task.monitor``) and ``last.ckpt``, always the newest state.

Lightning's ``ModelCheckpoint(save_last=True)`` rewrites ``last.ckpt`` only when it saves a new best, so
after a run whose best came early, ``last.ckpt`` is an old state and resuming from it retrains what came
after. Here ``last.ckpt`` is written after every validation and at the end of training (when the last
step was not saved yet), and when it is the same state as a checkpoint just saved (a new best), it is
a hard link to that file: one copy on disk, not two (a MiniLM checkpoint with AdamW state is ~270 MB).

``save_weights_only=true`` keeps the weights without optimizer and loop state (about a third of
the size with AdamW), at the price of not resuming training from them.
"""

from __future__ import annotations

import os
import shutil
import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class Checkpoint(ModelCheckpoint):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("save_last", True)
        super().__init__(*args, **kwargs)
        self._last_step: int | None = None  # the global step last.ckpt holds

    @property
    def state_key(self) -> str:
        # the key ModelCheckpoint would have: checkpoints written before (or by a plain ModelCheckpoint)
        # restore this callback's state (best score, best path)
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    # -- when ---------------------------------------------------------------------------------------

    def _skip_last(self, trainer: L.Trainer) -> bool:
        from lightning.pytorch.trainer.states import TrainerFn

        return (not self.save_last or bool(trainer.fast_dev_run) or trainer.sanity_checking
                or trainer.state.fn != TrainerFn.FITTING or self._last_step == trainer.global_step
                or trainer.global_step == 0)

    def _refresh_last(self, trainer: L.Trainer) -> None:
        if not self._skip_last(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # not super(): Lightning's writes last.ckpt even under fast_dev_run
        self._refresh_last(trainer)

    # -- how ----------------------------------------------------------------------------------------

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        if not self.save_last or self.save_last == "link":  # "link": Lightning's own symlink scheme
            return super()._save_last_checkpoint(trainer, monitor_candidates)
        if self._last_step == trainer.global_step:
            return
        path = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
        # a checkpoint of this very state was just written (a new best): last.ckpt is a second name for it
        same = self._last_checkpoint_saved if self._last_global_step_saved == trainer.global_step else None
        previous, self.last_model_path = self.last_model_path, path
        linked = False
        if trainer.is_global_zero:
            # never write through an existing last.ckpt: it may be a hard link to the best checkpoint
            _remove(path)
            if same and os.path.abspath(same) != os.path.abspath(path) and os.path.isfile(same):
                try:
                    os.link(same, path)
                    linked = True
                except OSError:  # another file system, or no hard links there: a copy of its own
                    linked = False
        linked = bool(trainer.strategy.broadcast(linked))
        if not linked:
            self._save_checkpoint(trainer, path)  # every rank: sharded strategies write together
        self._last_step = trainer.global_step
        if previous and previous != path and self._should_remove_checkpoint(trainer, previous, path):
            self._remove_checkpoint(trainer, previous)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # a resumed run writes into its own run directory, by design: Lightning's warning about the
        # changed dirpath says nothing a user can act on
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The dirpath has changed")
            super().load_state_dict(state_dict)
        self._last_step = None


def _remove(path: str) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.remove(path)
    elif os.path.isdir(path):  # a sharded (FSDP) checkpoint folder
        shutil.rmtree(path)
