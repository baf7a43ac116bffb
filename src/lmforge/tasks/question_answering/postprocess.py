"""From start/end logits over all windows of a question to its answer, cut from the passage.

For each window: the ``n_best`` likeliest start tokens and the ``n_best`` likeliest end tokens among the
passage tokens (never the question or special tokens), paired when the end is not before the start
and the span is at most ``max_answer_length`` tokens; a pair scores ``start_logit + end_logit``. Over
all windows of a question the best-scoring spans form its n-best list (a span seen in two overlapping
windows counts once, with its better score); the answer text is cut from the original passage by the
character offsets of the span's first and last tokens, so its whitespace and case are as written.

With a model that may abstain (SQuAD v2.0), the null answer scores ``start_logit[CLS] +
end_logit[CLS]`` (the smallest over the question's windows); the answer is empty when that beats the
best span by more than ``null_threshold``. ``null_odds`` (null score minus best span score) is what
the official v2.0 script reads as the no-answer probability file.

``score`` is the model's probability of the chosen span in its window: softmax over the passage tokens
(and CLS, when the model may abstain) for the start, times the same for the end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

NEG = float("-inf")


def answers_from_logits(start_logits: torch.Tensor, end_logits: torch.Tensor, char_start: torch.Tensor,
                        char_end: torch.Tensor, cls_index: torch.Tensor, window_example: Sequence[int],
                        contexts: Sequence[str], n_best: int = 20, max_answer_length: int = 30,
                        allow_null: bool = False, null_threshold: float = 0.0, progress: Any = None) -> list[dict]:
    """One answer record per example (``contexts[i]``) from the logits of its windows.

    ``start_logits``/``end_logits``/``char_start``/``char_end``: (windows, tokens), offsets -1 outside the
    passage (and on padding); ``cls_index``: (windows,); ``window_example[w]``: the example of window ``w``
    (an index into ``contexts``). Returns ``{"answer", "start", "end", "score", "null_odds", "nbest"}``,
    ``start``/``end`` the answer's character offsets in the passage (end exclusive; None for no answer).
    ``progress``: a :class:`lmforge.utils.progress.Stage` advanced by one per example (None: nothing shown).
    """
    if n_best < 1 or max_answer_length < 1:
        raise ValueError("n_best and max_answer_length must be at least 1")
    start_logits = start_logits.detach().float().cpu()
    end_logits = end_logits.detach().float().cpu()
    char_start, char_end = char_start.cpu(), char_end.cpu()
    cls_index = cls_index.cpu().long()
    n_windows, width = start_logits.shape
    in_passage = char_start >= 0
    rows = torch.arange(n_windows)
    # probabilities over the tokens an answer may start/end at
    allowed = in_passage.clone()
    if allow_null:
        allowed[rows, cls_index] = True
    log_p_start = start_logits.masked_fill(~allowed, NEG).log_softmax(-1)
    log_p_end = end_logits.masked_fill(~allowed, NEG).log_softmax(-1)
    # n-best starts and ends per window, paired
    k = min(n_best, width)
    s_val, s_idx = start_logits.masked_fill(~in_passage, NEG).topk(k, dim=-1)
    e_val, e_idx = end_logits.masked_fill(~in_passage, NEG).topk(k, dim=-1)
    pair = s_val[:, :, None] + e_val[:, None, :]
    length = e_idx[:, None, :] - s_idx[:, :, None]
    pair = pair.masked_fill(~((length >= 0) & (length < max_answer_length) & torch.isfinite(pair)), NEG)
    null = start_logits[rows, cls_index] + end_logits[rows, cls_index]

    by_example: dict[int, list[int]] = {}
    for w, ex in enumerate(window_example):
        by_example.setdefault(int(ex), []).append(w)
    out = []
    for ex, context in enumerate(contexts):
        windows = by_example.get(ex, [])
        spans: dict[tuple[int, int], dict] = {}
        for w in windows:
            flat = pair[w].flatten()
            top = min(n_best, int(torch.isfinite(flat).sum()))
            if top == 0:
                continue
            vals, idx = flat.topk(top)
            for v, i in zip(vals.tolist(), idx.tolist()):
                s_tok, e_tok = int(s_idx[w, i // k]), int(e_idx[w, i % k])
                span = (int(char_start[w, s_tok]), int(char_end[w, e_tok]))
                if span in spans and spans[span]["score"] >= v:
                    continue
                spans[span] = {"text": context[span[0]: span[1]], "start": span[0], "end": span[1], "score": v,
                               "probability_in_window": math.exp(float(log_p_start[w, s_tok] + log_p_end[w, e_tok]))}
        # best first; equal scores: the earlier, then the shorter span (the same order on every machine)
        nbest = sorted(spans.values(), key=lambda c: (-c["score"], c["start"], c["end"]))[:n_best]
        best = nbest[0] if nbest else None
        record = {"answer": best["text"] if best else "", "start": best["start"] if best else None,
                  "end": best["end"] if best else None, "score": best["probability_in_window"] if best else 0.0,
                  "null_odds": None}
        if allow_null and windows:
            w_null = min(windows, key=lambda w: float(null[w]))
            null_score = float(null[w_null])
            best_score = best["score"] if best else NEG
            record["null_odds"] = null_score - best_score if best else 1e4
            null_entry = {"text": "", "start": None, "end": None, "score": null_score,
                          "probability_in_window": math.exp(float(log_p_start[w_null, cls_index[w_null]]
                                                                  + log_p_end[w_null, cls_index[w_null]]))}
            if best is None or null_score > best_score + null_threshold:
                record.update(answer="", start=None, end=None, score=null_entry["probability_in_window"])
            nbest = sorted([*nbest, null_entry], key=lambda c: -c["score"])[:n_best]
        # the n-best list's own probabilities: a softmax over its scores
        if nbest:
            top_score = max(c["score"] for c in nbest)
            weights = [math.exp(c["score"] - top_score) for c in nbest]
            total = sum(weights)
            record["nbest"] = [{"text": c["text"], "start": c["start"], "end": c["end"], "score": c["score"],
                                "probability": wt / total} for c, wt in zip(nbest, weights)]
        else:
            record["nbest"] = []
        out.append(record)
        if progress is not None:
            progress.advance(1)
    return out
