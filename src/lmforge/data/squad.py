"""Extractive question-answering data as people store it: SQuAD JSON, flat tables, hub datasets.

Every reader returns the same rows, one per question, so that the task sees one shape:

    {"id": str, "title": str | None, "question": str, "context": str,
     "answers": {"text": [str, ...], "answer_start": [int, ...]},   # empty lists: no answer given
     "is_impossible": bool,                                          # SQuAD v2.0: unanswerable
     "labelled": bool,                  # the row carries gold answers (a v2.0 question may have none)
     "v2": bool,                        # read from a SQuAD v2.0 file
     "__where__": "file: question <id> (data[i].paragraphs[j].qas[k])"}

Readers:

* **SQuAD JSON** v1.1 and v2.0 as published (``{"version": ..., "data": [{"title", "paragraphs":
  [{"context", "qas": [{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible",
  "plausible_answers"}]}]}]}``), detected from the content, not the file name: v2.0 when the
  version says so or any question carries ``is_impossible``;
* **flat rows** (jsonl, json, csv, tsv, parquet, hub datasets) with ``id``, ``question``,
  ``context``, ``answers`` as the hub's ``squad`` dataset holds them (``{"text": [...],
  "answer_start": [...]}``; in csv/tsv that object is written as JSON), column names configurable.
  A row whose answers are empty is unanswerable (the hub's ``squad_v2`` convention);

Checks, each naming the file, the question and what was expected: the answer text must stand in the
passage at ``answer_start`` (the text expected and the text found there); a question and a passage
must be present and non-empty. A split without any ``answers`` is kept for prediction only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmforge.data.sources import (MAX_LINE_BYTES, TABLE_FORMATS, check_exists, check_text_lengths, columns_of,
                                  read_table, read_text, where)
from lmforge.utils.errors import DataError

WHERE = "__where__"
#: default column names of flat rows (the hub's ``squad`` dataset)
COLUMNS = {"id": "id", "question": "question", "context": "context", "answers": "answers", "title": "title"}


def row_where(row: Mapping, origin: str = "") -> str:
    """Where a question came from, for error messages."""
    return row.get(WHERE) or where(origin, dict(row))


def is_squad_json(obj: Any) -> bool:
    """Whether a parsed JSON value has the SQuAD shape (an object whose ``data`` lists articles with paragraphs)."""
    return (isinstance(obj, dict) and isinstance(obj.get("data"), list) and bool(obj["data"])
            and all(isinstance(a, dict) and isinstance(a.get("paragraphs"), list) for a in obj["data"]))


def load_json(path: Path) -> Any:
    """The file's JSON value, or None when it is not one JSON document (JSON lines, say)."""
    text = read_text(path)  # a byte that is not UTF-8: an error at its line and byte offset
    if not text.strip():
        raise DataError(f"{path}: the file is empty; expected SQuAD JSON ({{\"data\": [articles]}}) or a list of "
                        "records with question, context and answers")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def check_answer(context: str, text: Any, start: Any, place: str) -> tuple[str, int]:
    """An answer that stands in ``context`` at ``start``, or a DataError saying what is there instead."""
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{place}: an answer with empty or non-text 'text' {text!r}")
    try:
        s = int(start)
        if isinstance(start, bool) or float(start) != s:
            raise ValueError
    except (TypeError, ValueError):
        raise DataError(f"{place}: answer_start={start!r} is not a character index (answer {text!r})") from None
    found = context[s: s + len(text)] if 0 <= s <= len(context) else ""
    if found != text:
        raise DataError(f"{place}: the answer is not in the passage at answer_start={s}: expected {text!r}, "
                        f"found {found!r} there (the passage has {len(context)} characters)")
    return text, s


def _question_text(value: Any, place: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{place}: empty or non-text {key} {value!r}; expected a non-empty string")
    return value


def read_squad_json(obj: dict, origin: str) -> list[dict]:
    """The questions of a parsed SQuAD v1.1/v2.0 file as rows (see the module docstring)."""
    version = str(obj.get("version", ""))
    v2 = version.lstrip("v").startswith("2") or any(
        "is_impossible" in q for a in obj["data"] for p in a.get("paragraphs") or [] if isinstance(p, dict)
        for q in p.get("qas") or [] if isinstance(q, dict))
    rows: list[dict] = []
    for i, article in enumerate(obj["data"]):
        title = article.get("title")
        for j, para in enumerate(article["paragraphs"]):
            ppath = f"data[{i}].paragraphs[{j}]"
            if not isinstance(para, dict) or "context" not in para:
                raise DataError(f"{origin}: {ppath} has no 'context' key (the passage); its keys: "
                                f"{', '.join(para) if isinstance(para, dict) else type(para).__name__}")
            context = para["context"]
            if not isinstance(context, str) or not context.strip():
                raise DataError(f"{origin}: {ppath}: empty passage ('context' is {context!r}); "
                                "a question needs a passage to answer from")
            qas = para.get("qas")
            if not isinstance(qas, list):
                raise DataError(f"{origin}: {ppath} has no 'qas' list (its questions)")
            for k, qa in enumerate(qas):
                qpath = f"{ppath}.qas[{k}]"
                qid = str(qa.get("id", qpath)) if isinstance(qa, dict) else qpath
                place = f"{origin}: question {qid} ({qpath})"
                if not isinstance(qa, dict) or "question" not in qa:
                    raise DataError(f"{place} has no 'question' key; its keys: "
                                    f"{', '.join(qa) if isinstance(qa, dict) else type(qa).__name__}")
                question = _question_text(qa["question"], place, "question")
                impossible = bool(qa.get("is_impossible", False))
                answers = qa.get("answers") or []
                if not isinstance(answers, list):
                    raise DataError(f"{place}: 'answers' is {type(answers).__name__}; expected a list of "
                                    "{'text', 'answer_start'} objects")
                texts, starts = [], []
                for a in answers if not impossible else []:
                    if not isinstance(a, dict) or "text" not in a or "answer_start" not in a:
                        raise DataError(f"{place}: an answer {a!r} without 'text' and 'answer_start'")
                    t, s = check_answer(context, a["text"], a["answer_start"], place)
                    texts.append(t)
                    starts.append(s)
                for a in qa.get("plausible_answers") or []:  # v2: checked, never trained on
                    if isinstance(a, dict) and "text" in a and "answer_start" in a:
                        check_answer(context, a["text"], a["answer_start"], f"{place} (plausible_answers)")
                rows.append({"id": qid, "title": title, "question": question, "context": context,
                             "answers": {"text": texts, "answer_start": starts}, "is_impossible": impossible,
                             "labelled": v2 or "answers" in qa, "v2": v2, WHERE: place})
    if not rows:
        raise DataError(f"{origin}: a SQuAD file without questions ({len(obj['data'])} articles, no 'qas' entries)")
    return rows


def _answers_value(value: Any, place: str, column: str) -> dict | None:
    """A flat row's answers as ``{"text": [...], "answer_start": [...]}`` (None: the row carries none)."""
    if value is None:
        return None
    if isinstance(value, str):  # csv/tsv: the object written as JSON
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(f"{place}: column {column!r} holds {value[:80]!r}, not JSON ({e.msg}); expected "
                            '{"text": [...], "answer_start": [...]}') from None
    if isinstance(value, list):  # a list of {"text", "answer_start"} objects, as in SQuAD JSON
        if not all(isinstance(a, dict) for a in value):
            raise DataError(f"{place}: column {column!r} is a list of {value!r}; expected answer objects")
        value = {"text": [a.get("text") for a in value], "answer_start": [a.get("answer_start") for a in value]}
    if not isinstance(value, Mapping) or "text" not in value or "answer_start" not in value:
        raise DataError(f"{place}: column {column!r} is {value!r}; expected "
                        '{"text": [...], "answer_start": [...]} (the hub\'s squad format)')
    texts, starts = value["text"], value["answer_start"]
    texts = [texts] if isinstance(texts, str) else list(texts if texts is not None else [])
    starts = [starts] if isinstance(starts, (int, float)) else list(starts if starts is not None else [])
    if len(texts) != len(starts):
        raise DataError(f"{place}: {len(texts)} answer texts but {len(starts)} answer_start values in {column!r}")
    return {"text": texts, "answer_start": starts}


def rows_from_flat(rows: Sequence[dict], origin: str, columns: Mapping[str, str | None] | None = None) -> list[dict]:
    """Flat rows (a table file or a hub split) as question rows; ``columns`` renames id/question/context/answers/title."""
    cols = {**COLUMNS, **{k: v for k, v in (columns or {}).items() if v}}
    if not rows:
        raise DataError(f"{origin}: no rows")
    present = columns_of(rows[0])
    missing = [cols[k] for k in ("question", "context") if cols[k] not in present]
    if missing:
        raise DataError(
            f"{origin}: neither SQuAD JSON (an object whose 'data' lists articles with paragraphs[].qas[]) nor a "
            f"table with the columns {cols['question']!r} and {cols['context']!r} ({', '.join(map(repr, missing))} "
            f"missing; its columns are: {', '.join(present) or 'none'}); name them with data.question_column, "
            "data.context_column")
    out = []
    for n, row in enumerate(rows, 1):
        place = where(origin, row)
        for key in ("question", "context"):
            if cols[key] not in row:
                raise DataError(f"{place}: no {cols[key]!r} key in this row; its keys: {', '.join(columns_of(row))}")
        context = row[cols["context"]]
        if not isinstance(context, str) or not context.strip():
            raise DataError(f"{place}: empty passage ({cols['context']!r} is {context!r}); "
                            "a question needs a passage to answer from")
        qid = row.get(cols["id"])
        qid = str(qid) if qid not in (None, "") else where(Path(origin).name, row)
        qplace = f"{place}: question {qid}"
        question = _question_text(row[cols["question"]], qplace, cols["question"])
        answers = _answers_value(row.get(cols["answers"]), qplace, cols["answers"])
        texts, starts = [], []
        for t, s in zip(*(answers["text"], answers["answer_start"])) if answers else ():
            t, s = check_answer(context, t, s, qplace)
            texts.append(t)
            starts.append(s)
        out.append({"id": qid, "title": row.get(cols["title"]), "question": question, "context": context,
                    "answers": {"text": texts, "answer_start": starts}, "is_impossible": answers is not None and not texts,
                    "labelled": answers is not None, "v2": False, WHERE: qplace})
    return out


def read_qa_file(path: str | Path, key: str = "file", columns: Mapping[str, str | None] | None = None,
                 max_line_bytes: int | None = MAX_LINE_BYTES) -> list[dict]:
    """The question rows of one file: SQuAD JSON (detected from its content), else a table file."""
    p = check_exists(path, key)
    if p.suffix.lower() == ".json":
        obj = load_json(p)
        if is_squad_json(obj):  # a passage longer than max_line_bytes is refused as a long line would be
            return check_text_lengths(read_squad_json(obj, str(p)), p, max_line_bytes)
        if isinstance(obj, dict) and obj.get("data") == []:
            raise DataError(f"{p}: a SQuAD file without articles ('data' is an empty list)")
    if p.suffix.lower() not in TABLE_FORMATS:
        raise DataError(f"{p}: neither SQuAD JSON nor a table file (expected .json with the SQuAD schema, or "
                        f"{', '.join(sorted(TABLE_FORMATS))} with the columns question, context, answers)")
    try:
        rows = read_table(p, key, max_line_bytes=max_line_bytes)
    except DataError as e:
        raise DataError(f"{e} (expected SQuAD JSON, or a table with the columns question, context, answers)") from None
    return rows_from_flat(rows, str(p), columns)


def read_qa_files(paths: Sequence[Path], key: str, columns: Mapping[str, str | None] | None = None,
                  max_line_bytes: int | None = MAX_LINE_BYTES) -> list[dict]:
    return [r for p in paths for r in read_qa_file(p, key, columns, max_line_bytes)]
