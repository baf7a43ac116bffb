"""Throughput that counts what matters: samples/s and non-padding tokens/s, without a host sync per step.

Counts accumulate on the device and are read (one sync) only every ``log_every_n_steps``.

On a GPU it also logs model FLOPs utilization, ``perf/mfu``: training FLOPs per token
``6N + 12·L·H·Q·T`` (N non-embedding parameters, L layers, H heads, Q head dimension, T tokens per
sequence; PaLM appendix B) times tokens/s, over the device's peak for the training precision
(Lightning's table of GPUs), or over ``peak_flops`` when given (the whole job's FLOP/s is divided by
``world_size * peak_flops``).
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch


def flops_per_token(non_embedding_params: int, num_layers: int, num_heads: int, head_dim: int, seq_len: int) -> int:
    """Training FLOPs per token: 6N for the weights (forward + backward) + 12·L·H·Q·T for attention."""
    return 6 * non_embedding_params + 12 * num_layers * num_heads * head_dim * seq_len


def model_shape(config: Any) -> tuple[int, int, int] | None:
    """(layers, heads, head dimension) of a Hugging Face config, or None when it does not say."""
    get = lambda *names: next((getattr(config, n) for n in names if getattr(config, n, None)), None)  # noqa: E731
    layers = get("num_hidden_layers", "n_layer", "num_layers")
    heads = get("num_attention_heads", "n_head", "num_heads")
    width = get("hidden_size", "n_embd", "d_model")
    if not (layers and heads and width):
        return None
    return int(layers), int(heads), int(get("head_dim") or width // heads)


def peak_flops_of(trainer: L.Trainer) -> float | None:
    """The device's peak FLOP/s for the training precision (Lightning's table; None on CPU or unknown GPUs)."""
    device = trainer.strategy.root_device
    if device.type != "cuda":
        return None
    from lightning.fabric.utilities.throughput import get_available_flops

    precision = str(trainer.precision)
    dtype = (torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16")
             else torch.float32)
    if dtype is torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        dtype = "tfloat32"
    return get_available_flops(device, dtype)


class Throughput(L.Callback):
    def __init__(self, log_every_n_steps: int | None = None, peak_flops: float | None = None):
        self.every = log_every_n_steps
        self.peak_flops = peak_flops
        self._flops_shape: tuple[int, int, int, int] | None = None  # (N, L, H, Q)
        self._peak: float | None = None
        self._reset()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = getattr(pl_module, "model", None)
        shape = model_shape(model.config) if model is not None and hasattr(model, "config") else None
        if shape is not None and hasattr(pl_module, "parameter_counts"):
            self._flops_shape = (pl_module.parameter_counts()["non_embedding"], *shape)
        self._peak = float(self.peak_flops) if self.peak_flops else peak_flops_of(trainer)

    def _reset(self) -> None:
        self.samples = 0
        self.tokens: torch.Tensor | int = 0
        self.t0: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()
        self.t0 = time.perf_counter()

    # validation inside the epoch (every val_check_interval steps) is not training time
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_t0 = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.t0 is not None and getattr(self, "_val_t0", None) is not None:
            self.t0 += time.perf_counter() - self._val_t0
        self._val_t0 = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        ids = batch["input_ids"]
        # packed and padding-free batches say how many sequences and real tokens their rows hold
        self.samples += int(batch.get("num_sequences") or ids.shape[0])
        mask = batch.get("attention_mask")
        real = batch.get("num_tokens")
        self.tokens = self.tokens + (real if real is not None else mask.sum() if mask is not None else ids.numel())
        every = self.every or trainer.log_every_n_steps
        if (batch_idx + 1) % every == 0 and self.t0 is not None:
            dt = time.perf_counter() - self.t0
            world = trainer.world_size
            tokens = float(self.tokens) * world  # one sync, every `every` steps
            values = {"perf/samples_per_sec": self.samples * world / dt, "perf/tokens_per_sec": tokens / dt}
            if self._flops_shape is not None and self._peak:
                n, layers, heads, head_dim = self._flops_shape
                per_token = flops_per_token(n, layers, heads, head_dim, ids.shape[1])
                values["perf/mfu"] = per_token * tokens / dt / (world * self._peak)
            pl_module.log_dict(values, on_step=True, on_epoch=False, rank_zero_only=True)
