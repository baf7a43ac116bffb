"""Text classification: a thin layer over ``AutoModelForSequenceClassification``.

Classification logs accuracy, macro F1 (binary F1 too for two classes) and Matthews correlation;
regression (one output, e.g. STS-B similarity) logs Pearson and Spearman correlation and MSE.
``stage/score`` is the task's headline metric (accuracy or Spearman), which checkpoints,
early stopping and sweeps watch.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torchmetrics as tm
from transformers import AutoModelForSequenceClassification

from lmforge.tasks.base import LMForgeModule


def make_metrics(num_labels: int) -> tm.MetricCollection:
    if num_labels == 1:
        return tm.MetricCollection({"pearson": tm.PearsonCorrCoef(), "spearman": tm.SpearmanCorrCoef(),
                                    "mse": tm.MeanSquaredError()})
    metrics: dict[str, tm.Metric] = {
        "accuracy": tm.Accuracy(task="multiclass", num_classes=num_labels),
        "f1_macro": tm.F1Score(task="multiclass", num_classes=num_labels, average="macro"),
        "mcc": tm.MatthewsCorrCoef(task="multiclass", num_classes=num_labels),
    }
    if num_labels == 2:
        metrics["f1"] = tm.F1Score(task="binary")
    return tm.MetricCollection(metrics)


class TextClassificationModule(LMForgeModule):
    auto_cls = AutoModelForSequenceClassification

    def __init__(self, model: Mapping, optimizer: Mapping, scheduler: Mapping, problem_type: str = "auto"):
        super().__init__(model, optimizer, scheduler)
        self.metrics: torch.nn.ModuleDict | None = None

    def configure_model(self) -> None:
        super().configure_model()
        if self.metrics is None:
            n = self.model.config.num_labels
            self.metrics = torch.nn.ModuleDict({s: make_metrics(n).clone(prefix=f"{s}/") for s in ("val", "test")})

    @property
    def is_regression(self) -> bool:
        return self.model.config.num_labels == 1

    def forward(self, batch: dict) -> Any:
        return self.model(**batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.model(**batch)
        self.log("train/loss", out.loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return out.loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        out = self.model(**batch)
        labels = batch["labels"]
        preds = out.logits.squeeze(-1) if self.is_regression else out.logits.argmax(-1)
        metrics = self.metrics[stage]
        metrics.update(preds, labels)
        bs = labels.shape[0]
        self.log(f"{stage}/loss", out.loss, prog_bar=stage == "val", batch_size=bs, sync_dist=True)
        self.log_dict(metrics, batch_size=bs)
        headline = metrics[f"{stage}/spearman" if self.is_regression else f"{stage}/accuracy"]
        self.log(f"{stage}/score", headline, prog_bar=True, batch_size=bs)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        batch = {k: v for k, v in batch.items() if k != "labels"}
        logits = self.model(**batch).logits
        return logits.squeeze(-1) if self.is_regression else logits.softmax(-1)

    @torch.no_grad()
    def predict_texts(self, datamodule: Any, texts: Sequence[str], pairs: Sequence[str] | None = None,
                      batch_size: int = 64) -> list[dict]:
        """Label and score for raw texts (score = class probability, or the regression value)."""
        was_training = self.training
        self.eval()
        examples = datamodule.encode(texts, pairs)
        results: list[dict] = []
        id2label = self.model.config.id2label
        for start in range(0, len(examples), batch_size):
            batch = datamodule.collator(examples[start: start + batch_size])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            out = self.predict_step(batch, 0).float().cpu()
            for row in out:
                if self.is_regression:
                    results.append({"label": None, "score": float(row)})
                else:
                    k = int(row.argmax())
                    results.append({"label": id2label[k], "score": float(row[k])})
        for r, t in zip(results, texts):
            r["text"] = t
        self.train(was_training)
        return results
