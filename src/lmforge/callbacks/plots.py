"""Pictures of a run in ``<run>/plots/``, whatever the logger (``logger=none`` included).

The callback keeps its own history, so it needs no logger's files: the training loss (mean over the
batches since the last point, every ``trainer.log_every_n_steps`` optimizer steps; one host sync per
point, not per batch), the learning rate of each parameter group, and every scalar ``val/*`` metric
after each validation. It writes, on rank 0:

* ``loss.png`` (training and validation loss by step), ``metrics.png`` (one panel per validation metric,
  the task's headline ``score`` metric first), ``lr.png``: after a validation (at most once every
  ``min_interval_s`` seconds: drawing costs about 0.6 s of CPU, which a run validating every few seconds
  on a GPU would feel) and at the end of training (unless the last validation's pictures already show
  every point and no TensorBoard/W&B logger wants them);
* the task's own figures, from its module's ``evaluation_figures(stage)`` when it has one: the confusion
  matrix of text classification (``confusion_matrix.png``, label names on the axes; none for
  regression), F1 per entity type for NER (``f1_per_type.png``); after every validation, and after the
  test loop as ``<name>_test.png``.

With TensorBoard or W&B among the loggers, the task's figures go to them whenever they are drawn after a
validation (and after the test), the curves once at the end of training (``plots/<name>``: ``add_image`` / ``wandb.Image``).

The history is part of the callback's checkpoint state (plain lists and dicts: checkpoints load with
``weights_only=True``), so a resumed run continues its curves. Nothing is written under ``fast_dev_run``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

log = logging.getLogger(__name__)

CURVES = ("loss", "metrics", "lr")


def _empty_history() -> dict:
    return {"train": {"step": [], "loss": []}, "lr": {"step": [], "values": {}}, "val": []}


def _scalar(v: Any) -> float | None:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            return None
        v = float(v.detach().float().cpu())
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


class Plots(L.Callback):
    """See the module docstring. ``dirpath``: where the PNGs go (``<run>/plots``); ``every_n_steps``: training
    points (None: ``trainer.log_every_n_steps``); ``log_figures``: also send figures to TensorBoard / W&B;
    ``min_interval_s``: the least time between two drawings at validations (0: after every validation)."""

    def __init__(self, dirpath: str | Path, every_n_steps: int | None = None, log_figures: bool = True,
                 min_interval_s: float = 30.0, max_metric_panels: int = 9):
        super().__init__()
        self.dirpath = Path(dirpath)
        self.min_interval_s = float(min_interval_s or 0.0)
        self._last_draw = -math.inf
        self._undrawn = False  # a validation whose task figures were not drawn yet
        self.every_n_steps = every_n_steps
        self.log_figures = bool(log_figures)
        self.max_metric_panels = int(max_metric_panels)
        self.history = _empty_history()
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        self._seen_step = -1
        self.written: dict[str, Path] = {}  # picture name -> file, the newest of each
        self._drawn: tuple | None = None  # the curves' points when last drawn (see _shape)

    # -- state (resume) -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"history": copy.deepcopy(self.history)}

    def load_state_dict(self, state_dict: dict) -> None:
        history = state_dict.get("history")
        if isinstance(history, dict) and {"train", "lr", "val"} <= set(history):
            self.history = copy.deepcopy(history)

    # -- collecting -----------------------------------------------------------------------------
    @staticmethod
    def _off(trainer: L.Trainer) -> bool:
        return bool(trainer.fast_dev_run)

    def _every(self, trainer: L.Trainer) -> int:
        return max(1, int(self.every_n_steps or trainer.log_every_n_steps or 1))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._off(trainer):
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            loss = loss.detach().float()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1
        step = int(trainer.global_step)
        if step == self._seen_step:  # no optimizer step on this batch (gradient accumulation)
            return
        self._seen_step = step
        if step % self._every(trainer) == 0:
            self._record_train(trainer, step)

    def _record_train(self, trainer: L.Trainer, step: int) -> None:
        if self._loss_sum is not None and self._loss_count:
            value = float(self._loss_sum.cpu()) / self._loss_count  # the one host sync of this point
            train = self.history["train"]
            if train["step"] and train["step"][-1] == step:
                train["loss"][-1] = value
            else:
                train["step"].append(step)
                train["loss"].append(value)
        self._loss_sum, self._loss_count = None, 0
        optimizers = trainer.optimizers
        if optimizers:
            lr = self.history["lr"]
            if lr["step"] and lr["step"][-1] == step:
                return
            groups = optimizers[0].param_groups
            lr["step"].append(step)
            for i, g in enumerate(groups):
                values = lr["values"].setdefault(f"group {i}", [])
                values.extend([math.nan] * (len(lr["step"]) - 1 - len(values)))
                values.append(float(g["lr"]))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._off(trainer) or trainer.sanity_checking:
            return
        record: dict[str, Any] = {"step": int(trainer.global_step), "epoch": int(trainer.current_epoch)}
        for k, v in trainer.callback_metrics.items():
            if k.startswith("val/"):
                value = _scalar(v)
                if value is not None:
                    record[k] = value
        if len(record) > 2:
            val = self.history["val"]
            if val and val[-1]["step"] == record["step"]:
                val[-1] = record  # validated again at the same step (after fit): the newer values
            else:
                val.append(record)
        if trainer.is_global_zero:
            if time.monotonic() - self._last_draw >= self.min_interval_s:
                self._draw(trainer, pl_module, stage="val", curves=True, log_task=True, log_curves=False)
                self._last_draw, self._undrawn = time.monotonic(), False
            else:
                self._undrawn = True  # drawn (and sent to the loggers) at the end of training

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._off(trainer):
            return
        if self._loss_count:  # the steps since the last point
            self._record_train(trainer, int(trainer.global_step))
        if trainer.is_global_zero:
            if self._drawn == self._shape() and not self._undrawn and not self._image_loggers(trainer):
                return  # the pictures of the last validation show every point already (a short run's usual end)
            self._draw(trainer, pl_module, stage="val", curves=True, log_task=self._undrawn, log_curves=True)
            self._undrawn = False

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._off(trainer) or not trainer.is_global_zero:
            return
        self._draw(trainer, pl_module, stage="test", curves=False, log_task=True, log_curves=False)

    # -- drawing ----------------------------------------------------------------------------------
    def _metric_keys(self, headline: str | None) -> list[str]:
        keys: list[str] = []
        for r in self.history["val"]:
            keys += [k for k in r if k.startswith("val/") and k not in keys]
        keys = [k for k in keys if k not in ("val/loss", "val/score")]
        keys.sort(key=lambda k: (k != headline, k.startswith("val/f1_"), k))
        return keys[: self.max_metric_panels]

    def curve_figures(self, pl_module: L.LightningModule | None = None) -> dict[str, Any]:
        from lmforge.reports import plots

        score = getattr(pl_module, "score_metric", None) if pl_module is not None else None
        headline = f"val/{score}" if score else None
        return {
            "loss": plots.loss_figure(self.history["train"], self.history["val"]),
            "metrics": plots.metrics_figure(self.history["val"], self._metric_keys(headline), headline=headline),
            "lr": plots.lr_figure(self.history["lr"]),
        }

    @staticmethod
    def task_figures(pl_module: L.LightningModule, stage: str) -> dict[str, Any]:
        """The module's ``evaluation_figures(stage)`` drawn: ``{name: figure}``."""
        from lmforge.reports import plots

        hook = getattr(pl_module, "evaluation_figures", None)
        specs = hook(stage) if callable(hook) else None
        out = {}
        where = "validation" if stage == "val" else "test"
        for name, spec in (specs or {}).items():
            kind = spec.get("kind")
            if kind == "confusion":
                out[name] = plots.confusion_figure(spec["matrix"], spec["labels"],
                                                   title=f"{spec.get('title', 'confusion matrix')} ({where})")
            elif kind == "bars":
                out[name] = plots.bars_figure(spec["values"], title=f"{spec.get('title', name)} ({where})",
                                              xlabel=spec.get("xlabel", ""))
        return out

    def _shape(self) -> tuple:
        """The curves' points, as much as tells a change (a point is added, or the newest one is replaced)."""
        h = self.history
        return (len(h["train"]["step"]), h["train"]["loss"][-1:], len(h["lr"]["step"]), len(h["val"]),
                repr(h["val"][-1:]))

    def _image_loggers(self, trainer: L.Trainer) -> bool:
        return self.log_figures and any(type(lg).__name__ in ("TensorBoardLogger", "WandbLogger")
                                        for lg in trainer.loggers)

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str, curves: bool, log_task: bool,
              log_curves: bool) -> None:
        if curves:
            self._drawn = self._shape()
        try:
            figures = self.curve_figures(pl_module) if curves else {}
            task = self.task_figures(pl_module, stage)
            suffix = "" if stage == "val" else f"_{stage}"
            for name, fig in figures.items():
                self.written[name] = self._save(fig, name, trainer, log=log_curves)
            for name, fig in task.items():
                self.written[name + suffix] = self._save(fig, name + suffix, trainer, log=log_task)
        except Exception as e:  # noqa: BLE001  (a picture never ends a training run)
            log.warning("plots: could not draw the run's figures: %s: %s", type(e).__name__, e)

    def _save(self, fig: Any, name: str, trainer: L.Trainer, log: bool) -> Path:
        from lmforge.reports import plots

        path = plots.save(fig, self.dirpath / f"{name}.png")
        if log and self.log_figures:
            self._log(fig, path, name, trainer)
        return path

    @staticmethod
    def _log(fig: Any, path: Path, name: str, trainer: L.Trainer) -> None:
        step = int(trainer.global_step)
        for lg in trainer.loggers:
            kind = type(lg).__name__
            try:
                if kind == "TensorBoardLogger":
                    from lmforge.reports import plots

                    lg.experiment.add_image(f"plots/{name}", plots.rgb_array(fig), global_step=step, dataformats="HWC")
                elif kind == "WandbLogger":
                    lg.log_image(key=f"plots/{name}", images=[str(path)], step=step)
            except Exception as e:  # noqa: BLE001
                log.warning("plots: %s did not take plots/%s: %s", kind, name, e)
