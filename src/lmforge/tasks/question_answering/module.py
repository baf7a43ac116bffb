"""Extractive question answering: a thin layer over ``AutoModelForQuestionAnswering``.

The model scores every token of a window as the answer's start and as its end; the loss is the mean
of the two cross-entropies against the gold positions (CLS where the window lacks the answer).
Evaluation batches hold whole questions (all their windows, see :mod:`.data`), so each batch is
post-processed at once (:mod:`.postprocess`: n-best spans over all windows, the text cut from the
passage) and scored per question (:mod:`.metrics`: SQuAD EM/F1 as the official scripts compute them);
``<stage>/score`` is F1. Scores carry the question's index, so a question that Lightning's distributed
sampler repeats is scored once, and a partial evaluation (``limit_val_batches``, the sanity check)
scores exactly the questions it saw.

Files: the test loop writes the official ``predictions.json`` (``{"question id": "answer"}``), which
``evaluate-v1.1.py`` / ``evaluate-v2.0.py`` read as they are, ``nbest_predictions.json`` and, for models
that may abstain (v2.0), ``null_odds.json``. transformers 5 has no question-answering pipeline: the
export is served by :mod:`.predictor` (``lmforge.load(folder)``), which needs the export folder alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchmetrics as tm
from transformers import AutoModelForQuestionAnswering

from lmforge.tasks.base import TaskModule
from lmforge.tasks.question_answering.features import SETTINGS_KEY
from lmforge.tasks.question_answering.metrics import SquadScores, score_question
from lmforge.tasks.question_answering.postprocess import answers_from_logits
from lmforge.utils.errors import ConfigError

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class QuestionAnsweringModule(TaskModule):
    auto_cls = AutoModelForQuestionAnswering
    pipeline_task = None  # transformers 5 has no question-answering pipeline: lmforge's own predictor serves it
    prediction_fields = ("answer", "start", "end", "score")
    score_metric = "f1"

    def __init__(self, *args: Any, n_best: int = 20, max_answer_length: int = 30, null_threshold: float = 0.0,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        if int(n_best) < 1:
            raise ConfigError(f"task.n_best={n_best}: expected at least 1")
        if int(max_answer_length) < 1:
            raise ConfigError(f"task.max_answer_length={max_answer_length}: expected at least 1 (tokens)")
        self.n_best, self.max_answer_length, self.null_threshold = int(n_best), int(max_answer_length), float(null_threshold)
        # the test loop's answers, kept for the official files (write_eval_files)
        self._test_answers: list[dict] = []

    # -- settings ------------------------------------------------------------------------------
    @property
    def qa_settings(self) -> dict:
        """Window settings (from the data, in the HF config) and post-processing settings (this module's)."""
        saved = dict(getattr(self.trainable().config, SETTINGS_KEY, None) or {})
        return {**saved, "n_best": self.n_best, "max_answer_length": self.max_answer_length,
                "null_threshold": self.null_threshold}

    @property
    def allow_null(self) -> bool:
        return bool(self.qa_settings.get("version_2_with_negative", False))

    # -- loss and metrics ----------------------------------------------------------------------
    def model_inputs(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {k: batch[k] for k in MODEL_INPUTS if k in batch}

    def loss(self, outputs: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        start = F.cross_entropy(outputs.start_logits.float(), batch["start_positions"])
        end = F.cross_entropy(outputs.end_logits.float(), batch["end_positions"])
        return (start + end) / 2

    def make_metrics(self) -> tm.MetricCollection:
        return tm.MetricCollection({"squad": SquadScores(v2=self.allow_null), "loss": tm.MeanMetric()},
                                   compute_groups=False)

    def answers(self, outputs: Any, batch: Mapping[str, Any]) -> list[dict]:
        """The answer record of each question of an evaluation/prediction batch (whole questions)."""
        s = self.qa_settings
        return answers_from_logits(outputs.start_logits, outputs.end_logits, batch["char_start"], batch["char_end"],
                                   batch["cls_index"], batch["window_example"].tolist(),
                                   [ex["context"] for ex in batch["examples"]], n_best=s["n_best"],
                                   max_answer_length=s["max_answer_length"], allow_null=self.allow_null,
                                   null_threshold=s["null_threshold"])

    def update_metrics(self, metrics: tm.MetricCollection, outputs: Any, batch: Mapping[str, Any],
                       loss: torch.Tensor) -> None:
        metrics["loss"].update(loss, weight=batch["input_ids"].shape[0])
        answers = self.answers(outputs, batch)
        em, f1s, has, v2 = [], [], [], []
        for ans, ex in zip(answers, batch["examples"]):
            # SQuAD v2.0 rules for v2.0 data and for models that may abstain; v1.1 rules otherwise
            e, f = score_question(ans["answer"], ex["answers"], v2=bool(ex["v2"]) or self.allow_null)
            em.append(e)
            f1s.append(f)
            has.append(any(a.strip() for a in ex["answers"]))
            v2.append(bool(ex["v2"]))
        metrics["squad"].update(batch["example_index"], torch.tensor(em), torch.tensor(f1s), torch.tensor(has),
                                torch.tensor(v2))
        if metrics is self.metrics["test"]:
            for idx, ans, ex in zip(batch["example_index"].tolist(), answers, batch["examples"]):
                self._test_answers.append({"index": idx, "id": ex["id"], **ans})

    def on_test_epoch_start(self) -> None:
        self._test_answers = []

    def write_eval_files(self, split: str, folder: Path) -> list[Path]:
        """``predictions.json`` (official format), ``nbest_predictions.json`` and, for v2.0 models,
        ``null_odds.json``: every rank's answers gathered, one per question, written by rank 0."""
        answers = self._test_answers
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, answers)
            answers = [a for part in gathered for a in part]
        self._test_answers = []
        if self._trainer is not None and not self._trainer.is_global_zero:
            return []
        by_index = {}
        for a in answers:
            by_index.setdefault(a["index"], a)
        ordered = [by_index[i] for i in sorted(by_index)]
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = {"predictions.json": {a["id"]: a["answer"] for a in ordered},
                 "nbest_predictions.json": {a["id"]: a["nbest"] for a in ordered}}
        if self.allow_null:
            files["null_odds.json"] = {a["id"]: a["null_odds"] for a in ordered}
        written = []
        for name, obj in files.items():
            path = folder / name
            path.write_text(json.dumps(obj, ensure_ascii=False, indent=None if name == "predictions.json" else 1))
            written.append(path)
        return written

    # -- prediction ----------------------------------------------------------------------------
    def predict_batch(self, batch: Mapping[str, Any], datamodule: Any) -> list[dict]:
        return [{f: a[f] for f in self.prediction_fields} for a in self.answers(self(batch), batch)]

    # -- export and serving --------------------------------------------------------------------
    def export(self, folder: str | Path, tokenizer: Any = None, state_dict: dict | None = None) -> Path:
        """The HF folder, its config carrying the window and post-processing settings the predictor uses and the
        predictor's name (``lmforge.load(folder)`` builds it)."""
        from lmforge.serving import PREDICTOR_KEY, predictor_name
        from lmforge.tasks.question_answering.predictor import QuestionAnsweringPredictor

        config = self.trainable().config
        setattr(config, SETTINGS_KEY, self.qa_settings)
        setattr(config, PREDICTOR_KEY, predictor_name(QuestionAnsweringPredictor))  # what lmforge.load builds
        return super().export(folder, tokenizer, state_dict)

    @classmethod
    def serve(cls, export_folder: str | Path, inputs: Sequence[Mapping[str, Any] | str], **kwargs: Any) -> list[dict]:
        """Answers from the export folder alone (:class:`~.predictor.QuestionAnsweringPredictor`)."""
        from lmforge.tasks.question_answering.predictor import QuestionAnsweringPredictor

        options = {k: kwargs[k] for k in ("n_best", "max_answer_length", "null_threshold") if k in kwargs}
        return QuestionAnsweringPredictor(export_folder, **options).predict(inputs)
