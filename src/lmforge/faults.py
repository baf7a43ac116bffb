"""Faults that end a run cleanly: a non-finite loss, a full disk, more devices than the machine has.

* ``trainer.detect_nan=stop`` (the default): a NaN or inf training loss stops the run at that step,
  before the optimizer applies it, with an error naming the step, the batch index and the last good
  checkpoint. ``skip``: the optimizer step of that batch is skipped on every rank (its gradients are
  dropped, so AdamW's moments and weight decay do not move either), counted (``train/skipped_batches``)
  and said, up to ``trainer.max_skipped_batches``; one more stops the run as ``stop`` does. ``off``: no check.
* A full disk while writing a checkpoint or the export ends the run with ``disk full while writing <path>``;
  Lightning writes a checkpoint into a temporary file and moves it into place, so earlier files stay whole.
* ``trainer.devices`` larger than the machine has fails before any data is read.

Cost of the NaN check: the loss of each micro-batch is tested on the device (no host sync); the flags
are read once per optimizer step (one host sync, plus one all-reduce of one number under DDP/FSDP, so
that every rank skips or stops at the same step).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import torch
from lightning.pytorch.plugins.io import CheckpointIO
from omegaconf import DictConfig, open_dict

from lmforge.utils.errors import ConfigError, LMForgeError

log = logging.getLogger(__name__)

# keys of configs/trainer/default.yaml that are lmforge's, not L.Trainer arguments
TRAINER_KEYS = ("detect_nan", "max_skipped_batches", "compile", "compile_mode")
NAN_MODES = ("stop", "skip", "off")


class NonFiniteLossError(LMForgeError):
    """The training loss became NaN or inf (every rank raises it at the same step: said once, by rank 0)."""

    all_ranks = True


class DiskFullError(LMForgeError):
    """No space left while writing a checkpoint or the export."""


# -- trainer keys ------------------------------------------------------------------------------------

def split_trainer_config(trainer_cfg: DictConfig) -> tuple[DictConfig, dict[str, Any]]:
    """``cfg.trainer`` without lmforge's own keys (what ``L.Trainer`` gets), and those keys."""
    own = {k: trainer_cfg.get(k) for k in TRAINER_KEYS if k in trainer_cfg}
    rest = trainer_cfg.copy()
    with open_dict(rest):
        for k in TRAINER_KEYS:
            rest.pop(k, None)
    return rest, own


def nan_guard(own: dict[str, Any]) -> "NanGuard | None":
    mode = str(own.get("detect_nan", "stop") if own.get("detect_nan") is not None else "off").lower()
    if mode in ("false", "none"):
        mode = "off"
    if mode not in NAN_MODES:
        raise ConfigError(f"trainer.detect_nan={own.get('detect_nan')}: expected one of {', '.join(NAN_MODES)}")
    limit = own.get("max_skipped_batches", 10)
    try:
        limit = int(limit)
    except (TypeError, ValueError):
        limit = -1
    if limit < 0:
        raise ConfigError(f"trainer.max_skipped_batches={own.get('max_skipped_batches')}: expected a whole number >= 0")
    return None if mode == "off" else NanGuard(mode, limit)


# -- non-finite loss ---------------------------------------------------------------------------------

def last_good_checkpoint(trainer: L.Trainer) -> str:
    """The newest checkpoint written so far (``last.ckpt``, else the best), or ``none yet``."""
    cb = getattr(trainer, "checkpoint_callback", None)
    for path in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", "")):
        if path and os.path.exists(path):
            return str(path)
    return "none yet"


class NanGuard(L.Callback):
    """Stops or skips at a non-finite training loss (see the module's docstring)."""

    def __init__(self, mode: str = "stop", max_skipped_batches: int = 10) -> None:
        self.mode, self.limit = mode, int(max_skipped_batches)
        self.skipped = 0
        self._flags: list[tuple[int, torch.Tensor]] = []  # (batch index, loss is not finite) since the last step

    @property
    def state_key(self) -> str:
        return "NanGuard"

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        # on the device, no sync: read once per optimizer step
        self._flags.append((getattr(self, "_batch_idx", -1), ~torch.isfinite(loss.detach()).all()))

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        flags, self._flags = self._flags, []
        if not flags:
            return
        local = torch.stack([f for _, f in flags]).to(torch.float32)
        # every rank must agree: one rank's NaN is every rank's skip (or stop)
        any_bad = local.max()
        if trainer.world_size > 1:
            any_bad = trainer.strategy.reduce(any_bad.clone(), reduce_op="max")
        if not bool(any_bad.item()):  # the one host sync per optimizer step
            return
        bad = local.tolist()
        batch = next((i for (i, _), b in zip(flags, bad) if b), flags[-1][0])
        where = (f"training step {trainer.global_step + 1} (epoch {trainer.current_epoch + 1}, batch index {batch}"
                 + ("" if any(bad) or trainer.world_size == 1 else ", on another rank") + ")")
        if self.mode == "skip" and self.skipped < self.limit:
            self.skipped += 1
            optimizer.zero_grad(set_to_none=True)  # no gradient: the optimizer leaves every parameter as it is
            if trainer.is_global_zero:
                print(f"warning: non-finite loss at {where}: batch skipped ({self.skipped} of at most "
                      f"{self.limit}, trainer.max_skipped_batches)", flush=True)
            pl_module.log("train/skipped_batches", float(self.skipped), on_step=True, on_epoch=False,
                          rank_zero_only=True)
            return
        if self.mode == "skip":
            raise NonFiniteLossError(
                f"non-finite loss at {where}: {self.skipped} batches were skipped already "
                f"(trainer.max_skipped_batches={self.limit}); the run stopped. Last good checkpoint: "
                f"{last_good_checkpoint(trainer)}. Lower optimizer.lr, check the data, or raise the limit")
        raise NonFiniteLossError(
            f"non-finite loss (NaN or inf) at {where}; the run stopped before applying it "
            f"(trainer.detect_nan=stop). Last good checkpoint: {last_good_checkpoint(trainer)}. "
            "Lower optimizer.lr or set trainer.gradient_clip_val, check that batch's data, "
            "or skip such batches with trainer.detect_nan=skip")


# -- a failing rank ----------------------------------------------------------------------------------

EXIT_GRACE_S = 30.0


def bound_exit(grace: float = EXIT_GRACE_S) -> None:
    """Called as an exception leaves a rank of a multi-process run: if this process has not ended ``grace``
    seconds later (its cleanup or the interpreter's shutdown waiting on a peer that will never answer), it
    prints every thread's stack and exits with status 1. Not under ``-m``: the sweep goes on in this process."""
    import faulthandler

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if torch.distributed.get_world_size() < 2 or _multirun():
        return
    faulthandler.dump_traceback_later(grace, exit=True)


def _multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001
        return False


# -- full disk ---------------------------------------------------------------------------------------

def _is_disk_full(e: BaseException) -> bool:
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        # torch's zip writer and safetensors report a failed write without an errno
        text = str(e)
        if isinstance(e, RuntimeError) and ("No space left" in text or "file write failed" in text):
            return True
        e = e.__cause__ or e.__context__
    return False


def _reason(e: BaseException) -> str:
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return e.strerror or os.strerror(e.errno)
        e = e.__cause__ or e.__context__
    return os.strerror(errno.ENOSPC)


@contextlib.contextmanager
def disk_full_errors(path: str | Path, what: str = "") -> Iterator[None]:
    """Turn a full disk (ENOSPC/EDQUOT, or torch's ``file write failed``) under this block into a
    :class:`DiskFullError` naming ``path``."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        if not _is_disk_full(e):
            raise
        raise DiskFullError(f"disk full while writing {path}: {_reason(e)}{what}") from e


class DiskFullGuard(CheckpointIO):
    """Wraps the strategy's checkpoint writer: a full disk becomes :class:`DiskFullError` naming the file."""

    def __init__(self, inner: CheckpointIO) -> None:
        self.inner = inner

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        final = str(path)[: -len(".tmp")] if str(path).endswith(".tmp") else path  # written beside it, then renamed
        with disk_full_errors(final, "; earlier checkpoints are intact. Free some space (or set "
                                    "paths.output_dir on another disk) and resume with ckpt_path=last"):
            if _plain_local_write(self.inner, path, storage_options):
                write_checkpoint_file(checkpoint, str(path))
            else:
                self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, **kwargs: Any) -> dict[str, Any]:
        return self.inner.load_checkpoint(path, map_location=map_location, **kwargs)

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()

    def __getattr__(self, name: str) -> Any:  # anything else the inner writer offers
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def write_checkpoint_file(checkpoint: dict[str, Any], path: str) -> None:
    """lmforge's temporary checkpoint file (renamed into place once whole), streamed to disk by ``torch.save``.

    Lightning's own writer serializes the whole checkpoint into memory first and copies it (an atomic write
    lmforge already does by renaming): for MiniLM with AdamW state that raised a run's peak RSS by 220 MiB."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        torch.save(checkpoint, f)


def _plain_local_write(inner: CheckpointIO, path: Any, storage_options: Any) -> bool:
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    return (type(inner) is TorchCheckpointIO and storage_options is None and str(path).endswith(".tmp")
            and "://" not in str(path))


def guard_checkpoint_writes(trainer: L.Trainer) -> None:
    io = trainer.strategy.checkpoint_io
    if not isinstance(io, DiskFullGuard):
        trainer.strategy.checkpoint_io = DiskFullGuard(io)


# -- devices -----------------------------------------------------------------------------------------

def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _requested(devices: Any) -> int | None:
    """How many devices ``trainer.devices`` asks for (None: auto / all)."""
    if devices is None or str(devices).strip().lower() == "auto":
        return None
    if isinstance(devices, (list, tuple)) or hasattr(devices, "__len__") and not isinstance(devices, str):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([p for p in text.split(",") if p.strip()])
    try:
        n = int(text)
    except ValueError:
        raise ConfigError(f"trainer.devices={devices}: expected a number, a list of device ids or auto") from None
    return None if n == -1 else n


def check_devices(cfg: DictConfig, key: str = "trainer.devices", devices: Any = None) -> None:
    """``trainer.devices`` against what this machine has (CPU cores, CUDA devices), before any data is read."""
    from lmforge.utils.checks import resolved_accelerator

    trainer = cfg.get("trainer") or {}
    devices = trainer.get("devices", "auto") if devices is None else devices
    n = _requested(devices)
    if n is None:
        return
    if n < 1:
        raise ConfigError(f"{key}={devices}: expected at least 1 device (or auto)")
    acc = resolved_accelerator(str(trainer.get("accelerator", "auto")))
    nodes = int(trainer.get("num_nodes", 1) or 1)
    if acc in ("gpu", "cuda"):
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have == 0:
            raise ConfigError(f"accelerator={acc} with {key}={devices}: this machine has no CUDA device "
                              f"(torch.cuda.is_available() is False); use accelerator=cpu or accelerator=auto")
        if n > have:
            raise ConfigError(f"{key}={devices} but this machine has {have} CUDA device{'s' if have != 1 else ''}; "
                              f"use {key}={have} or fewer (or {key}=auto)")
    elif acc == "cpu":
        have = cpu_count()
        if n > have and nodes == 1:
            raise ConfigError(f"{key}={devices} with accelerator=cpu but this machine has {have} CPU core"
                              f"{'s' if have != 1 else ''} (one process per device); use {key}={have} or fewer")
