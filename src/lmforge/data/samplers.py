"""Length-grouped ordering: batches of similar length waste less compute on padding."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    """Shuffles, then sorts by length inside mega-batches of ``batch_size * mega_factor`` examples.

    The longest batch comes first so an out-of-memory error shows up at step one, not hours in.
    Epochs differ (seed + epoch); under DDP Lightning wraps this sampler and gives each rank
    every world_size-th index, so ranks still see batches of similar lengths.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega_factor: int = 50):
        self.lengths = torch.as_tensor(list(lengths))
        self.batch_size = batch_size
        self.seed = seed
        self.mega = batch_size * mega_factor
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        perm = torch.randperm(len(self.lengths), generator=g)
        groups = [perm[i: i + self.mega] for i in range(0, len(perm), self.mega)]
        groups = [grp[torch.argsort(self.lengths[grp], descending=True, stable=True)] for grp in groups]
        batches = [b for grp in groups for b in torch.split(grp, self.batch_size)]
        # keep the globally longest batch first, shuffle the rest
        longest = max(range(len(batches)), key=lambda i: int(self.lengths[batches[i]].max()))
        batches[0], batches[longest] = batches[longest], batches[0]
        rest = torch.randperm(len(batches) - 1, generator=g) + 1 if len(batches) > 1 else torch.empty(0, dtype=torch.long)
        order = [batches[0]] + [batches[int(i)] for i in rest]
        return iter(torch.cat(order).tolist())
