"""Token classification (NER) data: sentences of words with one tag per word.

The rest of the pipeline (sources, carving a validation split, the token cache, the resumable
sampler) is :class:`lmforge.data.datamodule.LMForgeDataModule`'s. What this task adds, one code
path after reading:

* reading: CoNLL column files (``.txt``, ``.conll``, ``.iob``, ``.bio``, ``.iobes``, ``.bilou``,
  ``.tsv``, or any name with ``data.format=conll``) through :mod:`lmforge.data.conll`; jsonl/json/
  parquet with a token list and a tag list per record (``tokens``/``words`` and
  ``ner_tags``/``tags``/``labels``/``ner``, or ``data.text_column`` / ``data.label_column``), tags as
  strings or as integers named by ``data.label_names`` or by a hub dataset's class-label feature;
* checks, each with its file and line: malformed tags, tokens and tags of different lengths, an
  empty tags list, a tag outside ``data.label_names``, an ``I-`` that opens an entity when
  ``data.tag_scheme=iob2`` (strict);
* tag scheme: detected over all splits (``data.tag_scheme=auto``) or given; the model always learns
  IOB2 (IOB1/IOBES/BILOU converted), and predictions are written back in the input's scheme;
* labels: ``data.label_names`` or the union of the tags of all splits, ``O`` first, then sorted,
  with ``I-X`` beside every ``B-X``;
* encoding: :mod:`.alignment` (first sub-token labels, windows of ``data.max_length`` overlapping by
  ``data.stride``, empty words); how many sentences needed windows is logged and kept in the
  cache's ``meta.json``;
* prediction inputs: raw text, tokenized the way ``transformers.pipeline`` tokenizes it (with
  character offsets), so that lmforge's predictions and the served export's agree.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from lmforge.data.collate import PadCollator
from lmforge.data.conll import (LINES, SCHEMES, allowed_prefixes, begins_entity_as_inside, check_tag, detect_scheme,
                                iob2_label_set, read_conll_files, split_tag, to_iob2)
from lmforge.data.datamodule import ArrayDataset, LMForgeDataModule
from lmforge.data.sources import FILE, SplitRows, columns_of, read_tables, where
from lmforge.tasks.token_classification.alignment import IGNORE, encode_words, special_template
from lmforge.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CONLL_SUFFIXES = (".txt", ".conll", ".conll03", ".iob", ".iob1", ".iob2", ".bio", ".iobes", ".bilou", ".bioes", ".tsv")
TABLE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".pq")
FORMATS = ("auto", "conll", "jsonl", "json", "parquet")
TOKEN_COLUMNS = ("tokens", "words", "token", "word")
TAG_COLUMNS = ("ner_tags", "tags", "labels", "ner", "tag", "label", "ner_labels")
WINDOW_FIELDS = ("input_ids", "token_type_ids", "labels", "word_index", "sentence")


class TokenDataset(ArrayDataset):
    """A split's windows, and its sentences' words and gold tags (as the input wrote them) for the
    evaluation files (``predictions.conll``)."""

    def __init__(self, arrays: Mapping[str, Any], scheme: str | None, input_tags: Sequence[str]):
        super().__init__(arrays, WINDOW_FIELDS)
        self.scheme = scheme
        self.input_tags = list(input_tags)

    def has_words(self) -> bool:
        return "word_bytes" in self.arrays

    def words(self, sentence: int) -> list[str]:
        data = bytes(np.asarray(self.arrays["word_bytes"][sentence], dtype=np.uint8))
        out, pos = [], 0
        for n in self.arrays["word_lengths"][sentence]:
            out.append(data[pos: pos + int(n)].decode("utf-8"))
            pos += int(n)
        return out

    def gold_tags(self, sentence: int) -> list[str] | None:
        if "gold_tags" not in self.arrays:
            return None
        return [self.input_tags[int(i)] for i in self.arrays["gold_tags"][sentence]]


class TokenClassificationDataModule(LMForgeDataModule):
    namespace = "token_classification"
    progress_unit = "sentences"
    input_fields = ("text",)
    file_suffixes = CONLL_SUFFIXES + TABLE_SUFFIXES

    def __init__(self, train_file: str | None = None, validation_file: str | None = None, test_file: str | None = None,
                 format: str = "auto", tag_column: int = -1, tag_scheme: str = "auto", text_column: str | None = None,
                 label_column: str | None = None, label_names: Sequence[str] | None = None, max_length: int = 128,
                 stride: int = 32, label_all_subtokens: bool = False, pad_to_multiple_of: int | None = None,
                 sample: str = "newswire", batch_size: int = 32, eval_batch_size: int | None = None,
                 text_pair_column: str | None = None, problem_type: Any = None, tsv_quoting: Any = None,
                 **common: Any):
        # problem_type / tsv_quoting: text classification's keys, shared through data/_common.yaml; unused here
        if format not in FORMATS:
            raise ConfigError(f"data.format={format}: expected one of {', '.join(FORMATS)}")
        if tag_scheme not in ("auto", *SCHEMES):
            raise ConfigError(f"data.tag_scheme={tag_scheme}: expected auto, {', '.join(SCHEMES)}")
        if not isinstance(tag_column, int) or tag_column == 0:
            raise ConfigError(f"data.tag_column={tag_column}: expected the tag's column as a Python index other than 0 "
                              "(the token's): -1 is the last column, 3 the fourth")
        if text_pair_column:
            raise ConfigError(f"data.text_pair_column={text_pair_column}: token classification reads one sentence "
                              "(a token list) per example; leave it null")
        if max_length < 3:
            raise ConfigError(f"data.max_length={max_length}: expected at least 3")
        self.format, self.tag_column, self.tag_scheme = format, tag_column, tag_scheme
        self.columns = {"tokens": text_column, "tags": label_column}
        self.given_label_names = [str(n) for n in label_names] if label_names else None
        self.max_length, self.stride = max_length, stride
        self.label_all_subtokens = bool(label_all_subtokens)
        self.pad_to_multiple_of = pad_to_multiple_of
        self._parsed: dict[str, dict] = {}
        super().__init__(files={"train": train_file, "validation": validation_file, "test": test_file}, sample=sample,
                         batch_size=batch_size, eval_batch_size=eval_batch_size or batch_size * 2, **common)
        self.template = special_template(self.tokenizer)
        window = max_length - self.template.size
        if window < 1:
            raise ConfigError(f"data.max_length={max_length} leaves no room beside the tokenizer's "
                              f"{self.template.size} special tokens")
        if not 0 <= stride < window:
            raise ConfigError(f"data.stride={stride}: expected at least 0 and less than the window's {window} sub-tokens "
                              f"(data.max_length={max_length} minus {self.template.size} special tokens)")

    # -- tokenizer, settings -------------------------------------------------------------------
    def check_tokenizer(self, tokenizer: Any) -> Any:
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(f"token classification needs a fast tokenizer (word ids and character offsets); "
                              f"{type(tokenizer).__name__} is not one")
        if getattr(tokenizer, "add_prefix_space", None) is False:
            # byte-level BPE (GPT-2, RoBERTa) reads pre-tokenized words only with a space before each
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path, add_prefix_space=True,
                                                      trust_remote_code=self.trust_remote_code)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        return tokenizer

    def settings(self) -> dict:
        return {"format": self.format, "tag_column": self.tag_column, "tag_scheme": self.tag_scheme,
                "columns": self.columns, "label_names": self.given_label_names, "max_length": self.max_length,
                "stride": self.stride, "label_all_subtokens": self.label_all_subtokens, "encoding": 1}

    # -- reading -------------------------------------------------------------------------------
    def _format_of(self, path: Path) -> str:
        if self.format != "auto":
            return "conll" if self.format == "conll" else "table"
        suffix = path.suffix.lower()
        if suffix in CONLL_SUFFIXES:
            return "conll"
        if suffix in TABLE_SUFFIXES:
            return "table"
        raise DataError(f"{path}: cannot tell the format from the extension {suffix or '(none)'!r}; expected a CoNLL "
                        f"column file ({', '.join(CONLL_SUFFIXES)}) or jsonl/json/parquet with token and tag lists; "
                        "set data.format=conll for a column file of another name")

    def read_file(self, paths: list, key: str) -> list[dict]:
        paths = [Path(p) for p in paths]
        kinds = {self._format_of(p) for p in paths}
        if len(kinds) > 1:
            raise DataError(f"{key}: mixes CoNLL column files and tables ({', '.join(map(str, paths))}); give one kind")
        if kinds == {"conll"}:
            return read_conll_files(paths, key, self.tag_column, self.max_line_bytes)
        return read_tables(paths, key, max_line_bytes=self.max_line_bytes)

    # -- checks --------------------------------------------------------------------------------
    def _table_columns(self, rows: list[dict], origin: str) -> dict[str, str | None]:
        present = columns_of(rows[0])

        def pick(role: str, candidates: Sequence[str], key: str) -> str | None:
            name = self.columns[role]
            if name is not None:
                if name not in present and role == "tokens":
                    raise DataError(f"{key}={name!r} is not a column of {origin}; its columns are: {', '.join(present)}")
                return name if name in present else None
            return next((c for c in candidates if c in present), None)

        tokens = pick("tokens", TOKEN_COLUMNS, "data.text_column")
        if tokens is None:
            raise DataError(f"{origin}: no token-list column among {', '.join(present)}; set data.text_column=<name> "
                            f"(looked for {', '.join(TOKEN_COLUMNS)})")
        return {"tokens": tokens, "tags": pick("tags", TAG_COLUMNS, "data.label_column")}

    def _sentences(self, split: str, data: SplitRows, int_names: list[str] | None) -> dict:
        """Tokens, raw tags (strings) and the place of every token of a split; tags None when unlabelled."""
        rows = data.rows
        tokens, tags, places = [], [], []
        if "tokens" in rows[0] and LINES in rows[0]:  # CoNLL sentences
            labelled = rows[0]["tags"] is not None
            for r in rows:
                origin = r.get(FILE, data.origin)
                tokens.append(r["tokens"])
                tags.append(r["tags"])
                places.append([f"{origin}:{line}" for line in r[LINES]])
            return {"tokens": tokens, "tags": tags if labelled else None, "places": places, "columns": None}
        cols = self._table_columns(rows, data.origin)
        labelled = cols["tags"] is not None
        for r in rows:
            place = where(data.origin, r)
            toks = r.get(cols["tokens"])
            if isinstance(toks, np.ndarray):
                toks = toks.tolist()
            if isinstance(toks, str) or not isinstance(toks, (list, tuple)):
                raise DataError(f"{place}: column {cols['tokens']!r} holds {type(toks).__name__} {str(toks)[:60]!r}; "
                                "expected a list of tokens (pre-tokenized words)")
            if not toks:
                raise DataError(f"{place}: an empty token list in column {cols['tokens']!r}; expected a sentence")
            for i, t in enumerate(toks):
                if not isinstance(t, str) or not t.strip():
                    raise DataError(f"{place}: token {i + 1} is {t!r}; expected a non-empty string")
            tokens.append([str(t) for t in toks])
            places.append([f"{place} (token {i + 1})" for i in range(len(toks))])
            if not labelled:
                continue
            tg = r.get(cols["tags"])
            if isinstance(tg, np.ndarray):
                tg = tg.tolist()
            if not isinstance(tg, (list, tuple)):
                raise DataError(f"{place}: column {cols['tags']!r} holds {type(tg).__name__} {str(tg)[:60]!r}; "
                                "expected a list of tags, one per token")
            if not tg:
                raise DataError(f"{place}: {len(toks)} tokens but an empty tags list in column {cols['tags']!r}; "
                                "expected one tag per token")
            if len(tg) != len(toks):
                raise DataError(f"{place}: {len(toks)} tokens (column {cols['tokens']!r}) but {len(tg)} tags (column "
                                f"{cols['tags']!r}); expected one tag per token")
            tags.append([self._tag_name(t, f"{place} (token {i + 1})", int_names, cols["tags"])
                         for i, t in enumerate(tg)])
        return {"tokens": tokens, "tags": tags if labelled else None, "places": places, "columns": cols}

    def _tag_name(self, tag: Any, place: str, names: list[str] | None, column: str) -> str:
        if isinstance(tag, bool) or not isinstance(tag, (int, np.integer)):
            return tag
        if names is None:
            raise DataError(f"{place}: integer tag {tag} in column {column!r} needs the tag names: set "
                            "data.label_names=[O,B-PER,I-PER,...] in the order of the integers")
        if not 0 <= int(tag) < len(names):
            raise DataError(f"{place}: integer tag {tag} is outside data.label_names (0..{len(names) - 1})")
        return names[int(tag)]

    def build_meta(self, raw: dict[str, SplitRows]) -> dict:
        first = "train" if "train" in raw else next(iter(raw))
        parsed: dict[str, dict] = {}
        for split, data in raw.items():
            cols = None
            if "tokens" not in data.rows[0] or LINES not in data.rows[0]:
                cols = self._table_columns(data.rows, data.origin)
            int_names = self.given_label_names or (self.hub_label_names.get(cols["tags"]) if cols and cols["tags"]
                                                   else None)
            parsed[split] = self._sentences(split, data, int_names)
        labelled = [s for s in raw if parsed[s]["tags"] is not None]
        if first not in labelled:
            raise DataError(f"{raw[first].origin}: no tags (a file of tokens only); a labelled split is needed to "
                            "train or evaluate")
        # every tag well-formed, in a scheme the run accepts
        for s in labelled:
            p = parsed[s]
            for tags, places in zip(p["tags"], p["places"]):
                for tag, place in zip(tags, places):
                    check_tag(tag, place)
        scheme = self._scheme([parsed[s] for s in labelled])
        for s in labelled:
            p = parsed[s]
            p["iob2"] = [to_iob2(t, scheme) for t in p["tags"]]
        if self.given_label_names:
            names = self._model_labels(self.given_label_names)
        else:
            names = iob2_label_set(t for s in labelled for seq in parsed[s]["iob2"] for t in seq)
        if len(names) < 2:
            raise DataError(f"{raw[first].origin}: every tag is O; token classification needs at least one entity type")
        index = {n: i for i, n in enumerate(names)}
        for s in labelled:
            p = parsed[s]
            for orig, conv, places in zip(p["tags"], p["iob2"], p["places"]):
                for o, c, place in zip(orig, conv, places):
                    if c not in index:
                        known = "data.label_names" if self.given_label_names else "the label set"
                        raise DataError(f"{place}: tag {o!r} (as IOB2: {c}) is not in {known}: {', '.join(names)}")
        input_tags = sorted({t for s in labelled for seq in parsed[s]["tags"] for t in seq})
        self._parsed = parsed
        return {"labelled": labelled, "label_names": names, "scheme": scheme, "input_tags": input_tags,
                "columns": {s: parsed[s]["columns"] for s in raw}, "windows": {}}

    def _scheme(self, parsed: list[dict]) -> str:
        sequences = [(tags, places) for p in parsed for tags, places in zip(p["tags"], p["places"])]
        if self.tag_scheme == "auto":
            try:
                return detect_scheme(tags for tags, _ in sequences)
            except ValueError as e:
                raise DataError(f"{e}; set data.tag_scheme=iobes or bilou and fix the other tags") from None
        allowed = allowed_prefixes(self.tag_scheme)
        for tags, places in sequences:
            prev = None
            for tag, place in zip(tags, places):
                prefix, kind = split_tag(tag)
                if prefix != "O" and prefix not in allowed:
                    raise DataError(f"{place}: tag {tag!r} is not a {self.tag_scheme.upper()} tag (data.tag_scheme="
                                    f"{self.tag_scheme} allows O and {', '.join(sorted(allowed))}-); set "
                                    "data.tag_scheme=auto to detect the scheme")
                if self.tag_scheme == "iob2" and begins_entity_as_inside(prev, tag):
                    after = "at the start of a sentence" if prev is None else f"after {prev}"
                    raise DataError(f"{place}: tag {tag!r} opens an entity {after}; strict IOB2 (data.tag_scheme=iob2) "
                                    f"expects B-{kind} there (IOB1 files open entities with I-: set "
                                    "data.tag_scheme=iob1 or auto)")
                prev = tag
        return self.tag_scheme

    @staticmethod
    def _model_labels(names: list[str]) -> list[str]:
        """The model's labels for ``data.label_names``: as given (IOB2 names keep their order and ids), or the
        IOB2 labels of their types when they are IOBES/BILOU names."""
        for n in names:
            check_tag(n, "data.label_names")
        if any(split_tag(n)[0] in ("E", "S", "L", "U") for n in names):
            return iob2_label_set(names)
        return list(names)

    # -- encoding ------------------------------------------------------------------------------
    def encode_split(self, split: str, data: SplitRows, meta: dict) -> dict[str, Any]:
        parsed = self._parsed[split]
        names = meta["label_names"]
        index = {n: i for i, n in enumerate(names)}
        labelled = split in meta["labelled"]
        labels = [[index[t] for t in seq] for seq in parsed["iob2"]] if labelled else None
        inside = {index[n]: index.get("I-" + n[2:], index[n]) for n in names if n.startswith("B-")}
        enc = encode_words(self.tokenizer, parsed["tokens"], labels, self.max_length, self.stride,
                           self.label_all_subtokens, inside, self.template)
        n = len(parsed["tokens"])
        meta["windows"][split] = {"sentences": n, "windowed_sentences": enc.windowed_sentences, "windows": enc.windows,
                                  "unknown_words": enc.unknown_words}
        if enc.windowed_sentences:
            log.info("%s: %d of %d sentences are longer than data.max_length=%d sub-tokens: split into overlapping "
                     "windows (data.stride=%d), %d windows in all; each word is predicted once",
                     split, enc.windowed_sentences, n, self.max_length, self.stride, enc.windows)
        if enc.unknown_words:
            log.info("%s: %d words give no sub-token (control or zero-width characters): predicted as %s",
                     split, enc.unknown_words, self.tokenizer.unk_token)
        arrays: dict[str, Any] = {"input_ids": enc.input_ids}
        if enc.token_type_ids:
            arrays["token_type_ids"] = enc.token_type_ids
        if labelled:
            arrays["labels"] = enc.labels
        arrays["word_index"] = enc.word_index
        arrays["sentence"] = np.asarray(enc.sentence, dtype=np.int32)
        arrays["lengths"] = np.asarray([len(x) for x in enc.input_ids], dtype=np.int32)
        if split != "train" and labelled:  # words and gold tags for predictions.conll
            raw_words = [[w.encode("utf-8") for w in words] for words in parsed["tokens"]]
            arrays["word_bytes"] = [np.frombuffer(b"".join(ws), dtype=np.uint8) for ws in raw_words]
            arrays["word_lengths"] = [np.asarray([len(w) for w in ws], dtype=np.int32) for ws in raw_words]
            tag_index = {t: i for i, t in enumerate(meta["input_tags"])}
            arrays["gold_tags"] = [np.asarray([tag_index[t] for t in seq], dtype=np.int32) for seq in parsed["tags"]]
        return arrays

    def make_dataset(self, split: str, arrays: Mapping[str, Any]) -> Dataset:
        meta = self.meta or {}
        return TokenDataset(arrays, meta.get("scheme"), meta.get("input_tags", []))

    def lengths(self, split: str) -> Sequence[int]:
        return self.datasets[split].arrays["lengths"]  # type: ignore[attr-defined]

    def collate(self, examples: Sequence[dict]) -> dict:
        return PadCollator({"input_ids": self.tokenizer.pad_token_id, "token_type_ids": 0, "labels": IGNORE,
                            "word_index": -1}, self.pad_to_multiple_of)(examples)

    # -- facts and prediction inputs -----------------------------------------------------------
    @property
    def label_names(self) -> list[str]:
        if self.meta is None:
            self.setup()
        return self.meta["label_names"]

    @property
    def window_report(self) -> dict:
        """Per split: sentences, how many needed windows, windows in all, words given the unknown token."""
        if self.meta is None:
            self.setup()
        return self.meta.get("windows", {})

    def model_facts(self) -> dict:
        names = self.label_names
        return {"vocab_size": len(self.tokenizer), "pad_token_id": self.tokenizer.pad_token_id,
                "num_labels": len(names), "id2label": dict(enumerate(names)),
                "label2id": {n: i for i, n in enumerate(names)}}

    def input_column_names(self) -> dict[str, str | None]:
        return {"text": None}

    def encode_inputs(self, records: Sequence[dict | str]) -> list[dict]:
        """Raw texts tokenized as ``transformers.pipeline("token-classification")`` does (truncated at the
        tokenizer's ``model_max_length``), with each sub-token's character span and special-token flag."""
        records = self.input_records(records)
        tok = self.tokenizer
        truncation = bool(tok.model_max_length and tok.model_max_length > 0)
        enc = tok([r["text"] for r in records], truncation=truncation, return_offsets_mapping=True,
                  return_special_tokens_mask=True, return_attention_mask=False)
        out = []
        for i in range(len(records)):
            ex = {"input_ids": np.asarray(enc["input_ids"][i], dtype=np.int64),
                  "offsets": np.asarray(enc["offset_mapping"][i], dtype=np.int64).reshape(-1, 2),
                  "special": np.asarray(enc["special_tokens_mask"][i], dtype=np.int64)}
            if "token_type_ids" in enc:
                ex["token_type_ids"] = np.asarray(enc["token_type_ids"][i], dtype=np.int64)
            out.append(ex)
        return out
