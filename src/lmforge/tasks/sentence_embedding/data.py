"""Sentence-embedding data: text pairs with an optional similarity score, or triplets.

The pipeline (sources, carved validation split, token cache, resumable sampler) is
:class:`lmforge.data.datamodule.LMForgeDataModule`'s. What this task adds:

* columns: ``data.text_column`` / ``text_pair_column`` / ``negative_column`` / ``label_column``
  (the score), or detected from the first split's header by known pairs of names
  (``sentence1``/``sentence2``, ``anchor``/``positive``/``negative``, ``query``/``document``,
  ``question1``/``question2``, ...), else by text classification's text, pair and label names;
  a table with one text column is an error listing its columns;
* scores: ``data.score_range`` ([0, 5] for STS-B; null: [0, 1] when every score is in it, else
  [0, 5]); a score outside the range is an error naming its file and line; the model sees the
  score scaled to [0, 1];
* the objective (``task.loss=auto``): cosine regression on scored pairs, in-batch negatives
  (``mnrl``) on unscored pairs and triplets; ``cosent``, ``mnrl`` and ``triplet`` by name;
* every text of every split is checked (an empty text names its file and line);
* encoding: each text on its own (``tokenizer(text, truncation=True, max_length)``), as the
  bi-encoder reads it; training batches drop their last short batch (in-batch negatives and the
  DDP gather need full batches).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from lmforge.data.collate import PadCollator
from lmforge.data.datamodule import ArrayDataset, LMForgeDataModule, is_missing
from lmforge.data.sources import SplitRows, columns_of, read_tables, where
from lmforge.data.columns import LABEL_COLUMNS, PAIR_COLUMNS, TEXT_COLUMNS
from lmforge.utils import progress
from lmforge.utils.errors import ConfigError, DataError

# (first text, second text) names that come together, tried in this order before the single-name lists
PAIR_SCHEMES = (("sentence1", "sentence2"), ("anchor", "positive"), ("query", "document"), ("query", "positive"),
                ("question1", "question2"), ("text", "text_pair"), ("premise", "hypothesis"), ("question", "answer"))
NEGATIVE_COLUMNS = ("negative", "hard_negative", "negative_document")
LOSSES = ("auto", "cosine", "cosent", "mnrl", "triplet")
FIELDS = {"a": "input_ids", "b": "pair_input_ids", "n": "neg_input_ids"}


class SentenceEmbeddingDataModule(LMForgeDataModule):
    namespace = "sentence_embedding"
    input_fields = ("text", "text_pair")
    drop_last = True

    def __init__(self, train_file: str | None = None, validation_file: str | None = None, test_file: str | None = None,
                 text_column: str | None = None, text_pair_column: str | None = None,
                 negative_column: str | None = None, label_column: str | None = None,
                 score_range: Sequence[float] | None = None, loss: str = "auto", max_length: int = 128,
                 pad_to_multiple_of: int | None = None, tsv_quoting: str = "none", sample: str = "paraphrases",
                 batch_size: int = 32, eval_batch_size: int | None = None,
                 label_names: Any = None, problem_type: Any = None, **common: Any):
        # label_names / problem_type: text classification's keys in data/_common.yaml, unused here
        if loss not in LOSSES:
            raise ConfigError(f"task.loss={loss}: expected one of {', '.join(LOSSES)}")
        if loss == "mnrl" and batch_size < 2:
            raise ConfigError(f"task.loss=mnrl with data.batch_size={batch_size}: in-batch negatives need at least "
                              "2 pairs per batch (the other pairs' positives are each anchor's negatives); "
                              "set data.batch_size>=2 (32 or more is usual)")
        if max_length < 2:
            raise ConfigError(f"data.max_length={max_length}: expected at least 2")
        if score_range is not None:
            score_range = [float(x) for x in score_range]
            if len(score_range) != 2 or not score_range[0] < score_range[1]:
                raise ConfigError(f"data.score_range={score_range}: expected [low, high] with low < high, e.g. [0, 5]")
        self.columns = {"a": text_column, "b": text_pair_column, "n": negative_column, "score": label_column}
        self.score_range, self.loss = score_range, loss
        self.max_length, self.pad_to_multiple_of, self.tsv_quoting = max_length, pad_to_multiple_of, tsv_quoting
        super().__init__(files={"train": train_file, "validation": validation_file, "test": test_file}, sample=sample,
                         batch_size=batch_size, eval_batch_size=eval_batch_size or batch_size * 2, **common)

    def settings(self) -> dict:
        return {"columns": self.columns, "score_range": self.score_range, "loss": self.loss,
                "max_length": self.max_length, "tsv_quoting": self.tsv_quoting}

    def read_file(self, paths: list, key: str) -> list[dict]:
        return read_tables(paths, key, self.tsv_quoting, self.max_line_bytes)

    # -- columns -------------------------------------------------------------------------------
    def pick_columns(self, present: list[str], origin: str, need_pair: bool = True) -> dict[str, str | None]:
        """Text, pair, negative and score columns of a table with columns ``present``."""
        keys = {"a": "data.text_column", "b": "data.text_pair_column", "n": "data.negative_column",
                "score": "data.label_column"}
        for role, name in self.columns.items():
            if name is not None and name not in present and role != "score":
                raise DataError(f"{keys[role]}={name!r} is not a column of {origin}; its columns are: {', '.join(present)}")
        a, b = self.columns["a"], self.columns["b"]
        if a is None or b is None:
            for x, y in PAIR_SCHEMES:
                if (a in (None, x)) and (b in (None, y)) and x in present and y in present:
                    a, b = x, y
                    break
        a = a or next((c for c in TEXT_COLUMNS if c in present), None)
        b = b or next((c for c in (*PAIR_COLUMNS, "positive", "document") if c in present and c != a), None)
        if a is None or (b is None and need_pair):
            found = [c for c in (a, b) if c]
            raise DataError(f"{origin}: sentence embedding needs two text columns (a pair), found "
                            f"{len(found)} ({', '.join(map(repr, found)) or 'none'}) among its columns: "
                            f"{', '.join(present)}; set data.text_column=<name> and data.text_pair_column=<name>")
        n = self.columns["n"] or next((c for c in NEGATIVE_COLUMNS if c in present), None)
        score = self.columns["score"]
        if score is None:
            score = next((c for c in LABEL_COLUMNS if c in present), None)
        return {"a": a, "b": b, "n": n, "score": score if score in present else None}

    # -- checks ----------------------------------------------------------------------------------
    def build_meta(self, raw: dict[str, SplitRows]) -> dict:
        first = "train" if "train" in raw else next(iter(raw))
        named_score = self.columns["score"]
        if named_score is not None and named_score not in columns_of(raw[first].rows[0]):
            raise DataError(f"data.label_column={named_score!r} is not a column of {raw[first].origin}; its columns are: "
                            f"{', '.join(columns_of(raw[first].rows[0]))}")
        cols = self.pick_columns(columns_of(raw[first].rows[0]), raw[first].origin)
        texts = [c for c in (cols["a"], cols["b"], cols["n"]) if c]
        scored = cols["score"] is not None
        labelled = []
        for split, data in raw.items():
            present = columns_of(data.rows[0])
            missing = [c for c in texts if c not in present]
            if missing:
                raise DataError(f"{data.origin}: column(s) {missing} are missing; its columns are: {', '.join(present)}")
            for row in data.rows:
                for c in texts:
                    if is_missing(row.get(c)) or not isinstance(row.get(c), str):
                        raise DataError(f"{where(data.origin, row)}: empty or non-text value {row.get(c)!r} "
                                        f"in column {c!r}; expected a non-empty string")
            if not scored or cols["score"] in present:
                labelled.append(split)
        objective = self.loss
        if objective == "auto":
            objective = "cosine" if scored else "mnrl"
        if objective in ("cosine", "cosent") and not scored:
            raise DataError(f"{raw[first].origin}: task.loss={objective} needs a similarity score column (looked for "
                            f"{', '.join(LABEL_COLUMNS)}; or set data.label_column=<name>); its columns are: "
                            f"{', '.join(columns_of(raw[first].rows[0]))}")
        if objective == "triplet" and not cols["n"]:
            raise DataError(f"{raw[first].origin}: task.loss=triplet needs a negative column (looked for "
                            f"{', '.join(NEGATIVE_COLUMNS)}; or set data.negative_column=<name>)")
        if objective == "mnrl" and self.batch_size < 2:
            raise ConfigError(f"task.loss=mnrl (chosen for unscored pairs) with data.batch_size={self.batch_size}: "
                              "in-batch negatives need at least 2 pairs per batch; set data.batch_size>=2")
        meta: dict[str, Any] = {"columns": cols, "labelled": labelled, "objective": objective, "scored": scored}
        if scored:
            meta["score_range"] = self._check_scores(raw, labelled, cols["score"])
        return meta

    def _check_scores(self, raw: dict[str, SplitRows], labelled: list[str], column: str) -> list[float]:
        values = {}
        for s in labelled:
            vals = []
            for row in raw[s].rows:
                v = row.get(column)
                try:
                    x = float(v)
                    if x != x:
                        raise ValueError
                except (TypeError, ValueError):
                    raise DataError(f"{where(raw[s].origin, row)}: score {v!r} in column {column!r} is not a "
                                    "number") from None
                vals.append(x)
            values[s] = vals
        declared = self.score_range is not None
        lo, hi = self.score_range if declared else (0.0, 1.0 if all(0 <= x <= 1 for v in values.values() for x in v)
                                                    else 5.0)
        for s in labelled:
            for row, x in zip(raw[s].rows, values[s]):
                if not lo <= x <= hi:
                    how = "the declared range (data.score_range)" if declared else \
                        "the range assumed from the data (0-1 or 0-5; declare another with data.score_range=[low,high])"
                    raise DataError(f"{where(raw[s].origin, row)}: score {x:g} in column {column!r} is outside "
                                    f"[{lo:g}, {hi:g}], {how}")
        return [lo, hi]

    # -- encoding -------------------------------------------------------------------------------
    def _tokenize(self, texts: list[str], share: float = 0.0) -> list[np.ndarray]:
        """Token ids per text; each text advances the open progress stage by ``share`` rows."""
        out = []
        for start in range(0, len(texts), 2048):
            enc = self.tokenizer(texts[start: start + 2048], truncation=True, max_length=self.max_length,
                                 return_attention_mask=False, return_token_type_ids=False)
            out.extend(np.asarray(x, dtype=np.int32) for x in enc["input_ids"])
            if share:
                progress.advance(len(enc["input_ids"]) * share)
        return out

    def encode_split(self, split: str, data: SplitRows, meta: dict) -> dict[str, Any]:
        cols, rows = meta["columns"], data.rows
        enc: dict[str, Any] = {}
        roles = [role for role in FIELDS if cols[role]]
        for role, field in FIELDS.items():
            if cols[role]:  # each text column is one pass over the rows: a row is done after all of them
                enc[field] = self._tokenize([r[cols[role]] for r in rows], share=1 / len(roles))
        enc["lengths"] = np.asarray([len(x) for x in enc["input_ids"]], dtype=np.int32)
        if meta["scored"] and split in meta["labelled"]:
            lo, hi = meta["score_range"]
            enc["labels"] = np.asarray([(float(r[cols["score"]]) - lo) / (hi - lo) for r in rows], dtype=np.float32)
        return enc

    def make_dataset(self, split: str, arrays: Mapping[str, Any]) -> Dataset:
        return ArrayDataset(arrays, (*FIELDS.values(), "labels"))

    def lengths(self, split: str) -> Sequence[int]:
        """The longest text of each example (anchor, pair, negative): each text is padded to its own batch
        maximum, so data.group_by_length groups by the widest one (on STS-B: 12% padding, 18% by the anchor alone)."""
        arrays = self.datasets[split].arrays  # type: ignore[attr-defined]
        longest = np.asarray(arrays["lengths"])
        for field in ("pair_input_ids", "neg_input_ids"):
            if field in arrays:
                longest = np.maximum(longest, np.fromiter((len(x) for x in arrays[field]), dtype=np.int64,
                                                          count=len(longest)))
        return longest

    def collate(self, examples: Sequence[dict]) -> dict:
        """Each text field padded on its own, with its own mask (``attention_mask``, ``pair_attention_mask``, ...)."""
        pad = PadCollator({"input_ids": self.tokenizer.pad_token_id}, self.pad_to_multiple_of)
        batch: dict = {}
        for field in FIELDS.values():
            if field in examples[0]:
                part = pad([{"input_ids": e[field]} for e in examples])
                prefix = field[: -len("input_ids")]
                batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"] = part["input_ids"], part["attention_mask"]
        if "labels" in examples[0]:
            batch["labels"] = torch.as_tensor(np.asarray([e["labels"] for e in examples], dtype=np.float32))
        return batch

    # -- facts and prediction inputs --------------------------------------------------------------
    def model_facts(self) -> dict:
        if self.meta is None:
            self.setup()
        return {"vocab_size": len(self.tokenizer), "pad_token_id": self.tokenizer.pad_token_id,
                "objective": self.meta["objective"], "scored": self.meta["scored"], "max_length": self.max_length}

    def input_columns(self, rows: list[dict], origin: str) -> dict[str, str | None]:
        cols = self.pick_columns(columns_of(rows[0]), origin, need_pair=False)
        return {"text": cols["a"], "text_pair": cols["b"]}

    def encode_inputs(self, records: Sequence[dict | str]) -> list[dict]:
        records = self.input_records(records)
        if len({"text_pair" in r for r in records}) > 1:
            raise DataError("inputs mix single texts and text pairs; give text_pair for all of them or none")
        out = [{"input_ids": x} for x in self._tokenize([r["text"] for r in records])]
        if records and "text_pair" in records[0]:
            for e, x in zip(out, self._tokenize([r["text_pair"] for r in records])):
                e["pair_input_ids"] = x
        return out

