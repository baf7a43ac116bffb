"""Entity-level scores as seqeval computes them, and entities from sub-token scores as the pipeline groups them.

:class:`EntityScores` is a torchmetrics metric whose state is every evaluated word (sentence id, word
index, gold label id, predicted label id). Under DDP the states of all ranks are gathered before
``compute``; a word seen twice (the distributed sampler repeats examples to even out the ranks) is
counted once. ``compute`` rebuilds the sentences and scores them with seqeval: entity precision,
recall and F1 (micro, over all types), F1 per type, and word accuracy. ``mode="default"`` is
seqeval's conlleval-compatible reading (an ``I-X`` after ``O`` opens an entity); ``mode="strict"`` is
seqeval's strict IOB2 mode (such an ``I-X`` is no entity).

:func:`simple_entities` is ``transformers.pipeline("token-classification", aggregation_strategy="simple")``
on one text, written out: the softmax of each sub-token's logits, its best label, adjacent sub-tokens
grouped when the type is the same and the next one is not a ``B-``, a group's score the mean of its
sub-tokens' scores, ``O`` groups dropped. lmforge's own prediction on raw text and the served export
therefore find the same entities.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torchmetrics as tm

MODES = ("default", "strict")


def seqeval_scores(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]], types: Sequence[str],
                   mode: str = "default") -> dict[str, float]:
    """precision, recall, f1 (micro), accuracy (words) and ``f1_<TYPE>`` for each of ``types``, by seqeval."""
    from seqeval.metrics import accuracy_score, classification_report
    from seqeval.scheme import IOB2

    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected default or strict")
    out = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.0, **{f"f1_{t}": 0.0 for t in types}}
    if not y_true:
        return out
    kwargs: dict[str, Any] = {"mode": "strict", "scheme": IOB2} if mode == "strict" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval's UndefinedMetricWarning for a type never predicted
        report = classification_report(list(map(list, y_true)), list(map(list, y_pred)), output_dict=True,
                                       zero_division=0, **kwargs)
    micro = report.get("micro avg", {})
    out.update(precision=float(micro.get("precision", 0.0)), recall=float(micro.get("recall", 0.0)),
               f1=float(micro.get("f1-score", 0.0)))
    out["accuracy"] = float(accuracy_score(list(map(list, y_true)), list(map(list, y_pred))))
    for t in types:
        if t in report:
            out[f"f1_{t}"] = float(report[t]["f1-score"])
    return out


class EntityScores(tm.Metric):
    """Entity-level precision/recall/F1, F1 per type and word accuracy (see the module docstring).

    After ``compute``, :attr:`last` holds the predictions it scored: sentence id -> (word indices, gold ids,
    predicted ids), for the evaluation files written at the end of the test loop; :attr:`last_scores` the
    scores as plain floats.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, label_names: Sequence[str], mode: str = "default", **kwargs: Any):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"task.module.metric_mode={mode!r}: expected default or strict")
        self.label_names = list(label_names)
        self.mode = mode
        self.types = sorted({n.split("-", 1)[1] for n in self.label_names if "-" in n})
        for name in ("sentence", "word", "gold", "pred"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.last: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.last_scores: dict[str, float] = {}

    def update(self, sentence: torch.Tensor, word: torch.Tensor, gold: torch.Tensor, pred: torch.Tensor) -> None:
        self.sentence.append(sentence.long().flatten())
        self.word.append(word.long().flatten())
        self.gold.append(gold.long().flatten())
        self.pred.append(pred.long().flatten())

    def _gathered(self) -> tuple[np.ndarray, ...]:
        def cat(x: Any) -> np.ndarray:
            if isinstance(x, torch.Tensor):
                return x.detach().cpu().numpy().reshape(-1)
            return torch.cat([t.reshape(-1) for t in x]).cpu().numpy() if x else np.zeros(0, dtype=np.int64)

        return cat(self.sentence), cat(self.word), cat(self.gold), cat(self.pred)

    def compute(self) -> dict[str, torch.Tensor]:
        sentence, word, gold, pred = self._gathered()
        # each (sentence, word) once, in sentence and word order
        keys = sentence.astype(np.int64) * (1 << 32) + word.astype(np.int64)
        _, idx = np.unique(keys, return_index=True)
        sentence, word, gold, pred = sentence[idx], word[idx], gold[idx], pred[idx]
        bounds = np.flatnonzero(np.diff(sentence)) + 1
        names = np.asarray(self.label_names, dtype=object)
        self.last = {}
        y_true, y_pred = [], []
        for s, w, g, p in zip(np.split(sentence, bounds), np.split(word, bounds), np.split(gold, bounds),
                              np.split(pred, bounds)):
            if len(s) == 0:
                continue
            self.last[int(s[0])] = (w, g, p)
            y_true.append(list(names[g]))
            y_pred.append(list(names[p]))
        scores = seqeval_scores(y_true, y_pred, self.types, self.mode)
        self.last_scores = dict(scores)  # plain floats, for the run's pictures (F1 per entity type)
        return {k: torch.tensor(v, dtype=torch.float32) for k, v in scores.items()}


# -- entities on raw text, as the token-classification pipeline groups them --------------------------
def _tag(label: str) -> tuple[str, str]:
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def softmax(logits: np.ndarray) -> np.ndarray:
    """The pipeline's softmax (float32 numpy)."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def best_labels(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each sub-token's best label id and its probability, from ``[..., labels]`` logits (the pipeline's
    float32 softmax, one call for a whole batch)."""
    scores = softmax(logits)
    best = scores.argmax(-1)
    return best, np.take_along_axis(scores, best[..., None], -1)[..., 0]


def simple_entities(logits: np.ndarray, offsets: Sequence[Sequence[int]], special: Sequence[int], text: str,
                    id2label: Mapping[int, str], ignore: Sequence[str] = ("O",)) -> list[dict]:
    """Entities of one text from its sub-tokens' logits: ``{type, text, start, end, score}`` each (see the
    module docstring). ``offsets``: character span of each sub-token; ``special``: 1 for special tokens."""
    best, score = best_labels(logits)
    return grouped_entities(best, score, offsets, special, text, id2label, ignore)


def grouped_entities(best: np.ndarray, score: np.ndarray, offsets: Sequence[Sequence[int]], special: Sequence[int],
                     text: str, id2label: Mapping[int, str], ignore: Sequence[str] = ("O",)) -> list[dict]:
    """:func:`simple_entities` from each sub-token's best label id and probability (:func:`best_labels`)."""
    tags = {}
    groups: list[list] = []  # [tag, entity type, start, end, scores]
    offsets = np.asarray(offsets).reshape(-1, 2).tolist()
    for i, (label, p, sp) in enumerate(zip(np.asarray(best).tolist(), np.asarray(score).tolist(),
                                           np.asarray(special).tolist())):
        if sp:
            continue
        if label not in tags:
            name = id2label[label]
            tags[label] = (*_tag(name), name.split("-", 1)[-1])
        bi, tag, kind = tags[label]
        if groups and groups[-1][0] == tag and bi != "B":
            g = groups[-1]
            g[3] = offsets[i][1]
            g[4].append(p)
            continue
        groups.append([tag, kind, offsets[i][0], offsets[i][1], [p]])
    out = []
    for _, kind, start, end, ps in groups:
        if kind in ignore:
            continue
        kept = [p for p in ps if p == p]  # the pipeline's nanmean
        score_ = sum(kept) / len(kept) if kept else float("nan")
        out.append({"type": kind, "text": text[start:end], "start": start, "end": end, "score": float(score_)})
    return out


def tagged_text(text: str, entities: Sequence[Mapping[str, Any]]) -> str:
    """``text`` with each entity in brackets after its type: ``[PER Ada Lovelace] visited [LOC Paris]``."""
    parts, pos = [], 0
    for e in sorted(entities, key=lambda e: (e["start"], e["end"])):
        if e["start"] < pos:
            continue
        parts.append(text[pos: e["start"]])
        parts.append(f"[{e['type']} {text[e['start']: e['end']]}]")
        pos = e["end"]
    parts.append(text[pos:])
    return "".join(parts)
