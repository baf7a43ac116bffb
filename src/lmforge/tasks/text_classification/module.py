"""Text classification: a thin layer over ``AutoModelForSequenceClassification``.

Classification logs accuracy, macro F1 (binary F1 too for two classes) and Matthews correlation;
regression (one output, e.g. STS-B similarity) logs Pearson and Spearman correlation and MSE.
``stage/score`` is the task's headline metric (accuracy or Spearman), which checkpoints,
early stopping and sweeps watch. The export is served by ``pipeline("text-classification")``;
``predictions.tsv`` is GLUE's submission format (``index<TAB>prediction``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
import torchmetrics as tm
from transformers import AutoModelForSequenceClassification

from lmforge.tasks.base import TaskModule


class TextClassificationModule(TaskModule):
    auto_cls = AutoModelForSequenceClassification
    pipeline_task = "text-classification"
    prediction_fields = ("label", "score")

    @property
    def is_regression(self) -> bool:
        return self.trainable().config.num_labels == 1

    @property
    def score_metric(self) -> str:  # type: ignore[override]
        return "spearman" if self.is_regression else "accuracy"

    def make_metrics(self) -> tm.MetricCollection:
        n = self.trainable().config.num_labels
        if n == 1:
            metrics: dict[str, tm.Metric] = {"pearson": tm.PearsonCorrCoef(), "spearman": tm.SpearmanCorrCoef(),
                                             "mse": tm.MeanSquaredError()}
        else:
            metrics = {"accuracy": tm.Accuracy(task="multiclass", num_classes=n),
                       "f1_macro": tm.F1Score(task="multiclass", num_classes=n, average="macro"),
                       "mcc": tm.MatthewsCorrCoef(task="multiclass", num_classes=n)}
            if n == 2:
                metrics["f1"] = tm.F1Score(task="binary")
        return tm.MetricCollection({**metrics, "loss": tm.MeanMetric()}, compute_groups=False)

    def loss(self, outputs: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits, labels = outputs.logits, batch["labels"]
        if self.is_regression:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        return F.cross_entropy(logits.float(), labels)

    def update_metrics(self, metrics: tm.MetricCollection, outputs: Any, batch: Mapping[str, torch.Tensor],
                       loss: torch.Tensor) -> None:
        labels = batch["labels"]
        logits = outputs.logits.float()
        preds = logits.squeeze(-1) if self.is_regression else logits.argmax(-1)
        for name, metric in metrics.items():
            if name == "loss":
                metric.update(loss, weight=labels.shape[0])
            else:
                metric.update(preds, labels)

    def predict_batch(self, batch: Mapping[str, torch.Tensor], datamodule: Any) -> list[dict]:
        logits = self(batch).logits.float().cpu()
        if self.is_regression:
            return [{"label": None, "score": float(v)} for v in logits.squeeze(-1)]
        probs = logits.softmax(-1)
        id2label = self.trainable().config.id2label
        return [{"label": id2label[int(p.argmax())], "score": float(p.max())} for p in probs]

    def field_prediction_files(self, records: Sequence[Mapping[str, Any]], folder: Path) -> list[Path]:
        path = folder / "predictions.tsv"
        with open(path, "w", encoding="utf-8") as f:
            f.write("index\tprediction\n")
            for i, r in enumerate(records):
                f.write(f"{i}\t{r['label'] if r.get('label') is not None else r['score']}\n")
        return [path]

    @classmethod
    def records_from_pipeline(cls, pipe: Any, inputs: Sequence[Mapping[str, Any] | str], **kwargs: Any) -> list[dict]:
        regression = pipe.model.config.num_labels == 1
        texts = [x if isinstance(x, str) else ({"text": x["text"], "text_pair": x["text_pair"]}
                                               if x.get("text_pair") else x["text"]) for x in inputs]
        outs = pipe(texts, function_to_apply="none" if regression else "softmax")
        return [{"label": None if regression else o["label"], "score": float(o["score"])} for o in outs]
