"""SQuAD exact match and F1, computed as the official evaluation scripts compute them.

Normalisation (both scripts): lower case; drop every ASCII punctuation character; drop the articles
``a``, ``an``, ``the`` as whole words; collapse whitespace to single spaces. Exact match compares the
normalised strings; F1 is the harmonic mean of precision and recall over the bags of normalised
tokens (split on whitespace). A question scores the maximum over its gold answers; the split scores
the mean over questions (not windows), as percentages.

v1.1 gives F1 0 when no token is shared. v2.0 adds unanswerable questions: the gold answers are
``[""]``, and a side with no tokens scores 1 only when the other side has none too. v2.0 also reports
the answerable (HasAns) and unanswerable (NoAns) questions apart.

:class:`SquadScores` accumulates per-question scores with the question's index, so that a question
seen twice (Lightning's distributed sampler repeats a few to even out the ranks) counts once, and
gathers them over ranks when computed.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import torch
import torchmetrics as tm

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str, v2: bool = False) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if v2 and (not pred or not ref):
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def score_question(prediction: str, golds: Sequence[str], v2: bool = False) -> tuple[float, float]:
    """(exact match, F1) of one question: the best over its gold answers (v2.0: ``[""]`` when it has none)."""
    if v2:
        golds = [g for g in golds if normalize_answer(g)] or [""]
    if not golds:
        raise ValueError("a question without gold answers cannot be scored (SQuAD v1.1)")
    return max(exact_match(prediction, g) for g in golds), max(f1(prediction, g, v2) for g in golds)


class SquadScores(tm.Metric):
    """EM/F1 (percent) over questions: ``update(index, em, f1, has_answer, v2)`` per question; ``compute`` keeps one
    score per question index (over all ranks) and returns ``exact_match``, ``f1``, and, for models that may abstain
    (``v2=True``) or questions from SQuAD v2.0 data, ``has_ans_*`` / ``no_ans_*`` for the questions of each kind
    that were seen (as evaluate-v2.0.py reports HasAns / NoAns)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, v2: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.v2 = v2
        for name in ("index", "em", "f1", "has_answer", "from_v2"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, index: torch.Tensor, em: torch.Tensor, f1: torch.Tensor, has_answer: torch.Tensor,
               from_v2: torch.Tensor | None = None) -> None:
        self.index.append(index.long().to(self.device))
        self.em.append(em.double().to(self.device))
        self.f1.append(f1.double().to(self.device))
        self.has_answer.append(has_answer.bool().to(self.device))
        self.from_v2.append((from_v2 if from_v2 is not None else torch.zeros_like(has_answer)).bool().to(self.device))

    def compute(self) -> dict[str, torch.Tensor]:
        def cat(x):
            return torch.cat(x) if isinstance(x, list) else x

        if isinstance(self.index, list) and not self.index:
            return {"exact_match": torch.tensor(float("nan")), "f1": torch.tensor(float("nan"))}
        index, em, f1s, has = cat(self.index), cat(self.em), cat(self.f1), cat(self.has_answer)
        v2 = self.v2 or bool(cat(self.from_v2).any())
        # one score per question: the first occurrence (repeats carry the same score)
        order = torch.argsort(index, stable=True)
        index, em, f1s, has = index[order], em[order], f1s[order], has[order]
        first = torch.ones_like(index, dtype=torch.bool)
        first[1:] = index[1:] != index[:-1]
        em, f1s, has = em[first], f1s[first], has[first]
        out = {"exact_match": 100.0 * em.mean(), "f1": 100.0 * f1s.mean()}
        if v2:
            for name, mask in (("has_ans", has), ("no_ans", ~has)):
                if mask.any():
                    out[f"{name}_exact_match"] = 100.0 * em[mask].mean()
                    out[f"{name}_f1"] = 100.0 * f1s[mask].mean()
        return {k: v.float() for k, v in out.items()}
