"""Tokenize once: a content-keyed on-disk cache for tokenized splits.

The key hashes what changes the tokens: the data (file paths, sizes and modification times, or the
embedded sample's content), the tokenizer (its name and full vocabulary/normalizer serialization),
and the task's settings (columns, max length, label names, sample limits). Writes are atomic
(temporary file + rename), so ranks that start at once never read a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

CACHE_VERSION = 1


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


class TokenCache:
    """``root/<namespace>/<key>/`` holds one ``<split>.pt`` per split and a ``meta.json``."""

    def __init__(self, root: str | Path, namespace: str, key: str):
        self.dir = Path(root).expanduser() / namespace / key

    def has(self, splits: list[str]) -> bool:
        return (self.dir / "meta.json").is_file() and all((self.dir / f"{s}.pt").is_file() for s in splits)

    def save(self, split: str, data: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{split}.pt.{os.getpid()}.tmp"
        torch.save(data, tmp)
        os.replace(tmp, self.dir / f"{split}.pt")

    def load(self, split: str) -> dict:
        return torch.load(self.dir / f"{split}.pt", weights_only=False)

    def save_meta(self, meta: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".meta.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(meta, indent=2, default=str))
        os.replace(tmp, self.dir / "meta.json")

    def load_meta(self) -> dict:
        return json.loads((self.dir / "meta.json").read_text())
