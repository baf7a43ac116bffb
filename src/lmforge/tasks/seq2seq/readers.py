"""Readers of the seq2seq tasks' files: line-aligned parallel text (Multi30k, WMT, fairseq), tables with
source and target columns (csv/tsv/jsonl/json/parquet, the hub's ``{"translation": {"de": ..., "en": ...}}``
records), each row ``{"source", "target"}`` with the place it came from (``__line__`` / ``__record__``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lmforge.data.sources import FILE, LINE, MAX_LINE_BYTES, RECORD, columns_of, text_lines, where
from lmforge.utils.errors import DataError

DOCUMENT_COLUMNS = ("document", "article", "dialogue", "text")
SUMMARY_COLUMNS = ("summary", "highlights", "abstract")
SOURCE_COLUMNS = ("source", "src")
TARGET_COLUMNS = ("target", "tgt")
PAIR = "__pair__"  # a parallel row's (source file, target file)


def _lines(path: Path, max_line_bytes: int | None = MAX_LINE_BYTES) -> list[str]:
    """The lines of a UTF-8 text file as they are: a byte-order mark dropped, CRLF or LF ends removed,
    trailing blank lines dropped (a last line without its end is a line). A byte that is not UTF-8 and a
    line longer than ``max_line_bytes`` are errors at their line."""
    lines = [ln[:-2] if ln.endswith("\r\n") else ln[:-1] if ln.endswith("\n") else ln
             for _, ln in text_lines(path, max_line_bytes)]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"{path}: the file is empty" + (" (only blank lines)" if path.stat().st_size else "")
                        + "; expected one sentence per line")
    return lines


def read_parallel(source: Path, target: Path, max_line_bytes: int | None = MAX_LINE_BYTES) -> list[dict]:
    """Rows ``{"source", "target", "__line__"}`` of two line-aligned files; files of different line counts
    are an error naming both files, both counts and the first line where one ends."""
    src, tgt = _lines(source, max_line_bytes), _lines(target, max_line_bytes)
    if len(src) != len(tgt):
        short, long_, n = (source, target, len(src)) if len(src) < len(tgt) else (target, source, len(tgt))
        raise DataError(f"parallel files of different lengths: {source} has {len(src)} lines, {target} has "
                        f"{len(tgt)}; {short} ends after line {n}, {long_} goes on at line {n + 1}. The files must "
                        "be line-aligned (line N of one is the translation of line N of the other)")
    files = (str(source), str(target))
    return [{"source": s, "target": t, LINE: i, PAIR: files} for i, (s, t) in enumerate(zip(src, tgt), 1)]


def parallel_pair(prefix: str | Path, source_lang: str, target_lang: str) -> tuple[Path, Path] | None:
    """``<prefix>.<source_lang>`` and ``<prefix>.<target_lang>`` when both exist; ``prefix`` may also be one
    of the two files."""
    p = Path(str(prefix)).expanduser()
    if p.suffix in (f".{source_lang}", f".{target_lang}"):
        p = p.with_suffix("")
    src, tgt = Path(f"{p}.{source_lang}"), Path(f"{p}.{target_lang}")
    return (src, tgt) if src.is_file() and tgt.is_file() else None


def pick(columns: Sequence[str], given: str | None, candidates: Sequence[str], what: str, key: str,
         origin: str) -> str | None:
    """The column for ``what``: the given one (an error when absent), else the first candidate present."""
    if given:
        if given not in columns:
            raise DataError(f"{origin}: no {what} column {given!r} ({key}); the columns present are: "
                            f"{', '.join(columns)}")
        return given
    lowered = {c.lower(): c for c in columns}
    return next((lowered[c] for c in candidates if c in lowered), None)


def rows_from_table(rows: list[dict], origin: str, kind: str, source_lang: str | None, target_lang: str | None,
                    source_column: str | None, target_column: str | None, need_target: bool = True) -> list[dict]:
    """Table rows -> ``{"source", "target"}`` rows (``target`` None when the table has none and
    ``need_target`` is false), with the columns found or given."""
    if not rows:
        return []
    columns = columns_of(rows[0])
    if kind == "translation" and "translation" in columns and not (source_column or target_column):
        out = []
        for r in rows:
            pair = r["translation"]
            if not isinstance(pair, dict) or source_lang not in pair or (need_target and target_lang not in pair):
                have = ", ".join(pair) if isinstance(pair, dict) else type(pair).__name__
                raise DataError(f"{where(origin, r)}: the translation record has {have}; expected the languages "
                                f"{source_lang} and {target_lang} (data.source_lang / data.target_lang)")
            out.append({"source": pair[source_lang], "target": pair.get(target_lang), **_place(r)})
        return out
    if kind == "translation":
        src_cands, tgt_cands = (source_lang or "", *SOURCE_COLUMNS), (target_lang or "", *TARGET_COLUMNS)
        src_what, tgt_what = f"source ({source_lang})", f"target ({target_lang})"
    else:
        src_cands, tgt_cands = DOCUMENT_COLUMNS + SOURCE_COLUMNS, SUMMARY_COLUMNS + TARGET_COLUMNS
        src_what, tgt_what = "document", "summary"
    src = pick(columns, source_column, src_cands, src_what, "data.source_column", origin)
    tgt = pick(columns, target_column, tgt_cands, tgt_what, "data.target_column", origin)
    if src is None:
        raise DataError(f"{origin}: no {src_what} column; the columns present are: {', '.join(columns)} "
                        f"(expected one of {', '.join(c for c in src_cands if c)}, or set data.source_column=<name>)")
    if tgt is None and need_target:
        raise DataError(f"{origin}: no {tgt_what} column; the columns present are: {', '.join(columns)} "
                        f"(expected one of {', '.join(c for c in tgt_cands if c)}, or set data.target_column=<name>)")
    return [{"source": r.get(src), "target": r.get(tgt) if tgt else None, **_place(r)} for r in rows]


def _place(row: dict) -> dict:
    return {k: row[k] for k in (LINE, RECORD, FILE) if k in row}
