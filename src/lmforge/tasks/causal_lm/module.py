"""Causal-LM pretraining (GPT, Llama): a thin layer over ``AutoModelForCausalLM``.

Metrics: ``train/loss``; ``val/loss`` (mean next-token cross-entropy over every predicted token of
the validation blocks), ``val/perplexity`` (its exponential) and ``val/accuracy`` (next-token
top-1). At each validation (not the sanity check), text generated from ``task.prompts`` with the
decoding settings in ``task.generation`` is printed, appended to ``<run>/generations.jsonl`` and sent
to the loggers that take text (TensorBoard, W&B). Prediction continues prompts; the export is served
by ``pipeline("text-generation")``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
import torchmetrics as tm
from lightning.pytorch.utilities import rank_zero_info
from transformers import AutoModelForCausalLM

from lmforge.metrics import LanguageModelMetrics
from lmforge.models.generation import DEFAULTS, call_kwargs, generate
from lmforge.tasks.base import TaskModule, _plain


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each position's prediction of the token after it."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), input_ids[:, 1:].reshape(-1))


class CausalLMModule(TaskModule):
    auto_cls = AutoModelForCausalLM
    pipeline_task = "text-generation"
    prediction_fields = ("generated_text",)

    def __init__(self, model: Mapping, optimizer: Mapping, scheduler: Mapping, prompts: Sequence[str] | None = None,
                 generation: Mapping | None = None, **kwargs: Any):
        super().__init__(model, optimizer, scheduler, **kwargs)
        self.prompts = [str(p) for p in (prompts or [])]
        self.generation = {**DEFAULTS, **_plain(generation)}

    def make_metrics(self) -> tm.MetricCollection:
        return tm.MetricCollection({"lm": LanguageModelMetrics()})

    def model_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"input_ids": batch["input_ids"]}  # packed blocks: every token is real, no mask needed

    def loss(self, outputs: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return next_token_loss(outputs.logits, batch["input_ids"])

    def update_metrics(self, metrics: tm.MetricCollection, outputs: Any, batch: Mapping[str, torch.Tensor],
                       loss: torch.Tensor) -> None:
        metrics["lm"].update(outputs.logits[:, :-1], batch["input_ids"][:, 1:])

    def on_train_epoch_start(self) -> None:
        dm = self.trainer.datamodule
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)  # streaming datasets: Lightning only tells samplers

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.prompts and not self.trainer.sanity_checking:
            # every rank generates (a sharded model's forward pass is a collective); rank 0 records
            texts = generate(self.trainable(), self.trainer.datamodule.tokenizer, self.prompts, self.generation,
                             progress="generating validation samples")
            self.log_generations(texts)

    # -- prediction: prompts in, continuations out ---------------------------------------------
    @torch.no_grad()
    def predict(self, inputs: Sequence[Mapping[str, Any] | str], datamodule: Any, batch_size: int = 16) -> list[dict]:
        from lmforge.tasks.base import as_records

        records = as_records(inputs, datamodule.input_fields)
        field = datamodule.input_fields[0]
        texts = generate(self.trainable(), datamodule.tokenizer, [r[field] for r in records], self.generation,
                         progress="generating predictions")
        return [{**r, "generated_text": t} for r, t in zip(records, texts)]

    @classmethod
    def records_from_pipeline(cls, pipe: Any, inputs: Sequence[Mapping[str, Any] | str],
                              generation: Mapping | None = None, **kwargs: Any) -> list[dict]:
        settings = {**DEFAULTS, **dict(generation or {})}
        gen = call_kwargs(settings, pipe.tokenizer)
        prompts = [x if isinstance(x, str) else x["text"] for x in inputs]
        torch.manual_seed(int(settings["seed"]))
        outs = [pipe(p, return_full_text=True, **gen)[0] for p in prompts]
        return [{"generated_text": o["generated_text"]} for o in outs]

    def log_generations(self, texts: list[str]) -> None:
        if not self.trainer.is_global_zero:
            return
        from lmforge.loggers import log_table

        step = self.global_step
        rank_zero_info("\n".join([f"generated at step {step}:"] + [f"  [{p}] {t!r}" for p, t in zip(self.prompts, texts)]))
        log_table(self.trainer, "generations", ["prompt", "text"], [[p, t] for p, t in zip(self.prompts, texts)])
