"""CoNLL column files and the tag schemes of named-entity data (IOB1, IOB2, IOBES, BILOU).

Reading (:func:`read_conll`) takes the files as the world writes them: whitespace-separated columns
(spaces or tabs), the token in the first column and the tag in the last (``tag_column`` picks
another, Python-style: ``-1`` is the last, ``3`` the fourth); ``-DOCSTART-`` lines skipped; any
number of blank lines between sentences; a last sentence without a trailing blank line; CRLF line
ends and a UTF-8 byte-order mark. A file whose every line holds one column is read as tokens
without tags (a split kept for prediction). Every sentence remembers the line of each of its
tokens, so a bad tag found later is reported at its own ``file:line``.

Schemes (:func:`detect_scheme`, :func:`to_iob2`, :func:`from_iob2`): the model is trained on IOB2
tags whatever the input's scheme (so that ``transformers.pipeline`` groups its predictions), and
predictions are written back in the input's scheme. For well-formed input the round trip
``from_iob2(to_iob2(tags, s), s) == tags`` holds for every scheme.

* IOB1 (the original CoNLL-2003 files): ``I-X`` everywhere inside entities; ``B-X`` only for an
  entity that directly follows another of the same type.
* IOB2 (BIO): every entity starts with ``B-X``.
* IOBES: ``S-X`` single-token entity, ``B-X`` ... ``I-X`` ... ``E-X`` longer ones.
* BILOU: IOBES with ``U-`` for ``S-`` and ``L-`` for ``E-``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from lmforge.data.sources import FILE, LINE, MAX_LINE_BYTES, check_exists, text_lines
from lmforge.utils.errors import DataError

SCHEMES = ("iob1", "iob2", "iobes", "bilou")
DOCSTART = "-DOCSTART-"
# the per-token line numbers of a sentence read from a column file
LINES = "__lines__"
_TAG = re.compile(r"^(?:O|([BIESLU])-(\S+))$")
_COLUMNS = re.compile(r"[ \t]+")  # columns are split on spaces and tabs only: a no-break space is part of a token


# -- reading ---------------------------------------------------------------------------------------
def read_conll(path: str | Path, key: str = "file", tag_column: int = -1,
               max_line_bytes: int | None = MAX_LINE_BYTES) -> list[dict]:
    """Sentences of a CoNLL column file: ``{"tokens": [...], "tags": [...] or None, "__line__": first line,
    "__lines__": [line of each token]}``. ``tags`` is None for a file of tokens only (one column)."""
    p = check_exists(path, key)
    sentences: list[dict] = []
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    widths: set[int] = set()

    def end_sentence() -> None:
        if tokens:
            sentences.append({"tokens": tokens[:], "tags": tags[:], LINE: lines[0], LINES: lines[:]})
            tokens.clear(), tags.clear(), lines.clear()

    seen = 0
    for lineno, text in text_lines(p, max_line_bytes):  # CRLF, a byte-order mark; bad bytes, long lines: errors
        seen = lineno
        text = text.rstrip("\r\n")
        columns = [c for c in _COLUMNS.split(text.strip(" \t\r")) if c]
        if not columns:
            end_sentence()
            continue
        if columns[0] == DOCSTART:
            end_sentence()
            continue
        widths.add(len(columns))
        tokens.append(columns[0])
        tags.append(_pick(columns, tag_column, path, lineno, text))
        lines.append(lineno)
    end_sentence()
    if not sentences:
        raise DataError(f"{path}: " + ("the file is empty" if not seen else
                                       f"no sentences in its {seen} lines (only blank lines and {DOCSTART})")
                        + "; expected a token and its tag per line, a blank line between sentences")
    if widths == {1}:
        for s in sentences:  # tokens only: an unlabelled file
            s["tags"] = None
        return sentences
    if 1 in widths:
        # a labelled file where some line lacks its tag: report the first such line
        for s in sentences:
            for line, tag, token in zip(s[LINES], s["tags"], s["tokens"]):
                if tag is _ONE_COLUMN:
                    raise DataError(f"{path}:{line}: 1 column ({token!r}); data.tag_column={tag_column} needs "
                                    f"at least {_columns_needed(tag_column)}: the token in the first column and its tag in "
                                    f"{_column_name(tag_column)}")
    return sentences


class _OneColumn(str):
    """A line with only its token: fine in a tokens-only file, an error in a labelled one."""


_ONE_COLUMN = _OneColumn("")


def _column_name(tag_column: int) -> str:
    return "the last column" if tag_column == -1 else f"column {tag_column} (0-based; -1 is the last)"


def _columns_needed(tag_column: int) -> int:
    """How many columns a line needs for the tag to sit in ``tag_column`` beside the token in column 0."""
    return max(2, tag_column + 1 if tag_column >= 0 else -tag_column + 1)


def _pick(columns: list[str], tag_column: int, path: str | Path, lineno: int, text: str) -> str:
    if len(columns) == 1:
        return _ONE_COLUMN
    need = _columns_needed(tag_column)
    if len(columns) < need:
        raise DataError(f"{path}:{lineno}: {len(columns)} columns ({text.strip()!r}); data.tag_column={tag_column} "
                        f"needs at least {need}: the token in the first column and its tag in "
                        f"{_column_name(tag_column)}")
    return columns[tag_column]


def read_conll_files(paths: Sequence[Path], key: str, tag_column: int = -1,
                     max_line_bytes: int | None = MAX_LINE_BYTES) -> list[dict]:
    """Sentences of one or more column files; with several, each sentence also names its file."""
    if len(paths) == 1:
        return read_conll(paths[0], key, tag_column, max_line_bytes)
    return [{**s, FILE: str(p)} for p in paths for s in read_conll(p, key, tag_column, max_line_bytes)]


# -- tags ------------------------------------------------------------------------------------------
def split_tag(tag: str) -> tuple[str, str | None]:
    """``("B", "PER")`` for ``B-PER``, ``("O", None)`` for ``O``; a malformed tag raises ValueError."""
    m = _TAG.match(tag)
    if m is None:
        raise ValueError(tag)
    return (m.group(1), m.group(2)) if m.group(1) else ("O", None)


def check_tag(tag: object, place: str) -> str:
    """``tag`` if it is a tag of one of the schemes; else a DataError at ``place`` saying what is expected."""
    if isinstance(tag, str) and _TAG.match(tag):
        return tag
    raise DataError(f"{place}: malformed tag {tag!r}; expected O, or a prefix B-/I- (IOB1, IOB2), also E-/S- "
                    f"(IOBES) or L-/U- (BILOU), a hyphen and the entity type, e.g. B-PER or I-LOC")


def entity_types(tags: Iterable[str]) -> list[str]:
    """The entity types named by ``tags``, sorted."""
    return sorted({t for tag in tags for p, t in [split_tag(tag)] if t is not None})


def begins_entity_as_inside(prev: str | None, tag: str) -> bool:
    """Whether ``tag`` is an ``I-X`` that opens an entity (at the sentence start, after O or after another
    type): legal in IOB1, an error in strict IOB2."""
    p, t = split_tag(tag)
    if p != "I":
        return False
    if prev is None:
        return True
    pp, pt = split_tag(prev)
    return pp == "O" or pt != t or pp in ("E", "S", "L", "U")


def detect_scheme(sequences: Iterable[Sequence[str]]) -> str:
    """The scheme of well-formed tag sequences: bilou (L-/U-), iobes (E-/S-), iob1 (an entity opened by
    I-), else iob2. A mix of IOBES and BILOU letters raises ValueError."""
    prefixes: set[str] = set()
    opened_by_inside = False
    for tags in sequences:
        prev = None
        for tag in tags:
            p, _ = split_tag(tag)
            prefixes.add(p)
            if not opened_by_inside and begins_entity_as_inside(prev, tag):
                opened_by_inside = True
            prev = tag
    if prefixes & {"E", "S"} and prefixes & {"L", "U"}:
        raise ValueError("the tags mix IOBES (E-, S-) and BILOU (L-, U-) prefixes")
    if prefixes & {"L", "U"}:
        return "bilou"
    if prefixes & {"E", "S"}:
        return "iobes"
    return "iob1" if opened_by_inside else "iob2"


def allowed_prefixes(scheme: str) -> set[str]:
    return {"iob1": {"B", "I"}, "iob2": {"B", "I"}, "iobes": {"B", "I", "E", "S"},
            "bilou": {"B", "I", "L", "U"}}[scheme]


def to_iob2(tags: Sequence[str], scheme: str) -> list[str]:
    """``tags`` (well-formed in ``scheme``) as IOB2; an I- that opens an entity becomes B- (IOB1)."""
    out: list[str] = []
    prev = None
    for tag in tags:
        p, t = split_tag(tag)
        if p == "O":
            out.append("O")
        elif p in ("B", "S", "U"):
            out.append(f"B-{t}")
        elif p == "I" and begins_entity_as_inside(prev, tag):
            out.append(f"B-{t}")
        else:  # I inside, E/L ending an entity
            out.append(f"I-{t}")
        prev = tag
    return out


def normalize_iob2(tags: Sequence[str]) -> list[str]:
    """IOB2 tags as an entity reader sees them: an ``I-X`` that opens an entity is read as ``B-X`` (as
    conlleval and seqeval's default mode do)."""
    return to_iob2(tags, "iob2")


def from_iob2(tags: Sequence[str], scheme: str) -> list[str]:
    """IOB2 tags (a model's predictions, possibly ill-formed) in ``scheme``; for the other schemes an ``I-`` that
    opens an entity is read as :func:`normalize_iob2` reads it."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown tag scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    if scheme == "iob2":
        return list(tags)  # as predicted: an I- that opens an entity stays (conlleval reads it as a start)
    tags = normalize_iob2(tags)
    out: list[str] = []
    n = len(tags)
    for i, tag in enumerate(tags):
        p, t = split_tag(tag)
        if p == "O":
            out.append("O")
            continue
        if scheme == "iob1":
            prev = split_tag(tags[i - 1]) if i else ("O", None)
            # B- only where an entity directly follows another of the same type
            out.append(f"B-{t}" if p == "B" and prev[0] != "O" and prev[1] == t else f"I-{t}")
            continue
        nxt = split_tag(tags[i + 1]) if i + 1 < n else ("O", None)
        continues = nxt[0] == "I" and nxt[1] == t
        single, last = ("S", "E") if scheme == "iobes" else ("U", "L")
        if p == "B":
            out.append(f"B-{t}" if continues else f"{single}-{t}")
        else:
            out.append(f"I-{t}" if continues else f"{last}-{t}")
    return out


def iob2_label_set(tags: Iterable[str]) -> list[str]:
    """The IOB2 labels a model needs for ``tags`` (any scheme): ``O`` first, then sorted, with ``I-X``
    beside every ``B-X`` so that every type can span several words."""
    found: set[str] = set()
    for tag in tags:
        p, t = split_tag(tag)
        if p == "O":
            continue
        found.add(f"B-{t}" if p in ("B", "S", "U") else f"I-{t}")
        found.add(f"I-{t}")
        if p in ("S", "U", "E", "L"):
            found.add(f"B-{t}")
    return ["O", *sorted(found)]
