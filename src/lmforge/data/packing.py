"""Pack tokenized documents into fixed-length blocks for language-model pretraining.

Documents are concatenated with ``eos_id`` after each one, and the stream is cut into
``block_size``-token blocks. There is no padding: a block may start or end in the middle of a
document, and the end-of-document token tells the model where one document stops. Documents with
no tokens are skipped (they would only add a lone ``eos_id``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, overload

import numpy as np

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
