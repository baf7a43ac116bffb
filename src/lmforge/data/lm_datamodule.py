"""What the two pretraining datamodules (causal LM, masked LM) share: text in, packed blocks out.

Sources (``data.source``): ``sample`` (the task's embedded corpus under ``samples/<name>/``),
``text`` (plain UTF-8 files: a path, a glob or a list) and ``hub`` (a dataset name for
``datasets.load_dataset``, one document per row of ``data.text_column``).

The path from there is the same for all three:

* documents are read (``data.doc_separator``), and a validation split is carved from the training
  documents (``data.validation_fraction``, seeded by ``data.split_seed``) when none is given;
* the tokenizer is the model's own, or one trained on the training documents with the
  ``tokenizers`` library (``data.tokenizer_training``: byte-level BPE for decoders, WordPiece for
  encoders), cached under ``cache_dir/tokenizers`` and saved into the run's export;
* every split is tokenized once and packed into ``block_size``-token blocks, an end-of-document
  token after each document, no padding, into a cache keyed by the data, tokenizer and settings
  (``prepare_data``; ``setup`` only loads);
* training batches come from :class:`ResumableBlockSampler`: with ``trainer.max_steps`` set, the
  whole run is one pass over a stream of reshuffled data epochs, sharded over ranks, that a resumed
  run continues at the batch where the checkpoint was taken (no batch replayed or skipped).

``data.streaming=true`` streams the training files instead (corpora larger than memory): an
iterable dataset sharded over ranks and DataLoader workers (:mod:`lmforge.data.streaming`),
validation blocks still cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lmforge.data.cache import TokenCache, cache_key, file_fingerprint, tokenizer_fingerprint
from lmforge.data.packing import check_block_size, pack_sequences
from lmforge.data.streaming import StreamingPackedDataset
from lmforge.data.text_corpus import read_documents, resolve_text_files, split_train_validation
from lmforge.data.tokenizer_training import train_tokenizer
from lmforge.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"
VALIDATION_NAMES = ("validation", "valid", "dev", "val")
TOKENIZER_TRAINING = {"enabled": "auto", "kind": "auto", "vocab_size": 8000, "min_frequency": 2, "lowercase": False}


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class PackedBlocks(Dataset):
    """``blocks[i]`` as ``{"input_ids": LongTensor[block_size]}``."""

    def __init__(self, blocks: np.ndarray):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.from_numpy(self.blocks[i].astype(np.int64))}


class ResumableBlockSampler(DistributedSampler):
    """One rank's indices from a stream of shuffled data epochs, continuing after the batches already trained.

    Data epoch ``k`` is a permutation of the ``n`` blocks seeded by ``seed + k``; rank ``r`` of ``R``
    takes every R-th index of it (``n // R`` each, so ranks run the same number of batches).

    Where an iteration starts comes from ``progress() -> (batches trained in all, batches trained in
    this Lightning epoch)``, read when the iteration starts: the trainer's loop progress, which a
    checkpoint restores, so a resumed run continues at the next untrained batch, never replaying or
    skipping one, whether it resumes mid-epoch or extends a finished run to more steps.

    ``infinite=True`` (step-based training): a Lightning epoch is ``num_batches`` batches of the
    stream, crossing data epochs as needed. ``infinite=False``: Lightning epoch ``e`` is data epoch
    ``e``. A subclass of DistributedSampler, so Lightning leaves it as it is under DDP.
    """

    def __init__(self, n: int, batch_size: int, num_batches: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, infinite: bool = True, progress: Callable[[], tuple[int, int]] | None = None):
        # not super().__init__: it wants a dataset and a process group; set what Lightning reads
        self.num_replicas, self.rank, self.seed, self.shuffle, self.drop_last = world_size, rank, seed, shuffle, True
        self.epoch = 0
        self.n, self.batch_size, self.num_batches, self.infinite = n, batch_size, num_batches, infinite
        self.progress = progress or (lambda: (0, 0))
        self.per_rank = n // world_size
        if self.per_rank < batch_size:
            raise DataError(f"{n} training blocks give {self.per_rank} per rank, fewer than data.batch_size={batch_size}; "
                            "use more text, a smaller data.block_size or a smaller data.batch_size")
        self.num_samples = self.total_size = num_batches * batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def _data_epoch(self, k: int) -> torch.Tensor:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + k))
        else:
            order = torch.arange(self.n)
        return order[self.rank: self.per_rank * self.num_replicas: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        total_done, epoch_done = self.progress()
        bs = self.batch_size
        if self.infinite:
            pos, end = total_done * bs, (total_done - epoch_done + self.num_batches) * bs
        else:
            first = self.epoch * self.per_rank
            pos, end = first + epoch_done * bs, first + min(self.num_batches * bs, self.per_rank)
        while pos < end:
            k, offset = divmod(pos, self.per_rank)
            chunk = self._data_epoch(k)[offset: offset + end - pos]
            yield from chunk.tolist()
            pos += len(chunk)


def held_out(files: Sequence[Path], doc_separator: str, every: int, keep: bool) -> Iterator[str]:
    """Documents of ``files`` in order: the held-out ones (``keep=False``: the j-th document of a file with
    ``j % every == every - 1``) or the others (``keep=True``). Per file, so shuffling file order keeps the split."""
    for f in files:
        for j, doc in enumerate(read_documents([f], doc_separator)):
            if (every > 0 and j % every == every - 1) != keep:
                yield doc


class BlockLoader(DataLoader):
    """A DataLoader that tells Lightning it is resumable (its sampler continues from the loop progress that
    the checkpoint restores), so Lightning does not warn that a mid-epoch resume may replay data."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class HeldOutStreamingDataset(StreamingPackedDataset):
    """Streaming blocks of the training documents: with ``hold_out_every=k`` every k-th document of each
    file is validation (see :func:`held_out`) and never streamed."""

    def __init__(self, *args: Any, hold_out_every: int = 0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.hold_out_every = hold_out_every

    def _documents(self, files: list) -> Iterator[str]:
        return held_out(files, self.doc_separator, self.hold_out_every, keep=True)


class LMDataModule(L.LightningDataModule):
    """Base of the pretraining datamodules; subclasses set the cache namespace, tokenizer kind and collators."""

    namespace = "lm"
    tokenizer_kind = "bpe"  # what data.tokenizer_training.kind=auto trains

    def __init__(
        self,
        tokenizer: str | None = None,
        model: Mapping | None = None,
        source: str = "sample",
        sample: str = "tales",
        train_files: str | Sequence[str] | None = None,
        validation_files: str | Sequence[str] | None = None,
        test_files: str | Sequence[str] | None = None,
        hub_name: str | None = None,
        hub_config: str | None = None,
        text_column: str = "text",
        doc_separator: str = "blank_line",
        validation_fraction: float = 0.05,
        split_seed: int = 1234,
        block_size: int = 128,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_eval_blocks: int | None = None,
        streaming: bool = False,
        shuffle_buffer: int = 0,
        tokenizer_training: Mapping | None = None,
        cache_dir: str = ".cache/lmforge",
        seed: int = 42,
    ):
        super().__init__()
        if source not in ("sample", "text", "hub"):
            raise ConfigError(f"data.source={source}: expected sample, text or hub")
        if doc_separator not in ("blank_line", "line", "file"):
            raise ConfigError(f"data.doc_separator={doc_separator}: expected blank_line, line or file")
        if not 0.0 <= validation_fraction < 1.0:
            raise ConfigError(f"data.validation_fraction={validation_fraction}: expected a fraction in [0, 1)")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size}: expected at least 1")
        self.source, self.sample = source, sample
        self.hub_name, self.hub_config, self.text_column = hub_name, hub_config, text_column
        self.doc_separator = doc_separator
        self.validation_fraction, self.split_seed = validation_fraction, split_seed
        self.block_size = block_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.max_eval_blocks = max_eval_blocks
        self.streaming, self.shuffle_buffer = streaming, shuffle_buffer
        self.cache_root = Path(cache_dir).expanduser()
        self.seed = seed

        # the block must fit the model: checked before any file is read
        self.context = None
        if model is not None:
            from lmforge.models.factory import context_length

            self.context = context_length(model)
        try:
            check_block_size(block_size, self.context)
        except ValueError as e:
            raise ConfigError(str(e)) from None

        self.files = self._resolve_files(train_files, validation_files, test_files)
        if streaming and source == "hub":
            raise ConfigError("data.streaming=true reads local text files; use data=text (or data.streaming=false)")

        tt = {**TOKENIZER_TRAINING, **dict(tokenizer_training or {})}
        enabled = tt["enabled"]
        if enabled not in ("auto", True, False):
            raise ConfigError(f"data.tokenizer_training.enabled={enabled}: expected auto, true or false")
        self.train_tokenizer = enabled is True or (enabled == "auto" and not tokenizer)
        if not self.train_tokenizer and not tokenizer:
            raise ConfigError("no tokenizer: the model names none (model.tokenizer / model.name_or_path) and "
                              "data.tokenizer_training.enabled=false")
        kind = self.tokenizer_kind if tt["kind"] == "auto" else tt["kind"]
        if kind not in ("bpe", "wordpiece"):
            raise ConfigError(f"data.tokenizer_training.kind={kind}: expected auto, bpe or wordpiece")
        self.tokenizer_training = {**tt, "kind": kind}
        self.tokenizer_name = None if self.train_tokenizer else tokenizer
        self._tokenizer = None
        if self.tokenizer_name:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_name)
            self._check_tokenizer(self._tokenizer)

        self.data_key = self._data_key()
        self.tokenizer_dir = self.cache_root / "tokenizers" / self._tokenizer_key() if self.train_tokenizer else None
        self.cache = TokenCache(self.cache_root, self.namespace, self._blocks_key())
        self.cache_hit: bool | None = None
        self.meta: dict | None = None
        self.datasets: dict[str, Any] = {}
        self._resume_state: dict | None = None
        self._train_sampler: ResumableBlockSampler | None = None
        self._stream: HeldOutStreamingDataset | None = None

    # -- inputs ------------------------------------------------------------------------------
    def _resolve_files(self, train, validation, test) -> dict[str, list[Path] | None]:
        if self.source == "sample":
            folder = SAMPLES_DIR / self.sample
            if not (folder / "train.txt").is_file():
                have = sorted(p.name for p in SAMPLES_DIR.iterdir() if (p / "train.txt").is_file())
                raise ConfigError(f"data.sample={self.sample}: no such embedded text corpus; available: {', '.join(have)}")
            return {"train": [folder / "train.txt"],
                    "validation": [folder / "validation.txt"] if (folder / "validation.txt").is_file() else None,
                    "test": None}
        if self.source == "hub":
            if not self.hub_name:
                raise ConfigError("data.source=hub needs data.hub_name=<dataset id on the Hugging Face Hub>")
            return {"train": None, "validation": None, "test": None}
        if not train:
            raise ConfigError("data=text needs data.train_files=<file, glob or list of files>")
        out: dict[str, list[Path] | None] = {}
        for split, spec in (("train", train), ("validation", validation), ("test", test)):
            if not spec:
                out[split] = None
                continue
            try:
                files = resolve_text_files(spec)
            except (FileNotFoundError, ValueError) as e:
                raise DataError(f"data.{split}_files: {e}") from None
            empty = [str(f) for f in files if f.stat().st_size == 0]
            if len(empty) == len(files):
                raise DataError(f"data.{split}_files: empty corpus, no text in {', '.join(empty)}")
            out[split] = files
        return out

    def _check_tokenizer(self, tok: Any) -> None:
        if self.separator_id_of(tok) is None:
            raise ConfigError(f"tokenizer {self.tokenizer_name}: no end-of-document token (eos or sep) to put between "
                              "documents; train one with data.tokenizer_training.enabled=true")

    @staticmethod
    def separator_id_of(tok: Any) -> int | None:
        return tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id

    def _data_key(self) -> dict:
        if self.source == "hub":
            data: Any = {"hub": self.hub_name, "config": self.hub_config, "column": self.text_column}
        else:
            data = {s: [file_fingerprint(f) for f in fs] if fs else None for s, fs in self.files.items()}
        return {"data": data, "sep": self.doc_separator, "val_fraction": self.validation_fraction,
                "split_seed": self.split_seed}

    def _tokenizer_key(self) -> str:
        tt = self.tokenizer_training
        key = cache_key({**self.data_key, "tokenizer_training": {k: tt[k] for k in sorted(tt) if k != "enabled"}})
        return f"{tt['kind']}-{tt['vocab_size']}-{key[:16]}"

    def _blocks_key(self) -> str:
        tok = {"trained": self.tokenizer_dir.name} if self.train_tokenizer else {
            "name": self.tokenizer_name, "fingerprint": tokenizer_fingerprint(self._tokenizer)}
        return cache_key({**self.data_key, "tokenizer": tok, "block_size": self.block_size,
                          "max_eval_blocks": self.max_eval_blocks, "streaming": self.streaming})

    # -- documents ---------------------------------------------------------------------------
    def _read_splits(self) -> dict[str, list[str]]:
        """Documents of every split, a validation split carved out when none is given."""
        docs: dict[str, list[str]] = {}
        if self.source == "hub":
            from lmforge.data.sources import load_hub

            hub = load_hub(self.hub_name, self.hub_config)
            for split in ("train", "validation", "test"):
                names = VALIDATION_NAMES if split == "validation" else (split,)
                found = next((n for n in names if n in hub), None)
                if found is None:
                    continue
                rows = hub[found]
                if rows and self.text_column not in rows[0]:
                    raise DataError(f"data.text_column={self.text_column!r} is not a column of {self.hub_name}[{found}]; "
                                    f"its columns are: {', '.join(rows[0])}")
                docs[split] = [r[self.text_column] for r in rows if isinstance(r[self.text_column], str)
                               and r[self.text_column].strip()]
            where = {"train": f"{self.hub_name}[train]"}
        else:
            for split, files in self.files.items():
                if files:
                    try:
                        docs[split] = list(read_documents(files, self.doc_separator))
                    except ValueError as e:  # a decode error names the file and the byte offset
                        raise DataError(str(e)) from None
            where = {s: ", ".join(str(f) for f in fs) for s, fs in self.files.items() if fs}
        for split, d in docs.items():
            if not d:
                raise DataError(f"empty corpus: no text in {where.get(split, split)} (data.{split}_files)")
        if "train" not in docs:
            raise DataError(f"no training split in {self.hub_name}")
        if "validation" not in docs and self.validation_fraction > 0:
            try:
                docs["train"], docs["validation"] = split_train_validation(
                    docs["train"], self.validation_fraction, self.split_seed, files=self.files.get("train"))
            except ValueError as e:
                raise DataError(f"{where['train']}: {e}") from None
        return docs

    # -- tokenizer ---------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None and self.tokenizer_dir is not None and self.tokenizer_dir.is_dir():
            from transformers import PreTrainedTokenizerFast

            self._tokenizer = PreTrainedTokenizerFast.from_pretrained(str(self.tokenizer_dir))
        return self._tokenizer

    def _ensure_tokenizer(self, train_docs: Sequence[str] | None = None) -> Any:
        """The tokenizer, training it on the training documents (once, cached) when it is lmforge's."""
        if self.tokenizer is not None:
            return self.tokenizer
        assert self.tokenizer_dir is not None
        if train_docs is None:
            train_docs = self._read_splits()["train"]
        tt = self.tokenizer_training
        context = self.context or 1_000_000
        self.tokenizer_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.tokenizer_dir.name}.", dir=self.tokenizer_dir.parent))
        try:
            n = f"{len(train_docs):,} documents" if isinstance(train_docs, Sequence) else "the training stream"
            log.info("training a %s tokenizer (%d tokens) on %s -> %s", tt["kind"], tt["vocab_size"], n, self.tokenizer_dir)
            train_tokenizer(iter(train_docs), tt["kind"], int(tt["vocab_size"]), tmp, int(tt["min_frequency"]),
                            bool(tt["lowercase"]), context)
            (tmp / "lmforge_cache.json").write_text(json.dumps({**self.data_key, **tt}, indent=2, default=str))
            try:
                os.rename(tmp, self.tokenizer_dir)
            except OSError:  # another process finished first; its tokenizer is the same
                if not self.tokenizer_dir.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.tokenizer

    # -- tokenize + pack once ----------------------------------------------------------------
    def _splits(self) -> list[str]:
        out = ["validation"] if self.validation_fraction > 0 or self.files.get("validation") else []
        if not self.streaming:
            out.insert(0, "train")
        return out + (["test"] if self.files.get("test") else [])

    def _pack(self, docs: Sequence[str], tok: Any, limit: int | None = None) -> np.ndarray:
        sep = self.separator_id_of(tok)
        ids: list[list[int]] = []
        for start in range(0, len(docs), 1024):
            ids.extend(tok(list(docs[start: start + 1024]), add_special_tokens=False)["input_ids"])
            if limit is not None and sum(len(x) + 1 for x in ids) >= (limit + 1) * self.block_size:
                break
        blocks = pack_sequences(ids, self.block_size, sep)
        return blocks[:limit] if limit is not None else blocks

    def prepare_data(self) -> None:
        """Read, tokenize and pack every split once; later runs with the same key only load."""
        if self.cache.has(self._splits()) and (not self.train_tokenizer or self.tokenizer is not None):
            self.cache_hit = True
            return
        self.cache_hit = False
        docs = self._read_splits() if not self.streaming else self._read_splits_streaming()
        tok = self._ensure_tokenizer(docs.get("train"))
        if self.separator_id_of(tok) is None:
            raise ConfigError("the tokenizer has no end-of-document token (eos or sep)")
        meta: dict[str, Any] = {"block_size": self.block_size, "separator_id": self.separator_id_of(tok),
                                "vocab_size": len(tok), "sizes": {}, "documents": {}}
        for split in self._splits():
            limit = self.max_eval_blocks if split != "train" else None
            blocks = self._pack(docs[split], tok, limit)
            if len(blocks) == 0:
                n = sum(len(x) for x in tok(docs[split][:1000], add_special_tokens=False)["input_ids"])
                raise DataError(f"the {split} split has about {n} tokens, fewer than one block of "
                                f"data.block_size={self.block_size}; use more text or a smaller data.block_size")
            self.cache.save(split, {"blocks": blocks})
            meta["sizes"][split], meta["documents"][split] = int(len(blocks)), len(docs[split])
        self.cache.save_meta(meta)

    def _read_splits_streaming(self) -> dict[str, list[str]]:
        """Streaming: only the (small) evaluation splits are held in memory; one pass to collect them."""
        docs: dict[str, list[str]] = {}
        for split in ("validation", "test"):
            if self.files.get(split):
                docs[split] = list(read_documents(self.files[split], self.doc_separator))
        every = self.hold_out_every
        if "validation" not in docs and every:
            docs["validation"] = list(held_out(self.files["train"], self.doc_separator, every, keep=False))
            if not docs["validation"]:
                raise DataError(f"{self.files['train']}: too few documents to hold out every {every}-th for validation")
        if self.train_tokenizer and self.tokenizer is None:
            # an iterator: the tokenizer trainer streams it
            docs["train"] = held_out(self.files["train"], self.doc_separator, every, keep=True)  # type: ignore
        return docs

    @property
    def hold_out_every(self) -> int:
        if self.files.get("validation") or self.validation_fraction == 0:
            return 0
        return max(2, round(1 / self.validation_fraction))

    # -- Lightning hooks ---------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.meta is None:
            if not self.cache.has(self._splits()) or self.tokenizer is None:
                self.prepare_data()
            self.meta = self.cache.load_meta()
        for split in self.meta["sizes"]:
            if split not in self.datasets:
                self.datasets[split] = PackedBlocks(self.cache.load(split)["blocks"])

    def model_facts(self) -> dict:
        tok = self.tokenizer if self.tokenizer is not None else self._ensure_tokenizer()
        facts = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None
                 else self.separator_id_of(tok)}
        if tok.eos_token_id is not None:
            facts["eos_token_id"] = tok.eos_token_id
        if tok.bos_token_id is not None:
            facts["bos_token_id"] = tok.bos_token_id
        return facts

    def train_collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.stack([e["input_ids"] for e in examples])}

    def eval_collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        return self.train_collate(examples)

    def _progress(self) -> tuple[int, int]:
        """(batches trained in all, in this epoch): the trainer's loop progress, restored from a checkpoint."""
        t = self.trainer
        if t is None:
            return 0, 0
        progress = t.fit_loop.epoch_loop.batch_progress
        return progress.total.processed, progress.current.processed

    def _train_batches(self) -> tuple[int, bool]:
        """(batches per Lightning epoch, whether that is the whole step-based run)."""
        t = self.trainer
        if t is not None and t.max_steps is not None and t.max_steps > 0:
            return t.max_steps * t.accumulate_grad_batches, True
        if t is not None and t.max_epochs in (None, -1):
            raise ConfigError("trainer.max_steps=-1 trains by epochs: set trainer.max_epochs=<number of passes>")
        n = len(self.datasets["train"]) // _world()[1]
        return n // self.batch_size, False

    def train_dataloader(self) -> DataLoader:
        if self.streaming:
            return self._streaming_loader()
        rank, world = _world()
        num_batches, infinite = self._train_batches()
        sampler = ResumableBlockSampler(len(self.datasets["train"]), self.batch_size, num_batches, self.seed,
                                        rank, world, shuffle=True, infinite=infinite, progress=self._progress)
        if self._resume_state is not None:
            self._check_resume(world)
            self._resume_state = None
        self._train_sampler = sampler
        return BlockLoader(self.datasets["train"], batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          collate_fn=self.train_collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def _streaming_loader(self) -> DataLoader:
        tok = self.tokenizer
        ds = HeldOutStreamingDataset(self.files["train"], lambda text: tok(text, add_special_tokens=False)["input_ids"],
                                     self.block_size, self.separator_id_of(tok), self.doc_separator,
                                     shuffle_files=True, shuffle_buffer=self.shuffle_buffer, seed=self.seed,
                                     hold_out_every=self.hold_out_every)
        ds.blocks_per_rank = ds.safe_blocks_per_rank(self.num_workers, self.batch_size)
        if self._resume_state is not None:
            self._check_resume(ds.world_size)
            done = int(self._resume_state["batches_done"]) * self.batch_size
            ds.load_state_dict({"epoch": int(self._resume_state["epoch"]), "blocks_yielded": done,
                                "batch_size": self.batch_size})
            self._resume_state = None
        self._stream = ds
        return DataLoader(ds, batch_size=self.batch_size, collate_fn=self.train_collate, num_workers=self.num_workers)

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls set_epoch on samplers, never on an iterable dataset: the task module calls this."""
        if self._stream is not None:
            self._stream.set_epoch(epoch)

    def _eval_loader(self, split: str) -> DataLoader:
        if split not in self.datasets:
            raise DataError(f"no {split} split: set data.{split}_files=<file or glob> (or data.validation_fraction>0)")
        return DataLoader(self.datasets[split], batch_size=self.eval_batch_size, shuffle=False,
                          collate_fn=self.eval_collate, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test" if "test" in self.datasets else "validation")

    # -- resume: state from the batches actually trained (Lightning fetches ahead) -----------
    def state_dict(self) -> dict[str, Any]:
        t = self.trainer
        if t is None:
            return {}
        return {"epoch": t.current_epoch, "batches_done": t.fit_loop.epoch_loop.batch_progress.current.processed,
                "world_size": t.world_size, "batch_size": self.batch_size, "num_workers": self.num_workers}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume_state = dict(state) if state else None

    def _check_resume(self, world: int) -> None:
        s = self._resume_state
        assert s is not None
        saved = (s.get("world_size"), s.get("batch_size"))
        if saved != (world, self.batch_size) or (self.streaming and s.get("num_workers") != self.num_workers):
            raise ConfigError(
                f"the checkpoint was written with {s.get('world_size')} process(es), data.batch_size={s.get('batch_size')}"
                f" (data.num_workers={s.get('num_workers')}); resuming with {world}, {self.batch_size} "
                f"({self.num_workers}) would replay or skip data: use the same values")


def blocks_fingerprint(blocks: np.ndarray) -> str:
    """A short hash of packed blocks (tests and tools compare runs with it)."""
    return hashlib.sha256(np.ascontiguousarray(blocks).tobytes()).hexdigest()[:16]
