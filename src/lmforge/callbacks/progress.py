"""Progress: a live rich bar in a terminal; a plain line every N optimizer steps elsewhere.

A rich bar writes nothing while its output goes to a file or a pipe (a log file, a cluster job): it
draws only when the run ends. When stdout is not a terminal, ``progress_bar(kind="auto")`` (the
default, ``configs/callbacks/default.yaml``) gives :class:`PlainProgressBar` instead, which prints::

    step 20/126 (16%) | epoch 1/2 | train/loss 0.6812 | lr 4.8e-05 | 3.41 it/s | ETA 0:00:31
    validation at step 63: val/loss 0.6551 | val/score 0.7500

``callbacks.progress_bar.kind=rich|plain`` forces one; ``callbacks.progress_bar.every_n_steps`` sets N.
"""

from __future__ import annotations

import datetime
import math
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress import ProgressBar


def with_train_loss(metrics: dict[str, Any], trainer: L.Trainer) -> dict[str, Any]:
    """``metrics`` with ``train/loss`` first (read from the device now, not after every batch)."""
    loss = trainer.callback_metrics.get("train/loss")
    if loss is not None and "train/loss" not in metrics:
        metrics = {"train/loss": float(loss), **metrics}
    return metrics


class LossRichProgressBar(RichProgressBar):
    """Lightning's rich bar, showing ``train/loss`` (logged without ``prog_bar``) at each refresh."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return with_train_loss(super().get_metrics(trainer, pl_module), trainer)


def progress_bar(kind: str = "auto", refresh_rate: int = 1, every_n_steps: int = 20, **rich_kwargs: Any) -> ProgressBar:
    """``kind``: ``rich`` (a live bar), ``plain`` (a line every ``every_n_steps`` optimizer steps) or
    ``auto``: rich when stdout is a terminal, else plain."""
    kind = str(kind).lower()
    if kind == "auto":
        kind = "rich" if _is_terminal(sys.stdout) else "plain"
    if kind == "rich":
        return LossRichProgressBar(refresh_rate=refresh_rate, **rich_kwargs)
    if kind == "plain":
        return PlainProgressBar(every_n_steps=every_n_steps)
    from lmforge.utils.errors import ConfigError

    raise ConfigError(f"callbacks.progress_bar.kind={kind}: expected auto, rich or plain")


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    return str(datetime.timedelta(seconds=int(round(seconds))))


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


class PlainProgressBar(ProgressBar):
    """One line every ``every_n_steps`` optimizer steps (and at the first and the last): step, epoch, the
    progress-bar metrics (``train/loss``), learning rate, optimizer steps per second, time left. One
    line after each validation with its metrics. Printed by global rank 0 only."""

    def __init__(self, every_n_steps: int = 20):
        super().__init__()
        if int(every_n_steps) < 1:
            from lmforge.utils.errors import ConfigError

            raise ConfigError(f"callbacks.progress_bar.every_n_steps={every_n_steps}: expected at least 1")
        self.every_n_steps = int(every_n_steps)
        self._enabled = True
        self._printed_step = -1
        self._t_fit = self._t_mark = 0.0
        self._step_mark = 0
        self._paused = 0.0  # seconds spent validating since the last mark
        self._t_val: float | None = None
        self._total = math.inf

    # ProgressBar's contract
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._enabled:
            print(*args, **kwargs, flush=True)

    def _say(self, line: str) -> None:
        if self._enabled:
            print(line, file=sys.stdout, flush=True)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The progress-bar metrics and ``train/loss``: tasks log it without ``prog_bar`` (Lightning would
        read it back to the host after every batch); read here, only when a line is printed."""
        return with_train_loss(super().get_metrics(trainer, pl_module), trainer)

    # training
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t_fit = self._t_mark = time.perf_counter()
        self._step_mark = trainer.global_step
        self._printed_step = trainer.global_step
        self._paused = 0.0
        self._total = self._total_steps(trainer)

    def _total_steps(self, trainer: L.Trainer) -> float:
        try:
            return float(trainer.estimated_stepping_batches)
        except Exception:  # noqa: BLE001  (an iterable dataset without a length and no max_steps)
            return math.inf

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._printed_step:
            return
        total = self._total
        last = step >= total or trainer.should_stop
        if step != 1 and step % self.every_n_steps != 0 and not last:
            return
        self._printed_step = step
        now = time.perf_counter()
        elapsed = now - self._t_mark - self._paused
        rate = (step - self._step_mark) / elapsed if elapsed > 0 else math.nan
        self._t_mark, self._step_mark, self._paused = now, step, 0.0
        parts = [f"step {step}/{int(total)} ({100 * step / total:.0f}%)" if math.isfinite(total) else f"step {step}"]
        max_epochs = trainer.max_epochs
        parts.append(f"epoch {trainer.current_epoch + 1}" + (f"/{max_epochs}" if max_epochs and max_epochs > 0
                                                            and not (trainer.max_steps and trainer.max_steps > 0) else ""))
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        parts += [f"{k} {_fmt_value(v)}" for k, v in metrics.items()]
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.3g}")
        if math.isfinite(rate):
            parts.append(f"{rate:.3g} it/s")
            if math.isfinite(total) and rate > 0:
                parts.append(f"ETA {_fmt_duration((total - step) / rate)}")
        self._say(" | ".join(parts))

    # validation inside training: its time is not training time, its metrics get a line
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t_val = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._t_val is not None:
            self._paused += time.perf_counter() - self._t_val
            self._t_val = None
        from lightning.pytorch.trainer.states import TrainerFn

        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith("val") and getattr(v, "numel", lambda: 1)() == 1}
        if metrics:
            self._say(f"validation at step {trainer.global_step}: "
                      + " | ".join(f"{k} {_fmt_value(v)}" for k, v in sorted(metrics.items())))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._say(f"training done: {trainer.global_step} steps in {_fmt_duration(time.perf_counter() - self._t_fit)}")
