"""Token classification (named-entity recognition): a thin layer over ``AutoModelForTokenClassification``.

* loss: cross-entropy over the labelled sub-tokens (the first of each word, or all with
  ``data.label_all_subtokens``);
* metrics (:mod:`.metrics`): entity precision, recall and F1 (micro) and F1 per type as seqeval
  computes them (``task.module.metric_mode=default``, conlleval-compatible, or ``strict`` IOB2), and
  word accuracy; each word is scored once, from the window that owns it, and under DDP after the
  predictions of all ranks are gathered. ``stage/score`` is the entity F1;
* evaluation files: the test loop (``train.py``'s test split, ``eval.py split=...`` or ``file=...``)
  writes ``predictions.conll``: ``token gold predicted`` per word, a blank line between sentences,
  tags in the input's scheme, as the ``conlleval`` script reads it;
* prediction on raw text: entities ``{type, text, start, end, score}`` (character offsets into the
  text), grouped from sub-token predictions exactly as
  ``pipeline("token-classification", aggregation_strategy="simple")`` groups them, which is how the
  export is served.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics as tm
from transformers import AutoModelForTokenClassification

from lmforge.data.conll import from_iob2
from lmforge.tasks.base import TaskModule, as_records, batched, length_order, predict_stats
from lmforge.tasks.token_classification.alignment import IGNORE
from lmforge.tasks.token_classification.metrics import EntityScores, best_labels, grouped_entities, tagged_text

log = logging.getLogger(__name__)

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")
CONLL_FILE = "predictions.conll"


class TokenClassificationModule(TaskModule):
    auto_cls = AutoModelForTokenClassification
    pipeline_task = "token-classification"
    prediction_fields = ("entities", "tagged")
    score_metric = "f1"

    def __init__(self, *args: Any, metric_mode: str = "default", **kwargs: Any):
        super().__init__(*args, **kwargs)
        if metric_mode not in ("default", "strict"):
            from lmforge.utils.errors import ConfigError

            raise ConfigError(f"task.module.metric_mode={metric_mode}: expected default (seqeval's conlleval-"
                              "compatible reading) or strict (IOB2)")
        self.metric_mode = metric_mode

    @property
    def id2label(self) -> dict[int, str]:
        return {int(k): v for k, v in self.trainable().config.id2label.items()}

    def model_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: batch[k] for k in MODEL_KEYS if k in batch}

    def loss(self, outputs: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits, labels = outputs.logits, batch["labels"]
        labels = labels.flatten().long()
        # the mean over labelled sub-tokens without a host sync to test for none (a window of continuation
        # sub-tokens only): the sum over none is 0, divided by at least 1
        total = F.cross_entropy(logits.flatten(0, 1).float(), labels, ignore_index=IGNORE, reduction="sum")
        return total / (labels != IGNORE).sum().clamp(min=1)

    # -- metrics -----------------------------------------------------------------------------
    def make_metrics(self) -> tm.MetricCollection:
        names = [self.id2label[i] for i in range(len(self.id2label))]
        return tm.MetricCollection({"entities": EntityScores(names, self.metric_mode), "loss": tm.MeanMetric()},
                                   compute_groups=False)

    def update_metrics(self, metrics: tm.MetricCollection, outputs: Any, batch: Mapping[str, torch.Tensor],
                       loss: torch.Tensor) -> None:
        labels, word = batch["labels"], batch["word_index"]
        mask = word >= 0
        preds = outputs.logits.argmax(-1)
        sentence = batch["sentence"].view(-1, 1).expand_as(word)
        metrics["entities"].update(sentence[mask], word[mask], labels[mask], preds[mask])
        metrics["loss"].update(loss, weight=(labels != IGNORE).sum().clamp(min=1))

    def evaluation_figures(self, stage: str) -> dict[str, dict]:
        """F1 per entity type of the last ``stage`` evaluation (seqeval), as plain data for the run's pictures."""
        metric = self.metrics[stage]["entities"] if self.metrics is not None else None
        scores = getattr(metric, "last_scores", None) or {}
        values = {t: scores[f"f1_{t}"] for t in getattr(metric, "types", []) if f"f1_{t}" in scores}
        if not values:
            return {}
        if "f1" in scores:
            values["(all, micro)"] = scores["f1"]
        return {"f1_per_type": {"kind": "bars", "values": values, "title": "entity F1 per type", "xlabel": "F1"}}

    # -- evaluation files --------------------------------------------------------------------
    def _test_dataset(self) -> Any:
        loaders = self.trainer.test_dataloaders
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        return getattr(loaders, "dataset", None)

    def write_eval_files(self, split: str, folder: Path) -> list[Path]:
        """``predictions.conll`` of the split just tested: the predictions were gathered from every rank by the
        metric's ``compute``; rank 0 writes."""
        if self.trainer.global_rank != 0:
            return []
        scored = self.metrics["test"]["entities"].last
        dataset = self._test_dataset()
        if not scored or dataset is None or not getattr(dataset, "has_words", lambda: False)():
            return []
        path = Path(folder) / CONLL_FILE
        write_conll(path, scored, dataset, self.id2label)
        log.info("wrote %s (%d sentences; token gold predicted, as conlleval reads it)", path, len(scored))
        return [path]

    # -- prediction --------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, inputs: Sequence[Mapping[str, Any] | str], datamodule: Any, batch_size: int = 64,
                precision: str | None = None) -> list[dict]:
        """Records ``{text, tagged, entities}`` for raw texts; ``entities`` as the served export finds them.
        ``precision``: as for :meth:`TaskModule.predict` (auto | 32 | bf16; None: :attr:`predict_precision`)."""
        from lmforge.serving import precision_context

        precision = self.prediction_precision(precision)
        records = as_records(inputs, datamodule.input_fields)
        start_time = time.perf_counter()
        examples = datamodule.encode_inputs(records)
        order = length_order(examples)  # longest first: little padding per batch; results go back in input order
        id2label = self.id2label
        was_training = self.training
        self.eval()
        out: list[dict] = [{} for _ in examples]
        try:
            with torch.inference_mode(), precision_context(precision, self.device):
                for chunk in batched(order, batch_size):
                    part = [examples[i] for i in chunk]
                    batch = datamodule.collate([{k: e[k] for k in MODEL_KEYS if k in e} for e in part])
                    batch = {k: v.to(self.device) for k, v in batch.items()}
                    # softmax and best label of every sub-token of the batch at once (padding rows are ignored)
                    best, score = best_labels(self(batch).logits.float().cpu().numpy())
                    for j, (i, ex) in enumerate(zip(chunk, part)):
                        text = records[i]["text"]
                        n = len(ex["input_ids"])
                        ents = grouped_entities(best[j, :n], score[j, :n], ex["offsets"], ex["special"], text,
                                                id2label)
                        out[i] = {"tagged": tagged_text(text, ents), "entities": ents}
        finally:
            self.train(was_training)
        self.predict_stats = predict_stats(len(records), time.perf_counter() - start_time, batch_size, precision)
        self.predict_order = order
        return [{**r, **p} for r, p in zip(records, out)]

    # -- serving -----------------------------------------------------------------------------
    @classmethod
    def records_from_pipeline(cls, pipe: Any, inputs: Sequence[Mapping[str, Any] | str], **kwargs: Any) -> list[dict]:
        texts = [x if isinstance(x, str) else x["text"] for x in inputs]
        outs = pipe(texts, aggregation_strategy="simple")
        if texts and outs and isinstance(outs[0], dict):  # one text: the pipeline returns its entities unwrapped
            outs = [outs]
        records = []
        for text, found in zip(texts, outs):
            ents = [{"type": o["entity_group"], "text": text[int(o["start"]): int(o["end"])], "start": int(o["start"]),
                     "end": int(o["end"]), "score": float(o["score"])} for o in found]
            records.append({"tagged": tagged_text(text, ents), "entities": ents})
        return records


def write_conll(path: Path, scored: Mapping[int, tuple[np.ndarray, np.ndarray, np.ndarray]], dataset: Any,
                id2label: Mapping[int, str]) -> None:
    """``token gold predicted`` per word, a blank line after each sentence; gold as the input wrote it and the
    prediction converted to the input's scheme (IOB1, IOB2, IOBES or BILOU). Whitespace inside a token
    becomes ``_`` so that every line has three fields."""
    scheme = dataset.scheme or "iob2"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for sid in sorted(scored):
            words, preds = scored[sid][0], scored[sid][2]
            all_words = dataset.words(sid)
            gold = dataset.gold_tags(sid)
            pred_tags = from_iob2([id2label[int(p)] for p in preds], scheme)
            for w, tag in zip(words, pred_tags):
                token = "_".join(all_words[int(w)].split()) or "_"
                f.write(f"{token} {gold[int(w)]} {tag}\n")
            f.write("\n")
