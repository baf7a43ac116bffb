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
        if not self.is_regression:  # the confusion matrix behind evaluation_figures(), apart from the logged metrics
            stage = next((s for s, m in (self.metrics or {}).items() if m is metrics), None)
            if stage is not None:
                self._confusion_metric(stage, preds.device).update(preds, labels)

    # -- pictures (lmforge.callbacks.plots) ---------------------------------------------------
    def _confusion_metric(self, stage: str, device: torch.device) -> tm.Metric:
        # kept in a plain dict, not as a submodule: no checkpoint entry, no line in the model summary
        store = self.__dict__.setdefault("_confusion", {})
        if stage not in store:
            store[stage] = tm.ConfusionMatrix(task="multiclass", num_classes=self.trainable().config.num_labels)
        return store[stage].to(device)

    def _keep_confusion(self, stage: str) -> None:
        metric = self.__dict__.get("_confusion", {}).get(stage)
        if metric is None or not metric.update_called:
            return
        matrix = metric.compute().cpu().tolist()  # synced across ranks (every rank calls this)
        metric.reset()
        id2label = self.trainable().config.id2label
        labels = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(len(matrix))]
        self.__dict__.setdefault("_figures", {})[stage] = {
            "confusion_matrix": {"kind": "confusion", "matrix": matrix, "labels": labels, "title": "confusion matrix"}}

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._keep_confusion("val")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._keep_confusion("test")

    def evaluation_figures(self, stage: str) -> dict[str, dict]:
        """The last ``stage`` evaluation's confusion matrix (classification only) as plain data."""
        return dict(self.__dict__.get("_figures", {}).get(stage, {}))

    def predict_batch(self, batch: Mapping[str, torch.Tensor], datamodule: Any) -> list[dict]:
        logits = self(batch).logits.float().cpu()
        if self.is_regression:
            return [{"label": None, "score": v} for v in logits.squeeze(-1).tolist()]
        # one softmax and max for the whole batch, read back as plain lists (no per-example tensor ops)
        best, index = logits.softmax(-1).max(-1)
        id2label = self.trainable().config.id2label
        return [{"label": id2label[i], "score": p} for i, p in zip(index.tolist(), best.tolist())]

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
