"""Answer questions with an exported model folder alone: no run folder, no Hydra, no Lightning.

transformers 5 removed ``pipeline("question-answering")``; this is its replacement for lmforge exports
(and for any ``AutoModelForQuestionAnswering`` folder with a fast tokenizer)::

    import lmforge
    qa = lmforge.load("logs/question_answering/runs/<timestamp>/export")
    qa("Who designed the bridge?", "The bridge was designed by Mara Quell in 1871.")
    # {'answer': 'Mara Quell', 'start': 27, 'end': 37, 'score': 0.93}
    qa.predict([{"question": ..., "context": ...}, ...])       # many at once, batched

It windows the passage, runs the model and post-processes exactly as lmforge's own ``predict`` does
(the same functions, :mod:`.features` and :mod:`.postprocess`), with the window and post-processing
settings the export's ``config.json`` carries (``lmforge_question_answering``; the field's defaults
384/128, n-best 20, 30 tokens, for a folder without them). ``start``/``end`` are character offsets in
the passage (end exclusive); ``score`` is the span's probability in its window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmforge.tasks.question_answering.features import SETTINGS_KEY, collate_questions, question_items

DEFAULTS = {"max_length": 384, "doc_stride": 128, "version_2_with_negative": False, "n_best": 20,
            "max_answer_length": 30, "null_threshold": 0.0}
FIELDS = ("answer", "start", "end", "score")


class QuestionAnsweringPredictor:
    """``predictor(question, passage) -> {"answer", "start", "end", "score"}``; ``predict(records)`` for many.

    Keyword arguments override the export's settings (``n_best``, ``max_answer_length``, ``null_threshold``,
    ``max_length``, ``doc_stride``)."""

    def __init__(self, folder: str | Path, device: str = "cpu", batch_size: int = 64, **settings: Any):
        import torch
        from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: not a model folder (no config.json); pass a run's export/ folder")
        config = AutoConfig.from_pretrained(folder)
        unknown = sorted(set(settings) - set(DEFAULTS))
        if unknown:
            raise TypeError(f"unknown settings {unknown}; expected some of {', '.join(DEFAULTS)}")
        self.settings = {**DEFAULTS, **(getattr(config, SETTINGS_KEY, None) or {}),
                         **{k: v for k, v in settings.items() if v is not None}}
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForQuestionAnswering.from_pretrained(folder, config=config).to(device).eval()
        self.device = torch.device(device)
        self.batch_size = int(batch_size)

    def __call__(self, question: str | Mapping[str, str], context: str | None = None) -> dict:
        if isinstance(question, Mapping):
            return self.predict([question])[0]
        if context is None:
            raise TypeError("predictor(question, context): the passage to answer from is missing")
        return self.predict([{"question": question, "context": context}])[0]

    def predict(self, inputs: Sequence[Mapping[str, str] | tuple[str, str]], nbest: bool = False) -> list[dict]:
        """One record per input (``{"question", "context"}`` or a ``(question, context)`` pair): the answer, its
        character offsets and score (``nbest=True``: with its n-best list too). More inputs than one batch are
        shown as a progress stage (a bar in a terminal, one line otherwise)."""
        from lmforge.utils.progress import stage

        records = []
        for i, x in enumerate(inputs, 1):
            if isinstance(x, (tuple, list)) and len(x) == 2:
                x = {"question": x[0], "context": x[1]}
            if not isinstance(x, Mapping) or not all(isinstance(x.get(k), str) and x.get(k).strip()
                                                     for k in ("question", "context")):
                raise ValueError(f"input {i}: {x!r}; expected a non-empty question and context")
            records.append(x)
        out: list[dict] = []
        shown = stage("answering questions", total=len(records), unit="questions",
                      mode="off" if len(records) <= self.batch_size else None)
        with shown:
            for start in range(0, len(records), self.batch_size):
                out.extend(self._answer(records[start: start + self.batch_size], nbest, shown))
        return out

    def _answer(self, chunk: list[Mapping[str, str]], nbest: bool, shown: Any) -> list[dict]:
        """The records of one batch of questions; post-processing advances ``shown`` by one per question."""
        import torch

        from lmforge.tasks.question_answering.postprocess import answers_from_logits

        s = self.settings
        items = question_items(self.tokenizer, [r["question"] for r in chunk], [r["context"] for r in chunk],
                               int(s["max_length"]), int(s["doc_stride"]))
        batch = collate_questions(items, self.tokenizer.pad_token_id)
        inputs_ = {k: batch[k].to(self.device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        with torch.no_grad():
            logits = self.model(**inputs_)
        answers = answers_from_logits(logits.start_logits, logits.end_logits, batch["char_start"], batch["char_end"],
                                      batch["cls_index"], batch["window_example"].tolist(),
                                      [r["context"] for r in chunk], n_best=int(s["n_best"]),
                                      max_answer_length=int(s["max_answer_length"]),
                                      allow_null=bool(s["version_2_with_negative"]),
                                      null_threshold=float(s["null_threshold"]), progress=shown)
        return [{f: a[f] for f in (*FIELDS, "nbest") if nbest or f != "nbest"} for a in answers]


def load(folder: str | Path, **kwargs: Any) -> QuestionAnsweringPredictor:
    """A question-answering predictor over an export folder: ``load(folder)(question, passage)``."""
    return QuestionAnsweringPredictor(folder, **kwargs)
