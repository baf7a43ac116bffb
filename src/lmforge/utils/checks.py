"""Configuration checks that run before any data is read or any model is loaded."""

from __future__ import annotations

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


def check_config(cfg: DictConfig) -> None:
    """Fail early, naming the keys, the values and what would work instead."""
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
