"""Stream text files as packed ``block_size`` token blocks, sharded across ranks and DataLoader workers.

Sharding: with R ranks and W DataLoader workers per rank there are R*W shards. Document number i
of the epoch's document stream (files in order, or shuffled by ``seed + epoch``) belongs to shard
``i % (R*W)``; shard ``rank * W + worker_id`` reads it. Every worker reads (decodes) all files but
tokenizes only its own documents, so across all ranks and workers each document is tokenized
exactly once per epoch and none is skipped. Each shard packs its documents on its own
(see :mod:`lmforge.data.packing`); with ``drop_last=True`` each shard drops its final partial
block, i.e. fewer than ``block_size`` tokens per shard per epoch.

Equal steps in DDP: shards hold different numbers of blocks (by a few), and DDP hangs when one rank
runs out of batches before the others. Pass ``blocks_per_rank`` to stop every rank after exactly that
many blocks; worker w of W takes ``blocks_per_rank // W`` (+1 for the first ``blocks_per_rank % W``
workers), the same on every rank, so every rank runs the same number of batches.
:meth:`StreamingPackedDataset.safe_blocks_per_rank` computes the largest value every shard can
supply, as a multiple of W × batch_size so no batch is partial and ``len(DataLoader)`` is exact.
A shard that runs short raises RuntimeError instead of hanging. Use it with ``drop_last=True``.
With ``shuffle_files=False`` the shards' contents, hence their block counts, are the same every
epoch; shuffling files moves documents between shards, so leave some margin.

Held-out documents: ``skip`` maps a file to a boolean mask over its documents; the masked ones
(a validation split carved out of the training files, :func:`lmforge.data.splits.carve_mask`) are
never streamed, so a streamed corpus and the same corpus held in memory train on the same documents.

Epochs: call ``set_epoch(epoch)`` before each epoch (Lightning does not do it for iterable
datasets: call it from ``on_train_epoch_start``). DataLoader workers get a copy of the dataset when
an iterator starts, so ``persistent_workers=True`` would keep the old epoch.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from lmforge.data.packing import Packer, check_block_size
from lmforge.data.text_corpus import DOC_SEPARATORS, read_documents


class StreamingPackedDataset(IterableDataset):
    """Yield ``{"input_ids": LongTensor[block_size]}`` blocks packed from a text corpus.

    ``tokenize`` maps a document to token ids without special tokens; ``eos_id`` is appended after
    every document. ``rank``/``world_size`` override what ``torch.distributed`` reports (read when the
    dataset is built and on ``set_epoch``: build it after the process group exists, e.g. in
    ``LightningDataModule.setup``). ``shuffle_files`` shuffles the file order and ``shuffle_buffer > 0``
    shuffles documents within a shard through a buffer of that many documents; both are seeded by
    ``seed`` and the epoch, so they are reproducible and consistent across ranks. With
    ``drop_last=False`` each shard's final block is yielded short (only usable with batch_size=1 or
    a padding collator).
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike],
        tokenize: Callable[[str], Sequence[int]],
        block_size: int,
        eos_id: int,
        doc_separator: str = "blank_line",
        *,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_files: bool = False,
        shuffle_buffer: int = 0,
        seed: int = 0,
        blocks_per_rank: int | None = None,
        drop_last: bool = True,
        skip: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        if not files:
            raise ValueError("StreamingPackedDataset needs at least one file")
        if doc_separator not in DOC_SEPARATORS:
            raise ValueError(f"doc_separator={doc_separator!r} is not one of {list(DOC_SEPARATORS)}")
        check_block_size(block_size, None)
        if blocks_per_rank is not None and blocks_per_rank < 1:
            raise ValueError(f"blocks_per_rank={blocks_per_rank} must be >= 1 (or None for no limit)")
        self.files = [Path(f) for f in files]
        self.tokenize = tokenize
        self.block_size = block_size
        self.eos_id = eos_id
        self.doc_separator = doc_separator
        self.shuffle_files = shuffle_files
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.blocks_per_rank = blocks_per_rank
        self.drop_last = drop_last
        self.skip = {str(Path(f)): np.asarray(m, dtype=bool) for f, m in (skip or {}).items()}
        self._rank_arg, self._world_size_arg = rank, world_size
        self.rank, self.world_size = self._resolve_rank()
        self.epoch = 0
        self.blocks_yielded = 0  # in the current epoch, counted where iteration runs
        self._resume: dict[str, Any] | None = None

    def _resolve_rank(self) -> tuple[int, int]:
        rank, world_size = self._rank_arg, self._world_size_arg
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
        rank, world_size = (0 if rank is None else rank), (1 if world_size is None else world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        return rank, world_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch that seeds shuffling; moving to another epoch forgets a pending resume."""
        if epoch != self.epoch:
            self.blocks_yielded = 0
            if self._resume is not None and self._resume["epoch"] != epoch:
                self._resume = None
        self.epoch = epoch
        self.rank, self.world_size = self._resolve_rank()

    def __len__(self) -> int:
        if self.blocks_per_rank is None:
            raise TypeError("StreamingPackedDataset has no length unless blocks_per_rank is set")
        return self.blocks_per_rank

    # -- the stream -------------------------------------------------------------------------------

    def _documents(self, files: list) -> Iterator[str]:
        """The documents of ``files`` in order, without the held-out ones (``skip``)."""
        for f in files:
            mask = self.skip.get(str(f))
            for j, doc in enumerate(read_documents([f], self.doc_separator)):
                if mask is None or not mask[j]:
                    yield doc

    def _shard_documents(self, shard: int, n_shards: int) -> Iterator[str]:
        files = list(self.files)
        if self.shuffle_files:
            random.Random(f"files:{self.seed}:{self.epoch}").shuffle(files)
        docs = (doc for i, doc in enumerate(self._documents(files)) if i % n_shards == shard)
        if self.shuffle_buffer <= 0:
            yield from docs
            return
        rng = random.Random(f"docs:{self.seed}:{self.epoch}:{shard}:{n_shards}")
        buffer: list[str] = []
        for doc in docs:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(doc)
                continue
            j = rng.randrange(len(buffer))
            yield buffer[j]
            buffer[j] = doc
        rng.shuffle(buffer)
        yield from buffer

    def _shard_blocks(self, shard: int, n_shards: int) -> Iterator[np.ndarray]:
        packer = Packer(self.block_size, self.eos_id)
        for doc in self._shard_documents(shard, n_shards):
            yield from packer.add(self.tokenize(doc))
        tail = packer.flush()
        if not self.drop_last and tail.size:
            yield tail

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is None:
            self.rank, self.world_size = self._resolve_rank()
        skip, worker = self._resume_point(worker, n_workers)
        if info is None:
            self._resume = None  # used up; a worker's copy cannot clear the main process's one
        shard, n_shards = self.rank * n_workers + worker, self.world_size * n_workers
        quota = None
        if self.blocks_per_rank is not None:
            quota = self.blocks_per_rank // n_workers + (worker < self.blocks_per_rank % n_workers)
            if quota == 0:
                return
        produced = 0
        self.blocks_yielded = skip
        for block in self._shard_blocks(shard, n_shards):
            produced += 1
            if produced > skip:
                self.blocks_yielded = produced
                yield {"input_ids": torch.from_numpy(block.astype(np.int64))}
            if produced == quota:
                return
        if quota is not None:
            raise RuntimeError(
                f"shard {shard} of {n_shards} (rank {self.rank}, worker {worker}) ran out after {produced} blocks, "
                f"but blocks_per_rank={self.blocks_per_rank} asks {quota} of it; "
                "lower blocks_per_rank (see safe_blocks_per_rank())"
            )

    # -- equal steps per rank -----------------------------------------------------------------------

    def safe_blocks_per_rank(self, num_workers: int = 0, batch_size: int = 1) -> int:
        """Largest ``blocks_per_rank`` that every shard can supply this epoch, a multiple of workers × batch size.

        Tokenizes the whole corpus once in the calling process (every rank gets the same answer).
        """
        n_workers = max(1, num_workers)
        n_shards = self.world_size * n_workers
        fewest = min(sum(1 for _ in self._shard_blocks(s, n_shards)) for s in range(n_shards))
        per_worker = fewest // batch_size * batch_size
        if per_worker == 0:
            raise ValueError(
                f"some shard has only {fewest} blocks of {self.block_size} tokens, less than batch_size={batch_size}; "
                "use more data, a smaller block_size or fewer ranks/workers"
            )
        return per_worker * n_workers

    # -- resume -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "blocks_yielded"}``: blocks already yielded in the current epoch.

        Exact when the dataset is iterated in the main process (``num_workers=0``) and the consumer
        trains on every block it pulls. With workers, or with a consumer that prefetches (Lightning
        fetches one batch ahead), build the state from what was consumed instead:
        ``{"epoch": e, "blocks_yielded": batches_done * batch_size, "batch_size": batch_size}``.
        """
        return {"epoch": self.epoch, "blocks_yielded": self.blocks_yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Make the next iterator of ``state["epoch"]`` skip the blocks already consumed in it.

        Needs the same files, tokenizer, block size, seed, world size and number of workers as the
        run that saved it. With W > 1 workers, ``state["blocks_yielded"]`` counts the rank's blocks
        and ``state["batch_size"]`` is required: DataLoader takes batches from workers in turn, so
        worker w has supplied every W-th batch. That holds while every worker still has data, which
        ``blocks_per_rank`` (equal worker shares) guarantees; without it, resuming within the last
        few batches of an epoch may reorder them.
        """
        self.set_epoch(int(state["epoch"]))
        self._resume = dict(state)
        self.blocks_yielded = int(state["blocks_yielded"])

    def _resume_point(self, worker: int, n_workers: int) -> tuple[int, int]:
        """Blocks this worker skips, and which worker's share it takes over.

        A new DataLoader asks worker 0 first; if the interrupted one was due to ask worker k, every
        worker w takes over the stream of worker (w + k) % W so the batch order continues unchanged.
        """
        if self._resume is None or self._resume["epoch"] != self.epoch:
            return 0, worker
        done = int(self._resume["blocks_yielded"])
        if n_workers == 1:
            return done, worker
        batch_size = self._resume.get("batch_size")
        if batch_size is None:
            raise ValueError("resuming with DataLoader workers needs state['batch_size'] (see load_state_dict)")
        batches, rest = divmod(done, int(batch_size))
        if rest:
            raise ValueError(f"blocks_yielded={done} is not a whole number of batches of {batch_size}")
        role = (worker + batches) % n_workers
        return (batches // n_workers + (role < batches % n_workers)) * int(batch_size), role
