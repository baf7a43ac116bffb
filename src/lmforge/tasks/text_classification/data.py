"""Text classification data: single texts or text pairs, class labels or regression scores.

Sources (``data.source``): ``sample`` (the embedded sentiment sample), ``local`` (csv, tsv,
jsonl/json, parquet files; the format comes from the extension) and ``hub`` (a dataset name for
``datasets.load_dataset``). All three produce rows, and from there the path is the same: columns
are checked (or detected), labels parsed, texts tokenized once into a cache, batches padded
dynamically.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from lmforge.data.cache import TokenCache, cache_key, file_fingerprint, tokenizer_fingerprint
from lmforge.data.collate import PadCollator
from lmforge.data.samplers import LengthGroupedSampler
from lmforge.data.sources import columns_of, load_hub, read_table, where
from lmforge.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "samples"
SPLITS = ("train", "validation", "test")
TEXT_COLUMNS = ("text", "sentence", "sentence1", "question1", "premise", "question", "review", "content",
                "document", "tweet", "query")
PAIR_COLUMNS = ("text_pair", "sentence2", "question2", "hypothesis", "passage", "answer")
LABEL_COLUMNS = ("label", "labels", "score", "similarity", "sentiment", "target", "class", "gold_label", "y")
VALIDATION_NAMES = ("validation", "valid", "dev", "val")


class TokenizedDataset(Dataset):
    def __init__(self, data: dict):
        self.data = data
        self.keys = [k for k in ("input_ids", "token_type_ids") if k in data]

    def __len__(self) -> int:
        return len(self.data["input_ids"])

    def __getitem__(self, i: int) -> dict:
        item = {k: self.data[k][i] for k in self.keys}
        if "labels" in self.data:
            item["labels"] = self.data["labels"][i]
        return item


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip())


class TextClassificationDataModule(L.LightningDataModule):
    def __init__(
        self,
        tokenizer: str,
        source: str = "sample",
        sample: str = "sentiment",
        train_file: str | None = None,
        validation_file: str | None = None,
        test_file: str | None = None,
        hub_name: str | None = None,
        hub_config: str | None = None,
        text_column: str | None = None,
        text_pair_column: str | None = None,
        label_column: str | None = None,
        label_names: Sequence[str] | None = None,
        problem_type: str = "auto",
        validation_fraction: float = 0.1,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        group_by_length: bool = False,
        shuffle: bool = True,
        pad_to_multiple_of: int | None = None,
        tsv_quoting: str = "none",
        cache_dir: str = ".cache/lmforge",
        seed: int = 42,
    ):
        super().__init__()
        from transformers import AutoTokenizer

        if source not in ("sample", "local", "hub"):
            raise ConfigError(f"data.source={source}: expected sample, local or hub")
        if problem_type not in ("auto", "classification", "regression"):
            raise ConfigError(f"task.problem_type={problem_type}: expected auto, classification or regression")
        if max_length < 2:
            raise ConfigError(f"data.max_length={max_length}: expected at least 2")
        self.source, self.sample = source, sample
        self.files = {"train": train_file, "validation": validation_file, "test": test_file}
        if source == "sample":
            folder = SAMPLES_DIR / sample
            if not folder.is_dir():
                choices = sorted(p.name for p in SAMPLES_DIR.iterdir() if p.is_dir() and not p.name.startswith("_"))
                raise ConfigError(f"data.sample={sample}: no such embedded sample; available: {', '.join(choices)}")
            self.files = {s: str(folder / f"{s}.jsonl") for s in SPLITS}
        elif source == "local" and not train_file and not (label_names and (validation_file or test_file)):
            raise ConfigError("data=local needs data.train_file=<path> (csv, tsv, jsonl, json or parquet)")
        elif source == "hub" and not hub_name:
            raise ConfigError("data=hub needs data.hub_name=<dataset id on the Hugging Face Hub>")
        self.hub_name, self.hub_config = hub_name, hub_config
        self.columns = {"text": text_column, "pair": text_pair_column, "label": label_column}
        self.given_label_names = list(label_names) if label_names else None
        self.problem_type = problem_type
        self.validation_fraction = validation_fraction
        self.max_train_samples, self.max_eval_samples = max_train_samples, max_eval_samples
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size * 2
        self.num_workers = num_workers
        self.group_by_length, self.shuffle = group_by_length, shuffle
        self.tsv_quoting = tsv_quoting
        self.seed = seed
        self.tokenizer_name = tokenizer
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:  # GPT-style tokenizers: pad with eos, the attention mask hides it
            self.tokenizer.pad_token = self.tokenizer.eos_token
            pad_id = self.tokenizer.pad_token_id
        self.collator = PadCollator({"input_ids": pad_id, "token_type_ids": 0}, pad_to_multiple_of)
        self.cache = TokenCache(cache_dir, "text_classification", self._key())
        self.cache_hit: bool | None = None
        self.meta: dict | None = None
        self.datasets: dict[str, TokenizedDataset] = {}

    # -- caching -----------------------------------------------------------------------------
    def _key(self) -> str:
        if self.source == "hub":
            data = {"hub": self.hub_name, "config": self.hub_config}
        else:
            data = {s: file_fingerprint(f) if f and Path(f).is_file() else f for s, f in self.files.items()}
        return cache_key({
            "data": data, "columns": self.columns, "label_names": self.given_label_names,
            "problem_type": self.problem_type, "validation_fraction": self.validation_fraction,
            "max_train": self.max_train_samples, "max_eval": self.max_eval_samples, "seed": self.seed,
            "tokenizer": tokenizer_fingerprint(self.tokenizer), "max_length": self.max_length,
            "tsv_quoting": self.tsv_quoting,
        })

    def prepare_data(self) -> None:
        """Read, check and tokenize every split once; later runs with the same key only load."""
        splits = self._splits_present()
        if self.cache.has(splits):
            self.cache_hit = True
            return
        self.cache_hit = False
        raw, origin = self._read_raw()
        meta = self._check_and_label(raw, origin)
        for split, rows in raw.items():
            self.cache.save(split, self._tokenize(rows, meta, split))
        self.cache.save_meta(meta)

    def _splits_present(self) -> list[str]:
        if self.source == "local":
            return [s for s in SPLITS if self.files[s]] or ["train"]
        return list(SPLITS)

    def _read_raw(self) -> tuple[dict[str, list[dict]], dict[str, str]]:
        if self.source == "hub":
            hub = load_hub(self.hub_name, self.hub_config)
            raw, origin = {}, {}
            for split in SPLITS:
                names = VALIDATION_NAMES if split == "validation" else (split,)
                found = next((n for n in names if n in hub), None)
                if found:
                    raw[split], origin[split] = hub[found], f"{self.hub_name}[{found}]"
        else:
            raw, origin = {}, {}
            for split, path in self.files.items():
                if path:
                    raw[split] = read_table(path, key=f"data.{split}_file", tsv_quoting=self.tsv_quoting)
                    origin[split] = str(path)
                    if not raw[split]:
                        raise DataError(f"{path}: no rows (data.{split}_file)")
        if "train" in raw and "validation" not in raw:
            rows = raw["train"][:]
            random.Random(self.seed).shuffle(rows)
            n_val = max(1, int(len(rows) * self.validation_fraction))
            if len(rows) < 2:
                raise DataError(f"{origin['train']}: {len(rows)} row(s); need at least 2 to carve out a validation split")
            raw["validation"], raw["train"] = rows[:n_val], rows[n_val:]
            origin["validation"] = origin["train"]
            log.info("no validation file: carved %d rows (%.0f%%) out of %s for validation", n_val,
                     100 * self.validation_fraction, origin["train"])
        if "test" not in raw and "validation" in raw and self.source != "local":
            raw["test"], origin["test"] = raw["validation"], origin["validation"]
        for split, limit in (("train", self.max_train_samples), ("validation", self.max_eval_samples),
                             ("test", self.max_eval_samples)):
            if limit is not None and split in raw and len(raw[split]) > limit:
                idx = sorted(random.Random(self.seed).sample(range(len(raw[split])), limit))
                raw[split] = [raw[split][i] for i in idx]
        return raw, origin

    def _resolve_columns(self, rows: list[dict], where: str) -> dict[str, str | None]:
        present = columns_of(rows[0])

        def pick(role: str, candidates: Sequence[str], required: bool) -> str | None:
            name = self.columns[role]
            key = {"text": "data.text_column", "pair": "data.text_pair_column", "label": "data.label_column"}[role]
            if name is not None:
                if name not in present:
                    raise DataError(f"{key}={name!r} is not a column of {where}; its columns are: {', '.join(present)}")
                return name
            found = next((c for c in candidates if c in present), None)
            if found is None and required:
                raise DataError(
                    f"{where}: no {role} column found among {', '.join(present)}; "
                    f"set {key}=<one of them> (looked for {', '.join(candidates)})")
            return found

        text = pick("text", TEXT_COLUMNS, True)
        label = pick("label", LABEL_COLUMNS, True)
        pair = pick("pair", PAIR_COLUMNS, False)
        if pair == text:
            pair = None
        return {"text": text, "pair": pair, "label": label}

    def _check_and_label(self, raw: dict[str, list[dict]], origin: dict[str, str]) -> dict:
        first = "train" if "train" in raw else next(iter(raw))
        cols = self._resolve_columns(raw[first], origin[first])
        for split, rows in raw.items():
            missing = [c for c in cols.values() if c and c not in rows[0]]
            if missing:
                raise DataError(f"{origin[split]}: column(s) {missing} are missing; its columns are: "
                                f"{', '.join(columns_of(rows[0]))}")
            for row in rows:
                for role in ("text", "pair"):
                    c = cols[role]
                    if c and (_is_missing(row.get(c)) or not isinstance(row.get(c), str)):
                        raise DataError(f"{where(origin[split], row)}: empty or non-text value {row.get(c)!r} "
                                        f"in column {c!r}; expected a non-empty string")
                if _is_missing(row.get(cols["label"])):
                    raise DataError(f"{where(origin[split], row)}: missing label in column {cols['label']!r}")
        labels = {s: [r[cols["label"]] for r in rows] for s, rows in raw.items()}
        problem = self.problem_type
        if problem == "auto":
            problem = "regression" if self._looks_continuous(labels[first]) else "classification"
        meta: dict[str, Any] = {"columns": cols, "problem_type": problem, "origin": origin,
                                "sizes": {s: len(r) for s, r in raw.items()}}
        if problem == "regression":
            for s, rows in raw.items():
                for row in rows:
                    v = row[cols["label"]]
                    try:
                        float(v)
                    except (TypeError, ValueError):
                        raise DataError(f"{where(origin[s], row)}: label {v!r} in column {cols['label']!r} is not "
                                        "a number (task.problem_type=regression)") from None
            meta["label_names"] = None
            return meta
        if self.given_label_names:
            names = self.given_label_names
        else:
            train_vals = {self._norm_label(v) for v in labels[first]}
            names = sorted(train_vals, key=lambda x: (not x.lstrip("-").isdigit(), int(x) if x.lstrip("-").isdigit() else 0, x))
        index = {n: i for i, n in enumerate(names)}
        for s, rows in raw.items():
            for row in rows:
                v = row[cols["label"]]
                if self._label_index(v, index, names) is None:
                    known = "the training split" if not self.given_label_names else "data.label_names"
                    raise DataError(
                        f"{where(origin[s], row)}: label {v!r} does not occur in {known}; "
                        f"known labels: {', '.join(names)}")
        if len(names) < 2:
            raise DataError(f"{origin[first]}: only one label ({names[0]!r}) in column {cols['label']!r}; "
                            "classification needs at least two (or set task.problem_type=regression)")
        meta["label_names"] = names
        return meta

    @staticmethod
    def _norm_label(v: Any) -> str:
        if isinstance(v, bool):
            return str(int(v))
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v).strip()

    def _label_index(self, v: Any, index: dict[str, int], names: list[str]) -> int | None:
        key = self._norm_label(v)
        if key in index:
            return index[key]
        if self.given_label_names and key.isdigit() and int(key) < len(names):
            return int(key)  # integer ids given with named labels (label_names=[negative,positive])
        return None

    @staticmethod
    def _looks_continuous(values: list) -> bool:
        for v in values:
            if isinstance(v, float) and not v.is_integer():
                return True
            if isinstance(v, str) and any(ch in v for ch in ".eE") and v.strip().replace(".", "", 1).replace("-", "", 1).isdigit():
                return True
        return False

    def _tokenize(self, rows: list[dict], meta: dict, split: str) -> dict:
        from rich.progress import track

        cols = meta["columns"]
        texts = [r[cols["text"]] for r in rows]
        pairs = [r[cols["pair"]] for r in rows] if cols["pair"] else None
        enc: dict[str, list] = {"input_ids": []}
        chunk = 2048
        steps = range(0, len(texts), chunk)
        for start in track(steps, description=f"tokenizing {split} ({len(texts):,} rows)", transient=True,
                           disable=len(steps) < 3):
            out = self.tokenizer(texts[start: start + chunk], pairs[start: start + chunk] if pairs else None,
                                 truncation=True, max_length=self.max_length, return_attention_mask=False)
            for k in ("input_ids", "token_type_ids"):
                if k in out:
                    enc.setdefault(k, []).extend(np.asarray(x, dtype=np.int32) for x in out[k])
        if meta["problem_type"] == "regression":
            enc["labels"] = np.asarray([float(r[cols["label"]]) for r in rows], dtype=np.float32)
        else:
            names = meta["label_names"]
            index = {n: i for i, n in enumerate(names)}
            enc["labels"] = np.asarray([self._label_index(r[cols["label"]], index, names) for r in rows], dtype=np.int64)
        return enc

    # -- Lightning hooks ---------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.meta is None:
            if not self.cache.has(self._splits_present()):
                self.prepare_data()
            self.meta = self.cache.load_meta()
        for split in self.meta["sizes"]:
            if split not in self.datasets:
                self.datasets[split] = TokenizedDataset(self.cache.load(split))

    @property
    def label_names(self) -> list[str] | None:
        if self.meta is None:
            self.setup()
        return self.meta["label_names"]

    def model_facts(self) -> dict:
        if self.label_names is None:
            return {"num_labels": 1, "problem_type": "regression", "vocab_size": len(self.tokenizer),
                    "pad_token_id": self.tokenizer.pad_token_id}
        names = self.label_names
        return {"num_labels": len(names), "id2label": dict(enumerate(names)),
                "label2id": {n: i for i, n in enumerate(names)}, "problem_type": "single_label_classification",
                "vocab_size": len(self.tokenizer), "pad_token_id": self.tokenizer.pad_token_id}

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.datasets:
            raise DataError(f"no {split} split: set data.{split}_file=<path>")
        ds = self.datasets[split]
        kwargs: dict[str, Any] = dict(collate_fn=self.collator, num_workers=self.num_workers,
                                      persistent_workers=self.num_workers > 0)
        if train and self.group_by_length:
            lengths = [len(x) for x in ds.data["input_ids"]]
            return DataLoader(ds, batch_size=self.batch_size,
                              sampler=LengthGroupedSampler(lengths, self.batch_size, seed=self.seed), **kwargs)
        return DataLoader(ds, batch_size=self.batch_size if train else self.eval_batch_size,
                          shuffle=train and self.shuffle, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if "test" in self.datasets else "validation", False)

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[dict]:
        """Tokenize raw texts for prediction the same way the training data was tokenized."""
        for i, t in enumerate(texts):
            if _is_missing(t):
                raise DataError(f"text {i + 1} to predict is empty")
        out = self.tokenizer(list(texts), list(pairs) if pairs else None, truncation=True, max_length=self.max_length,
                             return_attention_mask=False)
        keys = [k for k in ("input_ids", "token_type_ids") if k in out]
        return [{k: np.asarray(out[k][i], dtype=np.int32) for k in keys} for i in range(len(texts))]
