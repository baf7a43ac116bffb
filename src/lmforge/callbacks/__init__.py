"""Callbacks from config (``configs/callbacks/``): what a run does besides training."""

from __future__ import annotations

import hydra
import lightning as L
from omegaconf import DictConfig


def build_callbacks(cfg: DictConfig, loggers: list | None = None) -> list[L.Callback]:
    """Every ``callbacks.<name>`` with a ``_target_``; ``loggers`` are the run's loggers (some callbacks need one)."""
    out = []
    for name, cb in (cfg.get("callbacks") or {}).items():
        if cb is not None and "_target_" in cb:
            out.append(hydra.utils.instantiate(cb))
    return out
