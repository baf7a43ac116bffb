"""Plain-text corpora: find the files, stream documents out of them, carve a validation split.

A corpus is one or more UTF-8 text files. How a file is cut into documents is set by
``doc_separator``:

* ``"blank_line"``: documents are separated by one or more blank (empty or whitespace-only)
  lines, the way wikitext-style dumps and most prose corpora are written;
* ``"line"``: one document per line;
* ``"file"``: each file is one document.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from lmforge.data.splits import carve

DOC_SEPARATORS = ("blank_line", "line", "file")
_BOM = b"\xef\xbb\xbf"


def resolve_text_files(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Expand paths and globs (``corpus/*.txt``, ``corpus/**/*.txt``) into a sorted, de-duplicated file list."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not specs:
        raise ValueError("no text files given: the file list is empty; pass a path or a glob such as 'corpus/*.txt'")
    found: set[Path] = set()
    for item in specs:
        pattern = os.path.expanduser(str(item))
        if glob.has_magic(pattern):
            matches = [Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
            if not matches:
                raise FileNotFoundError(f"no files match the glob pattern {str(item)!r}")
            found.update(p.resolve() for p in matches)
        else:
            path = Path(pattern)
            if path.is_dir():
                hint = str(Path(str(item)) / "*.txt")
                raise FileNotFoundError(f"{str(item)!r} is a directory, not a text file; use a glob such as {hint!r}")
            if not path.is_file():
                raise FileNotFoundError(f"text file not found: {str(item)!r}")
            found.add(path.resolve())
    return sorted(found)


def _decode(raw: bytes, path: Path, offset: int, line: int = 1) -> str:
    """Strict UTF-8 decode of ``raw`` (at byte ``offset`` of the file, on ``line``); a bad byte raises a
    DataError (a ValueError) naming the file, the line and the absolute byte offset."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        from lmforge.data.sources import locate_utf8_error

        raise locate_utf8_error(path, raw, e, offset, line) from None


def _lines(path: Path) -> Iterator[str]:
    """Stream the lines of one file, decoded, without their line ending. A line may be of any length: a long
    line of a corpus is text (it is read whole, and the tokenizer takes it in pieces)."""
    with open(path, "rb") as f:
        offset = 0
        for lineno, raw in enumerate(f, 1):  # splitting bytes on b"\n" is safe: no UTF-8 multi-byte sequence has 0x0A
            start = offset
            offset += len(raw)
            if start == 0 and raw.startswith(_BOM):
                raw, start = raw[len(_BOM):], len(_BOM)
            yield _decode(raw, path, start, lineno).rstrip("\r\n")


def read_documents(files: Sequence[str | os.PathLike], doc_separator: str = "blank_line") -> Iterator[str]:
    """Yield the documents of ``files`` in order, skipping whitespace-only ones.

    ``"line"`` and ``"blank_line"`` stream line by line; ``"file"`` reads one whole file at a time.
    Line-based documents come without their trailing newline; lines inside a ``"blank_line"``
    document are joined with ``"\\n"``.
    """
    if doc_separator not in DOC_SEPARATORS:
        raise ValueError(f"doc_separator={doc_separator!r} is not one of {list(DOC_SEPARATORS)}")
    for file in files:
        path = Path(file)
        if doc_separator == "file":
            raw = path.read_bytes()
            skip = len(_BOM) if raw.startswith(_BOM) else 0
            text = _decode(raw[skip:], path, skip)
            if text.strip():
                yield text
        elif doc_separator == "line":
            for line in _lines(path):
                if line.strip():
                    yield line
        else:
            doc: list[str] = []
            for line in _lines(path):
                if line.strip():
                    doc.append(line)
                elif doc:
                    yield "\n".join(doc)
                    doc = []
            if doc:  # a document never spans two files
                yield "\n".join(doc)


#: a document longer than this many characters is tokenized in pieces of about this size (cut before a space)
PIECE_CHARS = 100_000


def pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """``text`` in consecutive pieces of at most ``size`` characters, each cut just before a whitespace
    character where the last tenth of the piece has one (so no word is split), else at ``size``."""
    start, n = 0, len(text)
    while n - start > size:
        end = start + size
        cut = max(text.rfind(" ", end - size // 10, end), text.rfind("\n", end - size // 10, end))
        end = cut if cut > start else end
        yield text[start:end]
        start = end
    if start < n:
        yield text[start:]


def token_ids(tokenizer, text: str, size: int = PIECE_CHARS) -> list[int] | np.ndarray:
    """The token ids of ``text`` (no special tokens); a long text (a 10 MB line of a corpus) is tokenized piece by
    piece (:func:`pieces`), keeping only the ids, so memory grows with its tokens and not with the tokenizer's
    per-token bookkeeping (offsets, strings) of the whole text at once."""
    if len(text) <= size:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    parts = [np.asarray(tokenizer(p, add_special_tokens=False)["input_ids"], dtype=np.int32) for p in pieces(text, size)]
    return np.concatenate(parts)  # int32, as the packer keeps them


def split_train_validation(
    docs: Sequence, validation_fraction: float, seed: int, files: Sequence | None = None
) -> tuple[list, list]:
    """Deterministically move ``round(n * validation_fraction)`` documents (at least 1) into a validation split.

    Both splits keep the corpus order. The same ``docs``, fraction and seed always give the same split
    (:func:`lmforge.data.splits.carve`, the carving rule of every task). ``files`` only names the corpus
    in error messages.
    """
    if len(docs) == 0:
        raise ValueError(f"empty corpus: {[str(f) for f in files] if files is not None else 'no documents'}")
    if len(docs) == 1 and validation_fraction > 0:
        raise ValueError(
            "the corpus has only 1 document, so no validation split can be carved out of it; "
            "use a finer doc_separator ('blank_line' or 'line'), add documents, or set validation_fraction=0"
        )
    return carve(docs, validation_fraction, seed)


def documents_from_rows(rows: Sequence[dict], column: str, origin: str) -> list[str]:
    """The non-empty texts of ``column``: one document per row of a table or hub split."""
    if rows and column not in rows[0]:
        from lmforge.data.sources import columns_of
        from lmforge.utils.errors import DataError

        raise DataError(f"data.text_column={column!r} is not a column of {origin}; "
                        f"its columns are: {', '.join(columns_of(rows[0]))}")
    return [r[column] for r in rows if isinstance(r[column], str) and r[column].strip()]


def count_documents(files: Sequence[str | os.PathLike], doc_separator: str = "blank_line") -> list[int]:
    """How many documents each file holds (one streaming pass, nothing kept)."""
    return [sum(1 for _ in read_documents([f], doc_separator)) for f in files]


class CorpusDocuments:
    """The documents of text files, read again from the files at every pass and never held in memory: what a
    split of a large corpus is while it is tokenized into the token store.

    ``len()`` counts the documents (one streaming pass, remembered). ``subset(mask)`` is the documents at
    the positions where ``mask`` (over every document of the files, in order) is True: the carved
    validation split and the rest. A bad byte raises ValueError naming the file and the byte offset.
    """

    def __init__(self, files: Sequence[str | os.PathLike], doc_separator: str = "blank_line",
                 keep: np.ndarray | None = None):
        if doc_separator not in DOC_SEPARATORS:
            raise ValueError(f"doc_separator={doc_separator!r} is not one of {list(DOC_SEPARATORS)}")
        self.files = [Path(f) for f in files]
        self.doc_separator = doc_separator
        self.keep = keep
        self._count: int | None = None if keep is None else int(np.count_nonzero(keep))

    def __iter__(self) -> Iterator[str]:
        docs = read_documents(self.files, self.doc_separator)
        if self.keep is None:
            yield from docs
            return
        keep, n = self.keep, len(self.keep)
        for i, doc in enumerate(docs):
            if i < n and keep[i]:
                yield doc

    def __len__(self) -> int:
        if self._count is None:
            self._count = sum(1 for _ in read_documents(self.files, self.doc_separator))
        return self._count

    def subset(self, mask: np.ndarray) -> "CorpusDocuments":
        if self.keep is not None:
            raise ValueError("subset of a subset is not supported")
        return CorpusDocuments(self.files, self.doc_separator, np.asarray(mask, dtype=bool))

    def n_chars(self) -> int:
        """About how many characters the documents hold (file sizes, scaled by the share of documents kept)."""
        total = sum(f.stat().st_size for f in self.files)
        if self.keep is None or len(self.keep) == 0:
            return total
        return int(total * self._count / len(self.keep))  # type: ignore[operator]
