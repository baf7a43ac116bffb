"""Extractive question-answering data: questions over passages, answers as character spans.

Sources, splits, the token cache and the resumable sampler are
:class:`lmforge.data.datamodule.LMForgeDataModule`'s. What this task adds:

* reading (:mod:`lmforge.data.squad`): SQuAD v1.1/v2.0 JSON as published, detected from the content;
  flat rows (jsonl/json/csv/tsv/parquet, hub datasets) with ``id``/``question``/``context``/``answers``
  (``data.id_column``, ``question_column``, ``context_column``, ``answers_column`` rename them); every
  answer checked against its passage;
* a carved validation split takes whole articles (rows with the same ``title``; passages where there is
  no title), never single questions, so no passage is in two splits; ``data.validation_articles`` /
  ``data.test_articles`` name the articles instead (the ``experiment=squad`` recipe);
* windows (:mod:`.features`): question first, passage truncated into windows of ``data.max_length``
  tokens overlapping by ``data.doc_stride``; the answer mapped to token positions through the
  offsets; windows without the whole answer point at CLS; questions whose answer is whole in no
  window are counted and reported;
* batches: training batches are windows; evaluation and prediction batches are whole questions (all
  their windows, with the offsets, passages and gold answers that post-processing and scoring need),
  so a question is scored once, from all its windows, whatever part of the data is evaluated.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset

from lmforge.data.collate import PadCollator
from lmforge.data.datamodule import LMForgeDataModule
from lmforge.data.sources import SplitRows, check_exists
from lmforge.data.splits import carve_mask
from lmforge.data.squad import is_squad_json, load_json, read_qa_files, read_squad_json, row_where, rows_from_flat
from lmforge.tasks.question_answering.features import (EVAL_FIELDS, SETTINGS_KEY, check_window_settings,
                                                         collate_questions, encode_windows, question_items)
from lmforge.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

WINDOW_FIELDS = ("input_ids", "token_type_ids", "start_positions", "end_positions")
# keys the shared data configs (data=local brings _common.yaml) hold for text classification
_FOREIGN = {"text_column": "data.question_column / data.context_column", "text_pair_column": "data.context_column",
            "label_column": "data.answers_column", "label_names": None}


class QAWindows(Dataset):
    """Window ``i`` of a cached split (training)."""

    def __init__(self, arrays: Mapping[str, Any]):
        self.arrays = arrays
        self.fields = [f for f in WINDOW_FIELDS if f in arrays]

    def __len__(self) -> int:
        return len(self.arrays["input_ids"])

    def __getitem__(self, i: int) -> dict:
        return {f: self.arrays[f][i] for f in self.fields}


class QAQuestions(Dataset):
    """Question ``j`` of a cached split with all its windows (evaluation)."""

    def __init__(self, arrays: Mapping[str, Any]):
        self.arrays = arrays
        self.examples = arrays["examples"]
        index = np.asarray(arrays["example_index"])
        n = len(self.examples["ids"])
        self.bounds = np.searchsorted(index, np.arange(n + 1), side="left")
        self.fields = [f for f in EVAL_FIELDS if f in arrays]

    def __len__(self) -> int:
        return len(self.examples["ids"])

    def __getitem__(self, j: int) -> dict:
        ex = self.examples
        windows = [{f: self.arrays[f][w] for f in self.fields} for w in range(self.bounds[j], self.bounds[j + 1])]
        return {"index": int(j), "windows": windows,
                "example": {"id": ex["ids"][j], "context": ex["contexts"][ex["context_index"][j]],
                            "answers": ex["answers"][j], "v2": ex["v2"][j]}}


class QuestionAnsweringDataModule(LMForgeDataModule):
    namespace = "question_answering"
    progress_unit = "questions"
    input_fields = ("question", "context")

    def __init__(self, train_file: str | None = None, validation_file: str | None = None, test_file: str | None = None,
                 id_column: str | None = None, question_column: str | None = None, context_column: str | None = None,
                 answers_column: str | None = None, title_column: str | None = None, max_length: int = 384,
                 doc_stride: int = 128, validation_articles: Sequence[str] | None = None,
                 test_articles: Sequence[str] | None = None, pad_to_multiple_of: int | None = None,
                 sample: str = "almanac", batch_size: int = 16, eval_batch_size: int | None = None,
                 text_column: str | None = None, text_pair_column: str | None = None, label_column: str | None = None,
                 label_names: Sequence[str] | None = None, problem_type: str | None = None, tsv_quoting: str = "none",
                 **common: Any):
        for key, value in (("text_column", text_column), ("text_pair_column", text_pair_column),
                           ("label_column", label_column), ("label_names", label_names)):
            if value:
                hint = _FOREIGN[key]
                raise ConfigError(f"data.{key}={value}: question answering has no such column"
                                  + (f"; use {hint}" if hint else ""))
        check_window_settings(max_length, doc_stride)
        self.columns = {"id": id_column, "question": question_column, "context": context_column,
                        "answers": answers_column, "title": title_column}
        self.max_length, self.doc_stride = int(max_length), int(doc_stride)
        self.validation_articles = list(validation_articles) if validation_articles else None
        self.test_articles = list(test_articles) if test_articles else None
        if (self.validation_articles or self.test_articles) and (validation_file or test_file):
            raise ConfigError("data.validation_articles / data.test_articles take articles out of the training file: "
                              "leave data.validation_file and data.test_file unset with them")
        if (self.validation_articles or self.test_articles) and common.get("validation_fraction", 0.1) == 0:
            raise ConfigError("data.validation_articles / data.test_articles need data.validation_fraction > 0 "
                              "(the carving step that applies them); its value is otherwise unused")
        self.pad_to_multiple_of = pad_to_multiple_of
        super().__init__(files={"train": train_file, "validation": validation_file, "test": test_file}, sample=sample,
                         batch_size=batch_size, eval_batch_size=eval_batch_size or batch_size * 2, **common)

    # -- reading -----------------------------------------------------------------------------
    def check_tokenizer(self, tokenizer: Any) -> Any:
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(f"question answering maps answers to tokens through character offsets, which only fast "
                              f"tokenizers give; {type(tokenizer).__name__} is not one (use a model whose folder has a "
                              "tokenizer.json)")
        return tokenizer

    def settings(self) -> dict:
        return {"columns": self.columns, "max_length": self.max_length, "doc_stride": self.doc_stride,
                "validation_articles": self.validation_articles, "test_articles": self.test_articles}

    def read_file(self, paths: list, key: str) -> list[dict]:
        return read_qa_files(paths, key, self.columns, self.max_line_bytes)

    def rows_from_hub(self, rows: list[dict], origin: str) -> list[dict]:
        return rows_from_flat(rows, origin, self.columns)

    def _carve(self, raw: dict[str, SplitRows]) -> SplitRows:
        """Validation (and, with ``data.test_articles``, test) questions out of the training split, whole articles
        at a time: the listed ones, else ``data.validation_fraction`` of the articles chosen by ``data.split_seed``."""
        data = raw["train"]
        rows = data.rows
        groups = [r.get("title") or r["context"] for r in rows]
        if self.validation_articles or self.test_articles:
            titles = {r.get("title") for r in rows}
            for key, listed in (("data.validation_articles", self.validation_articles),
                                ("data.test_articles", self.test_articles)):
                unknown = [t for t in listed or [] if t not in titles]
                if unknown:
                    raise DataError(f"{key}: {unknown} are not article titles of {data.origin}; its articles: "
                                    f"{', '.join(sorted(str(t) for t in titles))}")
            both = set(self.validation_articles or []) & set(self.test_articles or [])
            if both:
                raise ConfigError(f"data.validation_articles and data.test_articles share {sorted(both)}")
            val_titles, test_titles = set(self.validation_articles or []), set(self.test_articles or [])
            if test_titles and "test" not in raw:
                raw["test"] = SplitRows([r for r in rows if r.get("title") in test_titles], data.origin)
            val = [r for r in rows if r.get("title") in val_titles]
            data.rows = [r for r in rows if r.get("title") not in val_titles | test_titles]
            if not data.rows:
                raise DataError(f"{data.origin}: every article is listed for validation or test; none is left to train")
            log.info("articles %s -> validation (%d questions), %s -> test; %d questions left to train",
                     sorted(val_titles), len(val), sorted(test_titles), len(data.rows))
            return SplitRows(val, data.origin)
        keys = list(dict.fromkeys(groups))
        try:
            mask = carve_mask(len(keys), self.validation_fraction, self.split_seed)
        except ValueError as e:
            raise DataError(f"{data.origin}: {e} (articles, or passages where rows have no title, are carved whole)") \
                from None
        held = {k for k, m in zip(keys, mask) if m}
        val = [r for r, g in zip(rows, groups) if g in held]
        data.rows = [r for r, g in zip(rows, groups) if g not in held]
        log.info("no validation split: carved %d of %d articles/passages (%d questions) out of %s "
                 "(data.validation_fraction=%s, data.split_seed=%s)", len(held), len(keys), len(val), data.origin,
                 self.validation_fraction, self.split_seed)
        return SplitRows(val, data.origin)

    # -- checks ------------------------------------------------------------------------------
    def build_meta(self, raw: dict[str, SplitRows]) -> dict:
        labelled = []
        for split, data in raw.items():
            flags = [bool(r.get("labelled")) for r in data.rows]
            if not any(flags):
                log.info("%s: no answers; the %s split is kept for prediction only", data.origin, split)
                continue
            labelled.append(split)
            for r in data.rows:
                if not r["answers"]["text"] and not (r["is_impossible"] or r.get("v2")):
                    what = "training file" if split == "train" else f"{split} file"
                    raise DataError(f"{row_where(r, data.origin)} has no answers; every question of a SQuAD v1.1 "
                                    f"{what} needs at least one (SQuAD v2.0 marks unanswerable questions with "
                                    "is_impossible: true)")
        train = raw.get("train")
        v2 = bool(train and any(r.get("v2") or r["is_impossible"] for r in train.rows))
        if not labelled:
            first = next(iter(raw.values()))
            raise DataError(f"{first.origin}: no question carries answers; a labelled split is needed to train or "
                            "evaluate (give answers, or predict with predict.file=<path>)")
        return {"labelled": labelled, "version_2_with_negative": v2, "answers_cut": {}}

    # -- encoding ----------------------------------------------------------------------------
    def encode_split(self, split: str, data: SplitRows, meta: dict) -> dict[str, Any]:
        rows = data.rows
        labelled = split in meta["labelled"]
        spans = None
        if labelled:  # the first gold answer is the training target (as the field does)
            spans = [(r["answers"]["answer_start"][0], r["answers"]["answer_start"][0] + len(r["answers"]["text"][0]))
                     if r["answers"]["text"] else None for r in rows]
        windows = encode_windows(self.tokenizer, [r["question"] for r in rows], [r["context"] for r in rows],
                                 self.max_length, self.doc_stride, spans, [row_where(r, data.origin) for r in rows])
        arrays = windows.arrays(labelled)
        contexts: dict[str, int] = {}
        context_index = [contexts.setdefault(r["context"], len(contexts)) for r in rows]
        arrays["examples"] = {"ids": [r["id"] for r in rows], "context_index": context_index,
                              "contexts": list(contexts),
                              "answers": [list(r["answers"]["text"]) for r in rows] if labelled else [None] * len(rows),
                              "v2": [bool(r.get("v2") or r["is_impossible"]) for r in rows]}
        if labelled:
            cut = [r["id"] for r, kept, s in zip(rows, windows.answer_kept, spans) if s is not None and not kept]
            meta["answers_cut"][split] = {"questions": len(rows), "cut": len(cut), "ids": cut[:20]}
            if cut:
                log.warning("%s split: %d of %d questions (%.2f%%) have their answer whole in no window (data.max_length="
                            "%d, data.doc_stride=%d): all their windows point at CLS; e.g. %s", split, len(cut), len(rows),
                            100 * len(cut) / len(rows), self.max_length, self.doc_stride, ", ".join(cut[:5]))
        log.info("%s split: %d questions -> %d windows", split, len(rows), len(windows.input_ids))
        return arrays

    def setup(self, stage: str | None = None) -> None:
        first = self.meta is None
        super().setup(stage)
        if first:
            self._report_cut()

    @rank_zero_only
    def _report_cut(self) -> None:
        for split, c in (self.meta or {}).get("answers_cut", {}).items():
            if c["cut"]:
                what = ("they train towards CLS" if split == "train" else
                        "they are still scored, but no window can give their whole answer")
                print(f"{split}: {c['cut']} of {c['questions']} questions have their answer whole in no window "
                      f"(data.max_length={self.max_length}, data.doc_stride={self.doc_stride}); {what}")

    def answers_cut(self) -> dict[str, dict]:
        """Per labelled split: questions, how many have their answer whole in no window, and (some of) their ids."""
        if self.meta is None:
            self.setup()
        return dict(self.meta.get("answers_cut", {}))

    def make_dataset(self, split: str, arrays: Mapping[str, Any]) -> Dataset:
        return QAWindows(arrays)

    def lengths(self, split: str) -> Sequence[int]:
        return self.datasets[split].arrays["input_ids"].lengths()  # type: ignore[attr-defined]

    def eval_dataloader(self, split: str) -> DataLoader:
        """Whole questions (all their windows), ``eval_batch_size`` questions a batch, in order."""
        base = super().eval_dataloader(split)  # checks that the split is labelled
        return DataLoader(QAQuestions(self.datasets[split].arrays), batch_size=base.batch_size, shuffle=False,
                          collate_fn=self.eval_collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def _pad(self) -> PadCollator:
        return PadCollator({"input_ids": self.tokenizer.pad_token_id, "token_type_ids": 0, "char_start": -1,
                            "char_end": -1}, self.pad_to_multiple_of)

    def train_collate(self, examples: Sequence[dict]) -> dict:
        return self._pad()(examples)

    def collate(self, examples: Sequence[dict]) -> dict:
        """Whole questions -> one batch of all their windows (:func:`.features.collate_questions`)."""
        return collate_questions(examples, self.tokenizer.pad_token_id, self.pad_to_multiple_of)

    # -- facts and prediction inputs -----------------------------------------------------------
    def model_facts(self) -> dict:
        if self.meta is None:
            self.setup()
        tok = self.tokenizer
        return {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id,
                SETTINGS_KEY: {"max_length": self.max_length, "doc_stride": self.doc_stride,
                               "version_2_with_negative": bool(self.meta.get("version_2_with_negative"))}}

    def input_column_names(self) -> dict[str, str | None]:
        return {"question": self.columns["question"], "context": self.columns["context"]}

    def read_inputs(self, path: str | Path) -> list[dict]:
        """Questions to answer from a file: SQuAD JSON (its questions with their passages), or a table / jsonl
        with question and context columns."""
        p = check_exists(path, "predict.file")
        if p.suffix.lower() == ".json":
            obj = load_json(p)
            if is_squad_json(obj):
                return [{"question": r["question"], "context": r["context"]} for r in read_squad_json(obj, str(p))]
        records = super().read_inputs(p)
        if any("context" not in r for r in records):
            raise DataError(f"{path}: no context column (the passage to answer from); set data.context_column=<name>")
        return records

    def encode_inputs(self, records: Sequence[dict | str]) -> list[dict]:
        records = self.input_records(records)
        for i, r in enumerate(records, 1):
            if "context" not in r:
                raise DataError(f"input {i}: a question without a passage ({r['question']!r}); give records with "
                                "'question' and 'context'")
        return question_items(self.tokenizer, [r["question"] for r in records], [r["context"] for r in records],
                              self.max_length, self.doc_stride)
