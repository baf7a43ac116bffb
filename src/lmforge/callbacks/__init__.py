"""Callbacks from config (``configs/callbacks/``): what a run does besides training."""

from __future__ import annotations

import logging

import hydra
import lightning as L
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def _has_loggers(cfg: DictConfig) -> bool:
    return any(lg is not None and "_target_" in lg for lg in (cfg.get("logger") or {}).values())


def build_callbacks(cfg: DictConfig, loggers: list | None = None) -> list[L.Callback]:
    """Every ``callbacks.<name>`` with a ``_target_``; ``loggers`` are the run's loggers (None: the ones
    ``cfg.logger`` would build). Without a logger the learning-rate monitor, which only logs, is left out."""
    has_loggers = bool(loggers) if loggers is not None else _has_loggers(cfg)
    out = []
    for name, cb in (cfg.get("callbacks") or {}).items():
        if cb is None or "_target_" not in cb:
            continue
        if not has_loggers and str(cb._target_).endswith("LearningRateMonitor"):
            log.info("callbacks.%s left out: the run has no logger for the learning rate", name)
            continue
        out.append(hydra.utils.instantiate(cb))
    return out
