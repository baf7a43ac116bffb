"""Pack tokenized documents into fixed-length blocks for language-model pretraining.

Documents are concatenated with ``eos_id`` after each one, and the stream is cut into
``block_size``-token blocks. There is no padding: a block may start or end in the middle of a
document, and the end-of-document token tells the model where one document stops. Documents with
no tokens are skipped (they would only add a lone ``eos_id``).

:class:`PackedTextDataModule` is the part of the pretraining datamodules that both share: documents
in, packed blocks out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
from torch.utils.data import Dataset

from lmforge.data.datamodule import LMForgeDataModule
from lmforge.data.text_corpus import DOC_SEPARATORS, documents_from_rows, read_documents
from lmforge.utils.errors import ConfigError, DataError

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


def pack_documents(docs: Sequence[str], tokenizer: Any, block_size: int, limit: int | None = None) -> np.ndarray:
    """Tokenize ``docs`` (no special tokens) and pack them, the separator after each; at most ``limit`` blocks
    (tokenizing stops once they are filled)."""
    sep = separator_id(tokenizer)
    ids: list[list[int]] = []
    total = 0
    for start in range(0, len(docs), 1024):
        chunk = tokenizer(list(docs[start: start + 1024]), add_special_tokens=False)["input_ids"]
        ids.extend(chunk)
        total += sum(len(x) + 1 for x in chunk)
        if limit is not None and total >= (limit + 1) * block_size:
            break
    blocks = pack_sequences(ids, block_size, sep)
    return blocks[:limit] if limit is not None else blocks


class BlockDataset(Dataset):
    """``blocks[i]`` as ``{"input_ids": LongTensor[block_size]}``."""

    def __init__(self, blocks: np.ndarray):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.from_numpy(np.asarray(self.blocks[i]).astype(np.int64))}


class PackedTextDataModule(LMForgeDataModule):
    """Documents -> packed blocks, the data of both pretraining tasks (their datamodules add what differs:
    the tokenizer they train, masking, prediction inputs, model facts).

    Documents come from text files (``data.doc_separator``: blank_line, line or file), a hub split's
    ``data.text_column``, or the embedded corpus (``samples/<name>/train.txt``). Each split is tokenized
    without special tokens and packed into ``data.block_size`` blocks, an end-of-document token after
    every document, no padding (validation and test: at most ``data.max_eval_blocks``).
    ``data.streaming=true`` streams the training files instead of caching them
    (:mod:`lmforge.data.streaming`): sharded over ranks and workers, the carved validation documents
    never streamed. Training batches are whole blocks (``drop_last``: every batch full).
    """

    file_key = "files"
    file_suffixes = (".txt",)
    drop_last = True

    def __init__(self, train_files: Any = None, validation_files: Any = None, test_files: Any = None,
                 text_column: str = "text", doc_separator: str = "blank_line", block_size: int = 128,
                 max_eval_blocks: int | None = None, shuffle_buffer: int = 0, validation_fraction: float = 0.05,
                 batch_size: int = 16, sample: str = "tales", **common: Any):
        if doc_separator not in DOC_SEPARATORS:
            raise ConfigError(f"data.doc_separator={doc_separator}: expected {', '.join(DOC_SEPARATORS)}")
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
        return {**self.text_settings(), "block_size": self.block_size, "max_eval_blocks": self.max_eval_blocks}

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

    def encode_split(self, split: str, data: Any, meta: dict) -> dict[str, np.ndarray]:
        blocks = pack_documents(data.rows, self.tokenizer, self.block_size, None if split == "train" else self.max_eval_blocks)
        if len(blocks) == 0:
            n = sum(len(x) for x in self.tokenizer(list(data.rows[:1000]), add_special_tokens=False)["input_ids"])
            raise DataError(f"the {split} split has about {n} tokens, fewer than one block of "
                            f"data.block_size={self.block_size}; use more text or a smaller data.block_size")
        return {"blocks": blocks}

    def make_dataset(self, split: str, arrays: Mapping[str, Any]) -> Dataset:
        return BlockDataset(arrays["blocks"])

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


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]
