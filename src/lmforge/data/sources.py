"""Where examples come from: local files in the formats people actually write, and hub datasets.

Readers turn a source into rows that remember their origin, so that errors found after carving,
shuffling or sampling still name the file, the line (and column where the parser knows it), the
value and what was expected:

* tables (csv, tsv, jsonl/json, parquet): :func:`read_table`, row dicts with ``__line__`` or
  ``__record__``;
* plain text corpora: documents (strings) from :mod:`lmforge.data.text_corpus`;
* prediction inputs: :func:`read_lines`, one input per line of a ``.txt`` file;
* hub datasets: :func:`load_hub`, split -> row dicts with ``__record__`` (and the label names of
  class-label columns).

A task picks its reader in its datamodule's ``read_file``; readers for more formats (CoNLL, SQuAD
JSON, parallel text) join this module.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.utils.errors import DataError

TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                 ".json": "json", ".parquet": "parquet", ".pq": "parquet"}

# every row remembers where it came from (line number, or record number for json/parquet),
# so errors found after shuffling or sampling still point at the right place
LINE = "__line__"
RECORD = "__record__"
FILE = "__file__"  # only where one split is read from several files

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

#: the longest line a table, CoNLL or parallel-text file may hold (data.max_line_bytes); a longer one is
#: refused before it is read whole, so a stray huge line (a binary file, a whole document on one line) costs no
#: memory. Text corpora for pretraining have no such limit: their long lines are text.
MAX_LINE_BYTES = 1_000_000
_BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 20
ICONV_HINT = "re-encode it as UTF-8, e.g. iconv -f cp1252 -t utf-8 {name} > {stem}.utf8{suffix}"


def not_utf8(path: str | Path, line: int, offset: int, bad: int, reason: str) -> DataError:
    """The error of a byte that is not UTF-8: ``file:line``, the byte, its offset in the file, what to do."""
    p = Path(path)
    hint = ICONV_HINT.format(name=p.name, stem=p.stem, suffix=p.suffix)
    return DataError(f"{path}:{line}: not valid UTF-8 (byte 0x{bad:02x} at byte offset {offset}: {reason}); "
                     f"the file is in another encoding (Windows-1252, Latin-1?): {hint}")


def locate_utf8_error(path: str | Path, data: bytes, e: UnicodeDecodeError, base: int = 0,
                      line_base: int = 1) -> DataError:
    """:func:`not_utf8` for a decode error ``e`` in ``data`` (the bytes at file offset ``base``, which start on
    line ``line_base``): the line is found by counting the newlines before the bad byte."""
    return not_utf8(path, line_base + data.count(b"\n", 0, e.start), base + e.start, data[e.start], e.reason)


def line_too_long(path: str | Path, line: int, size: int, limit: int, key: str = "data.max_line_bytes") -> DataError:
    return DataError(f"{path}:{line}: a line of {size:,} bytes, longer than {key}={limit:,}; a line this long is "
                     "usually not one record (a binary file, or a whole document on one line): check the file, or "
                     f"raise the limit with {key}=<bytes>")


def read_text(path: str | Path) -> str:
    """A whole UTF-8 file as text (a byte-order mark dropped); a bad byte is an error at its ``file:line``."""
    data = Path(path).read_bytes()
    skip = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise locate_utf8_error(path, data[skip:], e, skip) from None


def text_lines(path: str | Path, max_line_bytes: int | None = MAX_LINE_BYTES,
               key: str = "data.max_line_bytes") -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 file, each line with its ending (``\n`` or ``\r\n``) as in the file,
    a byte-order mark dropped. A bad byte is an error naming its line and byte offset; a line longer than
    ``max_line_bytes`` is refused before it is read whole (its size is counted, not kept)."""
    limit = max_line_bytes if max_line_bytes and max_line_bytes > 0 else -1
    with open(path, "rb") as f:
        offset = 0
        lineno = 0
        while True:
            raw = f.readline(limit + 1 if limit > 0 else -1)
            if not raw:
                return
            lineno += 1
            if limit > 0 and len(raw) > limit and not raw.endswith(b"\n"):
                size = len(raw)
                while True:  # count the rest of the line without keeping it
                    chunk = f.readline(_CHUNK)
                    size += len(chunk)
                    if not chunk or chunk.endswith(b"\n"):
                        break
                raise line_too_long(path, lineno, size - (1 if chunk.endswith(b"\n") else 0), limit, key)
            start = offset
            offset += len(raw)
            if start == 0 and raw.startswith(_BOM):
                raw, start = raw[len(_BOM):], len(_BOM)
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise not_utf8(path, lineno, start + e.start, raw[e.start], e.reason) from None


@dataclass
class SplitRows:
    """One split as read: its rows (row dicts, or documents for text corpora) and where they came from."""

    rows: list
    origin: str


def infer_format(path: str | Path) -> str:
    """The table format of ``path`` from its extension (``.gz`` etc. are not handled)."""
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise DataError(
            f"{path}: cannot infer the file format from the extension '{suffix or '(none)'}'; "
            f"expected one of {', '.join(sorted(TABLE_FORMATS))}"
        )
    return TABLE_FORMATS[suffix]


class MissingFileError(DataError, FileNotFoundError):
    """A data file that is not there: a DataError that ``except FileNotFoundError`` also catches."""


def check_exists(path: str | Path, key: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        hint = " (it is a directory)" if p.is_dir() else ""
        raise MissingFileError(f"{key}={path}: file not found{hint} (looked at {p.resolve()})")
    return p


def resolve_files(spec: str | Path | Sequence[str | Path], key: str) -> list[Path]:
    """A path, a glob (``corpus/*.txt``, ``corpus/**/*.txt``) or a list of them -> sorted existing files.

    Errors name the config key and what was given, as the user typed it.
    """
    from lmforge.data.text_corpus import resolve_text_files

    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    for item in specs:  # a plain missing path gets the precise message (where it was looked for)
        if not glob.has_magic(os.path.expanduser(str(item))):
            check_exists(item, key)
    try:
        return resolve_text_files(specs)
    except (FileNotFoundError, ValueError) as e:
        raise MissingFileError(f"{key}={spec}: {e}") from None


def read_lines(path: str | Path, key: str = "file",
               max_line_bytes: int | None = MAX_LINE_BYTES) -> list[tuple[int, str]]:
    """``(line number, text)`` for every non-blank line of a UTF-8 text file (one input per line)."""
    p = check_exists(path, key)
    out = []
    for lineno, line in text_lines(p, max_line_bytes):
        text = line.rstrip("\r\n")
        if text.strip():
            out.append((lineno, text))
    return out


def _read_delimited(path: Path, delimiter: str, quoting: int,
                    max_line_bytes: int | None = MAX_LINE_BYTES) -> list[dict]:
    rows: list[dict] = []
    # the lines as the file holds them (line ends kept, as csv wants them), a byte-order mark dropped
    lines = (line for _, line in text_lines(path, max_line_bytes))
    reader = csv.reader(lines, delimiter=delimiter, quoting=quoting, strict=quoting != csv.QUOTE_NONE)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: the file is empty (0 bytes or only a byte-order mark); expected a header "
                        "line and rows") from None
    header = [h.strip() for h in header]
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"{path}:1: duplicate column names {dup} in the header")
    try:
        for fields in reader:
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank line
            if len(fields) != len(header):
                raise DataError(
                    f"{path}:{reader.line_num}: expected {len(header)} fields "
                    f"({', '.join(header)}) separated by {delimiter!r}, found {len(fields)}"
                )
            row = dict(zip(header, fields))
            row[LINE] = reader.line_num
            rows.append(row)
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed {'CSV' if delimiter == ',' else 'TSV'}: {e}") from e
    if not rows:
        raise DataError(f"{path}: a header line ({', '.join(header) or 'empty'}) but no rows below it; "
                        "expected at least one row")
    return rows


def _read_jsonl(path: Path, max_line_bytes: int | None = MAX_LINE_BYTES) -> list[dict]:
    rows: list[dict] = []
    seen = 0
    for lineno, line in text_lines(path, max_line_bytes):
        seen = lineno
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{lineno}:{e.colno}: malformed JSON line ({e.msg}); "
                f"expected one JSON object per line, got {line.strip()[:80]!r}"
            ) from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
        row[LINE] = lineno
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: " + ("the file is empty; expected one JSON object per line" if not seen else
                                       f"no records ({seen} blank lines); expected one JSON object per line"))
    return rows


def _read_json(path: Path, max_line_bytes: int | None = MAX_LINE_BYTES) -> list[dict]:
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty; expected a JSON list of records")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # a .json file that holds JSON lines, as many exports do
            return _read_jsonl(path, max_line_bytes)
        raise DataError(f"{path}:{e.lineno}:{e.colno}: malformed JSON ({e.msg})") from None
    if isinstance(obj, dict):  # {"data": [...]} / {"train": [...]} / column-oriented {"text": [...], ...}
        lists = {k: v for k, v in obj.items() if isinstance(v, list)}
        if len(lists) == 1 and all(isinstance(r, dict) for r in next(iter(lists.values()))):
            obj = next(iter(lists.values()))
        elif lists and len(lists) == len(obj) and len({len(v) for v in lists.values()}) == 1:
            keys = list(lists)
            obj = [dict(zip(keys, vals)) for vals in zip(*lists.values())]
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise DataError(
            f"{path}: expected a list of records, a {{'data': [records]}} object, or column lists; "
            f"got {type(obj).__name__}"
        )
    if not obj:
        raise DataError(f"{path}: no records (an empty list); expected at least one")
    return check_text_lengths([{**r, RECORD: i} for i, r in enumerate(obj, 1)], path, max_line_bytes)


def check_text_lengths(rows: list[dict], origin: str | Path, max_line_bytes: int | None = MAX_LINE_BYTES,
                 key: str = "data.max_line_bytes") -> list[dict]:
    """``rows`` (of a json or parquet file, which have no lines to limit) when no text value is longer than
    ``max_line_bytes`` characters; else the error naming the record and the column."""
    if not max_line_bytes or max_line_bytes <= 0:
        return rows
    for r in rows:
        for k, v in r.items():
            if isinstance(v, str) and len(v) > max_line_bytes and not k.startswith("__"):
                place = r.get("__where__") or where(str(origin), r)
                raise DataError(f"{place}: column {k!r} holds a text of {len(v):,} characters, longer than "
                                f"{key}={max_line_bytes:,}; check the file, or raise the limit with {key}=<bytes>")
    return rows


def _read_parquet(path: Path, max_line_bytes: int | None = MAX_LINE_BYTES) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for damaged files
        raise DataError(f"{path}: cannot read as parquet: {e}") from e
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows (a parquet file with the columns {', '.join(table.column_names)} "
                        "but no rows); expected at least one")
    return check_text_lengths([{**r, RECORD: i} for i, r in enumerate(table.to_pylist(), 1)], path, max_line_bytes)


def read_table(path: str | Path, key: str = "file", tsv_quoting: str = "none",
               max_line_bytes: int | None = MAX_LINE_BYTES) -> list[dict]:
    """Read a csv/tsv/jsonl/json/parquet file into row dicts.

    ``tsv_quoting='none'`` reads TSV the way GLUE and most research TSVs are written: split on tabs
    only, quotes are ordinary characters. ``'minimal'`` reads TSV written by pandas/csv writers,
    where fields holding tabs or quotes are quoted.

    Every reader takes CRLF or LF line ends and a UTF-8 byte-order mark; an empty file, a header without
    rows, a byte that is not UTF-8 (its line and byte offset) and a line (json, parquet: a text value) longer
    than ``max_line_bytes`` are errors naming the file.
    """
    p = check_exists(path, key)
    fmt = infer_format(p)
    if fmt == "csv":
        return _read_delimited(p, ",", csv.QUOTE_MINIMAL, max_line_bytes)
    if fmt == "tsv":
        if tsv_quoting not in ("none", "minimal"):
            raise DataError(f"data.tsv_quoting={tsv_quoting}: expected 'none' or 'minimal'")
        return _read_delimited(p, "\t", csv.QUOTE_NONE if tsv_quoting == "none" else csv.QUOTE_MINIMAL, max_line_bytes)
    if fmt == "jsonl":
        return _read_jsonl(p, max_line_bytes)
    if fmt == "json":
        return _read_json(p, max_line_bytes)
    return _read_parquet(p, max_line_bytes)


def load_hub(name: str, config_name: str | None = None, revision: str | None = None,
             **kwargs: Any) -> dict[str, list[dict]]:
    """Load a dataset from the Hugging Face Hub with ``datasets.load_dataset``; split -> rows.

    The result's ``label_names`` attribute maps each class-label column to its names (as the
    dataset's features declare them), e.g. ``{"label": ["negative", "positive"]}``.
    """
    import datasets

    try:
        ds = datasets.load_dataset(name, config_name, revision=revision, **kwargs)
    except Exception as e:
        offline = any(w in f"{type(e).__name__} {e}".lower() for w in
                      ("offline", "connection", "resolve", "network", "couldn't reach", "max retries", "timed out",
                       "not find", "doesn't exist", "cannot find"))
        why = ("the Hugging Face Hub cannot be reached (offline, or HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set) "
               "and the dataset is not in the local datasets cache" if offline else f"{type(e).__name__}: {e}")
        raise DataError(
            f"data.hub_name={name}: could not load the hub dataset: {why}. "
            f"Use data=local with data.train_file=... to train on files on disk. (datasets said: {e})"
        ) from e
    out = HubSplits({split: [{**r, RECORD: i} for i, r in enumerate(ds[split].to_list(), 1)] for split in ds})
    for split in ds:
        for col, feature in ds[split].features.items():
            names = getattr(feature, "names", None) or getattr(getattr(feature, "feature", None), "names", None)
            if names:
                out.label_names.setdefault(col, list(names))
    return out


class HubSplits(dict):
    """split -> rows, with ``label_names``: class-label column -> its names."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.label_names: dict[str, list[str]] = {}


def where(origin: str, row: dict) -> str:
    """``file:line`` (or ``file record N``) of a row, for error messages."""
    origin = row.get(FILE, origin)
    if LINE in row:
        return f"{origin}:{row[LINE]}"
    if RECORD in row:
        return f"{origin} record {row[RECORD]}"
    return origin


def columns_of(row: dict) -> list[str]:
    return [k for k in row if k not in (LINE, RECORD, FILE)]


def read_tables(paths: Sequence[Path], key: str, tsv_quoting: str = "none",
                max_line_bytes: int | None = MAX_LINE_BYTES) -> list[dict]:
    """Rows of one or more table files; with several, each row also names its file."""
    if len(paths) == 1:
        return read_table(paths[0], key, tsv_quoting, max_line_bytes)
    return [{**r, FILE: str(p)} for p in paths for r in read_table(p, key, tsv_quoting, max_line_bytes)]
