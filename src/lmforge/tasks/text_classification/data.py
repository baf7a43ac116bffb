"""Text classification data: single texts or text pairs, class labels or regression scores.

The rest of the pipeline (sources: the embedded sample, local csv/tsv/jsonl/json/parquet files, hub
datasets; the carved validation split; the token cache; the resumable, optionally length-grouped
sampler; dynamic padding) is :class:`lmforge.data.datamodule.LMForgeDataModule`'s. What this task
adds is how a row becomes model inputs and what it checks:

* columns: ``data.text_column`` / ``text_pair_column`` / ``label_column``, or detected from the
  first split's header (``sentence1``/``sentence2``/``score`` ...); every row of every split is
  checked (a non-empty text, a label) with its file and line in the error;
* problem type: regression when the labels are non-integer numbers (``task.problem_type=auto``);
* label names: ``data.label_names``, a hub dataset's class names, or the training labels sorted;
  a label outside them is an error naming its file and line;
* a split without labels (GLUE's test files; hub test splits whose labels are all -1) is kept for
  prediction, not evaluated;
* encoding: ``tokenizer(text, text_pair, truncation=True, max_length)``, labels as class ids or
  float scores.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
from torch.utils.data import Dataset

from lmforge.data.datamodule import ArrayDataset, LMForgeDataModule, is_missing
from lmforge.data.collate import PadCollator
from lmforge.data.columns import LABEL_COLUMNS, PAIR_COLUMNS, TEXT_COLUMNS
from lmforge.data.sources import SplitRows, columns_of, read_tables, where
from lmforge.utils import progress
from lmforge.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ROLE_KEYS = {"text": "data.text_column", "pair": "data.text_pair_column", "label": "data.label_column"}


class TextClassificationDataModule(LMForgeDataModule):
    namespace = "text_classification"
    input_fields = ("text", "text_pair")

    def __init__(self, train_file: str | None = None, validation_file: str | None = None, test_file: str | None = None,
                 text_column: str | None = None, text_pair_column: str | None = None, label_column: str | None = None,
                 label_names: Sequence[str] | None = None, problem_type: str = "auto", max_length: int = 128,
                 pad_to_multiple_of: int | None = None, tsv_quoting: str = "none", sample: str = "sentiment",
                 batch_size: int = 32, eval_batch_size: int | None = None, **common: Any):
        if problem_type not in ("auto", "classification", "regression"):
            raise ConfigError(f"task.problem_type={problem_type}: expected auto, classification or regression")
        if max_length < 2:
            raise ConfigError(f"data.max_length={max_length}: expected at least 2")
        if tsv_quoting not in ("none", "minimal"):
            raise ConfigError(f"data.tsv_quoting={tsv_quoting}: expected 'none' or 'minimal'")
        self.columns = {"text": text_column, "pair": text_pair_column, "label": label_column}
        self.given_label_names = list(label_names) if label_names else None
        self.problem_type, self.max_length = problem_type, max_length
        self.pad_to_multiple_of, self.tsv_quoting = pad_to_multiple_of, tsv_quoting
        super().__init__(files={"train": train_file, "validation": validation_file, "test": test_file}, sample=sample,
                         batch_size=batch_size, eval_batch_size=eval_batch_size or batch_size * 2, **common)

    def check_tokenizer(self, tokenizer: Any) -> Any:
        if tokenizer.pad_token_id is None:  # GPT-style tokenizers: pad with eos, the attention mask hides it
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def settings(self) -> dict:
        return {"columns": self.columns, "label_names": self.given_label_names, "problem_type": self.problem_type,
                "max_length": self.max_length, "tsv_quoting": self.tsv_quoting}

    def read_file(self, paths: list, key: str) -> list[dict]:
        return read_tables(paths, key, self.tsv_quoting, self.max_line_bytes)

    # -- checks: columns, labels, problem type ----------------------------------------------
    def _pick_columns(self, present: list[str], origin: str, need_label: bool) -> dict[str, str | None]:
        def pick(role: str, candidates: Sequence[str], required: bool) -> str | None:
            name, key = self.columns[role], ROLE_KEYS[role]
            if name is not None:
                if name not in present and (required or role != "label"):
                    raise DataError(f"{key}={name!r} is not a column of {origin}; its columns are: {', '.join(present)}")
                return name if name in present else None
            found = next((c for c in candidates if c in present), None)
            if found is None and required:
                raise DataError(f"{origin}: no {role} column found among {', '.join(present)}; "
                                f"set {key}=<one of them> (looked for {', '.join(candidates)})")
            return found

        text = pick("text", TEXT_COLUMNS, True)
        label = pick("label", LABEL_COLUMNS, need_label)
        pair = pick("pair", PAIR_COLUMNS, False)
        return {"text": text, "pair": pair if pair != text else None, "label": label}

    def build_meta(self, raw: dict[str, SplitRows]) -> dict:
        first = "train" if "train" in raw else next(iter(raw))
        cols = self._pick_columns(columns_of(raw[first].rows[0]), raw[first].origin, need_label=True)
        labelled = []
        for split, data in raw.items():
            present = columns_of(data.rows[0])
            missing = [c for c in (cols["text"], cols["pair"]) if c and c not in present]
            if missing:
                raise DataError(f"{data.origin}: column(s) {missing} are missing; its columns are: {', '.join(present)}")
            for row in data.rows:
                for c in (cols["text"], cols["pair"]):
                    if c and (is_missing(row.get(c)) or not isinstance(row.get(c), str)):
                        raise DataError(f"{where(data.origin, row)}: empty or non-text value {row.get(c)!r} "
                                        f"in column {c!r}; expected a non-empty string")
            if self._labelled(split, data, cols["label"]):
                labelled.append(split)
        if first not in labelled:
            raise DataError(f"{raw[first].origin}: the labels in column {cols['label']!r} are all missing or -1; "
                            "a labelled split is needed to train or evaluate")
        meta: dict[str, Any] = {"columns": cols, "labelled": labelled}
        values = {s: [r[cols["label"]] for r in raw[s].rows] for s in labelled}
        problem = self.problem_type
        if problem == "auto":
            problem = "regression" if _looks_continuous(values[first]) else "classification"
        meta["problem_type"] = problem
        if problem == "regression":
            for s in labelled:
                for row, v in zip(raw[s].rows, values[s]):
                    try:
                        float(v)
                    except (TypeError, ValueError):
                        raise DataError(f"{where(raw[s].origin, row)}: label {v!r} in column {cols['label']!r} is not "
                                        "a number (task.problem_type=regression)") from None
            meta["label_names"] = None
            return meta
        given = self.given_label_names or self.hub_label_names.get(cols["label"])
        names = given or sorted({_norm_label(v) for v in values[first]}, key=_label_order)
        index = {n: i for i, n in enumerate(names)}
        for s in labelled:
            for row, v in zip(raw[s].rows, values[s]):
                if _label_index(v, index, given is not None) is None:
                    known = "data.label_names" if given else "the training split"
                    raise DataError(f"{where(raw[s].origin, row)}: label {v!r} does not occur in {known}; "
                                    f"known labels: {', '.join(names)}")
        if len(names) < 2:
            raise DataError(f"{raw[first].origin}: only one label ({names[0]!r}) in column {cols['label']!r}; "
                            "classification needs at least two (or set task.problem_type=regression)")
        meta["label_names"] = names
        return meta

    @staticmethod
    def _labelled(split: str, data: SplitRows, column: str | None) -> bool:
        """Whether a split carries labels: the column is there, and not every value is missing or -1
        (hub datasets mark hidden test labels -1). A partly missing label is an error."""
        if column is None or column not in data.rows[0]:
            log.info("%s: no label column; the %s split is kept for prediction only", data.origin, split)
            return False
        hidden = [is_missing(r.get(column)) or _norm_label(r.get(column)) == "-1" for r in data.rows]
        if all(hidden):
            log.info("%s: every label is missing or -1 (hidden); the %s split is kept for prediction only",
                     data.origin, split)
            return False
        for row, h in zip(data.rows, hidden):
            if h and is_missing(row.get(column)):
                raise DataError(f"{where(data.origin, row)}: missing label in column {column!r}")
        return True

    # -- encoding ----------------------------------------------------------------------------
    def _tokenize(self, texts: list[str], pairs: list[str] | None, what: str, report: bool = False) -> dict[str, list]:
        enc: dict[str, list] = {"input_ids": []}
        chunk = 2048
        for start in range(0, len(texts), chunk):
            out = self.tokenizer(texts[start: start + chunk], pairs[start: start + chunk] if pairs else None,
                                 truncation=True, max_length=self.max_length, return_attention_mask=False)
            for k in ("input_ids", "token_type_ids"):
                if k in out:
                    enc.setdefault(k, []).extend(np.asarray(x, dtype=np.int32) for x in out[k])
            if report:  # the datamodule's "tokenizing <split>" stage
                progress.advance(len(out["input_ids"]))
        return enc

    def encode_split(self, split: str, data: SplitRows, meta: dict) -> dict[str, Any]:
        cols, rows = meta["columns"], data.rows
        enc: dict[str, Any] = self._tokenize([r[cols["text"]] for r in rows],
                                             [r[cols["pair"]] for r in rows] if cols["pair"] else None, split,
                                             report=True)
        enc["lengths"] = np.asarray([len(x) for x in enc["input_ids"]], dtype=np.int32)
        if split in meta["labelled"]:
            values = [r[cols["label"]] for r in rows]
            if meta["problem_type"] == "regression":
                enc["labels"] = np.asarray([float(v) for v in values], dtype=np.float32)
            else:
                index = {n: i for i, n in enumerate(meta["label_names"])}
                enc["labels"] = np.asarray([_label_index(v, index, True) for v in values], dtype=np.int64)
        return enc

    def make_dataset(self, split: str, arrays: Mapping[str, Any]) -> Dataset:
        return ArrayDataset(arrays, ("input_ids", "token_type_ids", "labels"))

    def lengths(self, split: str) -> Sequence[int]:
        return self.datasets[split].arrays["lengths"]  # type: ignore[attr-defined]

    def collate(self, examples: Sequence[dict]) -> dict:
        return PadCollator({"input_ids": self.tokenizer.pad_token_id, "token_type_ids": 0}, self.pad_to_multiple_of)(examples)

    # -- facts and prediction inputs -----------------------------------------------------------
    @property
    def label_names(self) -> list[str] | None:
        if self.meta is None:
            self.setup()
        return self.meta["label_names"]

    def model_facts(self) -> dict:
        facts = {"vocab_size": len(self.tokenizer), "pad_token_id": self.tokenizer.pad_token_id}
        names = self.label_names
        if names is None:
            return {**facts, "num_labels": 1, "problem_type": "regression"}
        return {**facts, "num_labels": len(names), "id2label": dict(enumerate(names)),
                "label2id": {n: i for i, n in enumerate(names)}, "problem_type": "single_label_classification"}

    def input_columns(self, rows: list[dict], origin: str) -> dict[str, str | None]:
        cols = self._pick_columns(columns_of(rows[0]), origin, need_label=False)
        return {"text": cols["text"], "text_pair": cols["pair"]}

    def encode_inputs(self, records: Sequence[dict | str]) -> list[dict]:
        records = self.input_records(records)
        if len({"text_pair" in r for r in records}) > 1:
            raise DataError("inputs mix single texts and text pairs; give text_pair for all of them or none")
        pairs = [r["text_pair"] for r in records] if records and "text_pair" in records[0] else None
        enc = self._tokenize([r["text"] for r in records], pairs, "inputs")
        return [{k: enc[k][i] for k in enc} for i in range(len(records))]


def _norm_label(v: Any) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _label_order(x: str) -> tuple:
    numeric = x.lstrip("-").isdigit()
    return (not numeric, int(x) if numeric else 0, x)


def _label_index(v: Any, index: dict[str, int], given: bool) -> int | None:
    key = _norm_label(v)
    if key in index:
        return index[key]
    if given and key.isdigit() and int(key) < len(index):
        return int(key)  # integer ids given with named labels (label_names=[negative,positive])
    return None


def _looks_continuous(values: list) -> bool:
    for v in values:
        if isinstance(v, float) and not v.is_integer():
            return True
        if isinstance(v, str) and any(ch in v for ch in ".eE") and v.strip().replace(".", "", 1).replace("-", "", 1).isdigit():
            return True
    return False
