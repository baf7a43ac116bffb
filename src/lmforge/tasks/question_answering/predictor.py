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
# measured on a 2-core Xeon (SQuAD questions, 1 thread): 64 questions' windows in one pass cost about 1.25x the CPU
# time of 1-2k-token pieces (activations that stay in cache); 512 and 4096 were slower than 2048
CPU_CHUNK_TOKENS = 2048


class QuestionAnsweringPredictor:
    """``predictor(question, passage) -> {"answer", "start", "end", "score"}``; ``predict(records)`` for many.

    Keyword arguments override the export's settings (``n_best``, ``max_answer_length``, ``null_threshold``,
    ``max_length``, ``doc_stride``). ``precision="bf16"`` runs the model under bfloat16 autocast (about 2x the
    questions/s on a CPU with AMX, e.g. Xeon Sapphire Rapids, and on recent GPUs; answers may differ from 32-bit
    ones where two spans score almost the same); ``"auto"`` picks bf16 where the hardware runs it faster (a CUDA GPU
    with bfloat16, a CPU with AMX-BF16) and 32-bit elsewhere (:func:`lmforge.serving.bf16_is_faster`);
    the default ``"32"`` gives the exact answers of lmforge's own ``predict`` at its default. ``self.precision`` is the
    precision used (``"32"`` or ``"bf16"``). ``chunk_tokens``: a batch's windows run through the model in pieces of
    about this many tokens, longest first, each cut to its own longest window (null: 2048 on a CPU, where a whole
    batch of 64 questions' windows is slower per token than pieces that stay in cache; the whole batch on a GPU; 0:
    the whole batch)."""

    def __init__(self, folder: str | Path, device: str = "cpu", batch_size: int = 64, precision: str = "32",
                 chunk_tokens: int | None = None, **settings: Any):
        import torch
        from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoTokenizer

        from lmforge.serving import PRECISIONS, resolve_precision

        if str(precision) not in PRECISIONS:  # before anything is loaded
            raise ValueError(f"precision={precision!r}: expected one of {', '.join(map(repr, PRECISIONS))}")
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
        self.precision = resolve_precision(str(precision), self.device)
        if chunk_tokens is not None and int(chunk_tokens) < 0:
            raise ValueError(f"chunk_tokens={chunk_tokens}: expected 0 (whole batches), a positive number or None")
        self.chunk_tokens = (CPU_CHUNK_TOKENS if self.device.type == "cpu" else 0) if chunk_tokens is None \
            else int(chunk_tokens)

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

        records: list[Mapping[str, str]] = []
        for i, x in enumerate(inputs, 1):
            if isinstance(x, (tuple, list)) and len(x) == 2:
                x = {"question": x[0], "context": x[1]}
            if not isinstance(x, Mapping) or not all(isinstance(x.get(k), str) and x.get(k).strip()
                                                     for k in ("question", "context")):
                raise ValueError(f"input {i}: {x!r}; expected a non-empty question and context")
            records.append(x)
        if not records:
            return []
        import torch

        s = self.settings
        # every question's windows at once (the fast tokenizer batches them), then whole questions in batches of
        # similar lengths, longest first (a batch is padded to its longest window), the answers back in input order
        items = question_items(self.tokenizer, [r["question"] for r in records], [r["context"] for r in records],
                               int(s["max_length"]), int(s["doc_stride"]))
        order = question_order(items)
        out: list[dict | None] = [None] * len(records)
        shown = stage("answering questions", total=len(records), unit="questions",
                      mode="off" if len(records) <= self.batch_size else None)
        from lmforge.serving import precision_context

        with shown, torch.inference_mode(), precision_context(self.precision, self.device):
            for start in range(0, len(order), self.batch_size):
                chunk = order[start: start + self.batch_size]
                for i, answer in zip(chunk, self._answer([items[i] for i in chunk], [records[i] for i in chunk],
                                                         nbest, shown)):
                    out[i] = answer
        return out  # type: ignore[return-value]

    def _answer(self, items: list[dict], chunk: list[Mapping[str, str]], nbest: bool, shown: Any) -> list[dict]:
        """The records of one batch of questions (their windows in ``items``); post-processing advances ``shown``
        by one per question."""
        from lmforge.tasks.question_answering.postprocess import answers_from_logits

        s = self.settings
        batch = collate_questions(items, self.tokenizer.pad_token_id)
        start_logits, end_logits = self._logits(batch)
        answers = answers_from_logits(start_logits, end_logits, batch["char_start"], batch["char_end"],
                                      batch["cls_index"], batch["window_example"].tolist(),
                                      [r["context"] for r in chunk], n_best=int(s["n_best"]),
                                      max_answer_length=int(s["max_answer_length"]),
                                      allow_null=bool(s["version_2_with_negative"]),
                                      null_threshold=float(s["null_threshold"]), progress=shown)
        return [{f: a[f] for f in (*FIELDS, "nbest") if nbest or f != "nbest"} for a in answers]

    def _logits(self, batch: Mapping[str, Any]) -> tuple[Any, Any]:
        """Start and end logits of every window of ``batch``: in one forward pass, or (``chunk_tokens``) in pieces
        of windows of similar lengths, each cut to its longest window; padding positions get -1e4 (post-processing
        masks them out whatever they hold)."""
        import torch

        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch]
        n, width = batch["input_ids"].shape
        rows = max(1, self.chunk_tokens // width) if self.chunk_tokens else n
        if rows >= n:
            out = self.model(**{k: batch[k].to(self.device) for k in keys})
            return out.start_logits, out.end_logits
        lengths = batch["attention_mask"].sum(-1)
        order = torch.argsort(lengths, descending=True, stable=True)
        start = torch.full((n, width), -1e4, dtype=torch.float32)
        end = torch.full((n, width), -1e4, dtype=torch.float32)
        i = 0
        while i < n:
            longest = int(lengths[order[i]])
            take = order[i: i + max(1, self.chunk_tokens // max(longest, 1))]  # longest <= width: at least `rows`
            out = self.model(**{k: batch[k][take, :longest].to(self.device) for k in keys})
            start[take, :longest] = out.start_logits.float().cpu()
            end[take, :longest] = out.end_logits.float().cpu()
            i += len(take)
        return start, end


def question_order(items: Sequence[dict]) -> list[int]:
    """Question indices, longest window first, then most windows first (ties keep the input order): a batch of
    neighbours is padded little."""
    keys = [(max(len(w["input_ids"]) for w in it["windows"]), len(it["windows"])) for it in items]
    return sorted(range(len(items)), key=lambda i: (-keys[i][0], -keys[i][1]))


def load(folder: str | Path, **kwargs: Any) -> QuestionAnsweringPredictor:
    """A question-answering predictor over an export folder: ``load(folder)(question, passage)``."""
    return QuestionAnsweringPredictor(folder, **kwargs)
