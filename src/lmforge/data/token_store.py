"""A memory-mapped token store: a tokenized split written once as one flat binary file, read by block index.

A split's tokens are the documents' token ids, an end-of-document separator after each (documents
with no tokens are skipped), concatenated into one stream and written as raw ``uint16`` (when every
id of the vocabulary fits, as for vocabularies up to 65,536) or ``uint32`` to ``<split>.tokens.bin``.
The start offset of every document goes beside it (``doc_starts``, saved by the token cache), and the
cache's manifest and ``meta.json``, written after the tokens, mark the entry complete.

Training reads the file through :class:`numpy.memmap` (as nanoGPT and Megatron-LM do): block ``i`` is
``tokens[i * block_size:(i + 1) * block_size]``, a view the operating system pages in and may drop
again, so the process's memory does not grow with the corpus. :class:`TokenBlocks` opens the map
lazily in the process that reads it (DataLoader workers and DDP ranks each map the same file; the map
is never pickled), and is indexed by block number, so the resumable sampler works on it unchanged.

Tokenizing a large corpus uses several processes (:func:`write_tokens`): documents go out in chunks
to a pool of spawned workers (each with its own copy of the fast tokenizer), the results come back and
are written in the order of the chunks, so the file holds the same bytes with one process or many.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lmforge.data.text_corpus import PIECE_CHARS, token_ids
from lmforge.utils import progress

TOKENS_SUFFIX = ".tokens.bin"
#: a corpus smaller than this per extra process is tokenized in fewer processes (spawning one costs ~2 s)
MIN_BYTES_PER_PROCESS = 32 << 20
CHUNK_DOCS = 1024  # documents per chunk sent to a worker ...
CHUNK_CHARS = 1 << 20  # ... or fewer, once the chunk holds this many characters


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id of a ``vocab_size`` vocabulary fits in it, else ``uint32``."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def default_workers(workers: int | None) -> int:
    """``data.tokenize_workers``: None = every core this process may use, at most 8."""
    if workers is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        return max(1, min(cores, 8))
    if workers < 1:
        raise ValueError(f"data.tokenize_workers={workers}: expected at least 1 (or null: all cores)")
    return int(workers)


def encode_documents(tokenizer: Any, docs: Sequence[str], sep: int, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens, lengths)``: the documents' ids (no special tokens), ``sep`` after each, as one ``dtype`` array,
    and each kept document's length (separator included). Documents with no tokens are left out.

    Short documents are tokenized in one batched call; a very long one (a 10 MB line) in pieces
    (:func:`lmforge.data.text_corpus.token_ids`)."""
    dtype = np.dtype(dtype)
    short = [i for i, d in enumerate(docs) if len(d) <= PIECE_CHARS]
    ids: list[Any] = [None] * len(docs)
    if short:
        for i, e in zip(short, tokenizer([docs[i] for i in short], add_special_tokens=False)["input_ids"]):
            ids[i] = e
    for i, d in enumerate(docs):
        if ids[i] is None:
            ids[i] = token_ids(tokenizer, d)
    parts: list[np.ndarray] = []
    lengths: list[int] = []
    sep_arr = np.array([sep], dtype=dtype)
    limit = np.iinfo(dtype).max
    for x in ids:
        if len(x) == 0:
            continue
        a = np.asarray(x, dtype=np.int64)
        if a.min() < 0 or a.max() > limit:
            raise ValueError(f"token id {int(a.max()) if a.max() > limit else int(a.min())} does not fit the "
                             f"token store's {dtype} (ids 0..{limit})")
        parts += (a.astype(dtype), sep_arr)
        lengths.append(len(a) + 1)
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    return tokens, np.asarray(lengths, dtype=np.int64)


def chunks(docs: Iterable[str], max_docs: int = CHUNK_DOCS, max_chars: int = CHUNK_CHARS) -> Iterator[list[str]]:
    """``docs`` in consecutive lists of at most ``max_docs`` documents and about ``max_chars`` characters."""
    chunk: list[str] = []
    chars = 0
    for d in docs:
        chunk.append(d)
        chars += len(d)
        if len(chunk) >= max_docs or chars >= max_chars:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


# -- the worker side of a tokenizing pool (spawned: a fresh interpreter, the tokenizer sent once) --------
_WORKER_TOKENIZER: Any = None


def _init_worker(tokenizer: Any) -> None:
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: the processes are the parallelism
    _WORKER_TOKENIZER = tokenizer


def _encode_chunk(args: tuple[list[str], int, str]) -> tuple[np.ndarray, np.ndarray]:
    docs, sep, dtype = args
    return encode_documents(_WORKER_TOKENIZER, docs, sep, dtype)


def _encoded(docs: Iterable[str], tokenizer: Any, sep: int, dtype: np.dtype,
             processes: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(documents in the chunk, tokens, lengths)`` per chunk, in corpus order; at most ``2 * processes``
    chunks in flight, so memory stays bounded whatever the corpus size."""
    if processes <= 1:
        for chunk in chunks(docs):
            yield (len(chunk), *encode_documents(tokenizer, chunk, sep, dtype))
        return
    ctx = mp.get_context("spawn")  # never fork a process whose tokenizer may already run threads
    with ctx.Pool(processes, initializer=_init_worker, initargs=(tokenizer,)) as pool:
        pending: collections.deque = collections.deque()
        for chunk in chunks(docs):
            pending.append((len(chunk), pool.apply_async(_encode_chunk, ((chunk, sep, dtype.str),))))
            while len(pending) >= 2 * processes:
                n, res = pending.popleft()
                yield (n, *res.get())
        while pending:
            n, res = pending.popleft()
            yield (n, *res.get())


def write_tokens(path: str | Path, docs: Iterable[str], tokenizer: Any, sep: int, processes: int = 1,
                 dtype: Any = None) -> dict:
    """Tokenize ``docs`` into the flat token file ``path`` (written to a temporary name, then renamed).

    ``processes`` > 1 tokenizes in a pool of spawned processes; the file is the same either way.
    Each chunk written advances the open progress stage by its documents. Returns ``{"dtype", "n_tokens",
    "doc_starts"}``: the stored dtype (``dtype``, default by the tokenizer's vocabulary size), the number of
    tokens, and the start offset of every kept document (int64).
    """
    path = Path(path)
    dtype = np.dtype(dtype) if dtype is not None else token_dtype(len(tokenizer))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    n_tokens = 0
    starts: list[np.ndarray] = []
    try:
        with open(tmp, "wb") as f:
            for n_docs, tokens, lengths in _encoded(docs, tokenizer, sep, dtype, processes):
                if len(lengths):
                    offsets = np.empty(len(lengths), dtype=np.int64)
                    offsets[0] = 0
                    np.cumsum(lengths[:-1], out=offsets[1:])
                    starts.append(offsets + n_tokens)
                f.write(tokens.tobytes())
                n_tokens += len(tokens)
                progress.advance(n_docs)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    doc_starts = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
    return {"dtype": dtype.str, "n_tokens": int(n_tokens), "doc_starts": doc_starts}


def processes_for(n_chars: int, workers: int, min_bytes: int = MIN_BYTES_PER_PROCESS) -> int:
    """How many processes tokenize ``n_chars`` of text: at most ``workers``, one per ``min_bytes``."""
    return max(1, min(workers, n_chars // max(min_bytes, 1)))


def eval_subset(n_blocks: int, limit: int | None, seed: int) -> np.ndarray | None:
    """The blocks an evaluation split is evaluated on: all (None) when ``limit`` is None or not smaller than
    ``n_blocks``, else ``limit`` block numbers drawn by ``seed`` alone, sorted. The same at every validation."""
    if limit is None or n_blocks <= limit:
        return None
    if limit < 1:
        raise ValueError(f"data.max_eval_blocks={limit}: expected at least 1 (or null: the whole split)")
    return np.sort(np.random.default_rng(seed).choice(n_blocks, size=limit, replace=False)).astype(np.int64)


class TokenBlocks(Dataset):
    """Block ``i`` of a token file as ``{"input_ids": LongTensor[block_size]}``; with ``indices``, only those
    blocks (item ``i`` is block ``indices[i]``). The memory map is opened on first use in each process and
    never pickled (a DataLoader worker or a spawned rank opens its own)."""

    def __init__(self, path: str | Path, dtype: Any, n_tokens: int, block_size: int,
                 indices: np.ndarray | None = None):
        self.path, self.dtype = Path(path), np.dtype(dtype)
        self.n_tokens, self.block_size = int(n_tokens), int(block_size)
        self.n_blocks = self.n_tokens // self.block_size  # the last partial block is dropped (no padding)
        self.indices = indices
        self._tokens: np.ndarray | None = None
        size = self.path.stat().st_size
        if size != self.n_tokens * self.dtype.itemsize:
            raise ValueError(f"{self.path}: {size} bytes, expected {self.n_tokens} {self.dtype} tokens "
                             f"({self.n_tokens * self.dtype.itemsize} bytes); the token store is damaged")

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.n_tokens,)) \
                if self.n_tokens else np.zeros(0, dtype=self.dtype)
        return self._tokens

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_tokens"] = None  # the map is reopened where the dataset is used
        return state

    def __len__(self) -> int:
        return self.n_blocks if self.indices is None else len(self.indices)

    def block_number(self, i: int) -> int:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"block {i} out of range for {n} blocks")
        return i if self.indices is None else int(self.indices[i])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        b = self.block_number(i) * self.block_size
        return {"input_ids": torch.from_numpy(self.tokens[b: b + self.block_size].astype(np.int64))}

    @property
    def blocks(self) -> np.ndarray:
        """The blocks as a ``(len(self), block_size)`` array (a view of the map; a copy for a subset)."""
        full = self.tokens[: self.n_blocks * self.block_size].reshape(self.n_blocks, self.block_size)
        return full if self.indices is None else full[self.indices]
