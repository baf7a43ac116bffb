"""Load checkpoints without running code from them.

A checkpoint is a pickle, and unpickling can call any function the file names: a checkpoint from a
colleague or the Hub could run anything on this machine. So lmforge reads every checkpoint with
``torch.load(..., weights_only=True)``, whose unpickler builds tensors, plain containers and numbers
and refuses every other type unless it is allow-listed. Nothing is allow-listed beyond torch's own
defaults, because nothing else is needed: lmforge stores its hyperparameters and model facts as plain
dicts, and Lightning stores loop, callback, optimizer and scheduler state as dicts, lists, numbers,
strings and tensors (checked against the checkpoints of every task, single process and FSDP2).

FSDP2 sharded checkpoints (a folder written by Lightning's ModelParallelStrategy: ``meta.pt``,
``.metadata``, ``__<rank>_0.distcp``) have two more pickles: ``.metadata``, which torch's distributed
checkpoint reader unpickles with plain ``pickle.load``, and the non-tensor values inside the
``.distcp`` files (optimizer hyperparameters), which it loads with ``weights_only=False``. lmforge
reads ``.metadata`` with an unpickler that knows only the metadata classes (``DCP_METADATA_GLOBALS``)
and the values with ``weights_only=True``.

A checkpoint that asks for anything else is refused with :class:`UnsafeCheckpointError`, naming the
file and the type; ``unsafe_load=true`` (``unsafe=True`` here) loads a checkpoint the user trusts,
after a warning.

Lightning's own resume (``trainer.fit(ckpt_path=...)``) loads ``.ckpt`` files and ``meta.pt`` with
``weights_only`` as passed to ``fit``, but the sharded folder's ``.metadata`` and values with plain
pickle; :func:`fit_checkpoint_kwargs` checks a checkpoint with the safe readers first and returns the
``fit``/``test`` arguments that keep Lightning on ``weights_only=True``.

A run folder's ``config.yaml`` is code too: eval.py instantiates its ``_target_``s with its arguments.
:func:`check_run_config` accepts only the targets lmforge's config tree names (now or before) and
``torch.optim`` classes, and no ``model.trust_remote_code=true``.

Damage and interrupted writes. A checkpoint is written under a temporary name in its own folder
(``last.ckpt.tmp``), flushed to disk and renamed over the old one (:func:`commit_checkpoint`), so a run
killed mid-write leaves the previous checkpoint whole. A sharded folder gets a ``COMPLETE`` marker
written last; a folder without one is unfinished and ``ckpt_path=last`` passes it by with a warning.
:func:`check_intact` recognizes a file cut short or overwritten (torch's zip format ends with a
directory of its entries) before anything is unpickled, and :func:`resolve_ckpt_path` checks the
checkpoint a run resumes from before any data is read: a damaged file is a :class:`CheckpointError`
naming it; ``ckpt_path=last`` falls back to the newest good checkpoint, with a warning per one passed by.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch

from lmforge.utils.errors import LMForgeError

log = logging.getLogger(__name__)

UNSAFE_HINT = ("If you trust this checkpoint (you or someone you trust wrote it), load it with unsafe_load=true, "
               "which unpickles it with weights_only=False and can run any code the file names.")

# Types that ``torch.load(weights_only=True)`` must accept for lmforge's and Lightning's own checkpoints,
# beyond torch's defaults (tensors and storages, OrderedDict, dtypes, torch.Size, plain containers).
# Empty: the checkpoints of every task (text classification, masked LM, causal LM), single process and
# FSDP2 ``meta.pt``, hold only plain containers, numbers, strings and tensors (lmforge saves its
# hyperparameters as dicts, not OmegaConf containers; Lightning stores ``dict(hparams)``, not its
# AttributeDict). Add a type here only with a checkpoint that needs it and a test that saves one.
CHECKPOINT_SAFE_GLOBALS: tuple[Any, ...] = ()


class CheckpointError(LMForgeError):
    """A checkpoint cannot be read (missing, not a checkpoint, corrupt)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint asks for a type that lmforge does not allow-list; unpickling it could run code.

    ``wanted`` is the type (``module.name``) it asked for, or, with ``is_type=False``, what else the safe
    unpickler stopped at (an instruction it does not run)."""

    def __init__(self, path: str | Path, wanted: str, is_type: bool = True):
        self.path, self.wanted = str(path), wanted
        if is_type:
            what = (f"it asks for {wanted}, a type that lmforge's and Lightning's checkpoints do not contain; "
                    "unpickling it could run code")
        else:
            what = (f"the safe unpickler stopped at: {wanted} (it builds only tensors, plain containers and "
                    "allow-listed types; this file is not a checkpoint lmforge wrote, or it is damaged)")
        super().__init__(f"{path}: refused to load: {what}. {UNSAFE_HINT}")


# -- torch.load with weights_only ------------------------------------------------------------------------


def register_safe_globals() -> None:
    """Allow-list ``CHECKPOINT_SAFE_GLOBALS`` process-wide, so Lightning's ``weights_only=True`` loads
    (``trainer.fit/test(..., weights_only=True)``) accept what lmforge's loader accepts. Idempotent."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None and CHECKPOINT_SAFE_GLOBALS:
        add(list(CHECKPOINT_SAFE_GLOBALS))


def _wanted_global(err: BaseException) -> tuple[str, bool]:
    """(the type a refused ``weights_only`` load asked for, True), or (what else it refused, False),
    from torch's error message."""
    text = str(err)
    m = re.search(r"Unsupported global: GLOBAL (\S+) was not an allowed global", text)
    if m:
        name = m.group(1)
        return (name if "." in name else f"builtins.{name}"), True
    m = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if m:
        return m.group(1).strip().rstrip("."), False
    return (text.strip().splitlines()[0] if text.strip() else type(err).__name__), False


def _is_weights_only_refusal(err: BaseException) -> bool:
    # torch's safe unpickler refusing a type or an opcode (a truncated or garbage file fails otherwise)
    return "Weights only load failed" in str(err) or "WeightsUnpickler error" in str(err)


def _torch_load_safe(source: Any, name: str | Path, **kwargs: Any) -> Any:
    """``torch.load(weights_only=True)`` with lmforge's allow-list; a refusal is an UnsafeCheckpointError."""
    ctx = getattr(torch.serialization, "safe_globals", None)
    try:
        if ctx is not None and CHECKPOINT_SAFE_GLOBALS:
            with ctx(list(CHECKPOINT_SAFE_GLOBALS)):
                return torch.load(source, weights_only=True, **kwargs)
        return torch.load(source, weights_only=True, **kwargs)
    except Exception as e:
        if _is_weights_only_refusal(e):
            raise UnsafeCheckpointError(name, *_wanted_global(e)) from None
        raise CheckpointError(f"{name}: not a readable checkpoint ({type(e).__name__}: {e})") from e


# -- the sharded (DCP) checkpoint's metadata pickle ---------------------------------------------------------


def _dcp_metadata_globals() -> dict[tuple[str, str], Any]:
    """What a sharded checkpoint's ``.metadata`` may name, (module, name) -> object; dtypes (``torch.float32``,
    ...) are accepted too. Every entry is data: dataclasses of sizes, offsets and file names, an enum,
    ``torch.Size``, torch's layout lookup by name, and paths, which are read as inert pure paths."""
    from torch.distributed.checkpoint import filesystem, metadata

    allowed: dict[tuple[str, str], Any] = {}
    for name in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                 "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"):
        if hasattr(metadata, name):
            allowed[("torch.distributed.checkpoint.metadata", name)] = getattr(metadata, name)
    allowed[("torch.distributed.checkpoint.filesystem", "_StorageInfo")] = filesystem._StorageInfo
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
    # StorageMeta.checkpoint_id is the path the folder was saved to: read it as an inert pure path
    for module in ("pathlib", "pathlib._local"):
        for cls in ("Path", "PosixPath", "PurePosixPath"):
            allowed[(module, cls)] = PurePosixPath
        for cls in ("WindowsPath", "PureWindowsPath"):
            allowed[(module, cls)] = PureWindowsPath
    return allowed


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, name: str | Path):
        super().__init__(file)
        self.name = name
        self.allowed = _dcp_metadata_globals()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeCheckpointError(self.name, f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(self.name, f"a persistent object ({pid!r})", is_type=False)


def read_dcp_metadata(path: str | Path) -> Any:
    """A sharded checkpoint's ``.metadata`` (a ``torch.distributed.checkpoint.Metadata``), read without
    running code: only the metadata classes are resolved; anything else is an UnsafeCheckpointError."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _MetadataUnpickler(f, path).load()
    except (UnsafeCheckpointError, FileNotFoundError):
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable sharded-checkpoint metadata file "
                              f"({type(e).__name__}: {e})") from e


def _safe_reader_and_planner(folder: Path, metadata: Any, keys: set[str] | None, refusals: list):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            # the folder's global .metadata, already read by the metadata-only unpickler
            if getattr(metadata, "storage_meta", "absent") is None:
                from torch.distributed.checkpoint.metadata import StorageMeta

                metadata.storage_meta = StorageMeta()
            if getattr(metadata, "storage_meta", None) is not None and hasattr(self, "load_id"):
                metadata.storage_meta.load_id = self.load_id
            return metadata

    class SafePlanner(_EmptyStateDictLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            # the value is checked by the safe unpickler; torch's planner then reads our re-serialization of it
            fqn = read_item.dest_index.fqn
            try:
                obj = _torch_load_safe(value, f"{folder} (value {fqn})")
            except CheckpointError as e:
                refusals.append(e)  # torch's loader wraps exceptions; _load_sharded raises this one
                raise
            clean = io.BytesIO()
            torch.save(obj, clean)
            clean.seek(0)
            super().load_bytes(read_item, clean)

    try:
        planner = SafePlanner(keys=keys) if keys is not None else SafePlanner()
    except TypeError:  # older torch: no key filter, read everything
        planner = SafePlanner()
    return SafeReader(str(folder)), planner


def _torch_reads_dcp_tensors_safely() -> bool:
    """torch >= 2.6 reads a sharded checkpoint's tensor items with ``weights_only=True``."""
    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    return (major, minor) >= (2, 6)


def is_sharded_checkpoint(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "meta.pt").is_file()


def _load_sharded(folder: Path, keys: set[str] | None = None) -> dict:
    """The sharded checkpoint's tensors and values as one (unflattened) dict, in this process."""
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    if not _torch_reads_dcp_tensors_safely():
        raise UnsafeCheckpointError(folder, "tensor items, which torch < 2.6 reads with weights_only=False "
                                            "(torch >= 2.6 reads sharded checkpoints safely)", is_type=False)
    metadata = read_dcp_metadata(folder / ".metadata")
    refusals: list[CheckpointError] = []
    reader, planner = _safe_reader_and_planner(folder, metadata, keys, refusals)
    state: dict = {}
    try:
        _load_state_dict(state, storage_reader=reader, planner=planner, no_dist=True)
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
        if refusals:
            raise refusals[0] from None
        raise CheckpointError(f"{folder}: the sharded checkpoint could not be read ({type(e).__name__}: {e})") from e
    return state


def _load_sharded_unsafe(folder: Path) -> dict:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict = {}
    _load_state_dict(state, storage_reader=FileSystemReader(str(folder)), planner=_EmptyStateDictLoadPlanner(),
                     no_dist=True)
    return state


# -- the public loaders ---------------------------------------------------------------------------------


def _warn_unsafe(path: Path) -> None:
    log.warning("unsafe_load=true: unpickling %s with weights_only=False; this runs any code the file names. "
                "Use it only for checkpoints you trust.", path)


def load_checkpoint(path: str | Path, unsafe: bool = False) -> dict:
    """A Lightning checkpoint as one dict on the CPU: a ``.ckpt`` file, or an FSDP2 sharded checkpoint folder
    (``meta.pt`` plus the full, unsharded ``state_dict``; optimizer states are not read).

    Read with ``weights_only=True`` and lmforge's allow-list; a file that asks for anything else raises
    :class:`UnsafeCheckpointError`. ``unsafe=True`` unpickles with ``weights_only=False`` after a warning.
    """
    path = Path(path).expanduser()
    if path.is_file():
        if unsafe:
            _warn_unsafe(path)
            return torch.load(path, map_location="cpu", weights_only=False)
        ckpt = _torch_load_safe(path, path, map_location="cpu")
        if not isinstance(ckpt, dict):
            raise CheckpointError(f"{path}: not a Lightning checkpoint (holds a {type(ckpt).__name__}, not a dict)")
        return ckpt
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file or sharded checkpoint folder")
    meta = path / "meta.pt"
    if not meta.is_file():
        raise FileNotFoundError(f"{path}: neither a checkpoint file nor a sharded checkpoint folder (no meta.pt)")
    if unsafe:
        _warn_unsafe(path)
        ckpt = torch.load(meta, map_location="cpu", weights_only=False)
        ckpt["state_dict"] = _load_sharded_unsafe(path)["state_dict"]
        return ckpt
    ckpt = _torch_load_safe(meta, meta, map_location="cpu")
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{meta}: not a Lightning checkpoint (holds a {type(ckpt).__name__}, not a dict)")
    full = _load_sharded(path, keys={"state_dict"})
    if "state_dict" not in full:
        raise CheckpointError(f"{path}: the sharded checkpoint holds no state_dict (has {', '.join(sorted(full))})")
    ckpt["state_dict"] = full["state_dict"]
    return ckpt


def _read_slice(folder: Path, info: Any) -> bytes:
    with open(folder / info.relative_path, "rb") as f:
        f.seek(info.offset)
        return f.read(info.length)


def verify_checkpoint(path: str | Path) -> dict:
    """Check, without fully reading it, that a checkpoint is whole (:func:`check_intact`) and loads with the safe
    readers; returns its top-level dict (a sharded folder's ``meta.pt``), tensors memory-mapped, not read.

    A ``.ckpt`` file is loaded memory-mapped with ``weights_only=True`` (tensor data is not read). A sharded
    folder: ``meta.pt`` likewise, ``.metadata`` with the metadata-only unpickler, and every non-tensor value
    in the ``.distcp`` files with ``weights_only=True`` (these are small: optimizer hyperparameters).
    Raises :class:`UnsafeCheckpointError` (or :class:`CheckpointError`) otherwise.
    """
    path = Path(path).expanduser()
    check_intact(path)
    f = path if path.is_file() else path / "meta.pt"
    try:
        top = _torch_load_safe(f, f, map_location="cpu", mmap=True)
    except CheckpointError as e:
        if isinstance(e, UnsafeCheckpointError):
            raise
        top = _torch_load_safe(f, f, map_location="cpu")  # not mmap-able (old format): read it whole
    if not isinstance(top, dict):
        raise CheckpointError(f"{f}: not a Lightning checkpoint (holds a {type(top).__name__}, not a dict)")
    if path.is_file():
        return top
    if not _torch_reads_dcp_tensors_safely():
        raise UnsafeCheckpointError(path, "tensor items, which torch < 2.6 reads with weights_only=False "
                                          "(torch >= 2.6 resumes sharded checkpoints safely)", is_type=False)
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    metadata = read_dcp_metadata(path / ".metadata")
    byte_keys = {k for k, v in metadata.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata)}
    for index, info in (metadata.storage_data or {}).items():
        if index.fqn not in byte_keys:
            continue
        if getattr(info, "transform_descriptors", None):
            _load_sharded(path, keys=byte_keys)  # transformed (e.g. compressed) items: let torch's reader decode
            return top
        _torch_load_safe(io.BytesIO(_read_slice(path, info)), f"{path / info.relative_path} (value {index.fqn})")
    return top


def fit_checkpoint_kwargs(ckpt_path: str | Path | None, unsafe: bool = False) -> dict[str, Any]:
    """The arguments for ``trainer.fit/validate/test(...)`` that resume from ``ckpt_path`` safely.

    Registers the allow-list, checks the checkpoint with :func:`verify_checkpoint` (Lightning reads a sharded
    folder's ``.metadata`` and values with plain pickle, so they are checked here first), and returns
    ``{"ckpt_path": ..., "weights_only": True}``; with ``unsafe=True``, a warning and ``weights_only=False``.
    """
    if not ckpt_path:
        return {"ckpt_path": None}
    register_safe_globals()
    if unsafe:
        _warn_unsafe(Path(ckpt_path))
        return {"ckpt_path": str(ckpt_path), "weights_only": False}
    verify_checkpoint(ckpt_path)
    return {"ckpt_path": str(ckpt_path), "weights_only": True}


# -- damaged checkpoints ----------------------------------------------------------------------------------

COMPLETE_MARKER = "COMPLETE"  # written last into a sharded checkpoint folder: the folder is whole
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format (a zip archive) since torch 1.6
_LEGACY_MAGIC = b"\x80\x02"  # torch.save(_use_new_zipfile_serialization=False): a pickle stream


def _damaged(f: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{f}: damaged checkpoint: {what}. It was probably cut short (a disk that filled up, "
                           "a copy that stopped) or overwritten; resume from another checkpoint of the run "
                           "(ckpt_path=last picks the newest good one)")


def _check_file_intact(f: Path) -> None:
    """A ``torch.save`` file whose zip directory (written last) is present and whose entries lie inside it."""
    size = f.stat().st_size
    if size == 0:
        raise _damaged(f, "the file is empty (0 bytes)")
    with open(f, "rb") as fh:
        head = fh.read(4)
    if head[:2] == _LEGACY_MAGIC:
        return  # the pre-1.6 format: no directory to check; the safe loader reads it
    if head != _ZIP_MAGIC:
        raise _damaged(f, f"{size:,} bytes that are not a PyTorch checkpoint (it starts with {head!r}, not a zip "
                          "archive as torch.save writes)")
    try:
        with zipfile.ZipFile(f) as z:
            entries = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise _damaged(f, f"{size:,} bytes without the zip directory a complete file ends with ({e})") from None
    for e in entries:
        if e.header_offset + e.compress_size > size:
            raise _damaged(f, f"its entry {e.filename} ends past the end of the file ({size:,} bytes)")


def check_intact(path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming the file when a checkpoint is cut short or is not a checkpoint;
    nothing is unpickled. A file: its zip structure. A sharded folder: ``meta.pt`` likewise, ``.metadata``
    present, and every byte range it lists inside the ``.distcp`` file that holds it."""
    path = Path(path).expanduser()
    if path.is_file():
        return _check_file_intact(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file or sharded checkpoint folder")
    meta = path / "meta.pt"
    if not meta.is_file():
        raise FileNotFoundError(f"{path}: neither a checkpoint file nor a sharded checkpoint folder (no meta.pt)")
    _check_file_intact(meta)
    if not (path / ".metadata").is_file():
        raise _damaged(path, "the sharded folder has no .metadata (torch writes it after every shard)")
    metadata = read_dcp_metadata(path / ".metadata")
    sizes: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        rel = str(info.relative_path)
        if rel not in sizes:
            shard = path / rel
            if not shard.is_file():
                raise _damaged(path, f"{rel}, listed in its .metadata, is missing")
            sizes[rel] = shard.stat().st_size
        if info.offset + info.length > sizes[rel]:
            raise _damaged(path / rel, f"it holds {sizes[rel]:,} bytes, .metadata lists data up to byte "
                                       f"{info.offset + info.length:,}")


def is_complete(path: str | Path) -> bool:
    """A checkpoint file, or a sharded folder with the ``COMPLETE`` marker that lmforge writes last."""
    path = Path(path)
    return path.is_file() or (path / COMPLETE_MARKER).is_file()


# -- writing: a new checkpoint replaces the old one only once it is whole -------------------------------------


def temporary_path(final: str | Path) -> str:
    """Where a checkpoint is written before :func:`commit_checkpoint` renames it: beside the final name (a rename
    within one folder is atomic), with a suffix ``ckpt_path=last`` never picks."""
    return f"{final}.tmp"


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a folder on Windows cannot be opened: nothing to flush there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_path(path: str | Path) -> None:
    """A file, link or folder, if it is there."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def commit_checkpoint(tmp: str | Path, final: str | Path, info: dict | None = None) -> None:
    """Put the checkpoint written at ``tmp`` in place at ``final`` (one process: global rank 0).

    A file is flushed to disk and renamed over ``final`` in one step, so ``final`` is always the old or the new
    checkpoint, whole. A sharded folder gets its files flushed and the ``COMPLETE`` marker (``info`` as JSON)
    written last; the old folder is moved aside, the new one renamed in and the old one removed.
    """
    tmp, final = Path(tmp), Path(final)
    if tmp.is_dir():
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                _fsync(f)
        marker = tmp / COMPLETE_MARKER
        marker.write_text(json.dumps(info or {}, default=str))
        _fsync(marker)
        _fsync(tmp)
    else:
        _fsync(tmp)
    old = None
    if final.is_dir() and not final.is_symlink():  # a folder cannot be renamed over a folder in one step
        old = Path(f"{final}.old")
        remove_path(old)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync(final.parent)
    if old is not None:
        remove_path(old)


# -- ckpt_path: what a run resumes from ---------------------------------------------------------------------


def resolve_ckpt_path(cfg: Any) -> str | None:
    """``ckpt_path`` checked before any data is read: a checkpoint file (or FSDP2 sharded folder), or ``last``:
    the newest good checkpoint of this task's earlier runs that trained this model on this data
    (``<paths.log_dir>/<task_name>/runs/*/checkpoints/*.ckpt``, this run excluded).

    A damaged checkpoint named by the user is a :class:`CheckpointError` naming it. ``last`` tries the
    candidates newest first (``last.ckpt`` before another checkpoint of the same moment) and passes by, with a
    warning, a damaged file, a sharded folder without its ``COMPLETE`` marker, a weights-only checkpoint and
    (without ``unsafe_load=true``) one that asks for types lmforge refuses to unpickle.
    """
    from lightning.pytorch.utilities import rank_zero_only

    from lmforge.utils.errors import ConfigError

    ckpt = cfg.get("ckpt_path")
    if not ckpt:
        return None
    unsafe = bool(cfg.get("unsafe_load", False))
    if str(ckpt) != "last":
        p = Path(ckpt).expanduser()
        if p.is_dir() and (p / "meta.pt").is_file():
            name = str((cfg.get("strategy") or {}).get("name", "auto"))
            if name != "fsdp":
                raise ConfigError(f"ckpt_path={ckpt} is an FSDP2 sharded checkpoint folder: resume it with "
                                  f"strategy=fsdp (this run has strategy={name}); eval.py reads it in one process")
            if not is_complete(p) and rank_zero_only.rank == 0:
                log.warning("ckpt_path=%s: the folder has no %s marker (written by an older lmforge, or its run "
                            "stopped while writing it); checking its files", ckpt, COMPLETE_MARKER)
        elif not p.is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt}: no such checkpoint file (or sharded checkpoint folder)")
        _check_resumable(p, unsafe, training=bool(cfg.get("train", True)))
        return str(p)

    runs = Path(cfg.paths.log_dir) / str(cfg.task_name) / "runs"
    here = Path(cfg.paths.output_dir).resolve()
    found = [d for d in runs.glob("*") if d.is_dir() and d.resolve() != here and _checkpoints_of(d)]
    if not found:
        raise FileNotFoundError(f"ckpt_path=last: no earlier run of {cfg.task_name} has a checkpoint under {runs} "
                                "(<run>/checkpoints/*.ckpt)")
    # runs that trained this model on this data: a run of another corpus or size cannot continue here
    same = [d for d in found if same_model_and_data(cfg, d / "config.yaml")]
    if not same:
        newest = max(found, key=lambda d: max(_mtime(c) for c in _checkpoints_of(d)))
        raise ConfigError(f"ckpt_path=last: no earlier run of {cfg.task_name} under {runs} has this run's model and "
                          f"data config (the newest, {newest.name}, differs); pass ckpt_path=<file>")
    candidates = sorted((c for d in same for c in _checkpoints_of(d)),
                        key=lambda c: (_mtime(c), c.name == "last.ckpt"), reverse=True)
    sharded_ok = str((cfg.get("strategy") or {}).get("name", "auto")) == "fsdp"
    passed: list[str] = []
    for c in candidates:
        why = _why_not_resumable(c, unsafe, sharded_ok)
        if why is None:
            if rank_zero_only.rank == 0:
                log.info("ckpt_path=last: resuming from %s", c)
                print(f"resuming from {c}")
            return str(c)
        passed.append(f"{c}: {why}")
        if rank_zero_only.rank == 0:
            log.warning("ckpt_path=last: passing by %s: %s; falling back to an older checkpoint", c, why)
    raise CheckpointError(f"ckpt_path=last: none of the {len(candidates)} checkpoints of earlier {cfg.task_name} runs "
                          f"with this model and data can resume training:\n  " + "\n  ".join(passed))


def same_model_and_data(cfg: Any, saved: Path) -> bool:
    """Whether the run config saved at ``saved`` has ``cfg``'s model and data sections."""
    from omegaconf import OmegaConf

    try:
        old = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
    except Exception:
        return False
    now = OmegaConf.to_container(cfg, resolve=True)
    return all(old.get(k) == now.get(k) for k in ("model", "data"))


def _checkpoints_of(run: Path) -> list[Path]:
    """A run's checkpoints by the names the checkpoint callback gives them (``*.ckpt``: files, or sharded
    folders); never the temporary names of a write in progress."""
    folder = run / "checkpoints"
    if not folder.is_dir():
        return []
    return [p for p in folder.glob("*.ckpt") if p.is_file() or (p / "meta.pt").is_file()]


def _mtime(path: Path) -> float:
    """When a checkpoint was finished: a file's mtime, a folder's marker (or meta.pt)."""
    for f in (path / COMPLETE_MARKER, path / "meta.pt") if path.is_dir() else (path,):
        if f.is_file():
            return f.stat().st_mtime
    return path.stat().st_mtime


def _why_not_resumable(path: Path, unsafe: bool, sharded_ok: bool = True) -> str | None:
    if path.is_dir() and not is_complete(path):
        return (f"a sharded checkpoint folder without its {COMPLETE_MARKER} marker (its run stopped while writing "
                "it, or an older lmforge wrote it)")
    if path.is_dir() and not sharded_ok:
        return "an FSDP2 sharded checkpoint folder, which only strategy=fsdp resumes"
    try:
        _check_resumable(path, unsafe)
    except UnsafeCheckpointError as e:
        return f"refused: {str(e).split(': refused to load: ', 1)[-1]}"
    except (CheckpointError, FileNotFoundError) as e:
        return str(e).removeprefix(f"{path}: ")
    return None


def _check_resumable(path: Path, unsafe: bool, training: bool = True) -> None:
    """Whole, safe to load (unless ``unsafe``) and, when the run trains, holding training state (not
    ``save_weights_only``)."""
    if unsafe:
        check_intact(path)  # its pickles are the user's to trust: only whether it is whole is checked
        return
    top = verify_checkpoint(path)
    if training and "loops" not in top:
        raise CheckpointError(f"{path}: a weights-only checkpoint (callbacks.model_checkpoint.save_weights_only=true):"
                              " it holds no optimizer and loop state to resume training from")


# -- a run folder's config.yaml (eval.py rebuilds the run from it) --------------------------------------


class UnsafeRunConfigError(LMForgeError):
    """A run's saved config names a class to instantiate that lmforge's config tree does not, or asks for
    remote code: building the run from it could run code lmforge did not ship."""


# ``_target_``s that lmforge's config tree named in earlier versions (runs saved then still evaluate)
PAST_TARGETS = frozenset({
    "lightning.pytorch.callbacks.ModelCheckpoint", "lightning.pytorch.callbacks.RichModelSummary",
    "lightning.pytorch.callbacks.RichProgressBar", "lightning.pytorch.loggers.CSVLogger",
    "lightning.pytorch.strategies.FSDPStrategy", "lightning.pytorch.strategies.ModelParallelStrategy",
    "lightning.pytorch.strategies.DeepSpeedStrategy", "lightning.pytorch.strategies.DDPStrategy",
})


def _is_torch_optim_class(target: str) -> bool:
    """``torch.optim.<Optimizer>`` or ``torch.optim.lr_scheduler.<LRScheduler>`` (the README's "any torch.optim class")."""
    m = re.fullmatch(r"torch\.optim\.(?:(lr_scheduler)\.)?([A-Za-z][A-Za-z0-9]*)", target)
    if not m:
        return False
    owner = torch.optim.lr_scheduler if m.group(1) else torch.optim
    base = getattr(torch.optim.lr_scheduler, "LRScheduler", None) if m.group(1) else torch.optim.Optimizer
    obj = getattr(owner, m.group(2), None)
    return isinstance(obj, type) and base is not None and issubclass(obj, base)


def config_tree_targets(*extra_dirs: str | Path) -> set[str]:
    """Every ``_target_`` named in lmforge's shipped config tree (and in ``extra_dirs``, e.g. the tree in use)."""
    import yaml

    targets: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "_target_" and isinstance(v, str):
                    targets.add(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for folder in (Path(__file__).resolve().parent / "configs", *map(Path, extra_dirs)):
        for f in sorted(folder.rglob("*.yaml")) if folder.is_dir() else []:
            try:
                walk(yaml.safe_load(f.read_text()))
            except yaml.YAMLError:
                continue
    return targets


def check_run_config(run_cfg: Any, source: str | Path, unsafe: bool = False) -> None:
    """Refuse a run config from elsewhere that would instantiate a ``_target_`` lmforge's config tree does not
    name (``hydra.utils.instantiate`` calls any importable callable with the config's arguments) or that sets
    ``model.trust_remote_code=true``. ``unsafe=True`` (``unsafe_load=true``) accepts it after a warning."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    node = OmegaConf.to_container(run_cfg, resolve=False) if isinstance(run_cfg, (DictConfig, ListConfig)) else run_cfg
    problems: list[str] = []

    def walk(n: Any, path: str) -> None:
        if isinstance(n, dict):
            for k, v in n.items():
                if k == "_target_" and str(v) not in allowed and not _is_torch_optim_class(str(v)):
                    problems.append(f"{path}._target_={v}" if path else f"_target_={v}")
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(n, list):
            for i, v in enumerate(n):
                walk(v, f"{path}[{i}]")

    try:
        from lmforge.cli import config_dir

        allowed = config_tree_targets(config_dir()) | PAST_TARGETS
    except Exception:  # the package's own tree only
        allowed = config_tree_targets() | PAST_TARGETS
    walk(node, "")
    if isinstance(node, dict) and (node.get("model") or {}).get("trust_remote_code") is True:
        problems.append("model.trust_remote_code=true")
    if not problems:
        return
    if unsafe:
        log.warning("unsafe_load=true: building the run from %s, which asks for %s", source, "; ".join(problems))
        return
    raise UnsafeRunConfigError(
        f"{source}: refused: the run's config asks for {'; '.join(problems)}, which lmforge's own configs never "
        "do (a _target_ is instantiated with the config's arguments; remote code runs the model repository's "
        "Python files). If you trust this run, pass unsafe_load=true.")
