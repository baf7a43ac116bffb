"""Masked-LM pretraining (BERT, RoBERTa): a thin layer over ``AutoModelForMaskedLM``.

From scratch (``model=bert|roberta model/size=...``) or continued from a checkpoint
(``model=minilm``: the MiniLM encoder has no MLM head, so the head starts fresh; loading says so).
Metrics: ``train/loss``; ``val/loss`` (mean cross-entropy over the masked positions),
``val/perplexity`` (its exponential) and ``val/accuracy`` (masked-token top-1). Prediction fills
the first mask token of a text with the ``task.top_k`` likeliest tokens, as
``pipeline("fill-mask")`` (which serves the export) does.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
import torchmetrics as tm
from transformers import AutoModelForMaskedLM

from lmforge.data.masking import IGNORE_INDEX
from lmforge.metrics import LanguageModelMetrics
from lmforge.tasks.base import TaskModule
from lmforge.utils.errors import DataError


MASK_SPELLINGS = ("[MASK]", "<mask>")


def with_mask_token(text: str, mask_token: str) -> str:
    """``text`` with ``[MASK]`` / ``<mask>`` written as the tokenizer's own mask token (BERT's or RoBERTa's)."""
    for spelling in MASK_SPELLINGS:
        if spelling != mask_token:
            text = text.replace(spelling, mask_token)
    return text


class MaskedLMModule(TaskModule):
    auto_cls = AutoModelForMaskedLM
    pipeline_task = "fill-mask"
    prediction_fields = ("predictions",)

    def __init__(self, model: Mapping, optimizer: Mapping, scheduler: Mapping, top_k: int = 5, **kwargs: Any):
        super().__init__(model, optimizer, scheduler, **kwargs)
        self.top_k = int(top_k)

    def make_metrics(self) -> tm.MetricCollection:
        return tm.MetricCollection({"lm": LanguageModelMetrics(ignore_index=IGNORE_INDEX)})

    def model_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}

    def on_train_epoch_start(self) -> None:
        dm = self.trainer.datamodule
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)  # streaming datasets: Lightning only tells samplers

    def loss(self, outputs: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits = outputs.logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch["labels"].reshape(-1),
                               ignore_index=IGNORE_INDEX)

    def update_metrics(self, metrics: tm.MetricCollection, outputs: Any, batch: Mapping[str, torch.Tensor],
                       loss: torch.Tensor) -> None:
        metrics["lm"].update(outputs.logits, batch["labels"])

    # -- prediction: fill the mask ---------------------------------------------------------------
    @torch.no_grad()
    def predict(self, inputs: Sequence[Mapping[str, Any] | str], datamodule: Any, batch_size: int = 64) -> list[dict]:
        from lmforge.tasks.base import as_records

        tok = datamodule.tokenizer
        records = as_records(inputs, datamodule.input_fields)
        field = datamodule.input_fields[0]
        for r in records:  # either common spelling of the mask stands for this tokenizer's own
            r[field] = with_mask_token(r[field], tok.mask_token)
        for i, r in enumerate(records):
            if tok.mask_token not in r[field]:
                raise DataError(f"prediction input {i + 1}: {r[field]!r} holds no mask token {tok.mask_token!r} "
                                "(masked LM fills it in)")
        model = self.trainable()
        was_training = model.training
        model.eval()
        out = []
        try:
            for start in range(0, len(records), batch_size):
                chunk = records[start: start + batch_size]
                enc = tok([r[field] for r in chunk], padding=True, truncation=True, return_tensors="pt").to(self.device)
                logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float()
                for row, ids in zip(logits, enc["input_ids"]):
                    pos = int((ids == tok.mask_token_id).nonzero()[0, 0])
                    probs = row[pos].softmax(-1)
                    top = probs.topk(self.top_k)
                    out.append({"predictions": [{"token_str": tok.decode([int(t)]).strip(), "score": float(s)}
                                                for s, t in zip(top.values.cpu(), top.indices.cpu())]})
        finally:
            model.train(was_training)
        return [{**r, **p} for r, p in zip(records, out)]

    @classmethod
    def records_from_pipeline(cls, pipe: Any, inputs: Sequence[Mapping[str, Any] | str], top_k: int = 5,
                              **kwargs: Any) -> list[dict]:
        texts = [with_mask_token(x if isinstance(x, str) else x["text"], pipe.tokenizer.mask_token) for x in inputs]
        outs = pipe(texts, top_k=top_k)
        if texts and len(texts) == 1:
            outs = [outs]
        return [{"predictions": [{"token_str": o["token_str"].strip(), "score": float(o["score"])} for o in res]}
                for res in outs]
