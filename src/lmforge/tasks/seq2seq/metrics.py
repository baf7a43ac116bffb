"""Corpus-level metrics of generated text, computed by the field's reference implementations:

* translation: corpus BLEU and chrF as ``sacrebleu`` computes them with its defaults (BLEU: 13a
  tokenizer, exponential smoothing, case-sensitive; chrF: character 6-grams, beta 2), equal to
  ``sacrebleu reference.txt -i hypotheses.txt -m bleu chrf``;
* summarization: ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F-measures as ``rouge-score`` computes them
  (``RougeScorer(..., use_stemmer=True)``; Lsum splits summaries at newlines), averaged over the
  examples, x100.

:class:`GeneratedText` holds (example index, hypothesis, reference) as UTF-8 bytes in tensor states, so
torchmetrics gathers every rank's outputs before scoring; an example that a distributed sampler
repeated to even out the ranks is scored once.
"""

from __future__ import annotations

from typing import Any, Sequence

import warnings

import numpy as np
import torch
import torchmetrics as tm

# a validation that generated nothing (the sanity check, or between task.generate_every_n_val) has no texts
warnings.filterwarnings("ignore", message=r".*metric GeneratedText was called before the ``update``")

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def bleu_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    import sacrebleu

    return {"bleu": sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score,
            "chrf": sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score}


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    sums = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hyp, ref in zip(hypotheses, references):
        scores = scorer.score(ref, hyp)  # score(target, prediction)
        for k in ROUGE_TYPES:
            sums[k] += scores[k].fmeasure
    n = max(1, len(hypotheses))
    return {k: 100.0 * v / n for k, v in sums.items()}


SCORERS = {"translation": bleu_chrf, "summarization": rouge}


def _encode(texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    data = [t.encode("utf-8") for t in texts]
    flat = np.frombuffer(b"".join(data), dtype=np.uint8).copy() if data else np.zeros(0, dtype=np.uint8)
    return torch.from_numpy(flat), torch.tensor([len(d) for d in data], dtype=torch.long)


def _decode(flat: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    raw = flat.cpu().numpy().tobytes()
    out, pos = [], 0
    for n in lengths.tolist():
        out.append(raw[pos: pos + n].decode("utf-8"))
        pos += n
    return out


class GeneratedText(tm.Metric):
    """Hypotheses and references of one evaluation, scored at the corpus level by ``kind``'s scorer.

    After ``compute``, :attr:`last` holds ``[(index, hypothesis, reference)]`` in example order (the files
    written at the end of the test loop)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, kind: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.kind = kind
        for name in ("index", "hyp", "hyp_len", "ref", "ref_len"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.last: list[tuple[int, str, str]] = []

    def update(self, index: torch.Tensor, hypotheses: Sequence[str], references: Sequence[str]) -> None:
        h, hl = _encode(hypotheses)
        r, rl = _encode(references)
        self.index.append(index.detach().long().cpu().flatten())
        self.hyp.append(h)
        self.hyp_len.append(hl)
        self.ref.append(r)
        self.ref_len.append(rl)

    def _cat(self, x: Any, dtype: torch.dtype) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return x.reshape(-1)
        return torch.cat([t.reshape(-1) for t in x]) if x else torch.zeros(0, dtype=dtype)

    def compute(self) -> dict[str, torch.Tensor]:
        index = self._cat(self.index, torch.long)
        # a rank that generated nothing syncs an empty float tensor: cast back (bytes 0-255 survive the promotion)
        hyps = _decode(self._cat(self.hyp, torch.uint8).to(torch.uint8), self._cat(self.hyp_len, torch.long).long())
        refs = _decode(self._cat(self.ref, torch.uint8).to(torch.uint8), self._cat(self.ref_len, torch.long).long())
        index = index.long()
        seen: dict[int, tuple[str, str]] = {}
        for i, h, r in zip(index.tolist(), hyps, refs):
            seen.setdefault(int(i), (h, r))
        self.last = [(i, *seen[i]) for i in sorted(seen)]
        if not self.last:
            return {}
        scores = SCORERS[self.kind]([h for _, h, _ in self.last], [r for _, _, r in self.last])
        return {k: torch.tensor(v, dtype=torch.float32) for k, v in scores.items()}
