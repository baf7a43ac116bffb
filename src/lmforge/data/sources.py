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
from collections.abc import Sequence
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


def read_lines(path: str | Path, key: str = "file") -> list[tuple[int, str]]:
    """``(line number, text)`` for every non-blank line of a UTF-8 text file (one input per line)."""
    p = check_exists(path, key)
    out = []
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 ({e.reason}); re-encode the file as UTF-8") from None
            if text.strip():
                out.append((lineno, text))
    return out


def _read_delimited(path: Path, delimiter: str, quoting: int) -> list[dict]:
    rows: list[dict] = []
    # utf-8-sig drops the byte-order mark that spreadsheet programs put in front of the header
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting, strict=quoting != csv.QUOTE_NONE)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: the file is empty (expected a header line)") from None
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
    return rows


def _read_jsonl(path: Path) -> list[dict]:
    rows: list[dict] = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
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
    return rows


def _read_json(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8-sig")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # a .json file that holds JSON lines, as many exports do
            return _read_jsonl(path)
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
    return [{**r, RECORD: i} for i, r in enumerate(obj, 1)]


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return [{**r, RECORD: i} for i, r in enumerate(pq.read_table(path).to_pylist(), 1)]
    except Exception as e:  # pyarrow raises several types for damaged files
        raise DataError(f"{path}: cannot read as parquet: {e}") from e


def read_table(path: str | Path, key: str = "file", tsv_quoting: str = "none") -> list[dict]:
    """Read a csv/tsv/jsonl/json/parquet file into row dicts.

    ``tsv_quoting='none'`` reads TSV the way GLUE and most research TSVs are written: split on tabs
    only, quotes are ordinary characters. ``'minimal'`` reads TSV written by pandas/csv writers,
    where fields holding tabs or quotes are quoted.
    """
    p = check_exists(path, key)
    fmt = infer_format(p)
    if fmt == "csv":
        return _read_delimited(p, ",", csv.QUOTE_MINIMAL)
    if fmt == "tsv":
        if tsv_quoting not in ("none", "minimal"):
            raise DataError(f"data.tsv_quoting={tsv_quoting}: expected 'none' or 'minimal'")
        return _read_delimited(p, "\t", csv.QUOTE_NONE if tsv_quoting == "none" else csv.QUOTE_MINIMAL)
    if fmt == "jsonl":
        return _read_jsonl(p)
    if fmt == "json":
        return _read_json(p)
    return _read_parquet(p)


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


def read_tables(paths: Sequence[Path], key: str, tsv_quoting: str = "none") -> list[dict]:
    """Rows of one or more table files; with several, each row also names its file."""
    if len(paths) == 1:
        return read_table(paths[0], key, tsv_quoting)
    return [{**r, FILE: str(p)} for p in paths for r in read_table(p, key, tsv_quoting)]
