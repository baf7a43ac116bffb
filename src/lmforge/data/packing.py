"""Pack tokenized documents into fixed-length blocks for language-model pretraining.

Documents are concatenated with ``eos_id`` after each one, and the stream is cut into
``block_size``-token blocks. There is no padding: a block may start or end in the middle of a
document, and the end-of-document token tells the model where one document stops. Documents with
no tokens are skipped (they would only add a lone ``eos_id``).

:class:`PackedTextDataModule` is the part of the pretraining datamodules that both share: documents
in, packed blocks out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
from torch.utils.data import Dataset

from lmforge.data.datamodule import LMForgeDataModule
from lmforge.data.cache import CacheError
from lmforge.data.sources import SplitRows
from lmforge.data.splits import carve_mask
from lmforge.data.text_corpus import (DOC_SEPARATORS, CorpusDocuments, documents_from_rows, read_documents,
                                      token_ids)
from lmforge.data.token_store import TOKENS_SUFFIX, TokenBlocks, default_workers, eval_subset, processes_for, write_tokens
from lmforge.utils import progress
from lmforge.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DTYPE = np.int32  # token ids fit in int32 for any real vocabulary; halves memory against int64


def check_block_size(block_size: int, max_positions: int | None, key: str = "data.block_size") -> None:
    """Raise ValueError when ``block_size`` is not positive or longer than the model's context.

    ``max_positions`` is the number of positions the model can attend over (for most models
    ``config.max_position_embeddings``); None means the model has no fixed limit.
    """
    if block_size < 1:
        raise ValueError(f"{key}={block_size} must be a positive number of tokens")
    if max_positions is not None and block_size > max_positions:
        raise ValueError(
            f"{key}={block_size} is longer than the model's context "
            f"(model max_position_embeddings={max_positions}); use {key}<={max_positions}"
        )


def _as_ids(tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    ids = np.asarray(tokens, dtype=DTYPE).reshape(-1)
    if ids.size and ids.min() < 0:
        raise ValueError(f"token ids must be >= 0, got {int(ids.min())}")
    return ids


@overload
def pack_sequences(
    token_lists: Iterable[Sequence[int]], block_size: int, eos_id: int, drop_last: Literal[True] = True
) -> np.ndarray: ...
@overload
def pack_sequences(
    token_lists: Iterable[Sequence[int]], block_size: int, eos_id: int, drop_last: Literal[False]
) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def pack_sequences(
    token_lists: Iterable[Sequence[int]], block_size: int, eos_id: int, drop_last: bool
) -> np.ndarray | tuple[np.ndarray, np.ndarray]: ...
def pack_sequences(
    token_lists: Iterable[Sequence[int]], block_size: int, eos_id: int, drop_last: bool = True
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Concatenate documents (``eos_id`` after each) and cut the stream into blocks.

    Returns an int32 array of shape ``(n_blocks, block_size)``. The final ``< block_size`` tokens
    that do not fill a block are dropped when ``drop_last`` is True; when it is False the function
    returns ``(blocks, tail)`` with ``tail`` the 1-D array of those leftover tokens (possibly empty),
    so nothing is lost and nothing is padded. Runs in linear time: one ``np.concatenate``.
    """
    check_block_size(block_size, None)
    eos = np.array([eos_id], dtype=DTYPE)
    parts: list[np.ndarray] = []
    for tokens in token_lists:
        ids = _as_ids(tokens)
        if ids.size:
            parts += (ids, eos)
    stream = np.concatenate(parts) if parts else np.empty(0, dtype=DTYPE)
    n_full = len(stream) // block_size * block_size
    blocks = stream[:n_full].reshape(-1, block_size)
    return blocks if drop_last else (blocks, stream[n_full:].copy())


class Packer:
    """Streaming packer: feed documents one at a time, get full blocks as soon as they fill.

    The tokens that do not yet fill a block are carried over to the next document; ``flush()``
    returns them at the end. Each token is copied a bounded number of times, so packing a stream is
    linear in its length.
    """

    def __init__(self, block_size: int, eos_id: int) -> None:
        check_block_size(block_size, None)
        self.block_size = block_size
        self._eos = np.array([eos_id], dtype=DTYPE)
        self._pending: list[np.ndarray] = []
        self._n_pending = 0

    def add(self, tokens: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """Append one document (plus ``eos_id``); return the blocks (1-D arrays) that are now full."""
        ids = _as_ids(tokens)
        if not ids.size:
            return []
        self._pending += (ids, self._eos)
        self._n_pending += ids.size + 1
        if self._n_pending < self.block_size:
            return []
        stream = np.concatenate(self._pending)
        n_full = len(stream) // self.block_size * self.block_size
        rest = stream[n_full:].copy()
        self._pending, self._n_pending = ([rest] if rest.size else []), rest.size
        return list(stream[:n_full].reshape(-1, self.block_size))

    def flush(self) -> np.ndarray:
        """Return (and clear) the leftover tokens, fewer than ``block_size``; possibly empty."""
        rest = np.concatenate(self._pending) if self._pending else np.empty(0, dtype=DTYPE)
        self._pending, self._n_pending = [], 0
        return rest


# -- documents -> packed blocks: what the pretraining datamodules (causal LM, masked LM) share ----------


def separator_id(tokenizer: Any) -> int | None:
    """The end-of-document token put between packed documents: eos, else sep (BERT-style tokenizers)."""
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id


class PackedTextDataModule(LMForgeDataModule):
    """Documents -> packed blocks, the data of both pretraining tasks (their datamodules add what differs:
    the tokenizer they train, masking, prediction inputs, model facts).

    Documents come from text files (``data.doc_separator``: blank_line, line or file), a hub split's
    ``data.text_column``, or the embedded corpus (``samples/<name>/train.txt``). Each split is tokenized
    without special tokens and packed into ``data.block_size`` blocks, an end-of-document token after
    every document, no padding. The tokens are written once into the token store
    (:mod:`lmforge.data.token_store`: one flat uint16/uint32 file per split, memory-mapped, read by block
    index), tokenized in ``data.tokenize_workers`` processes; text files are read document by document
    (never held whole), so neither tokenizing nor training grows the process's memory with the corpus.
    Validation and test are evaluated on ``data.max_eval_blocks`` blocks drawn once by ``data.split_seed``
    (the same blocks at every validation; null: the whole split).
    ``data.streaming=true`` streams the training files instead of caching them
    (:mod:`lmforge.data.streaming`): sharded over ranks and workers, the carved validation documents
    never streamed. Training batches are whole blocks (``drop_last``: every batch full).
    """

    file_key = "files"
    file_suffixes = (".txt",)
    drop_last = True
    progress_unit = "documents"  # what the "tokenizing <split>" stage counts

    def __init__(self, train_files: Any = None, validation_files: Any = None, test_files: Any = None,
                 text_column: str = "text", doc_separator: str = "blank_line", block_size: int = 128,
                 max_eval_blocks: int | None = None, shuffle_buffer: int = 0, validation_fraction: float = 0.05,
                 batch_size: int = 16, sample: str = "tales", tokenize_workers: int | None = None, **common: Any):
        if doc_separator not in DOC_SEPARATORS:
            raise ConfigError(f"data.doc_separator={doc_separator}: expected {', '.join(DOC_SEPARATORS)}")
        if max_eval_blocks is not None and max_eval_blocks < 1:
            raise ConfigError(f"data.max_eval_blocks={max_eval_blocks}: expected at least 1 block, or null "
                              "(evaluate the whole split)")
        try:
            self.tokenize_workers = default_workers(tokenize_workers)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.text_column, self.doc_separator = text_column, doc_separator
        self.block_size, self.max_eval_blocks, self.shuffle_buffer = block_size, max_eval_blocks, shuffle_buffer
        super().__init__(files={"train": train_files, "validation": validation_files, "test": test_files},
                         validation_fraction=validation_fraction, batch_size=batch_size, sample=sample, **common)
        try:  # the block must fit the model (checked before any file is read)
            check_block_size(block_size, self.context)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def text_settings(self) -> dict:
        return {"text_column": self.text_column, "doc_separator": self.doc_separator}

    def settings(self) -> dict:
        # not max_eval_blocks (the subset is drawn when the split is loaded) nor tokenize_workers (same bytes):
        # changing either reuses the tokens
        return {**self.text_settings(), "block_size": self.block_size, "store": "flat-v1"}

    def read_splits(self) -> dict[str, SplitRows]:
        """Text files (local or the embedded sample) are read lazily: each split is a
        :class:`~lmforge.data.text_corpus.CorpusDocuments` that streams its documents from the files whenever
        it is iterated, the validation split carved by position (:func:`~lmforge.data.splits.carve_mask`, the
        rule of the in-memory carve). Hub splits, streaming and sample limits read as every task does."""
        if (self.source == "hub" or self.streaming or self.max_train_samples is not None
                or self.max_eval_samples is not None):
            return super().read_splits()
        raw: dict[str, SplitRows] = {}
        for split, paths in self.files.items():
            if not paths:
                continue
            origin = ", ".join(map(str, paths))
            docs = CorpusDocuments(paths, self.doc_separator)
            try:
                n = sum(1 for _ in progress.track(iter(docs), f"counting documents in {progress.short_origin(origin)}",
                                                  unit="documents"))
            except ValueError as e:  # a decode error names the file and the byte offset
                raise DataError(str(e)) from None
            docs._count = n
            if n == 0:
                raise DataError(f"empty corpus: no text in {origin} ({self._key(split)})")
            raw[split] = SplitRows(docs, origin)  # type: ignore[arg-type]
        if "validation" not in raw and self.validation_fraction > 0 and "train" in raw:
            train = raw["train"]
            try:
                mask = carve_mask(len(train.rows), self.validation_fraction, self.split_seed)
            except ValueError as e:
                raise DataError(f"{train.origin}: {e}") from None
            log.info("no validation split: carved %d of %d documents out of %s (data.validation_fraction=%s, "
                     "data.split_seed=%s)", int(mask.sum()), len(mask), train.origin, self.validation_fraction,
                     self.split_seed)
            raw["validation"] = SplitRows(train.rows.subset(mask), train.origin)  # type: ignore[attr-defined]
            train.rows = train.rows.subset(~mask)  # type: ignore[attr-defined]
        return raw

    def read_file(self, paths: list[Path], key: str) -> list[str]:
        try:
            docs = list(read_documents(paths, self.doc_separator))
        except ValueError as e:  # a decode error names the file and the byte offset
            raise DataError(str(e)) from None
        if not docs:
            raise DataError(f"empty corpus: no text in {', '.join(map(str, paths))} ({key})")
        return docs

    def stream_items(self, paths: list[Path]) -> Iterator[str]:
        return read_documents(paths, self.doc_separator)

    def rows_from_hub(self, rows: list[dict], origin: str) -> list[str]:
        return documents_from_rows(rows, self.text_column, origin)

    def check_tokenizer(self, tokenizer: Any) -> Any:
        if separator_id(tokenizer) is None:
            raise ConfigError(f"tokenizer {self.tokenizer_name}: no end-of-document token (eos or sep) to put between "
                              "documents; train one with data.tokenizer_training.enabled=true")
        return tokenizer

    def build_meta(self, raw: dict) -> dict:
        tok = self.tokenizer
        return {"block_size": self.block_size, "separator_id": separator_id(tok), "vocab_size": len(tok),
                "documents": {s: len(d.rows) for s, d in raw.items()}}

    def encode_split(self, split: str, data: Any, meta: dict) -> dict[str, Any]:
        """Write the split's tokens into the token store (``<split>.tokens.bin`` in the cache entry); the cache
        keeps the documents' start offsets and the store's description."""
        rows = data.rows
        n_chars = rows.n_chars() if isinstance(rows, CorpusDocuments) else sum(len(d) for d in rows)
        processes = processes_for(n_chars, self.tokenize_workers)
        path = self.cache.dir / f"{split}{TOKENS_SUFFIX}"
        try:
            info = write_tokens(path, rows, self.tokenizer, separator_id(self.tokenizer), processes)
        except ValueError as e:  # a decode error (file, byte offset) or an id too large for the store
            raise DataError(str(e)) from None
        n_blocks = info["n_tokens"] // self.block_size
        if n_blocks == 0:
            path.unlink(missing_ok=True)
            n_text = info["n_tokens"] - len(info["doc_starts"])  # without the end-of-document tokens
            raise DataError(f"the {split} split has about {n_text} tokens, fewer than one block of "
                            f"data.block_size={self.block_size}; use more text or a smaller data.block_size")
        store = {"file": path.name, "dtype": info["dtype"], "n_tokens": info["n_tokens"],
                 "block_size": self.block_size, "n_blocks": n_blocks}
        return {"store": store, "doc_starts": info["doc_starts"]}

    def split_size(self, arrays: Mapping[str, Any]) -> int:
        return int(arrays["store"]["n_blocks"])

    def _store(self, split: str, arrays: Mapping[str, Any]) -> TokenBlocks:
        s = arrays.get("store")
        if not isinstance(s, dict) or s.get("block_size") != self.block_size:
            raise CacheError(f"{self.cache.dir}: the {split} split is not a token store of "
                             f"data.block_size={self.block_size}")
        try:
            return TokenBlocks(self.cache.dir / str(s["file"]), s["dtype"], s["n_tokens"], self.block_size)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise CacheError(f"{self.cache.dir}: the {split} token store does not check out ({e})") from None

    def _ready(self) -> bool:
        if not super()._ready():
            return False
        try:  # every split's token file is there, of the size its manifest says
            for split in self.cache.load_meta()["sizes"]:
                self._store(split, self.cache.load(split))
        except CacheError:
            return False
        return True

    def make_dataset(self, split: str, arrays: Mapping[str, Any]) -> Dataset:
        ds = self._store(split, arrays)
        if split != "train":  # evaluation: a fixed, seeded subset of the blocks (the same at every validation)
            ds.indices = eval_subset(ds.n_blocks, self.max_eval_blocks, self.split_seed)
        return ds

    def stream_dataset(self, paths: list[Path], skip: dict[str, np.ndarray]) -> Any:
        from lmforge.data.streaming import StreamingPackedDataset

        ds = StreamingPackedDataset(paths, partial(_token_ids, self.tokenizer), self.block_size, separator_id(self.tokenizer),
                                    self.doc_separator, shuffle_files=True, shuffle_buffer=self.shuffle_buffer,
                                    seed=self.seed, skip=skip)
        ds.blocks_per_rank = ds.safe_blocks_per_rank(self.num_workers, self.batch_size)
        return ds

    def train_collate(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.stack([e["input_ids"] for e in examples])}

    def model_facts(self) -> dict:
        tok = self.tokenizer
        facts = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None
                 else separator_id(tok)}
        facts.update({k: getattr(tok, k) for k in ("eos_token_id", "bos_token_id") if getattr(tok, k) is not None})
        return facts


def _token_ids(tokenizer: Any, text: str) -> list[int] | np.ndarray:
    return token_ids(tokenizer, text)
