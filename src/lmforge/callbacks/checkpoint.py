"""Checkpoints: the best state (by ``task.monitor``) and ``last.ckpt``, always the newest state, written so
that a run killed at any moment resumes exactly (``ckpt_path=last``).

Lightning's ``ModelCheckpoint(save_last=True)`` rewrites ``last.ckpt`` only when it saves a new best, so
after a run whose best came early, ``last.ckpt`` is an old state and resuming from it retrains what came
after. Here ``last.ckpt`` is written after every validation, every ``every_n_train_steps`` optimizer steps
and at the end of training (when the last step was not saved yet), and when it is the same state as a
checkpoint just saved (a new best), it is a hard link to that file: one copy on disk, not two (a MiniLM
checkpoint with AdamW state is ~270 MB).

``every_n_train_steps=N`` refreshes ``last.ckpt`` (the resume point) every N optimizer steps, between
validations; the best checkpoints are still chosen at validations only, by a fresh metric (Lightning's
own ``every_n_train_steps`` would rank a step checkpoint by the metric of an older validation, and would
turn off the per-validation checkpoints). A step that a validation follows is saved after it, so a
resumed run neither repeats nor skips that validation. Saves fall on optimizer-step boundaries: with
``accumulate_grad_batches>1`` a checkpoint never holds half an accumulated step.

Every write goes to a temporary name beside the final one (``last.ckpt.tmp``), is flushed to disk and
renamed into place (:func:`lmforge.checkpoints.commit_checkpoint`), so a run killed mid-write leaves the
previous checkpoint whole; a sharded (FSDP2) folder gets a ``COMPLETE`` marker written last. The
checkpoint also carries every rank's random-number state (:mod:`lmforge.callbacks.resume_state`), which
Lightning does not save, so dropout draws the same numbers after a resume.

``save_weights_only=true`` keeps the weights without optimizer and loop state (about a third of
the size with AdamW), at the price of not resuming training from them.
"""

from __future__ import annotations

import os
import shutil
import warnings
from typing import Any
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from lmforge.callbacks.resume_state import TrainingRNG
from lmforge.checkpoints import commit_checkpoint, remove_path, temporary_path

RNG_KEY = "lmforge_rng"  # this callback's state entry that holds the random-number state


class Checkpoint(ModelCheckpoint):
    def __init__(self, *args: Any, every_n_train_steps: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("save_last", True)
        super().__init__(*args, **kwargs)  # top-k by validation: Lightning's every_n_epochs=1
        n = int(every_n_train_steps or 0)
        if n < 0:
            from lmforge.utils.errors import ConfigError

            raise ConfigError(f"callbacks.model_checkpoint.every_n_train_steps={every_n_train_steps}: expected a "
                              "number of optimizer steps >= 1 (or null: checkpoints at validations only)")
        self.every_n_steps = n
        self._last_step: int | None = None  # the global step last.ckpt holds
        self._step_at_batch_end: int | None = None
        self.rng = TrainingRNG()

    @property
    def state_key(self) -> str:
        # the key ModelCheckpoint would have: checkpoints written before (or by a plain ModelCheckpoint)
        # restore this callback's state (best score, best path)
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    # -- when ---------------------------------------------------------------------------------------

    def _mid_accumulation(self, trainer: L.Trainer) -> bool:
        """Between two micro-batches of one optimizer step: the accumulated gradients are in no checkpoint."""
        try:
            return bool(trainer.fit_loop.epoch_loop._should_accumulate())
        except Exception:  # another Lightning: let the save happen
            return False

    def _skip_last(self, trainer: L.Trainer) -> bool:
        from lightning.pytorch.trainer.states import TrainerFn

        return (not self.save_last or bool(trainer.fast_dev_run) or trainer.sanity_checking
                or trainer.state.fn != TrainerFn.FITTING or self._last_step == trainer.global_step
                or trainer.global_step == 0 or self._mid_accumulation(trainer))

    def _refresh_last(self, trainer: L.Trainer) -> None:
        if not self._skip_last(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.rng.batch_start(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.rng.batch_end(trainer)  # first: the state a checkpoint written from here on resumes with
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        stepped = self._step_at_batch_end is not None and trainer.global_step != self._step_at_batch_end
        self._step_at_batch_end = trainer.global_step
        if (self.every_n_steps and stepped and trainer.global_step % self.every_n_steps == 0
                and not self._saved_after_this_batch(trainer)):
            self._refresh_last(trainer)

    def _saved_after_this_batch(self, trainer: L.Trainer) -> bool:
        """A validation or the epoch's end follows this batch and refreshes last.ckpt: saving here instead
        would let a resumed run skip that validation (Lightning resumes after it) or the epoch's end hooks."""
        loop = trainer.fit_loop.epoch_loop
        on_epoch_end = self._should_save_on_train_epoch_end(trainer)
        if loop.batch_progress.is_last_batch and on_epoch_end:
            return True
        try:
            validates = bool(loop._should_check_val_fx(trainer.fit_loop._data_fetcher))
        except Exception:  # another Lightning: save now
            validates = False
        return validates and not on_epoch_end

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._step_at_batch_end = trainer.global_step

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if _replays_epoch_end(trainer):
            return  # the run that wrote the checkpoint saved this epoch's end already
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # not super(): Lightning's writes last.ckpt even under fast_dev_run
        self._refresh_last(trainer)

    # -- how ----------------------------------------------------------------------------------------

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        """Lightning's, through a temporary name: the file (or sharded folder) at ``filepath`` is replaced only
        by a whole checkpoint."""
        tmp = temporary_path(filepath)
        if trainer.is_global_zero:
            remove_path(tmp)  # left by a run killed while writing
        trainer.strategy.barrier("lmforge.checkpoint.before_write")
        try:
            trainer.save_checkpoint(tmp, self.save_weights_only)  # every rank (sharded strategies write together)
            if trainer.is_global_zero:
                commit_checkpoint(tmp, filepath, {"global_step": trainer.global_step, "epoch": trainer.current_epoch})
        except BaseException:
            if trainer.is_global_zero:
                remove_path(tmp)
            raise
        trainer.strategy.barrier("lmforge.checkpoint.committed")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:  # as Lightning does: loggers that upload checkpoints (W&B log_model)
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

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
        if trainer.is_global_zero and same and os.path.abspath(same) != os.path.abspath(path) and os.path.isfile(same):
            # never write through an existing last.ckpt (it may be a hard link to the best checkpoint): link the
            # state under a temporary name, then rename it over last.ckpt in one step
            tmp = temporary_path(path)
            remove_path(tmp)
            try:
                os.link(same, tmp)
                commit_checkpoint(tmp, path)
                linked = True
            except OSError:  # another file system, or no hard links there: a copy of its own
                remove_path(tmp)
                linked = False
        linked = bool(trainer.strategy.broadcast(linked))
        if not linked:
            self._save_checkpoint(trainer, path)  # every rank: sharded strategies write together
        self._last_step = trainer.global_step
        if previous and previous != path and self._should_remove_checkpoint(trainer, previous, path):
            self._remove_checkpoint(trainer, previous)

    # -- state --------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        trainer = getattr(self, "_trainer", None)
        if trainer is not None:
            rng = self.rng.state_dict(trainer)  # every rank's (a collective: every rank writes each checkpoint)
            if rng:
                state[RNG_KEY] = rng
        return state

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._trainer = trainer

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rng.load_state_dict(state_dict.get(RNG_KEY))
        state = {k: v for k, v in state_dict.items() if k != RNG_KEY}
        old = state.get("dirpath")
        if old and self.dirpath and os.path.abspath(old) != os.path.abspath(self.dirpath):
            state = self._adopt_best(state, str(old))
        # a resumed run writes into its own run directory, by design: Lightning's warning about the
        # changed dirpath says nothing a user can act on
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The dirpath has changed")
            super().load_state_dict(state)
        self._last_step = None

    def _adopt_best(self, state: dict[str, Any], old: str) -> dict[str, Any]:
        """A resumed run writes into its own folder: its best checkpoints so far are the earlier run's. Lightning
        would forget them (and their scores) when the folder changes, so the next validation would count as
        the best whatever its score. They join this run's folder as hard links (copies across file systems),
        with their scores, so the top-k choice goes on as in an uninterrupted run."""
        def here(path: Any) -> Any:
            if not path or os.path.dirname(os.path.abspath(path)) != os.path.abspath(old):
                return path
            new = os.path.join(self.dirpath, os.path.basename(path))
            trainer = getattr(self, "_trainer", None)
            if (trainer is None or trainer.is_global_zero) and os.path.exists(path) and not os.path.exists(new):
                _link_or_copy(path, new)
            return new

        state = dict(state)
        state["best_k_models"] = {here(p): score for p, score in (state.get("best_k_models") or {}).items()}
        for key in ("best_model_path", "kth_best_model_path"):
            state[key] = here(state.get(key))
        state["last_model_path"] = ""  # this run has written no last.ckpt yet
        state["dirpath"] = self.dirpath
        return state


def _link_or_copy(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.isdir(src):  # a sharded folder: its files linked one by one
        shutil.copytree(src, dst, copy_function=_link_or_copy)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _replays_epoch_end(trainer: L.Trainer) -> bool:
    """Whether Lightning is running again the end of the epoch in which the checkpoint it resumed from was
    written, and if so, undo its second count of that epoch.

    A checkpoint written in ``on_train_epoch_end`` counts the epoch processed but not completed. A run with
    ``trainer.max_steps`` that resumes from it (Lightning's "restarted on epoch end") runs the epoch's end
    again and counts it processed a second time, so every later epoch reaches the samplers' ``set_epoch``
    one too high: the resumed run would train data epoch k+1's order in epoch k. Lightning 2.6 behaviour.
    """
    loop = trainer.fit_loop
    if not getattr(loop, "restarted_on_epoch_end", False):
        return False
    for count in (loop.epoch_progress.current, loop.epoch_progress.total):
        if count.processed > count.completed + 1:
            count.processed -= 1
    return True
