"""``LMForgeDataModule``: the one data pipeline every task's datamodule is built on.

What ``train()`` and ``evaluate()`` call, and nothing else:

* ``tokenizer``: ready after ``prepare_data()`` (the model's own, or one trained on the training
  split and cached, for tasks that can train one);
* ``prepare_data()``: read, check and tokenize every split once into the token cache (a later run
  with the same data, tokenizer and settings only loads); ``setup(stage)`` only loads;
* ``model_facts() -> dict`` (task): facts for the HF config (num_labels, id2label, vocab_size, ...);
* ``labelled_splits() -> list[str]``: which of train, validation, test and file carry labels and can
  be evaluated; an unlabelled split (GLUE's hidden test labels) is kept for prediction only;
* ``eval_dataloader(split)``: any labelled split, in order; ``val_dataloader()`` and
  ``test_dataloader()`` are its validation and test cases and never fall back to another split;
* ``train_dataloader()``: the resumable sampler (:mod:`lmforge.data.samplers`) of every task:
  shuffled or length-grouped data epochs seeded by ``seed + epoch``, sharded over ranks, continuing
  at the next unseen batch after a resume; ``state_dict()`` / ``load_state_dict()`` check that a
  resumed run reads the data the same way;
* ``eval_file``: a labelled file read with the task's reader and checks, exposed as split ``file``;
  the run's own splits are then not read (eval.py evaluates one source; label names come from
  ``data.label_names``, which eval.py sets from the checkpoint);
* ``input_fields`` (task), ``read_inputs(path)``, ``encode_inputs(records)`` (task),
  ``collate(examples)``: prediction inputs from the command line or a file, tokenized exactly as
  the training data, and batched.

A task's datamodule says only how a row becomes model inputs and what it checks, through the
hooks marked *task* below: ``read_file``, ``rows_from_hub``, ``build_meta``, ``encode_split``,
``make_dataset``, ``settings``, ``model_facts``, ``encode_inputs``, ``collate`` (and, where it
needs them, ``check_tokenizer``, ``lengths``, ``stream_dataset``, ``input_column_names``).

Everything else is here, written once: sources (sample, local files, hub datasets, hub split
names mapped), carving a validation split (:func:`lmforge.data.splits.carve_mask`, seeded by
``data.split_seed`` so a ``seed=1,2,3`` sweep shares its split and its token cache), sample limits,
the cache key (data fingerprint + tokenizer fingerprint + the task's settings), tokenizer training
(:mod:`lmforge.data.tokenizer_training`), streaming of the training split, the samplers and the
resume checks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from lmforge.data.cache import TokenCache, cache_key, file_fingerprint, tokenizer_fingerprint
from lmforge.data.collate import PadCollator
from lmforge.data.samplers import ResumableLoader, ResumableSampler
from lmforge.data.sources import (MAX_LINE_BYTES, TABLE_FORMATS, SplitRows, check_exists, columns_of, load_hub,
                                  read_lines, read_table, read_tables, resolve_files, where)
from lmforge.data.splits import EVAL_FILE, SPLITS, carve, carve_mask, map_hub_splits, ordered, subsample
from lmforge.data.tokenizer_training import train_into, training_settings
from lmforge.utils import progress
from lmforge.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"
SOURCES = ("sample", "local", "hub")


def world() -> tuple[int, int]:
    """(rank, world size) of this process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_missing(v: Any) -> bool:
    """None, NaN or a blank string: no value."""
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


class ArrayDataset(Dataset):
    """Example ``i`` of a cached split: ``{field: arrays[field][i]}`` for the listed fields it has."""

    def __init__(self, arrays: Mapping[str, Any], fields: Sequence[str]):
        self.arrays = arrays
        self.fields = [f for f in fields if f in arrays]

    def __len__(self) -> int:
        return len(self.arrays[self.fields[0]])

    def __getitem__(self, i: int) -> dict:
        return {f: self.arrays[f][i] for f in self.fields}


class LMForgeDataModule(L.LightningDataModule):
    """Base of every task's datamodule (see the module docstring). A subclass sets its own attributes,
    then calls ``super().__init__(files={split: spec}, **the common data keys)``."""

    namespace = "data"  # the task's folder in the token cache
    input_fields: tuple[str, ...] = ("text",)  # fields of a raw prediction input record (task)
    file_key = "file"  # the task's file keys: data.train_file, data.validation_file, ...
    file_suffixes: tuple[str, ...] = tuple(TABLE_FORMATS)  # what read_file reads (embedded samples)
    tokenizer_kind: str | None = None  # what data.tokenizer_training trains (None: the task never trains one)
    drop_last = False  # training batches: keep the last short batch of an epoch
    progress_unit = "rows"  # what the "tokenizing <split>" progress stage counts (task: sentences, questions, ...)

    def __init__(self, *, tokenizer: str | None = None, files: Mapping[str, Any] | None = None, source: str = "sample",
                 sample: str | None = None, hub_name: str | None = None, hub_config: str | None = None,
                 eval_file: str | None = None, validation_fraction: float = 0.1, split_seed: int = 1234,
                 max_train_samples: int | None = None, max_eval_samples: int | None = None, batch_size: int = 32,
                 eval_batch_size: int | None = None, num_workers: int = 0, shuffle: bool = True,
                 group_by_length: bool = False, streaming: bool = False, tokenizer_training: Mapping | None = None,
                 model: Mapping | None = None, cache_dir: str = ".cache/lmforge", seed: int = 42,
                 trust_remote_code: bool = False, max_line_bytes: int | None = MAX_LINE_BYTES):
        super().__init__()
        self.max_line_bytes = max_line_bytes  # the longest line a table/CoNLL/parallel file may hold (None: any)
        self.trust_remote_code = bool(trust_remote_code)  # model.trust_remote_code: the tokenizer's code too
        source = "local" if source == "text" else source  # data=text: the language-model tasks' name for local files
        if source not in SOURCES:
            raise ConfigError(f"data.source={source}: expected sample, local (text) or hub")
        if not 0.0 <= validation_fraction < 1.0:
            raise ConfigError(f"data.validation_fraction={validation_fraction}: expected a fraction in [0, 1)")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size}: expected at least 1")
        self.source, self.sample = source, sample
        self.hub_name, self.hub_config = hub_name, hub_config
        self.eval_file = str(check_exists(eval_file, "data.eval_file")) if eval_file else None
        self.validation_fraction, self.split_seed = validation_fraction, split_seed
        self.max_train_samples, self.max_eval_samples = max_train_samples, max_eval_samples
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.shuffle, self.group_by_length = num_workers, shuffle, group_by_length
        self.streaming = streaming
        self.cache_root = Path(cache_dir).expanduser()
        self.seed = seed
        self.context = None  # the model's context, where the task is given the model config
        if model is not None:
            from lmforge.models.factory import context_length

            self.context = context_length(model)

        # with an evaluation file, that file is the data: the run's own splits are not read
        self.files = {} if self.eval_file else self._resolve_sources(dict(files or {}))
        if streaming and (source == "hub" or type(self).stream_dataset is LMForgeDataModule.stream_dataset):
            raise ConfigError(f"data.streaming=true: a {self.namespace} datamodule does not stream "
                              f"{'hub datasets' if source == 'hub' else 'its data'}; set data.streaming=false")
        self._resolve_tokenizer(tokenizer, tokenizer_training)
        self.cache = TokenCache(self.cache_root, self.namespace, cache_key(self._key_parts()))
        self.cache_hit: bool | None = None
        self.meta: dict | None = None
        self.datasets: dict[str, Dataset] = {}
        self.hub_label_names: dict[str, list[str]] = {}
        self._stream_counts: list[int] | None = None
        self._resume_state: dict | None = None
        self._stream: Any = None

    # -- task hooks --------------------------------------------------------------------------
    def read_file(self, paths: list[Path], key: str) -> list:
        """(task) The rows of a split read from ``paths`` (``key`` names the setting in errors)."""
        return read_tables(paths, key, max_line_bytes=self.max_line_bytes)

    def rows_from_hub(self, rows: list[dict], origin: str) -> list:
        """(task) A hub split's rows as this task's rows."""
        return rows

    def build_meta(self, raw: dict[str, SplitRows]) -> dict:
        """(task) Check the rows and derive what encoding needs (columns, label names, ...), JSON-able;
        ``labelled``: the splits that carry labels (default: all)."""
        return {}

    def encode_split(self, split: str, data: SplitRows, meta: dict) -> dict[str, Any]:
        """(task) Tokenize a split: ``{name: np.ndarray or list of 1-D arrays}``, one entry per example."""
        raise NotImplementedError

    def split_size(self, arrays: Mapping[str, Any]) -> int:
        """(task) How many examples a split's encoded arrays hold (default: the length of the first)."""
        return len(next(iter(arrays.values())))

    def make_dataset(self, split: str, arrays: Mapping[str, Any]) -> Dataset:
        """(task) The Dataset over a split's cached arrays."""
        return ArrayDataset(arrays, list(arrays))

    def text_settings(self) -> dict:
        """(task) The settings that decide the texts of the rows (what a tokenizer is trained on)."""
        return {}

    def settings(self) -> dict:
        """(task) Every setting that changes the tokenized examples (part of the cache key)."""
        return self.text_settings()

    def check_tokenizer(self, tokenizer: Any) -> Any:
        """(task) Check (or complete) the tokenizer the task is given; return it."""
        return tokenizer

    def tokenizer_texts(self, items: Iterable) -> Iterable[str]:
        """(task) The texts a tokenizer is trained on, from the training split's rows."""
        return items

    def stream_items(self, paths: list[Path]) -> Iterator:
        """(task) The rows of ``paths`` one at a time, without holding them (streaming)."""
        return iter(self.read_file(paths, f"data.train_{self.file_key}"))

    def stream_dataset(self, paths: list[Path], skip: dict[str, np.ndarray]) -> Any:
        """(task) The streamed training split (an IterableDataset), without the held-out rows ``skip``."""
        raise NotImplementedError

    def lengths(self, split: str) -> Sequence[int]:
        """(task) Example lengths, for data.group_by_length."""
        raise ConfigError(f"data.group_by_length=true: a {self.namespace} datamodule does not group by length")

    def model_facts(self) -> dict:
        """(task) Facts for the HF config."""
        tok = self.tokenizer
        return {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id}

    def input_column_names(self) -> dict[str, str | None]:
        """(task) Configured column of each input field (data.text_column, ...); None: detect."""
        return {}

    def encode_inputs(self, records: Sequence[dict | str]) -> list[dict]:
        """(task) Raw prediction inputs -> model-ready examples, tokenized exactly as training data."""
        raise ConfigError(f"a {self.namespace} model does not predict on raw inputs")

    def collate(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        """(task) A batch of examples (training, evaluation and encoded prediction inputs alike by default)."""
        return PadCollator({"input_ids": self.tokenizer.pad_token_id, "token_type_ids": 0})(examples)

    def train_collate(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        return self.collate(examples)

    def eval_collate(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        return self.collate(examples)

    # -- sources -----------------------------------------------------------------------------
    def _key(self, split: str) -> str:
        return f"data.{split}_{self.file_key}"

    def _resolve_sources(self, files: dict[str, Any]) -> dict[str, list[Path] | None]:
        if self.source == "sample":
            folder = SAMPLES_DIR / str(self.sample)

            def found(s: str, f: Path) -> list[Path]:
                return sorted(p for p in f.glob(f"{s}.*") if p.suffix.lower() in self.file_suffixes)

            if not found("train", folder):
                have = sorted(p.name for p in SAMPLES_DIR.iterdir() if p.is_dir() and found("train", p))
                raise ConfigError(f"data.sample={self.sample}: no such embedded sample for this task; "
                                  f"available: {', '.join(have)}")
            return {s: found(s, folder)[:1] or None for s in SPLITS}
        if self.source == "hub":
            if not self.hub_name:
                raise ConfigError("data=hub needs data.hub_name=<dataset id on the Hugging Face Hub>")
            return {}
        out = {s: resolve_files(files[s], self._key(s)) if files.get(s) else None for s in SPLITS}
        if not any(out.values()):
            raise ConfigError(f"data=local needs {self._key('train')}=<path> "
                              f"({', '.join(sorted({s.lstrip('.') for s in self.file_suffixes}))})")
        return out

    def read_splits(self) -> dict[str, SplitRows]:
        """Every split's rows: read, hub names mapped, validation carved when none is given, limits applied."""
        raw: dict[str, SplitRows] = {}
        if self.source == "hub":
            hub = load_hub(self.hub_name, self.hub_config)
            self.hub_label_names = hub.label_names
            for split, name in map_hub_splits(list(hub)).items():
                origin = f"{self.hub_name}[{name}]"
                raw[split] = SplitRows(self.rows_from_hub(hub[name], origin), origin)
            if "train" not in raw:
                raise DataError(f"data.hub_name={self.hub_name}: no training split (it has {', '.join(hub)})")
        else:
            for split, paths in self.files.items():
                if paths and not (split == "train" and self.streaming):
                    raw[split] = SplitRows(self.read_file(paths, self._key(split)), ", ".join(map(str, paths)))
        for split, data in raw.items():
            if not data.rows:
                raise DataError(f"{data.origin}: no rows in the {split} split")
        if "validation" not in raw and self.validation_fraction > 0 and ("train" in raw or self.streaming):
            raw["validation"] = self._carve_stream() if self.streaming else self._carve(raw)
        for split, limit in (("train", self.max_train_samples), ("validation", self.max_eval_samples),
                             ("test", self.max_eval_samples)):
            if split in raw:
                raw[split].rows = subsample(raw[split].rows, limit, self.split_seed)
        return raw

    def _carve(self, raw: dict[str, SplitRows]) -> SplitRows:
        data = raw["train"]
        try:
            train, val = carve(data.rows, self.validation_fraction, self.split_seed)
        except ValueError as e:
            raise DataError(f"{data.origin}: {e}") from None
        log.info("no validation split: carved %d of %d rows out of %s (data.validation_fraction=%s, "
                 "data.split_seed=%s)", len(val), len(data.rows), data.origin, self.validation_fraction, self.split_seed)
        data.rows = train
        return SplitRows(val, data.origin)

    def _carve_stream(self) -> SplitRows:
        """The validation rows carved out of streamed training files: the same rule as in memory, over the
        rows' positions in the corpus (counted in one pass, collected in a second)."""
        paths = self.files["train"]
        mask = self._held_out_mask()
        origin = ", ".join(map(str, paths))
        rows = progress.track(self.stream_items(paths), f"carving validation {self.progress_unit} out of "
                              f"{progress.short_origin(origin)}", total=len(mask), unit=self.progress_unit)
        return SplitRows([x for x, m in zip(rows, mask) if m], origin)

    def _held_out_mask(self) -> np.ndarray:
        """Streaming: which rows of the training files (in corpus order) are the carved validation split."""
        if self.files.get("validation") or self.validation_fraction == 0:
            return np.zeros(0, dtype=bool)
        if self._stream_counts is None:
            counts = (self.meta or {}).get("stream_counts")
            self._stream_counts = counts or [
                sum(1 for _ in progress.track(self.stream_items([p]), f"counting {self.progress_unit} in {p.name}",
                                              unit=self.progress_unit)) for p in self.files["train"]]
        try:
            return carve_mask(sum(self._stream_counts), self.validation_fraction, self.split_seed)
        except ValueError as e:
            raise DataError(f"{', '.join(map(str, self.files['train']))}: {e}") from None

    def _stream_skip(self) -> dict[str, np.ndarray]:
        """Per training file, which of its rows are held out for validation (streaming)."""
        mask = self._held_out_mask()
        if not mask.any():
            return {}
        parts = np.split(mask, np.cumsum(self._stream_counts)[:-1])
        return {str(p): part for p, part in zip(self.files["train"], parts)}

    def _train_items(self, raw: dict[str, SplitRows] | None) -> Iterable:
        if self.streaming:
            mask = self._held_out_mask()
            return (x for i, x in enumerate(self.stream_items(self.files["train"])) if not (i < len(mask) and mask[i]))
        if raw is None or "train" not in raw:
            raise DataError("no training split to train the tokenizer on; give the training data, or a tokenizer "
                            "(model.tokenizer=<folder>, e.g. the run's export/)")
        return raw["train"].rows

    # -- tokenizer and cache keys --------------------------------------------------------------
    def _resolve_tokenizer(self, name: str | None, training: Mapping | None) -> None:
        tt = training_settings(training, self.tokenizer_kind) if self.tokenizer_kind else None
        self.tokenizer_training = tt
        # an evaluation file is read with the tokenizer the run trained with (eval.py passes its export)
        self.train_tokenizer = tt is not None and ((tt["enabled"] is True and not (self.eval_file and name))
                                                   or (tt["enabled"] == "auto" and not name))
        if not self.train_tokenizer and not name:
            raise ConfigError("no tokenizer: the model names none (model.tokenizer / model.name_or_path)"
                              + (" and data.tokenizer_training.enabled=false" if tt else ""))
        self.tokenizer_name = None if self.train_tokenizer else name
        self._tokenizer = None
        self.tokenizer_dir = None
        if self.tokenizer_name:
            from transformers import AutoTokenizer

            self._tokenizer = self.check_tokenizer(AutoTokenizer.from_pretrained(
                self.tokenizer_name, trust_remote_code=self.trust_remote_code))
        else:
            assert tt is not None
            parts = {**self._data_parts(), "streaming": self.streaming, "context": self.context,
                     "texts": self.text_settings(), "training": {k: tt[k] for k in sorted(tt) if k != "enabled"}}
            self.tokenizer_dir = self.cache_root / "tokenizers" / f"{tt['kind']}-{tt['vocab_size']}-{cache_key(parts)[:16]}"

    @property
    def tokenizer(self) -> Any:
        """The tokenizer; a trained one is loaded from its cache folder once ``prepare_data`` made it."""
        if self._tokenizer is None and self.tokenizer_dir is not None and self.tokenizer_dir.is_dir():
            from transformers import PreTrainedTokenizerFast

            self._tokenizer = self.check_tokenizer(PreTrainedTokenizerFast.from_pretrained(
                str(self.tokenizer_dir), trust_remote_code=False))  # lmforge's own tokenizer: no code
        return self._tokenizer

    def _ensure_tokenizer(self, raw: dict[str, SplitRows] | None) -> Any:
        """The tokenizer, training it on the training split (once, cached) when the task trains one."""
        if self.tokenizer is not None:
            return self.tokenizer
        assert self.tokenizer_dir is not None and self.tokenizer_training is not None
        if raw is None and not self.streaming and not self.eval_file:
            raw = self.read_splits()
        tt = self.tokenizer_training
        log.info("training a %s tokenizer (%d tokens) on the training split -> %s", tt["kind"], tt["vocab_size"],
                 self.tokenizer_dir)
        train_into(self.tokenizer_dir, self.tokenizer_texts(self._train_items(raw)), tt["kind"], int(tt["vocab_size"]),
                   int(tt["min_frequency"]), bool(tt["lowercase"]), self.context or 1_000_000,
                   info={**self._data_parts(), "streaming": self.streaming, "context": self.context, **tt})
        return self.tokenizer

    def _data_parts(self) -> dict:
        if self.eval_file:
            return {"eval_file": file_fingerprint(self.eval_file)}
        if self.source == "hub":
            data: Any = {"hub": self.hub_name, "config": self.hub_config}
        else:
            data = {s: [file_fingerprint(f) for f in fs] for s, fs in self.files.items() if fs}
        return {"data": data, "split": {"validation_fraction": self.validation_fraction, "split_seed": self.split_seed,
                                        "max_train": self.max_train_samples, "max_eval": self.max_eval_samples}}

    def _tokenizer_identity(self) -> Any:
        if self.train_tokenizer:
            return {"trained": self.tokenizer_dir.name}
        return {"name": self.tokenizer_name, "fingerprint": tokenizer_fingerprint(self._tokenizer)}

    def _key_parts(self) -> dict:
        """The one cache key of every task: the data, the tokenizer and the task's settings."""
        return {**self._data_parts(), "tokenizer": self._tokenizer_identity(), "task": self.settings(),
                "streaming": self.streaming}

    # -- tokenize once -----------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Read, check and tokenize every split once; later runs with the same key only load."""
        if self._ready():
            self.cache_hit = True
            return
        self.cache_hit = False
        if self.eval_file:
            raw = {EVAL_FILE: SplitRows(self.read_file([Path(self.eval_file)], "data.eval_file"), self.eval_file)}
            log.info("data.eval_file=%s: evaluating this file; the run's own splits are not read", self.eval_file)
        else:
            raw = self.read_splits()
        self._ensure_tokenizer(raw)
        meta = self.build_meta(raw)
        if self.eval_file and EVAL_FILE not in meta.get("labelled", [EVAL_FILE]):
            raise DataError(f"data.eval_file={self.eval_file}: the file carries no labels, so it cannot be "
                            "evaluated (predict on it with predict.file=<path> instead)")
        if self._stream_counts is not None:
            meta["stream_counts"] = self._stream_counts
        labelled = meta.setdefault("labelled", list(raw))
        sizes, origin = {}, {}
        for split in ordered(raw):
            # a bar in a terminal, else one line; the task's encoding loop advances it (progress.advance)
            with progress.stage(f"tokenizing {split} split ({progress.short_origin(raw[split].origin)})",
                                total=len(raw[split].rows), unit=self.progress_unit) as shown:
                arrays = self.encode_split(split, raw[split], meta)
                if shown.count == 0:  # an encoder that does not report as it goes: done at once
                    shown.advance(len(raw[split].rows))
                self.cache.save(split, arrays)
            sizes[split], origin[split] = self.split_size(arrays), raw[split].origin
        self.cache.save_meta({**meta, "sizes": sizes, "origin": origin,
                              "labelled": [s for s in ordered(raw) if s in labelled]})

    def _ready(self) -> bool:
        return (self.cache.has([]) and self.cache.has(list(self.cache.load_meta()["sizes"]))
                and self.tokenizer is not None)

    def setup(self, stage: str | None = None) -> None:
        if self.meta is None:
            if not self._ready():
                self.prepare_data()
            self.meta = self.cache.load_meta()
        for split in self.meta["sizes"]:
            if split not in self.datasets:
                self.datasets[split] = self.make_dataset(split, self.cache.load(split))

    # -- evaluation --------------------------------------------------------------------------
    def labelled_splits(self) -> list[str]:
        """After setup: the splits that carry labels and can be evaluated, in the order train, validation, test, file."""
        labelled = (self.meta or {}).get("labelled", [])
        return [s for s in ordered(self.datasets) if s in labelled]

    def eval_dataloader(self, split: str) -> DataLoader:
        """A labelled split, in order, ``eval_batch_size`` per batch."""
        if split not in self.labelled_splits():
            raise DataError(self._no_split(split))
        return DataLoader(self.datasets[split], batch_size=self.eval_batch_size, shuffle=False,
                          collate_fn=self.eval_collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def _no_split(self, split: str) -> str:
        have = ", ".join(self.labelled_splits()) or "none"
        if split in self.datasets:
            origin = (self.meta or {}).get("origin", {}).get(split, split)
            return (f"the {split} split ({origin}) carries no labels: it is kept for prediction only, not evaluated "
                    f"(labelled splits: {have})")
        hint = {"validation": f"set {self._key('validation')}=<path> or data.validation_fraction>0",
                "test": f"set {self._key('test')}=<path>", EVAL_FILE: "set data.eval_file=<path>"}.get(split, "")
        return f"no {split} split in this run's data{f' ({hint})' if hint else ''}; labelled splits: {have}"

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("validation")

    def test_dataloader(self) -> DataLoader:
        """The labelled test split; a DataError when there is none (never another split in its place)."""
        return self.eval_dataloader("test")

    # -- training ----------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        rank, size = world()
        if self.streaming:
            return self._stream_loader(size)
        if "train" not in self.datasets:
            raise DataError(f"no training split in this run's data (set {self._key('train')}=<path>)")
        ds = self.datasets["train"]
        num_batches, infinite = self._train_batches(len(ds), size)
        sampler = ResumableSampler(len(ds), self.batch_size, num_batches, self.seed, rank, size, shuffle=self.shuffle,
                                   infinite=infinite, progress=self._progress, drop_last=self.drop_last,
                                   lengths=self.lengths("train") if self.group_by_length else None)
        self._check_resume(size, infinite)
        self._resume_state = None
        return ResumableLoader(ds, batch_size=self.batch_size, sampler=sampler, drop_last=self.drop_last,
                               collate_fn=self.train_collate, num_workers=self.num_workers,
                               persistent_workers=self.num_workers > 0)

    def _progress(self) -> tuple[int, int]:
        """(batches trained in all, in this epoch): the trainer's loop progress, restored from a checkpoint."""
        t = self.trainer
        if t is None:
            return 0, 0
        progress = t.fit_loop.epoch_loop.batch_progress
        return progress.total.processed, progress.current.processed

    def _train_batches(self, n: int, size: int) -> tuple[int, bool]:
        """(batches per Lightning epoch, whether that is the whole step-based run)."""
        t = self.trainer
        per_rank = n // size
        epoch = per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)
        if t is None:
            return epoch, False
        steps = t.max_steps is not None and t.max_steps > 0
        if steps and t.max_epochs in (None, -1):
            return t.max_steps * t.accumulate_grad_batches, True
        if not steps and t.max_epochs in (None, -1):
            raise ConfigError("trainer.max_steps=-1 trains by epochs: set trainer.max_epochs=<number of passes>")
        return epoch, False

    def _stream_loader(self, size: int) -> DataLoader:
        ds = self.stream_dataset(self.files["train"], self._stream_skip())
        if self._resume_state is not None:
            self._check_resume(size, True)
            s = self._resume_state
            ds.load_state_dict({"epoch": int(s["epoch"]), "blocks_yielded": int(s["batches_done"]) * self.batch_size,
                                "batch_size": self.batch_size})
        self._resume_state = None
        self._stream = ds
        return DataLoader(ds, batch_size=self.batch_size, collate_fn=self.train_collate, num_workers=self.num_workers)

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls set_epoch on samplers, never on an iterable dataset: the task module calls this."""
        if self._stream is not None:
            self._stream.set_epoch(epoch)

    # -- resume: state from the batches actually trained (Lightning fetches ahead) -----------
    def state_dict(self) -> dict[str, Any]:
        t = self.trainer
        if t is None:
            return {}
        return {"epoch": t.current_epoch, "batches_done": t.fit_loop.epoch_loop.batch_progress.current.processed,
                "epoch_batches": t.num_training_batches if math.isfinite(t.num_training_batches) else None,
                "world_size": t.world_size, "batch_size": self.batch_size, "num_workers": self.num_workers}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume_state = dict(state) if state else None

    def _check_resume(self, size: int, infinite: bool) -> None:
        s = self._resume_state
        if not s:
            return
        done, epoch_batches = int(s.get("batches_done") or 0), s.get("epoch_batches")
        mid_stream = infinite or (done > 0 and (epoch_batches is None or done < epoch_batches))
        saved = (s.get("world_size"), s.get("batch_size"))
        if mid_stream and (saved != (size, self.batch_size) or (self.streaming and s.get("num_workers") != self.num_workers)):
            raise ConfigError(
                f"the checkpoint was written with {s.get('world_size')} process(es), data.batch_size={s.get('batch_size')}"
                f" (data.num_workers={s.get('num_workers')}); resuming with {size}, {self.batch_size} "
                f"({self.num_workers}) would replay or skip data: use the same values")

    # -- prediction inputs -------------------------------------------------------------------
    def read_inputs(self, path: str | Path) -> list[dict]:
        """Prediction inputs from a file: a table (csv/tsv/jsonl/json/parquet; the input columns detected as
        for training, or named by the data config) or a text file with one input per line."""
        p = check_exists(path, "predict.file")
        if p.suffix.lower() not in TABLE_FORMATS:
            return [self._input_record({self.input_fields[0]: text}, f"{path}:{n}") for n, text in read_lines(p)]
        rows = read_table(p, "predict.file", getattr(self, "tsv_quoting", "none"))
        if not rows:
            raise DataError(f"{path}: no rows (predict.file)")
        columns = self.input_columns(rows, str(path))
        return [self._input_record({f: r.get(c) for f, c in columns.items() if c}, where(str(path), r), columns)
                for r in rows]

    def input_columns(self, rows: list[dict], origin: str) -> dict[str, str | None]:
        """Input field -> column of ``rows``: the configured one, else the field's own name; the first is required."""
        present = columns_of(rows[0])
        given = self.input_column_names()
        out: dict[str, str | None] = {}
        for i, field in enumerate(self.input_fields):
            col = given.get(field) or (field if field in present else None)
            if col is not None and col not in present:
                raise DataError(f"{origin}: no column {col!r} for the input field {field!r}; its columns are: "
                                f"{', '.join(present)}")
            if col is None and i == 0:
                raise DataError(f"{origin}: no {field} column among {', '.join(present)}; set data.{field}_column=<name>")
            out[field] = col
        return out

    def _input_record(self, record: dict, place: str, columns: Mapping[str, str | None] | None = None) -> dict:
        for field, value in record.items():
            if is_missing(value) or not isinstance(value, str):
                col = f" in column {columns[field]!r}" if columns else ""
                raise DataError(f"{place}: empty or non-text value {value!r}{col}; expected a non-empty string")
        return record

    def input_records(self, records: Sequence[dict | str]) -> list[dict]:
        """Prediction inputs as records of ``input_fields`` (a bare string is the first field), checked."""
        out = []
        for i, r in enumerate(records, 1):
            r = {self.input_fields[0]: r} if isinstance(r, str) else dict(r)
            unknown = [k for k in r if k not in self.input_fields]
            if unknown or self.input_fields[0] not in r:
                raise DataError(f"input {i}: fields {sorted(r)}; expected {', '.join(self.input_fields)} "
                                f"({self.input_fields[0]} required)")
            out.append(self._input_record({k: v for k, v in r.items() if v is not None}, f"input {i}"))
        return out
