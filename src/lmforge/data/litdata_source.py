"""``data.source=litdata``: pretraining from litdata chunks (Lightning's streaming dataset), local or in a bucket.

``lmforge-prepare`` (:mod:`lmforge.prepare`) writes a chunk folder from text files, with the task's tokenizer::

    <output_dir>/lmforge.json      what lmforge needs: format, tokenizer, vocab size, token counts per split
    <output_dir>/tokenizer/        the tokenizer the ids were made with (saved with save_pretrained)
    <output_dir>/train/            litdata chunks (index.json + chunk-*.bin): token ids, an end-of-document
    <output_dir>/validation/       token after every document (litdata's TokensLoader format)

``data=litdata data.input_dir=<that folder or s3://bucket/prefix>`` trains from it: litdata's
:class:`~litdata.StreamingDataset` cuts the token stream into ``data.block_size`` blocks (any block size:
it is chosen when training, not when preparing), shuffles them by ``seed`` and a new order each data epoch,
and gives every rank (and every DataLoader worker) its own share of the blocks. A remote folder is
downloaded chunk by chunk into ``data.litdata_cache_dir`` while training.

Resume: Lightning saves a stateful train loader's ``state_dict()`` with the fit loop and hands it back to
``load_state_dict()`` on ``ckpt_path=...``. The training loader is a ``ResumableStreamingLoader``, litdata's
:class:`~litdata.StreamingDataLoader` whose state counts the batches the trainer has *trained* (its loop
progress), never a batch fetched but not trained (Lightning fetches ahead when a loader has no length), so a
resumed run continues with the next unseen batch. The state is plain containers (lists, dicts, tuples,
numbers, strings): checkpoints load with ``torch.load(weights_only=True)``.

The datamodule is the task's own (causal LM, masked LM) with this class mixed in (:func:`litdata_datamodule`):
masking, model facts and prediction inputs stay the task's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch

from lmforge.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

META = "lmforge.json"
TOKENIZER = "tokenizer"
FORMAT = 1
INSTALL_HINT = "data.source=litdata needs the litdata package: pip install 'lmforge[litdata]' (or pip install litdata)"


def require_litdata() -> Any:
    try:
        import litdata
    except ImportError:  # pragma: no cover - litdata is installed in the dev environment
        raise ConfigError(INSTALL_HINT) from None
    logging.getLogger("litdata").setLevel(logging.WARNING)  # its INFO lines (cache sizes) at every loader
    _no_version_check()
    return litdata


def _no_version_check() -> None:
    """litdata asks PyPI for a newer release (30 s timeout) each time a dataset is made or chunks are written; the
    version is pinned on purpose (pyproject.toml), and a cluster node without network must not wait for it."""
    import importlib

    for name in ("litdata.streaming.dataset", "litdata.processing.functions"):
        try:
            mod = importlib.import_module(name)
        except ImportError:  # pragma: no cover - another litdata layout
            continue
        if hasattr(mod, "_check_version_and_prompt_upgrade"):
            mod._check_version_and_prompt_upgrade = lambda *args, **kwargs: None


def is_remote(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("local:")


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a local folder or a URL (``s3://bucket/prefix``)."""
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return str(Path(base).expanduser().joinpath(*parts))


def read_text(path: str, storage_options: dict | None = None) -> str:
    if is_remote(path):
        import fsspec

        with fsspec.open(path, "r", **(storage_options or {})) as f:
            return f.read()
    return Path(path).read_text(encoding="utf-8")


def read_meta(input_dir: str, storage_options: dict | None = None, key: str = "data.input_dir") -> dict:
    """The chunk folder's ``lmforge.json``; a DataError naming the folder when it is not one lmforge wrote."""
    path = join(input_dir, META)
    try:
        meta = json.loads(read_text(path, storage_options))
    except FileNotFoundError:
        hint = "" if is_remote(input_dir) or Path(input_dir).expanduser().is_dir() else " (no such folder)"
        raise DataError(f"{key}={input_dir}: no {META} there{hint}; write the chunks first with "
                        f"lmforge-prepare output_dir={input_dir} task=<task> data=text data.train_files=<files>") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}: format {meta.get('format')!r}; this lmforge reads format {FORMAT} "
                        "(write the chunks again with lmforge-prepare)")
    return meta


def load_tokenizer(input_dir: str, storage_options: dict | None, cache_dir: Path) -> Any:
    """The tokenizer saved with the chunks (a remote one is copied into ``cache_dir`` first)."""
    from transformers import AutoTokenizer

    src = join(input_dir, TOKENIZER)
    if is_remote(input_dir):
        import fsspec

        local = cache_dir / "tokenizer"
        fs, _, paths = fsspec.get_fs_token_paths(src, storage_options=storage_options or {})
        fs.get(paths[0].rstrip("/") + "/", str(local) + "/", recursive=True)
        src = str(local)
    return AutoTokenizer.from_pretrained(src, trust_remote_code=False)  # lmforge's own save: no code


def split_dir(input_dir: str, split: str) -> str:
    return join(input_dir, split)


class _Blocks:
    """Collate: the token blocks litdata yields (1-D uint16/int32 arrays) -> the task's ``{"input_ids"}`` examples."""

    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, items: list) -> dict[str, torch.Tensor]:
        return self.collate([{"input_ids": torch.as_tensor(x).long()} for x in items])


def _streaming_loader_class() -> type:
    from litdata import StreamingDataLoader, StreamingDataset

    class ResumableStreamingLoader(StreamingDataLoader):
        """litdata's StreamingDataLoader whose state is that of the batches trained (``consumed()``), not of
        those fetched: a state counting a batch fetched ahead (Lightning prefetches from a loader without a
        length) would skip that batch on resume."""

        def __init__(self, *args: Any, consumed: Callable[[], int | None] | None = None, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._consumed = consumed

        def state_dict(self) -> dict[str, Any]:
            n = self._consumed() if self._consumed is not None else None
            if n is None or not isinstance(self.dataset, StreamingDataset):
                return super().state_dict()
            yielded, latest = self._num_samples_yielded_streaming, self._latest_worker_idx
            try:
                self._num_samples_yielded_streaming = min(int(n) * int(self.batch_size), yielded)
                self._latest_worker_idx = (int(n) - 1) % max(self.num_workers, 1) if n else 0
                return super().state_dict()
            finally:
                self._num_samples_yielded_streaming, self._latest_worker_idx = yielded, latest

    return ResumableStreamingLoader


class LitdataData:
    """Mixed in before a pretraining datamodule (:class:`lmforge.data.packing.PackedTextDataModule` subclass):
    its data is a litdata chunk folder (``data.input_dir``), its tokenizer the one saved there."""

    def __init__(self, input_dir: str | None = None, litdata_cache_dir: str | None = None,
                 storage_options: dict | None = None, **kwargs: Any):
        require_litdata()
        if not input_dir:
            raise ConfigError("data=litdata needs data.input_dir=<folder written by lmforge-prepare, or s3://bucket/prefix>")
        if kwargs.get("streaming"):
            raise ConfigError("data.streaming=true and data.source=litdata: litdata streams already; drop data.streaming")
        self.input_dir = str(input_dir) if is_remote(str(input_dir)) else str(Path(str(input_dir)).expanduser())
        self.storage_options = dict(storage_options or {})
        kwargs.update(source="sample")  # the base class resolves no files of its own; the chunks are the data
        super().__init__(**kwargs)
        base = Path(litdata_cache_dir).expanduser() if litdata_cache_dir else self.cache_root / "litdata"
        self.litdata_cache = base / _slug(self.input_dir)
        self.litdata_meta: dict | None = None

    # the tokenizer comes from the chunk folder: nothing to train, nothing to name
    def _resolve_tokenizer(self, tokenizer: Any, tokenizer_training: Any) -> None:
        self._tokenizer, self.tokenizer_dir, self.tokenizer_name = None, None, f"{self.input_dir}/{TOKENIZER}"
        self.train_tokenizer, self.tokenizer_training = False, None

    def _tokenizer_identity(self) -> Any:
        return {"litdata": self.input_dir}

    def _data_parts(self) -> dict:
        return {"data": {"litdata": self.input_dir}}

    def prepare_data(self) -> None:
        if self.litdata_meta is not None:
            return
        self.litdata_meta = meta = read_meta(self.input_dir, self.storage_options)
        self._tokenizer = self.check_tokenizer(load_tokenizer(self.input_dir, self.storage_options, self.litdata_cache))
        if len(self._tokenizer) != meta.get("vocab_size"):
            raise DataError(f"{join(self.input_dir, META)}: vocab_size {meta.get('vocab_size')} but the saved tokenizer has "
                            f"{len(self._tokenizer)} tokens; write the chunks again with lmforge-prepare")
        self.cache_hit = True

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        meta = self.litdata_meta or {}
        splits = [s for s in ("train", "validation", "test") if s in meta.get("splits", {})]
        if "train" not in splits:
            raise DataError(f"{join(self.input_dir, META)}: no train split")
        for s in splits:
            tokens = int(meta["splits"][s]["tokens"])
            if tokens < self.block_size:
                raise DataError(f"data.input_dir={self.input_dir}: the {s} split has {tokens} tokens, fewer than one "
                                f"block of data.block_size={self.block_size}; use a smaller data.block_size")
        self.meta = {"labelled": splits, "sizes": {s: meta["splits"][s]["tokens"] // self.block_size for s in splits},
                     "origin": {s: split_dir(self.input_dir, s) for s in splits}}
        self.datasets = {s: _SplitRef(s) for s in splits}  # what labelled_splits() looks at; loaders are built below

    def _dataset(self, split: str, shuffle: bool) -> Any:
        from litdata import StreamingDataset, TokensLoader

        remote = is_remote(self.input_dir)
        return StreamingDataset(split_dir(self.input_dir, split), item_loader=TokensLoader(block_size=self.block_size),
                                shuffle=shuffle, seed=self.seed, drop_last=True,
                                cache_dir=str(self.litdata_cache / split) if remote else None,
                                storage_options=self.storage_options or None)

    def _consumed(self) -> int | None:
        t = self.trainer
        if t is None:
            return None
        return int(t.fit_loop.epoch_loop.batch_progress.current.processed)

    def train_dataloader(self) -> Any:
        loader = _streaming_loader_class()
        return loader(self._dataset("train", self.shuffle), batch_size=self.batch_size, num_workers=self.num_workers,
                      collate_fn=_Blocks(self.train_collate), drop_last=True, consumed=self._consumed,
                      persistent_workers=False)

    def eval_dataloader(self, split: str) -> Any:
        from litdata import StreamingDataLoader

        if split not in self.labelled_splits():
            raise DataError(self._no_split(split))
        return StreamingDataLoader(self._dataset(split, False), batch_size=self.eval_batch_size,
                                   num_workers=self.num_workers, collate_fn=_Blocks(self.eval_collate))

    # the loader's own state (Lightning saves it with the fit loop) is what resumes; nothing to check here
    def state_dict(self) -> dict[str, Any]:
        return {"litdata": self.input_dir, "batch_size": self.batch_size, "block_size": self.block_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and state.get("block_size") not in (None, self.block_size):
            raise ConfigError(f"the checkpoint was trained with data.block_size={state['block_size']}; resuming with "
                              f"{self.block_size} would read other blocks: use the same value")


class _SplitRef:
    """Stands for a litdata split in ``datasets`` (no len(): the loaders stream it)."""

    def __init__(self, split: str):
        self.split = split


def _slug(path: str) -> str:
    import hashlib

    return hashlib.sha256(path.encode()).hexdigest()[:16]


_CLASSES: dict[type, type] = {}


def litdata_datamodule(task_class: type) -> type:
    """The task's datamodule class reading litdata chunks: ``LitdataData`` mixed in before it."""
    if task_class not in _CLASSES:
        _CLASSES[task_class] = type(f"Litdata{task_class.__name__}", (LitdataData, task_class),
                                    {"__module__": __name__})
    return _CLASSES[task_class]


def build(target: str, **kwargs: Any) -> Any:
    """Instantiate the task datamodule ``target`` (its import path) reading ``data.input_dir``."""
    from hydra.utils import get_class

    cls = get_class(target)
    from lmforge.data.packing import PackedTextDataModule

    if not issubclass(cls, PackedTextDataModule):
        raise ConfigError(f"data.source=litdata: only the pretraining tasks (causal_lm, masked_lm) read litdata chunks; "
                          f"{cls.__name__} does not")
    kwargs.pop("source", None)
    return litdata_datamodule(cls)(**kwargs)

