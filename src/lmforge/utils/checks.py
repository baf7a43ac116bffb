"""Configuration checks that run before any data is read or any model is loaded."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from lmforge.utils.errors import ConfigError


def resolved_accelerator(name: str) -> str:
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "gpu"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# data keys that count something and must be positive integers where they are set (null: not used)
POSITIVE_DATA_KEYS = {
    "batch_size": "examples per batch on each device",
    "eval_batch_size": "examples per evaluation batch",
    "global_batch_size": "examples per optimizer step over all devices",
    "max_length": "tokens per example",
    "block_size": "tokens per block",
    "max_source_length": "source tokens per example",
    "max_target_length": "target tokens per example",
    "max_train_samples": "training rows to keep; null: all",
    "max_eval_samples": "evaluation rows to keep; null: all",
    "max_eval_blocks": "evaluation blocks to keep; null: all",
}
NON_NEGATIVE_DATA_KEYS = {"num_workers": "DataLoader worker processes", "stride": "sub-tokens of overlap",
                          "doc_stride": "tokens of overlap", "shuffle_buffer": "documents",
                          "max_line_bytes": "bytes in one line of a data file; 0: no limit"}


def _what(value: Any) -> str:
    if isinstance(value, str):
        return f"the text {value!r}"
    return f"{type(value).__name__} {value!r}"


def _integer(key: str, value: Any, least: int, meaning: str, allow: tuple = ()) -> None:
    """``value`` is an integer >= ``least`` (or one of ``allow``), else a ConfigError naming ``key``."""
    if value in allow and not isinstance(value, bool):
        return
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, float) and value.is_integer():
        ok, value = True, int(value)
    also = "".join(f" or {a}" for a in allow if a is not None)
    want = f"a positive integer ({meaning})" if least == 1 else f"an integer >= {least} ({meaning})"
    if not ok:
        raise ConfigError(f"{key}={value}: expected {want}{also}, got {_what(value)}")
    if value < least:
        raise ConfigError(f"{key}={value}: expected {want}{also}")


def check_values(cfg: DictConfig) -> None:
    """Types and ranges of the numbers a run counts with (``data.batch_size=abc``, ``optimizer.lr=0``,
    ``trainer.max_steps=0``): a ConfigError naming the key, the value and what is expected, before any data
    is read or any model is built."""
    data = cfg.get("data") or {}
    for key, meaning in POSITIVE_DATA_KEYS.items():
        if key in data and data.get(key) is not None:
            _integer(f"data.{key}", data.get(key), 1, meaning)
    for key, meaning in NON_NEGATIVE_DATA_KEYS.items():
        if key in data and data.get(key) is not None:
            _integer(f"data.{key}", data.get(key), 0, meaning)
    vf = data.get("validation_fraction") if "validation_fraction" in data else None
    if vf is not None and (isinstance(vf, (str, bool)) or not isinstance(vf, (int, float)) or not 0 <= vf < 1):
        raise ConfigError(f"data.validation_fraction={vf}: expected a fraction in [0, 1) of the training rows to carve "
                          f"out as validation (0: none), got {_what(vf)}")
    optimizer = cfg.get("optimizer") or {}
    if "lr" in optimizer:
        lr = optimizer.get("lr")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)):
            raise ConfigError(f"optimizer.lr={lr}: expected a positive number (the learning rate, e.g. "
                              f"optimizer.lr=3e-5), got {_what(lr)}")
        if not lr > 0 or lr != lr or lr == float("inf"):
            raise ConfigError(f"optimizer.lr={lr}: expected a positive learning rate (e.g. 3e-5); "
                              "to freeze the weights, evaluate instead (python eval.py run=<run>)")
    wd = optimizer.get("weight_decay") if "weight_decay" in optimizer else None
    if wd is not None and (isinstance(wd, (str, bool)) or not isinstance(wd, (int, float)) or wd < 0):
        raise ConfigError(f"optimizer.weight_decay={wd}: expected a number >= 0, got {_what(wd)}")
    trainer = cfg.get("trainer") or {}
    if "max_steps" in trainer:
        _integer("trainer.max_steps", trainer.get("max_steps"), 1, "optimizer steps; -1: train by epochs",
                 allow=(-1, None))
    if "max_epochs" in trainer:
        _integer("trainer.max_epochs", trainer.get("max_epochs"), 1, "passes over the training data; -1 or null: "
                 "unlimited, with trainer.max_steps", allow=(-1, None))
    if "accumulate_grad_batches" in trainer:
        _integer("trainer.accumulate_grad_batches", trainer.get("accumulate_grad_batches"), 1,
                 "batches per optimizer step")


def check_config(cfg: DictConfig) -> None:
    """Fail early, naming the keys, the values and what would work instead."""
    check_values(cfg)
    trainer = cfg.trainer
    acc = resolved_accelerator(str(trainer.get("accelerator", "auto")))
    precision = str(trainer.get("precision", "32-true"))
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError("accelerator=gpu but no CUDA device is visible (torch.cuda.is_available() is False); "
                          "use accelerator=cpu or accelerator=auto")
    if acc == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("accelerator=mps but this machine has no Apple MPS device; use accelerator=cpu or auto")
    if acc == "cpu" and precision in ("16-mixed", "16", "16-true"):
        raise ConfigError(f"precision={precision} with accelerator=cpu: float16 autocast is for GPUs; "
                          "on CPU use precision=bf16-mixed (or 32)")
    if acc == "mps" and precision.startswith("bf16"):
        raise ConfigError(f"precision={precision} with accelerator=mps: MPS has no reliable bfloat16; "
                          "use precision=16-mixed or 32")
    if acc == "gpu" and precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision={precision}: this GPU has no bfloat16 support (pre-Ampere); use precision=16-mixed")
    strategy = str((cfg.get("strategy") or {}).get("name", "auto"))
    if strategy == "deepspeed":
        if acc != "gpu":
            raise ConfigError(f"strategy=deepspeed needs CUDA GPUs (accelerator={acc} here): DeepSpeed is GPU-only; "
                              "use strategy=fsdp (FSDP2, runs on CPU with gloo) or strategy=ddp")
        if int(cfg.strategy.get("stage", 2)) == 3:
            raise ConfigError("strategy=deepspeed strategy.stage=3 shards the parameters and lmforge does not gather "
                              "them for the export; use strategy=fsdp (FSDP2) to shard parameters, or stage 1/2")
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError("strategy=deepspeed needs the deepspeed package: pip install deepspeed")
    if strategy == "fsdp" and precision == "16-mixed":
        raise ConfigError("precision=16-mixed with strategy=fsdp: FSDP2 has no fp16 gradient scaler here; "
                          "use precision=bf16-mixed or bf16-true")
    devices = trainer.get("devices", "auto")
    if acc == "cpu" and isinstance(devices, int) and devices > 1:
        if strategy in ("auto", "single_device"):
            raise ConfigError(f"trainer.devices={devices} on CPU needs a multi-process strategy: "
                              "add strategy=ddp (or ddp_spawn)")
