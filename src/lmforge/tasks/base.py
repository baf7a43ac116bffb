"""What every task module shares, and nothing more: the backbone built from facts the data knows,
AdamW with decoupled weight decay, warmup + decay stepped per optimizer step, and HF export."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from lmforge.models.factory import build_model, parameter_counts
from lmforge.utils.errors import ConfigError


def _plain(cfg: Any) -> dict:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg or {})


def lr_lambda(kind: str, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0):
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if kind not in ("linear", "cosine", "constant"):
        raise ConfigError(f"scheduler.name={kind}: expected linear, cosine or constant")

    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        decay = 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return min_lr_ratio + (1.0 - min_lr_ratio) * decay

    return f


def resolve_warmup(warmup: float | int, total_steps: int) -> int:
    """``warmup`` below 1 is a fraction of the optimizer steps; 1 or more is a step count."""
    if warmup < 0:
        raise ConfigError(f"scheduler.warmup={warmup}: expected a step count >= 1 or a fraction in [0, 1)")
    return int(round(warmup * total_steps)) if warmup < 1 else int(warmup)


class LMForgeModule(L.LightningModule):
    """Base of the task modules. Subclasses set ``auto_cls`` and implement the steps.

    The HF model is built in ``configure_model`` (not ``__init__``) because the facts it needs
    (label names, vocabulary size, pad id) come from the DataModule's setup, and because sharded
    strategies want to build it themselves (FSDP2 on the meta device).
    """

    auto_cls: Any = None

    def __init__(self, model: Mapping, optimizer: Mapping, scheduler: Mapping):
        super().__init__()
        self.model_cfg = _plain(model)
        self.optimizer_cfg = _plain(optimizer)
        self.scheduler_cfg = _plain(scheduler)
        # plain containers, so checkpoints load with torch.load(weights_only=True)
        self.save_hyperparameters({"model": self.model_cfg, "optimizer": self.optimizer_cfg,
                                   "scheduler": self.scheduler_cfg})
        self.model: torch.nn.Module | None = None
        # facts read back from a checkpoint (eval.py); otherwise they come from the DataModule
        self.fixed_facts: dict | None = None
        # set by train() for strategy=fsdp
        self.fsdp_options: dict = {}
        # set by train() from cfg.seed
        self.init_seed: int = 0

    # -- model -------------------------------------------------------------------------------
    def model_facts(self) -> dict:
        """Facts for the HF config; by default whatever the attached DataModule reports."""
        if self.fixed_facts:
            return dict(self.fixed_facts)
        dm = self.trainer.datamodule if self._trainer is not None else None
        return dm.model_facts() if dm is not None and hasattr(dm, "model_facts") else {}

    def configure_model(self) -> None:
        if self.model is None:
            # initial weights depend on the seed only, not on how much randomness the strategy's setup used
            # (DDP/FSDP re-seed the global RNG during setup, a single process does not)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.init_seed)
                self.model = build_model(self.auto_cls, self.model_cfg, **self.model_facts())
            self.model.train()  # from_pretrained returns eval mode; Lightning switches modes per loop
            if self.model_cfg.get("gradient_checkpointing"):
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if self.device_mesh is not None:  # ModelParallelStrategy (strategy=fsdp): FSDP2 per block
                from lmforge.strategies import fully_shard_model

                fully_shard_model(self.model, self.device_mesh, **self.fsdp_options)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["model_facts"] = self.model_facts()

    def parameter_counts(self) -> dict[str, int]:
        assert self.model is not None
        return parameter_counts(self.model)

    # -- optimization ------------------------------------------------------------------------
    def configure_optimizers(self):
        opt = self.optimizer_cfg
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            # biases and norm weights are 1-D; decaying them hurts (BERT, GPT-2 and most recipes skip them)
            (no_decay if p.ndim < 2 else decay).append(p)
        groups = [{"params": decay, "weight_decay": opt.get("weight_decay", 0.01)},
                  {"params": no_decay, "weight_decay": 0.0}]
        name = opt.get("name", "adamw")
        if name != "adamw":
            raise ConfigError(f"optimizer.name={name}: only adamw is built in")
        kwargs = dict(lr=opt["lr"], betas=tuple(opt.get("betas", (0.9, 0.999))), eps=opt.get("eps", 1e-8))
        fused = opt.get("fused")
        if fused is None:  # fused AdamW is ~2.7x cheaper on CPU and GPU (benchmarks/); not for DTensors or MPS
            from lmforge.strategies import is_sharded

            params = decay + no_decay
            fused = bool(params) and not is_sharded(self) and all(
                p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        kwargs["fused"] = bool(fused)
        optimizer = torch.optim.AdamW(groups, **kwargs)
        sch = self.scheduler_cfg
        # the schedule's length: the run's own optimizer steps, unless set (a run that will be continued)
        total = int(sch.get("total_steps") or self.trainer.estimated_stepping_batches)
        warmup = resolve_warmup(sch.get("warmup", 0), total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(sch.get("name", "linear"), warmup, total, sch.get("min_lr_ratio", 0.0)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # -- export ------------------------------------------------------------------------------
    def export(self, folder: str | Path, tokenizer: Any = None, state_dict: dict | None = None) -> Path:
        """Save model (+ tokenizer) in Hugging Face format, loadable with ``AutoModelFor...``."""
        assert self.model is not None
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        return folder
