"""Tokenize once: a content-keyed on-disk cache for tokenized splits.

The key hashes what changes the tokens: the data (file paths, sizes and modification times, or the
embedded sample's content), the tokenizer (its name and full vocabulary/normalizer serialization),
and the task's settings (columns, max length, label names, sample limits).

Entries hold data, never objects: every array is an ``.npy`` file read with ``allow_pickle=False``,
everything else is JSON, so a cache folder from elsewhere cannot run code when it is read. A split's
``<split>.json`` manifest lists its arrays (name, kind, dtype, shape); ragged token lists are stored flat
(``<split>.<name>.values.npy`` + ``<split>.<name>.offsets.npy``) and come back as :class:`Ragged`, which
indexes like the list it was. Arrays are memory-mapped copy-on-write: loading reads only headers.

Writes are atomic (temporary file + rename; the manifest last), so ranks that start at once never read a
half-written entry. An entry that does not check out (an old ``.pt`` pickle, a missing or foreign array, an
object array) is reported missing by :meth:`TokenCache.has`, so the datamodule rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from lmforge.utils.errors import LMForgeError

# 2: .npy arrays + JSON (version 1 entries were torch.save pickles and are never read)
CACHE_VERSION = 2
MANIFEST_FORMAT = "lmforge-token-cache"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# dtype kinds an entry may hold: bool, integers, floats, complex, fixed-width strings; never objects
_DATA_KINDS = set("biufcUS")


class CacheError(LMForgeError):
    """A token-cache entry is not data lmforge wrote (missing, corrupt, or holding objects)."""


def file_fingerprint(path: str | Path) -> dict:
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything that decides how the tokenizer splits text."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # slow tokenizers: the vocabulary and the class
        h.update(type(tokenizer).__name__.encode())
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(str(getattr(tokenizer, "padding_side", "")).encode())
    return h.hexdigest()[:16]


def cache_key(parts: dict) -> str:
    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class Ragged(Sequence):
    """A list of 1-D arrays stored as one flat ``values`` array and ``offsets`` (length n + 1):
    ``r[i]`` is a view ``values[offsets[i]:offsets[i + 1]]``; ``len``, iteration and slicing work as on
    the list (a slice is a ``Ragged`` sharing ``values``)."""

    def __init__(self, values: np.ndarray, offsets: np.ndarray):
        if offsets.ndim != 1 or len(offsets) < 1:
            raise ValueError("offsets must be a 1-D array of length n + 1")
        self.values = values
        self.offsets = offsets

    @classmethod
    def from_list(cls, items: Sequence[Any], dtype: Any = None) -> "Ragged":
        arrays = [np.asarray(x, dtype=dtype) for x in items]
        for i, a in enumerate(arrays):
            if a.ndim != 1:
                raise ValueError(f"item {i} is not 1-D (shape {a.shape})")
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if dtype is None:
            dtype = np.result_type(*arrays) if arrays else np.int32
        values = np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype=dtype)
        return cls(values, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return [self[j] for j in range(start, stop, step)]
            return Ragged(self.values, self.offsets[start: max(start, stop) + 1])
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} items")
        return self.values[self.offsets[i]: self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        o, v = self.offsets, self.values
        for i in range(len(self)):
            yield v[o[i]: o[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def to_list(self) -> list[np.ndarray]:
        return [np.array(x) for x in self]

    def __repr__(self) -> str:
        return f"Ragged({len(self)} items, {len(self.values)} values, dtype={self.values.dtype})"


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise CacheError(f"token cache: {what} name {name!r} is not a plain name (letters, digits, _ . -)")
    return name


def _is_ragged(value: Any) -> bool:
    if isinstance(value, Ragged):
        return True
    if isinstance(value, np.ndarray) or not isinstance(value, (list, tuple)) or not value:
        return False
    return all(isinstance(x, (np.ndarray, list, tuple)) for x in value)


def _data_array(value: Any, where: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in _DATA_KINDS:
        raise CacheError(f"token cache: {where} is not numbers or strings (dtype {arr.dtype}); "
                         "the cache holds data only")
    return arr


def _npy_header(path: Path) -> tuple[np.dtype, tuple]:
    """The dtype and shape of an ``.npy`` file, from its header alone (nothing else is read)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    return dtype, tuple(shape)


class TokenCache:
    """``root/<namespace>/<key>/`` holds, per split, a ``<split>.json`` manifest and its ``.npy`` arrays,
    and a ``meta.json`` for the whole entry.

    ``save(split, data)``: ``data`` maps a name to a numpy array (any shape; numbers or strings), to a list of
    1-D arrays (ragged: token ids per example), or to a JSON value. ``load(split)`` returns the same names:
    arrays (memory-mapped, copy-on-write) and :class:`Ragged` for the lists.
    """

    def __init__(self, root: str | Path, namespace: str, key: str):
        self.dir = Path(root).expanduser() / namespace / key

    # -- paths -------------------------------------------------------------------------------------
    def _manifest(self, split: str) -> Path:
        return self.dir / f"{_check_name(split, 'split')}.json"

    def _array_path(self, split: str, name: str, part: str | None = None) -> Path:
        suffix = f".{part}" if part else ""
        return self.dir / f"{_check_name(split, 'split')}.{_check_name(name, 'array')}{suffix}.npy"

    # -- writing -----------------------------------------------------------------------------------
    def _write_atomic(self, path: Path, write: Any) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                write(f)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def _save_array(self, path: Path, arr: np.ndarray) -> dict:
        self._write_atomic(path, lambda f: np.save(f, arr, allow_pickle=False))
        return {"dtype": arr.dtype.str, "shape": list(arr.shape)}

    def save(self, split: str, data: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        entries: dict[str, dict] = {}
        for name, value in data.items():
            _check_name(name, "array")
            where = f"{split}.{name}"
            if _is_ragged(value):
                r = value if isinstance(value, Ragged) else Ragged.from_list(value)
                values = _data_array(r.values, where)
                offsets = np.asarray(r.offsets, dtype=np.int64)
                if offsets[0] != 0 or len(values) != int(offsets[-1]):  # a slice of a bigger Ragged: compact it
                    r = Ragged.from_list(list(r), dtype=values.dtype)
                    values, offsets = r.values, r.offsets
                entries[name] = {"kind": "ragged", "items": len(offsets) - 1,
                                 "values": self._save_array(self._array_path(split, name, "values"), values),
                                 "offsets": self._save_array(self._array_path(split, name, "offsets"), offsets)}
            elif value is None or (isinstance(value, (bool, int, float, str, dict))
                                   and not isinstance(value, np.generic)):
                try:
                    json.dumps(value)
                except TypeError as e:
                    raise CacheError(f"token cache: {where} is neither an array nor plain JSON ({e})") from None
                entries[name] = {"kind": "json", "value": value}
            else:
                arr = _data_array(value, where)
                entries[name] = {"kind": "dense", **self._save_array(self._array_path(split, name), arr)}
        manifest = {"format": MANIFEST_FORMAT, "version": CACHE_VERSION, "split": split, "entries": entries}
        self._write_atomic(self._manifest(split), lambda f: f.write(json.dumps(manifest, indent=1).encode()))

    def save_meta(self, meta: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(meta, indent=2, default=str)
        self._write_atomic(self.dir / "meta.json", lambda f: f.write(text.encode()))

    # -- reading -----------------------------------------------------------------------------------
    def _read_manifest(self, split: str) -> dict:
        path = self._manifest(split)
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise CacheError(f"{path}: no such token-cache entry") from None
        except (OSError, ValueError) as e:
            raise CacheError(f"{path}: not a token-cache manifest ({e})") from None
        if not (isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT
                and manifest.get("version") == CACHE_VERSION and isinstance(manifest.get("entries"), dict)):
            raise CacheError(f"{path}: not a version-{CACHE_VERSION} token-cache manifest")
        return manifest

    def _check_array(self, path: Path, expect: dict) -> None:
        try:
            dtype, shape = _npy_header(path)
        except (OSError, ValueError) as e:
            raise CacheError(f"{path}: not a readable .npy array ({e})") from None
        if dtype.kind not in _DATA_KINDS or dtype.hasobject:
            raise CacheError(f"{path}: holds {dtype} values, not data; the cache never stores objects")
        if dtype.str != expect.get("dtype") or list(shape) != expect.get("shape"):
            raise CacheError(f"{path}: holds {dtype.str} {list(shape)}, its manifest says "
                             f"{expect.get('dtype')} {expect.get('shape')}")

    def check(self, split: str) -> dict:
        """The split's manifest, after checking every array's header against it (no data is read)."""
        manifest = self._read_manifest(split)
        for name, e in manifest["entries"].items():
            kind = e.get("kind") if isinstance(e, dict) else None
            if kind == "dense":
                self._check_array(self._array_path(split, name), e)
            elif kind == "ragged":
                self._check_array(self._array_path(split, name, "values"), e.get("values") or {})
                self._check_array(self._array_path(split, name, "offsets"), e.get("offsets") or {})
                if (e.get("offsets") or {}).get("dtype") != np.dtype(np.int64).str:
                    raise CacheError(f"{self._manifest(split)}: {name} offsets are not int64")
            elif kind != "json":
                raise CacheError(f"{self._manifest(split)}: entry {name!r} has unknown kind {kind!r}")
        return manifest

    def has(self, splits: list[str]) -> bool:
        """Whether every split is cached and checks out; a foreign or damaged entry counts as missing."""
        if not (self.dir / "meta.json").is_file():
            return False
        try:
            for s in splits:
                self.check(s)
        except CacheError:
            return False
        return True

    def _load_array(self, path: Path) -> np.ndarray:
        try:
            arr = np.load(path, allow_pickle=False, mmap_mode="c")
        except ValueError as e:
            if "empty" not in str(e).lower() and "mmap length" not in str(e).lower():
                raise CacheError(f"{path}: {e}") from None
            arr = np.load(path, allow_pickle=False)  # a zero-size array cannot be memory-mapped
        except OSError as e:
            raise CacheError(f"{path}: not a readable .npy array ({e})") from None
        return arr.view(np.ndarray) if isinstance(arr, np.memmap) else arr  # still file-backed, a plain ndarray

    def load(self, split: str) -> dict:
        manifest = self.check(split)
        out: dict[str, Any] = {}
        for name, e in manifest["entries"].items():
            if e["kind"] == "dense":
                out[name] = self._load_array(self._array_path(split, name))
            elif e["kind"] == "ragged":
                values = self._load_array(self._array_path(split, name, "values"))
                offsets = np.asarray(self._load_array(self._array_path(split, name, "offsets")))
                if len(offsets) != e.get("items", -1) + 1 or (len(offsets) and int(offsets[-1]) != len(values)) \
                        or np.any(np.diff(offsets) < 0) or (len(offsets) and offsets[0] != 0):
                    raise CacheError(f"{self._array_path(split, name, 'offsets')}: offsets do not index the values")
                out[name] = Ragged(values, offsets)
            else:
                out[name] = e["value"]
        return out

    def load_meta(self) -> dict:
        return json.loads((self.dir / "meta.json").read_text())
