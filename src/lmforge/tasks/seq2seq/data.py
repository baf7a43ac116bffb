"""Translation and summarization data: (source, target) text pairs for an encoder-decoder.

The rest of the pipeline (sources, carving a validation split, the token cache, the resumable and
length-grouped sampler, tokenizer training) is :class:`lmforge.data.datamodule.LMForgeDataModule`'s.
What this task adds:

* reading (:mod:`.readers`): line-aligned parallel files (``data.train_file=<prefix>`` with
  ``data.source_lang=de data.target_lang=en`` reads ``<prefix>.de`` and ``<prefix>.en``), jsonl
  ``{"translation": {"de": ..., "en": ...}}``, tables with source and target columns (translation: the
  language codes or ``source``/``target``; summarization: ``document``/``article``/``dialogue``/``text``
  and ``summary``/``highlights``/``abstract``; or ``data.source_column`` / ``data.target_column``);
  multi-line fields (dialogues) are kept as they are;
* checks: an empty source or target is an error naming its file and line, or skipped and counted with
  ``data.skip_empty=true``; a source longer than ``data.max_source_length`` tokens (a target longer than
  ``data.max_target_length``) is truncated, counted and reported, never silently;
* encoding: ``task.source_prefix`` + source -> ``input_ids`` (the tokenizer's own special tokens);
  target -> ``labels`` ending with the end token (an encoder's leading ``[CLS]`` dropped: bert2bert's
  decoder starts from it); the source and target texts are kept (as UTF-8 bytes) for the metrics,
  which score against the references as written, not as tokenized;
* batches: dynamic padding; ``labels`` padded with -100 (never in the loss) to their own length; the
  model shifts them right into its decoder inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.data.cache import Ragged
from lmforge.data.datamodule import ArrayDataset, LMForgeDataModule, is_missing
from lmforge.data.sources import TABLE_FORMATS, SplitRows, check_exists, read_lines, read_tables, resolve_files, where
from lmforge.data.splits import SPLITS
from lmforge.tasks.seq2seq.readers import PAIR, parallel_pair, read_parallel, rows_from_table
from lmforge.utils import progress
from lmforge.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IGNORE = -100
KINDS = ("translation", "summarization")
FIELDS = ("input_ids", "labels", "index")


def to_bytes(texts: Sequence[str]) -> Ragged:
    return Ragged.from_list([np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts], dtype=np.uint8)


def from_bytes(arr: Any) -> str:
    return bytes(np.asarray(arr, dtype=np.uint8)).decode("utf-8")


class Seq2SeqDataset(ArrayDataset):
    """A split's examples (``input_ids``, ``labels``, ``index``) and its source and reference texts."""

    def __init__(self, arrays: Mapping[str, Any]):
        super().__init__(arrays, ["input_ids", "labels"])

    def __getitem__(self, i: int) -> dict:
        return {**super().__getitem__(i), "index": i}

    def source(self, i: int) -> str:
        return from_bytes(self.arrays["source_bytes"][i])

    def reference(self, i: int) -> str:
        return from_bytes(self.arrays["target_bytes"][i])


def collate_seq2seq(examples: Sequence[dict], pad_id: int, multiple: int | None = None) -> dict[str, torch.Tensor]:
    """Dynamic padding: ``input_ids`` with the pad id (and an attention mask), ``labels`` with -100 to the
    batch's longest target; other fields stacked."""
    def pad(seqs: list, value: int) -> torch.Tensor:
        width = max(len(s) for s in seqs)
        if multiple:
            width = -(-width // multiple) * multiple
        out = np.full((len(seqs), width), value, dtype=np.int64)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = s
        return torch.from_numpy(out)

    ids = [e["input_ids"] for e in examples]
    batch = {"input_ids": pad(ids, pad_id)}
    lengths = torch.tensor([len(s) for s in ids])
    batch["attention_mask"] = (torch.arange(batch["input_ids"].shape[1])[None, :] < lengths[:, None]).long()
    if "labels" in examples[0]:
        batch["labels"] = pad([e["labels"] for e in examples], IGNORE)
    if "index" in examples[0]:
        batch["index"] = torch.tensor([int(e["index"]) for e in examples])
    return batch


def collate_padding_free(examples: Sequence[dict], pad_id: int, start_id: int) -> dict[str, Any]:
    """A batch's pairs in as few rows as first fit finds (longest source first), each row holding whole pairs: their
    sources one after another in ``input_ids`` and their targets in ``labels`` (-100 padding), in the same order;
    ``decoder_input_ids`` each target shifted right on its own (``start_id`` first); ``source_segments`` and
    ``target_segments`` the pair of each token (-1: padding), from which the module builds the attention masks that
    keep each pair to itself. A row holds at most twice the batch's longest source and twice its longest target,
    which bounds the attention's cost. Plus the plain counts ``num_sequences`` and ``num_tokens``."""
    src = [list(e["input_ids"]) for e in examples]
    tgt = [list(e["labels"]) for e in examples]
    cap_s, cap_t = 2 * max(map(len, src)), 2 * max(map(len, tgt))
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []
    for i in sorted(range(len(src)), key=lambda i: -len(src[i])):
        for r, (fs, ft) in enumerate(room):
            if len(src[i]) <= fs and len(tgt[i]) <= ft:
                rows[r].append(i)
                room[r] = (fs - len(src[i]), ft - len(tgt[i]))
                break
        else:
            rows.append([i])
            room.append((cap_s - len(src[i]), cap_t - len(tgt[i])))
    n, width_s = len(rows), max(sum(len(src[i]) for i in r) for r in rows)
    width_t = max(sum(len(tgt[i]) for i in r) for r in rows)
    ids = np.full((n, width_s), pad_id, dtype=np.int64)
    dec = np.full((n, width_t), pad_id, dtype=np.int64)
    labels = np.full((n, width_t), IGNORE, dtype=np.int64)
    seg_s = np.full((n, width_s), -1, dtype=np.int64)
    seg_t = np.full((n, width_t), -1, dtype=np.int64)
    for r, members in enumerate(rows):
        ps = pt = 0
        for k, i in enumerate(sorted(members)):
            x, y = src[i], tgt[i]
            ids[r, ps: ps + len(x)], seg_s[r, ps: ps + len(x)] = x, k
            labels[r, pt: pt + len(y)], seg_t[r, pt: pt + len(y)] = y, k
            dec[r, pt] = start_id
            dec[r, pt + 1: pt + len(y)] = [pad_id if t == IGNORE else t for t in y[:-1]]
            ps, pt = ps + len(x), pt + len(y)
    return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
            "decoder_input_ids": torch.from_numpy(dec), "source_segments": torch.from_numpy(seg_s),
            "target_segments": torch.from_numpy(seg_t), "num_sequences": len(examples),
            "num_tokens": int(sum(len(x) + len(y) for x, y in zip(src, tgt)))}


class Seq2SeqDataModule(LMForgeDataModule):
    namespace = "seq2seq"
    progress_unit = "pairs"
    tokenizer_kind = "seq2seq"  # data.tokenizer_training.kind=auto for from-scratch models
    input_fields = ("source",)
    file_suffixes = tuple(TABLE_FORMATS)

    def __init__(self, kind: str = "translation", train_file: Any = None, validation_file: Any = None,
                 test_file: Any = None, source_lang: str | None = None, target_lang: str | None = None,
                 source_column: str | None = None, target_column: str | None = None, source_prefix: str = "",
                 max_source_length: int = 128, max_target_length: int = 128, skip_empty: bool = False,
                 pad_to_multiple_of: int | None = None, tsv_quoting: str | None = "none", padding_free: Any = "auto",
                 text_column: str | None = None, label_column: str | None = None, sample: str | None = None,
                 batch_size: int = 32, eval_batch_size: int | None = None, model: Mapping | None = None,
                 # text classification's keys, shared through data/_common.yaml; unused here
                 text_pair_column: Any = None, label_names: Any = None, problem_type: Any = None,
                 max_length: Any = None, **common: Any):
        if kind not in KINDS:
            raise ConfigError(f"task.kind={kind}: expected translation or summarization")
        if kind == "translation" and not (source_lang and target_lang):
            raise ConfigError("translation needs data.source_lang and data.target_lang (e.g. de and en)")
        for key, n in (("max_source_length", max_source_length), ("max_target_length", max_target_length)):
            if not isinstance(n, int) or n < 2:
                raise ConfigError(f"data.{key}={n}: expected a token count of at least 2")
        if padding_free not in ("auto", True, False):
            raise ConfigError(f"data.padding_free={padding_free}: expected auto, true or false")
        self.padding_free = "auto" if padding_free == "auto" else bool(padding_free)
        # whether training batches are padding-free: decided by use_padding_free once the model is built (until then,
        # and where no module tells, batches are padded, which every model computes correctly)
        self.flatten = False
        self.kind, self.source_lang, self.target_lang = kind, source_lang, target_lang
        # data.text_column / data.label_column (data/_common.yaml, eval.py) name the same columns
        self.source_column, self.target_column = source_column or text_column, target_column or label_column
        self.source_prefix = source_prefix or ""
        self.max_source_length, self.max_target_length = max_source_length, max_target_length
        self.skip_empty = bool(skip_empty)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.tsv_quoting = tsv_quoting or "none"
        self.model_cfg = dict(model or {})
        self.family = self.model_cfg.get("family")
        self._parallel: dict[str, tuple[Path, Path]] = {}
        eval_file = common.pop("eval_file", None)
        if eval_file and kind == "translation" and not Path(str(eval_file)).expanduser().is_file():
            pair = parallel_pair(eval_file, source_lang, target_lang)
            if pair is None:
                raise DataError(f"data.eval_file={eval_file}: neither a table file nor the prefix of parallel files "
                                f"(looked for {eval_file}, {eval_file}.{source_lang} and {eval_file}.{target_lang})")
            eval_file = str(pair[0])  # read_file pairs it with its sibling again
        super().__init__(eval_file=eval_file, files={"train": train_file, "validation": validation_file, "test": test_file}, sample=sample,
                         batch_size=batch_size, eval_batch_size=eval_batch_size or batch_size * 2, model=model, **common)

    # -- tokenizer, settings -------------------------------------------------------------------
    def check_tokenizer(self, tokenizer: Any) -> Any:
        if self.family == "bert2bert":
            missing = [n for n, v in (("pad", tokenizer.pad_token_id), ("CLS", tokenizer.cls_token_id)) if v is None]
            if missing:
                raise ConfigError(
                    f"model=bert2bert needs a tokenizer with a pad token and a CLS token (the decoder starts at CLS, "
                    f"ends at SEP, pads with PAD); {getattr(tokenizer, 'name_or_path', tokenizer)} has no "
                    f"{' and no '.join(missing)} token. Use a BERT-like encoder's tokenizer (model.tokenizer=...)")
            if tokenizer.sep_token_id is None and tokenizer.eos_token_id is None:
                raise ConfigError(f"model=bert2bert: the tokenizer {tokenizer.name_or_path} has no SEP (or end) token "
                                  "to end the generated text")
        if tokenizer.pad_token_id is None:
            raise ConfigError(f"the tokenizer {getattr(tokenizer, 'name_or_path', '')} has no pad token: a seq2seq "
                              "batch pads its sources with it")
        return tokenizer

    def text_settings(self) -> dict:
        return {"kind": self.kind, "langs": [self.source_lang, self.target_lang],
                "columns": [self.source_column, self.target_column], "skip_empty": self.skip_empty}

    def settings(self) -> dict:
        return {**self.text_settings(), "prefix": self.source_prefix, "max_source": self.max_source_length,
                "max_target": self.max_target_length, "family": self.family, "encoding": 1}

    def tokenizer_texts(self, items: Any) -> Any:
        for r in items:  # sources and targets together: one vocabulary for both sides
            for k in ("source", "target"):
                if isinstance(r.get(k), str):
                    yield r[k]

    @property
    def end_id(self) -> int:
        tok = self.tokenizer
        return tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id

    def model_facts(self) -> dict:
        tok = self.tokenizer
        facts: dict[str, Any] = {"pad_token_id": tok.pad_token_id, "eos_token_id": self.end_id}
        from lmforge.models.factory import is_pretrained

        if self.family == "bert2bert":  # the decoder starts at CLS
            facts.update(vocab_size=len(tok), decoder_start_token_id=tok.cls_token_id, bos_token_id=tok.cls_token_id)
        elif not is_pretrained(self.model_cfg) or self.train_tokenizer:
            # from scratch: T5's convention, the decoder starts at the pad token
            facts.update(vocab_size=len(tok), decoder_start_token_id=tok.pad_token_id, bos_token_id=tok.pad_token_id)
        return facts

    # -- sources and reading -------------------------------------------------------------------
    def _resolve_sources(self, files: dict[str, Any]) -> dict[str, list[Path] | None]:
        if self.source != "local":
            return super()._resolve_sources(files)
        out: dict[str, list[Path] | None] = {}
        for split in SPLITS:
            spec = files.get(split)
            if not spec:
                out[split] = None
                continue
            pair = parallel_pair(spec, self.source_lang, self.target_lang) if self.kind == "translation" else None
            if pair and not (Path(str(spec)).is_file() and Path(str(spec)).suffix.lower() in TABLE_FORMATS):
                self._parallel[split] = pair
                out[split] = list(pair)
                continue
            if self.kind == "translation" and isinstance(spec, str) and not Path(spec).expanduser().exists() \
                    and not any(ch in spec for ch in "*?["):
                raise DataError(f"{self._key(split)}={spec}: neither a table file nor the prefix of parallel files "
                                f"(looked for {spec}, {spec}.{self.source_lang} and {spec}.{self.target_lang})")
            out[split] = resolve_files(spec, self._key(split))
        if not any(out.values()):
            raise ConfigError(f"data=local needs {self._key('train')}=<path or parallel-file prefix>")
        return out

    def read_file(self, paths: list[Path], key: str) -> list:
        if (len(paths) == 2 and self.kind == "translation"
                and [p.suffix for p in paths] == [f".{self.source_lang}", f".{self.target_lang}"]):
            return read_parallel(paths[0], paths[1], self.max_line_bytes)
        if len(paths) == 1 and self.kind == "translation" and paths[0].suffix == f".{self.source_lang}":
            pair = parallel_pair(paths[0], self.source_lang, self.target_lang)  # one side named: its sibling
            if pair:
                return read_parallel(*pair, self.max_line_bytes)
        rows = read_tables(paths, key, self.tsv_quoting, self.max_line_bytes)
        return rows_from_table(rows, ", ".join(map(str, paths)), self.kind, self.source_lang, self.target_lang,
                               self.source_column, self.target_column)

    def rows_from_hub(self, rows: list[dict], origin: str) -> list:
        return rows_from_table(rows, origin, self.kind, self.source_lang, self.target_lang, self.source_column,
                               self.target_column)

    def build_meta(self, raw: dict[str, SplitRows]) -> dict:
        skipped = {}
        for split, data in raw.items():
            kept, dropped = [], 0
            for r in data.rows:
                empty = [k for k in ("source", "target") if is_missing(r.get(k))]
                bad = [k for k in ("source", "target") if not is_missing(r.get(k)) and not isinstance(r[k], str)]
                if bad:
                    raise DataError(f"{where(data.origin, r)}: the {bad[0]} is {r[bad[0]]!r}; expected a text")
                if empty:
                    place = where(data.origin, r)
                    if PAIR in r:  # parallel files: the file that has the empty line
                        place = f"{r[PAIR][0] if empty[0] == 'source' else r[PAIR][1]}:{r['__line__']}"
                    if not self.skip_empty:
                        raise DataError(f"{place}: empty {' and '.join(empty)} (a pair needs both "
                                        "texts); fix the line or set data.skip_empty=true to skip such pairs")
                    dropped += 1
                    continue
                kept.append(r)
            if dropped:
                log.warning("%s: skipped %d of %d pairs with an empty source or target (data.skip_empty=true)",
                            data.origin, dropped, len(data.rows))
                skipped[split] = dropped
                data.rows = kept
            if not data.rows:
                raise DataError(f"{data.origin}: the {split} split is empty after filtering: all {dropped} pairs read "
                                "have an empty source or target, and data.skip_empty=true skipped them; fill them in "
                                "(or check data.source_column / data.target_column)")
        return {"skipped_empty": skipped, "truncated": {}}

    # -- encoding ------------------------------------------------------------------------------
    def _encode_sources(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:
        tok = self.tokenizer
        texts = [self.source_prefix + t for t in texts]
        ids = tok(list(texts), add_special_tokens=True)["input_ids"]
        long = [i for i, x in enumerate(ids) if len(x) > self.max_source_length]
        if long:
            cut = tok([texts[i] for i in long], truncation=True, max_length=self.max_source_length)["input_ids"]
            for i, x in zip(long, cut):
                ids[i] = x
        return ids, len(long)

    def _encode_targets(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:
        tok = self.tokenizer
        ids = tok(text_target=list(texts), add_special_tokens=True)["input_ids"]
        cls = tok.cls_token_id
        end = self.end_id
        out, n_long = [], 0
        for x in ids:
            if cls is not None and x and x[0] == cls:  # an encoder's tokenizer: the decoder starts at CLS itself
                x = x[1:]
            if not x or x[-1] != end:
                x = [*x, end]
            if len(x) > self.max_target_length:
                n_long += 1
                x = [*x[: self.max_target_length - 1], end]
            out.append(x)
        return out, n_long

    def encode_split(self, split: str, data: SplitRows, meta: dict) -> dict[str, Any]:
        sources = [r["source"] for r in data.rows]
        targets = [r["target"] for r in data.rows]
        src_ids, n_src = self._encode_sources(sources)
        progress.advance(len(sources) / 2)  # the datamodule's "tokenizing <split>" stage: sources are half the work
        tgt_ids, n_tgt = self._encode_targets(targets)
        progress.advance(len(targets) / 2)
        for n, what, key in ((n_src, "sources", "max_source_length"), (n_tgt, "targets", "max_target_length")):
            if n:
                log.warning("%s: %d of %d %s are longer than data.%s=%d tokens and were truncated "
                            "(raise data.%s to keep them whole)", data.origin, n, len(data.rows), what, key,
                            getattr(self, key), key)
        meta["truncated"][split] = {"sources": n_src, "targets": n_tgt, "of": len(data.rows)}
        return {"input_ids": Ragged.from_list(src_ids, dtype=np.int32), "labels": Ragged.from_list(tgt_ids, dtype=np.int32),
                "lengths": np.asarray([len(s) + len(t) for s, t in zip(src_ids, tgt_ids)], dtype=np.int64),
                "source_bytes": to_bytes(sources), "target_bytes": to_bytes(targets)}

    def make_dataset(self, split: str, arrays: Mapping[str, Any]) -> Seq2SeqDataset:
        return Seq2SeqDataset(arrays)

    def lengths(self, split: str) -> Sequence[int]:
        return self.datasets[split].arrays["lengths"]  # type: ignore[attr-defined]

    def collate(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        return collate_seq2seq(examples, self.tokenizer.pad_token_id, self.pad_to_multiple_of)

    def train_collate(self, examples: Sequence[dict]) -> dict[str, Any]:
        # training batches only: evaluation batches stay one pair per row (generation reads them row by row)
        if self.flatten:
            return collate_padding_free(examples, self.tokenizer.pad_token_id, self.start_id)
        return self.collate(examples)

    def use_padding_free(self, supported: bool, model_type: str, start_id: int) -> bool:
        """Called by the module once the model is built: ``supported`` says whether the model computes a row of several
        pairs as each pair alone (T5's relative position bias does; learned absolute positions do not)."""
        if self.padding_free is True and not supported:
            raise ConfigError(f"data.padding_free=true: the model ({model_type}) would not keep the pairs of a row "
                              "apart (padding-free seq2seq batches need the T5 family's relative positions); set "
                              "data.padding_free=false (or auto)")
        # auto leaves length-grouped batches padded: their padding is already small, and a shared row (up to twice
        # the batch's longest pair) costs up to twice the attention of one pair a row. Measured on SAMSum (tiny T5,
        # batch 32, 2 epochs, 2026-12-03): grouped and padded 30.1 CPU ms/pair and 1,913 MiB peak, grouped and
        # padding-free 34-35 ms/pair and 2,047-2,085 MiB; on random batches padding-free rows are the faster
        grouped = bool(self.group_by_length)
        self.flatten = (bool(supported) and self.padding_free is not False and self.pad_to_multiple_of in (None, 0, 1)
                        and not (self.padding_free == "auto" and grouped))
        self.start_id = int(start_id)
        why = ")"
        if self.padding_free == "auto" and not supported:
            why = f", {model_type} needs padded rows)"
        elif self.padding_free == "auto" and grouped:
            why = ", the batches are grouped by length: little padding to remove)"
        log.info("training batches: %s", "padding-free, each batch's pairs in shared rows (data.padding_free)"
                 if self.flatten else f"one pair per row, padded (data.padding_free={str(self.padding_free).lower()}"
                 + why)
        return self.flatten

    # -- prediction inputs -----------------------------------------------------------------------
    def input_column_names(self) -> dict[str, str | None]:
        return {"source": self.source_column}

    def read_inputs(self, path: str | Path) -> list[dict]:
        """One source a line (a text file: every line, blank ones too, so that hypotheses.txt stays line-aligned
        with it), or a table / parallel-file prefix with a source column (a reference column is kept)."""
        p = Path(str(path)).expanduser()
        pair = parallel_pair(p, self.source_lang, self.target_lang) if self.kind == "translation" else None
        if pair and not p.is_file():
            return [{"source": r["source"], "reference": r["target"]} for r in read_parallel(*pair)]
        check_exists(p, "predict.file")
        if p.suffix.lower() not in TABLE_FORMATS:
            lines = {n: t for n, t in read_lines(p, "predict.file")}
            total = max(lines) if lines else 0
            empty = [n for n in range(1, total + 1) if n not in lines]
            if empty:
                raise DataError(f"{path}:{empty[0]}: empty line ({len(empty)} in all); every line is one source "
                                "and gets one line of hypotheses.txt")
            return [{"source": lines[n]} for n in range(1, total + 1)]
        rows = read_tables([p], "predict.file", self.tsv_quoting)
        if not rows:
            raise DataError(f"{path}: no rows (predict.file)")
        pairs = rows_from_table(rows, str(path), self.kind, self.source_lang, self.target_lang, self.source_column,
                                self.target_column, need_target=False)
        out = []
        for r, raw in zip(pairs, rows):
            if is_missing(r["source"]):
                raise DataError(f"{where(str(path), raw)}: empty source")
            out.append({"source": r["source"], **({"reference": r["target"]} if isinstance(r["target"], str) else {})})
        return out

    def encode_inputs(self, records: Sequence[dict | str]) -> list[dict]:
        recs = [{"source": r} if isinstance(r, str) else dict(r) for r in records]
        for i, r in enumerate(recs, 1):
            if is_missing(r.get("source")) or not isinstance(r.get("source"), str):
                raise DataError(f"input {i}: empty or non-text source {r.get('source')!r}; expected a non-empty string")
        ids, n_long = self._encode_sources([r["source"] for r in recs])
        if n_long:
            log.warning("%d of %d inputs are longer than data.max_source_length=%d tokens and were truncated",
                        n_long, len(recs), self.max_source_length)
        return [{"input_ids": np.asarray(x, dtype=np.int64)} for x in ids]
