"""Instruction-tuning data: conversations -> token ids with labels on the assistant's answers only.

The rest of the pipeline (sources, carving a validation split, the token cache, the resumable sampler, tokenizer
training) is :class:`lmforge.data.datamodule.LMForgeDataModule`'s. What this task adds:

1. reading (:mod:`.formats`): chat ``messages``, ShareGPT ``conversations``, Alpaca and prompt/completion rows
   from jsonl/json (and csv/tsv/parquet for the flat formats), one format per file, detected or set with
   ``data.format``; bad rows are errors naming the file and line;
2. the tokenizer: the model's own, or a byte-level BPE trained on the message texts (from-scratch models);
   a tokenizer without a chat template gets lmforge's (:mod:`.template`), saved into the export;
3. encoding: each conversation rendered with the chat template and tokenized once; ``labels`` are the ids of the
   tokens of every assistant turn (``data.assistant_only_loss=false``: of every token), -100 elsewhere;
   a conversation longer than ``data.max_length`` tokens whose assistant part is cut is counted and reported,
   and dropped (``data.truncation=drop``) or cut (``truncate``);
4. packing (``data.packing=true``): whole conversations put one after another into rows of at most
   ``data.max_length`` tokens, with ``position_ids`` restarting at 0 for each; batches then carry no attention
   mask, and the model (transformers' packed-sequence detection from the position ids) lets each token attend
   only to the earlier tokens of its own conversation: the loss is the loss of the same conversations unpacked;
5. padding-free batches (``data.padding_free``, ``auto`` by default): each batch's conversations are put into as few
   rows of at most ``data.max_length`` tokens as fit them (first fit, longest first), with restarting
   ``position_ids`` as in packing; the batches hold the same conversations as padded ones, in the same order of
   batches, so training follows the same course, without computing on padding. ``auto`` turns it on when the
   model's attention keeps packed sequences apart (checked on the built model, see
   :func:`lmforge.tasks.instruction_tuning.module.keeps_packed_apart`), ``true`` requires it;
6. batches: right padding, ``labels`` padded with -100, an attention mask (one conversation per row) or position
   ids (packed or padding-free rows, the padding being a sequence of its own), and then the plain counts
   ``num_sequences`` (conversations) and ``num_tokens`` (tokens that are not padding).

Prediction inputs are user messages (a text), conversations (``{"messages": [...]}``, or any of the formats
above, answered after their last user turn), read from ``predict.texts`` or ``predict.file``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.data.cache import Ragged
from lmforge.data.datamodule import ArrayDataset, LMForgeDataModule
from lmforge.data.sources import TABLE_FORMATS, SplitRows, check_exists, read_lines, read_tables, where
from lmforge.tasks.instruction_tuning.formats import (check_conversation, check_format, prompt_and_reference,
                                                      read_conversations, to_messages, detect, file_format)
from lmforge.tasks.instruction_tuning.template import (IGNORE, encode_conversation, ensure_chat_template,
                                                       prompt_text, stop_token_ids, template_id)
from lmforge.utils import progress
from lmforge.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TRUNCATION = ("drop", "truncate")
PADDING_FREE = ("auto", True, False)
FIELDS = ("input_ids", "labels", "position_ids")
VAL_PROMPTS = 16  # validation conversations kept (prompt + reference) for the generations printed at validation


def pack(examples: Sequence[tuple[list[int], list[int]]], length: int) -> list[tuple[list[int], list[int], list[int]]]:
    """Whole examples one after another into rows of at most ``length`` tokens (in order, a new row when the next
    one does not fit); ``(input_ids, labels, position_ids)`` per row, positions restarting at 0 per example."""
    rows: list[tuple[list[int], list[int], list[int]]] = []
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    for x, y in examples:
        if ids and len(ids) + len(x) > length:
            rows.append((ids, labels, pos))
            ids, labels, pos = [], [], []
        ids, labels, pos = ids + list(x), labels + list(y), pos + list(range(len(x)))
    if ids:
        rows.append((ids, labels, pos))
    return rows


def fill_rows(examples: Sequence[Mapping[str, Any]], capacity: int) -> list[dict[str, list[int]]]:
    """A batch's examples in as few rows of at most ``capacity`` tokens as first fit finds (longest first; an example
    longer than ``capacity`` gets a row of its own), ``position_ids`` restarting at 0 for each example."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i]["input_ids"])
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(capacity - n)
    out = []
    for members in rows:
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for i in sorted(members):
            e = examples[i]
            ids += list(e["input_ids"])
            labels += list(e["labels"]) if "labels" in e else [IGNORE] * len(e["input_ids"])
            pos += range(len(e["input_ids"]))
        out.append({"input_ids": ids, "labels": labels, "position_ids": pos})
    return out


def collate_chat(examples: Sequence[Mapping[str, Any]], pad_id: int, padding_free: bool = False,
                 capacity: int = 0) -> dict[str, Any]:
    """Right padding: ``input_ids`` with ``pad_id``, ``labels`` with -100; an ``attention_mask`` for rows of one
    conversation, or ``position_ids`` (the padding numbered 0, 1, ... as a sequence of its own) for packed rows
    (examples with ``position_ids``) and, with ``padding_free``, for the batch's conversations put into rows of at
    most ``capacity`` tokens (:func:`fill_rows`). Packed and padding-free batches also hold ``num_sequences`` and
    ``num_tokens`` (plain ints): their rows are not conversations, and they carry no mask to count tokens from."""
    if padding_free and "position_ids" not in examples[0]:
        examples = fill_rows(examples, capacity)
    width = max(len(e["input_ids"]) for e in examples)
    n = len(examples)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    labels = np.full((n, width), IGNORE, dtype=np.int64)
    packed = "position_ids" in examples[0]
    extra = np.zeros((n, width), dtype=np.int64)
    for i, e in enumerate(examples):
        k = len(e["input_ids"])
        ids[i, :k] = e["input_ids"]
        if "labels" in e:
            labels[i, :k] = e["labels"]
        if packed:
            extra[i, :k] = e["position_ids"]
            extra[i, k:] = np.arange(width - k)
        else:
            extra[i, :k] = 1
    batch: dict[str, Any] = {"input_ids": torch.from_numpy(ids)}
    batch["position_ids" if packed else "attention_mask"] = torch.from_numpy(extra)
    if "labels" in examples[0]:
        batch["labels"] = torch.from_numpy(labels)
    if packed:
        batch["num_sequences"] = int(sum(np.count_nonzero(np.asarray(e["position_ids"]) == 0) for e in examples))
        batch["num_tokens"] = int(sum(len(e["input_ids"]) for e in examples))
    return batch


class InstructionTuningDataModule(LMForgeDataModule):
    namespace = "instruction_tuning"
    progress_unit = "conversations"
    tokenizer_kind = "bpe"  # from-scratch decoders: a byte-level BPE trained on the message texts
    input_fields = ("text",)  # a user message; records with "messages" are whole conversations
    file_suffixes = tuple(TABLE_FORMATS)

    def __init__(self, train_file: Any = None, validation_file: Any = None, test_file: Any = None,
                 format: str | None = "auto", alternation: bool = True, assistant_only_loss: bool = True,
                 max_length: int = 512, truncation: str = "drop", packing: bool = False, padding_free: Any = "auto",
                 sample: str | None = None,
                 batch_size: int = 16, eval_batch_size: int | None = None, model: Mapping | None = None,
                 tsv_quoting: str | None = "none",
                 # text classification's keys, shared through data/_common.yaml (data=local, data=hub); unused here
                 text_column: Any = None, text_pair_column: Any = None, label_column: Any = None,
                 label_names: Any = None, problem_type: Any = None, pad_to_multiple_of: Any = None, **common: Any):
        self.format = check_format(format)
        if truncation not in TRUNCATION:
            raise ConfigError(f"data.truncation={truncation}: expected drop or truncate")
        if not isinstance(max_length, int) or max_length < 8:
            raise ConfigError(f"data.max_length={max_length}: expected a token count of at least 8")
        self.alternation, self.assistant_only_loss = bool(alternation), bool(assistant_only_loss)
        self.max_length, self.truncation, self.packing = int(max_length), truncation, bool(packing)
        if padding_free not in PADDING_FREE:
            raise ConfigError(f"data.padding_free={padding_free}: expected auto, true or false")
        self.padding_free = "auto" if padding_free == "auto" else bool(padding_free)
        # whether batches are collated padding-free: decided by use_padding_free once the model is built (until
        # then, and where no module tells, batches are padded, which every model computes correctly)
        self.flatten = False
        self.tsv_quoting = tsv_quoting or "none"
        super().__init__(files={"train": train_file, "validation": validation_file, "test": test_file}, sample=sample,
                         batch_size=batch_size, eval_batch_size=eval_batch_size, model=model, **common)
        if self.context is not None and self.max_length > self.context:
            raise ConfigError(f"data.max_length={self.max_length} is longer than the model's context "
                              f"({self.context} positions); use data.max_length<={self.context}")

    # -- tokenizer, settings -------------------------------------------------------------------
    def check_tokenizer(self, tokenizer: Any) -> Any:
        return ensure_chat_template(tokenizer)

    def text_settings(self) -> dict:
        return {"format": self.format, "alternation": self.alternation}

    def settings(self) -> dict:
        return {**self.text_settings(), "max_length": self.max_length, "truncation": self.truncation,
                "packing": self.packing, "assistant_only": self.assistant_only_loss,
                # a trained tokenizer (not loaded yet when the key is made) gets lmforge's template
                "template": "lmforge" if self.train_tokenizer else template_id(self._tokenizer), "encoding": 1}

    def tokenizer_texts(self, items: Any) -> Any:
        for r in items:
            for m in r["messages"]:
                yield m["content"]

    def model_facts(self) -> dict:
        tok = self.tokenizer
        return {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
                "bos_token_id": tok.bos_token_id, "stop_token_ids": stop_token_ids(tok)}

    # -- reading -------------------------------------------------------------------------------
    def read_file(self, paths: list[Path], key: str) -> list:
        rows = read_tables(paths, key, self.tsv_quoting, self.max_line_bytes)
        return read_conversations(rows, ", ".join(map(str, paths)), self.format, self.alternation)

    def rows_from_hub(self, rows: list[dict], origin: str) -> list:
        return read_conversations(rows, origin, self.format, self.alternation)

    def build_meta(self, raw: dict[str, SplitRows]) -> dict:
        val = raw.get("validation") or raw.get("test")
        prompts = []
        for r in (val.rows[:VAL_PROMPTS] if val else []):
            prompt, reference = prompt_and_reference(r["messages"])
            prompts.append({"messages": prompt, "reference": reference or ""})
        return {"cut": {}, "dropped": {}, "val_prompts": prompts}

    # -- encoding ------------------------------------------------------------------------------
    def encode_examples(self, rows: Sequence[Mapping[str, Any]], origin: str = "") -> tuple[list, dict]:
        """``(input_ids, labels)`` of each conversation that is kept, and the counts: ``cut`` (assistant tokens past
        data.max_length), ``dropped`` (removed: cut with truncation=drop, or no assistant token left)."""
        tok = self.tokenizer
        out, cut, dropped = [], 0, 0
        for r in rows:
            ids, labels = encode_conversation(tok, r["messages"], self.assistant_only_loss)
            progress.advance()  # the open progress stage (the datamodule's "tokenizing <split>"), if any
            if len(ids) > self.max_length:
                lost = any(y != IGNORE for y in labels[self.max_length:])
                cut += lost
                if lost and self.truncation == "drop":
                    dropped += 1
                    continue
                ids, labels = ids[: self.max_length], labels[: self.max_length]
            if all(y == IGNORE for y in labels):
                dropped += 1
                continue
            out.append((ids, labels))
        return out, {"cut": cut, "dropped": dropped, "of": len(rows)}

    def encode_split(self, split: str, data: SplitRows, meta: dict) -> dict[str, Any]:
        examples, counts = self.encode_examples(data.rows, data.origin)
        if counts["cut"]:
            log.warning("%s: %d of %d conversations are longer than data.max_length=%d tokens with part of an "
                        "assistant answer beyond it: %s (data.truncation=%s; raise data.max_length to keep them whole)",
                        data.origin, counts["cut"], counts["of"], self.max_length,
                        "dropped" if self.truncation == "drop" else "cut short", self.truncation)
        meta["cut"][split], meta["dropped"][split] = counts["cut"], counts["dropped"]
        if not examples:
            why = [f"{counts['cut']} longer than data.max_length={self.max_length} tokens (data.truncation="
                   f"{self.truncation})"] if counts["cut"] and self.truncation == "drop" else []
            rest = counts["dropped"] - (counts["cut"] if self.truncation == "drop" else 0)
            if rest:
                why.append(f"{rest} without an assistant token within data.max_length={self.max_length}")
            raise DataError(f"{data.origin}: the {split} split is empty after filtering: all {counts['of']} "
                            f"conversations read were dropped ({'; '.join(why)}); raise data.max_length, or set "
                            "data.truncation=truncate to keep them cut short")
        arrays: dict[str, Any]
        if self.packing:
            rows = pack(examples, self.max_length)
            arrays = {"input_ids": Ragged.from_list([r[0] for r in rows], dtype=np.int32),
                      "labels": Ragged.from_list([r[1] for r in rows], dtype=np.int32),
                      "position_ids": Ragged.from_list([r[2] for r in rows], dtype=np.int32)}
            log.info("%s split: %d conversations packed into %d rows of at most %d tokens", split, len(examples),
                     len(rows), self.max_length)
        else:
            arrays = {"input_ids": Ragged.from_list([e[0] for e in examples], dtype=np.int32),
                      "labels": Ragged.from_list([e[1] for e in examples], dtype=np.int32)}
        arrays["lengths"] = np.asarray([len(x) for x in arrays["input_ids"]], dtype=np.int64)
        return arrays

    def make_dataset(self, split: str, arrays: Mapping[str, Any]) -> ArrayDataset:
        return ArrayDataset(arrays, list(FIELDS))

    def lengths(self, split: str) -> Sequence[int]:
        return self.datasets[split].arrays["lengths"]  # type: ignore[attr-defined]

    def use_padding_free(self, supported: bool | None, model_type: str) -> bool:
        """Called by the module once the model is built: ``supported`` says whether its attention keeps packed
        sequences apart (None: not known). Packing and ``padding_free=true`` need it; ``auto`` follows it."""
        wanted = [k for k, on in (("data.packing=true", self.packing), ("data.padding_free=true",
                                                                        self.padding_free is True)) if on]
        if wanted and supported is False:
            raise ConfigError(f"{' and '.join(wanted)}: the model ({model_type}) does not keep the sequences of a row "
                              "apart (its attention does not use transformers' packed-sequence masks), so "
                              "conversations would attend to each other; set data.packing=false "
                              "data.padding_free=false (padded batches)")
        self.flatten = not self.packing and (self.padding_free is True or (self.padding_free == "auto"
                                                                          and bool(supported)))
        log.info("batches: %s", "packed rows (data.packing=true)" if self.packing else
                 f"padding-free, each batch's conversations in rows of at most {self.max_length} tokens "
                 "(data.padding_free)" if self.flatten else "one conversation per row, padded "
                 f"(data.padding_free={str(self.padding_free).lower()}"
                 + (", the model does not keep packed sequences apart)" if self.padding_free == "auto" else ")"))
        return self.flatten

    def collate(self, examples: Sequence[dict]) -> dict[str, Any]:
        return collate_chat(examples, self.tokenizer.pad_token_id, self.flatten, self.max_length)

    def val_prompts(self) -> list[dict]:
        return list((self.meta or {}).get("val_prompts") or [])

    # -- prediction inputs -----------------------------------------------------------------------
    def conversation(self, record: Mapping[str, Any] | str, place: str) -> tuple[list[dict], str | None]:
        """A prediction input as ``(the conversation to answer, the reference answer if it had one)``: a text is one
        user message; a record in any of the formats is read as in training, answered after its last user turn."""
        if isinstance(record, str):
            record = {"text": record}
        record = dict(record)
        if "text" in record and detect(record) is None:
            text = record["text"]
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{place}: empty or non-text message {text!r}; expected a non-empty string")
            return [{"role": "user", "content": text}], None
        fmt = file_format([record], place, self.format)
        messages = to_messages(record, fmt, place)
        prompt, reference = prompt_and_reference(messages)
        check_conversation(prompt, place, self.alternation, need_assistant=False)
        if not prompt or prompt[-1]["role"] != "user":
            raise DataError(f"{place}: the conversation does not end with a user turn to answer")
        return prompt, reference

    def read_inputs(self, path: str | Path) -> list[dict]:
        """``predict.file``: a jsonl/json file of conversations (any training format; a final assistant turn is kept
        as the reference), or a text file with one user message a line."""
        p = check_exists(path, "predict.file")
        if p.suffix.lower() not in TABLE_FORMATS:
            return [{"text": t} for _, t in read_lines(p, "predict.file")]
        rows = read_tables([p], "predict.file", self.tsv_quoting)
        if not rows:
            raise DataError(f"{path}: no rows (predict.file)")
        out = []
        for r in rows:
            prompt, reference = self.conversation({k: v for k, v in r.items()}, where(str(path), r))
            out.append({"messages": prompt, **({"reference": reference} if reference is not None else {})})
        return out

    def prompt_texts(self, records: Sequence[Mapping[str, Any] | str]) -> list[str]:
        """The rendered prompt of each prediction input (chat template + the assistant's opening)."""
        return [prompt_text(self.tokenizer, self.conversation(r, f"input {i}")[0]) for i, r in enumerate(records, 1)]

    def encode_inputs(self, records: Sequence[dict | str]) -> list[dict]:
        tok = self.tokenizer
        return [{"input_ids": np.asarray(tok(t, add_special_tokens=False)["input_ids"], dtype=np.int64)}
                for t in self.prompt_texts(records)]
