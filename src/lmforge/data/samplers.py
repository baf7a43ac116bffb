"""The training sampler of every task: shuffled (or length-grouped) data epochs, sharded over ranks,
that a resumed run continues at the next unseen batch.

Data epoch ``k`` is an order of the ``n`` examples seeded by ``seed + k``: a permutation, or with
``lengths`` a length-grouped order (batches of similar lengths waste less compute on padding), or
the examples as they are (``shuffle=False``). Rank ``r`` of ``R`` takes every R-th index of it,
``n // R`` each, so ranks run the same number of batches; a length-grouped order is built in units
of ``batch_size * R`` (one optimizer step over all ranks), so every rank's batch of a step comes
from the same length group.

Where an iteration starts comes from ``progress() -> (batches trained in all, batches trained in
this Lightning epoch)``, read when the iteration starts: the trainer's loop progress, which a
checkpoint restores. So a resumed run continues at the next untrained batch, never replaying or
skipping one, whether it resumes mid-epoch or extends a finished run to more steps, and a
length-grouped order after resume is the order of the epoch it resumes in (not epoch 0's).

``infinite=True`` (step-based training): a Lightning epoch is ``num_batches`` batches of the
stream, crossing data epochs as needed. ``infinite=False``: Lightning epoch ``e`` is data epoch
``e`` (Lightning calls ``set_epoch``), ``num_batches`` of it, the last one short unless
``drop_last``. A subclass of DistributedSampler, so Lightning leaves it as it is under DDP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, DistributedSampler

from lmforge.utils.errors import DataError


def length_grouped_order(lengths: torch.Tensor, unit: int, generator: torch.Generator, mega_factor: int = 50) -> torch.Tensor:
    """A permutation in which each run of ``unit`` indices has similar lengths: shuffle, sort by length
    inside mega-batches of ``unit * mega_factor``, cut into units, shuffle the units. The longest unit
    comes first, so an out-of-memory error shows up at step one, not hours in; the one short unit
    (the remainder) comes last, so every other unit starts at a multiple of ``unit``."""
    perm = torch.randperm(len(lengths), generator=generator)
    mega = unit * mega_factor
    groups = [perm[i: i + mega] for i in range(0, len(perm), mega)]
    groups = [g[torch.argsort(lengths[g], descending=True, stable=True)] for g in groups]
    units = [u for g in groups for u in torch.split(g, unit)]
    tail = [units.pop()] if len(units[-1]) < unit else []
    if not units:
        return torch.cat(tail)
    longest = max(range(len(units)), key=lambda i: int(lengths[units[i]].max()))
    units[0], units[longest] = units[longest], units[0]
    rest = (torch.randperm(len(units) - 1, generator=generator) + 1).tolist()
    return torch.cat([units[0]] + [units[i] for i in rest] + tail)


class ResumableSampler(DistributedSampler):
    """One rank's indices from a stream of data epochs, continuing after the batches already trained
    (see the module docstring)."""

    def __init__(self, n: int, batch_size: int, num_batches: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, infinite: bool = True, progress: Callable[[], tuple[int, int]] | None = None,
                 lengths: Sequence[int] | None = None, drop_last: bool = True):
        # not super().__init__: it wants a dataset and a process group; set what Lightning reads
        self.num_replicas, self.rank, self.seed, self.shuffle, self.drop_last = world_size, rank, seed, shuffle, drop_last
        self.epoch = 0
        self.n, self.batch_size, self.num_batches, self.infinite = n, batch_size, num_batches, infinite
        self.progress = progress or (lambda: (0, 0))
        self.lengths = torch.as_tensor(list(lengths)) if lengths is not None else None
        self.per_rank = n // world_size
        if self.per_rank < (batch_size if drop_last else 1):
            raise DataError(f"{n} training examples give {self.per_rank} per process, fewer than data.batch_size="
                            f"{batch_size}; use more data, a smaller data.batch_size (or data.block_size) or fewer processes")
        self.num_samples = self.total_size = len(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.infinite:
            return self.num_batches * self.batch_size
        return min(self.num_batches * self.batch_size, self.per_rank)

    def order(self, k: int) -> torch.Tensor:
        """All ranks' examples of data epoch ``k``, in the order they are trained."""
        g = torch.Generator().manual_seed(self.seed + k)
        if self.lengths is not None and self.shuffle:
            return length_grouped_order(self.lengths, self.batch_size * self.num_replicas, g)
        return torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)

    def _data_epoch(self, k: int) -> torch.Tensor:
        return self.order(k)[self.rank: self.per_rank * self.num_replicas: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        total_done, epoch_done = self.progress()
        bs = self.batch_size
        if self.infinite:
            pos, end = total_done * bs, (total_done - epoch_done + self.num_batches) * bs
        else:
            first = self.epoch * self.per_rank
            pos, end = first + epoch_done * bs, first + len(self)
        while pos < end:
            k, offset = divmod(pos, self.per_rank)
            chunk = self._data_epoch(k)[offset: offset + end - pos]
            yield from chunk.tolist()
            pos += len(chunk)


class ResumableLoader(DataLoader):
    """A DataLoader that tells Lightning it is resumable (its sampler continues from the loop progress that
    the checkpoint restores), so Lightning does not warn that a mid-epoch resume may replay data."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
