"""Question + passage -> model windows, with the map from tokens back to passage characters.

The question comes first, the passage second; only the passage is truncated. A passage longer than
one window is cut into overlapping windows: each holds ``max_length`` tokens at most, and consecutive
windows share ``doc_stride`` passage tokens, so an answer near a cut is whole in at least one of them.

For every window:

* ``cls_index``: where the CLS token is (the null answer's position);
* ``char_start`` / ``char_end``: per token, the passage characters ``[start, end)`` it covers; -1 for
  the question, the special tokens and padding (tokens that can never be part of an answer);
* ``start_positions`` / ``end_positions`` (training and evaluation): the tokens where the answer's
  character span begins and ends, found through those offsets; a window that does not hold the whole
  answer, and an unanswerable question (SQuAD v2.0), point both at the CLS token.

Used alike by the DataModule (training, evaluation, prediction) and by the predictor over an export
folder, so both see the same windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmforge.utils import progress
from lmforge.utils.errors import ConfigError, DataError

#: the HF config attribute that carries the window and post-processing settings into an export
SETTINGS_KEY = "lmforge_question_answering"
#: per-window fields of an evaluation/prediction batch
EVAL_FIELDS = ("input_ids", "token_type_ids", "char_start", "char_end", "cls_index", "start_positions",
               "end_positions")


def check_window_settings(max_length: int, doc_stride: int) -> None:
    if max_length < 8:
        raise ConfigError(f"data.max_length={max_length}: a window needs room for the question and some passage "
                          "(384 is the usual value)")
    if not 0 <= doc_stride < max_length:
        raise ConfigError(f"data.doc_stride={doc_stride}: the overlap of consecutive windows must be at least 0 "
                          f"and below data.max_length={max_length} (128 with 384 is the usual pair)")


@dataclass
class Windows:
    """The windows of a list of (question, passage) examples: per-window lists, and per example which
    windows are its own and whether its answer is whole in at least one of them."""

    input_ids: list[np.ndarray] = field(default_factory=list)
    token_type_ids: list[np.ndarray] | None = None
    char_start: list[np.ndarray] = field(default_factory=list)
    char_end: list[np.ndarray] = field(default_factory=list)
    example_index: list[int] = field(default_factory=list)
    cls_index: list[int] = field(default_factory=list)
    start_positions: list[int] = field(default_factory=list)
    end_positions: list[int] = field(default_factory=list)
    #: per example: its answer lies whole inside at least one window (True where there is no answer)
    answer_kept: list[bool] = field(default_factory=list)

    def arrays(self, labelled: bool) -> dict[str, Any]:
        """The per-window arrays (the token cache stores them)."""
        out: dict[str, Any] = {"input_ids": self.input_ids}
        if self.token_type_ids is not None:
            out["token_type_ids"] = self.token_type_ids
        out["char_start"] = self.char_start
        out["char_end"] = self.char_end
        out["example_index"] = np.asarray(self.example_index, dtype=np.int64)
        out["cls_index"] = np.asarray(self.cls_index, dtype=np.int64)
        if labelled:
            out["start_positions"] = np.asarray(self.start_positions, dtype=np.int64)
            out["end_positions"] = np.asarray(self.end_positions, dtype=np.int64)
        return out


def _check_room(tokenizer: Any, questions: Sequence[str], max_length: int, doc_stride: int,
                places: Sequence[str] | None) -> None:
    """Every question must leave more than ``doc_stride`` passage tokens in a window (the tokenizer
    panics otherwise): a DataError naming the question."""
    special = tokenizer.num_special_tokens_to_add(pair=True)
    lengths = [len(x) for x in tokenizer(list(questions), add_special_tokens=False)["input_ids"]]
    for i, n in enumerate(lengths):
        room = max_length - n - special
        if room <= doc_stride or room < 1:
            where = places[i] if places else f"question {i + 1}"
            raise DataError(f"{where}: the question is {n} tokens long; with data.max_length={max_length} it leaves "
                            f"{room} tokens of passage per window, which must be more than data.doc_stride={doc_stride}"
                            ": shorten the question, raise data.max_length or lower data.doc_stride")


def encode_windows(tokenizer: Any, questions: Sequence[str], contexts: Sequence[str], max_length: int,
                   doc_stride: int, answers: Sequence[tuple[int, int] | None] | None = None,
                   places: Sequence[str] | None = None, chunk: int = 1000) -> Windows:
    """The windows of ``(questions[i], contexts[i])``; ``answers[i]`` is the answer's character span
    ``(start, end)`` (end exclusive) or None (no answer: every window points at CLS). Without
    ``answers`` no positions are computed (prediction)."""
    check_window_settings(max_length, doc_stride)
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"question answering maps answers through character offsets, which only fast tokenizers "
                          f"give; {type(tokenizer).__name__} is not one (use a tokenizer with a tokenizer.json)")
    _check_room(tokenizer, questions, max_length, doc_stride, places)
    out = Windows()
    cls_id = tokenizer.cls_token_id
    for base in range(0, len(questions), chunk):
        qs, cs = list(questions[base: base + chunk]), list(contexts[base: base + chunk])
        enc = tokenizer(qs, cs, truncation="only_second", max_length=max_length, stride=doc_stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
        kept = [answers is None or answers[base + i] is None for i in range(len(qs))]
        progress.advance(len(qs))  # the datamodule's "tokenizing <split>" stage, when one is open
        for f, ids in enumerate(enc["input_ids"]):
            local = int(enc["overflow_to_sample_mapping"][f])
            ex = base + local
            seq = enc.sequence_ids(f)
            offsets = enc["offset_mapping"][f]
            is_ctx = np.fromiter((s == 1 for s in seq), dtype=bool, count=len(seq))
            offs = np.asarray(offsets, dtype=np.int32).reshape(-1, 2)
            starts = np.where(is_ctx, offs[:, 0], -1).astype(np.int32)
            ends = np.where(is_ctx, offs[:, 1], -1).astype(np.int32)
            out.input_ids.append(np.asarray(ids, dtype=np.int32))
            if "token_type_ids" in enc:
                if out.token_type_ids is None:
                    out.token_type_ids = []
                out.token_type_ids.append(np.asarray(enc["token_type_ids"][f], dtype=np.int8))
            out.char_start.append(starts)
            out.char_end.append(ends)
            out.example_index.append(ex)
            cls = ids.index(cls_id) if cls_id in ids else 0
            out.cls_index.append(cls)
            if answers is not None:
                s_tok = e_tok = cls
                span = answers[ex]
                ctx = np.flatnonzero(is_ctx)
                if span is not None and len(ctx):
                    a_start, a_end = span
                    if starts[ctx[0]] <= a_start and ends[ctx[-1]] >= a_end:
                        # the last passage token starting at or before the answer, the first ending at or after it
                        s_tok = int(ctx[np.searchsorted(starts[ctx], a_start, side="right") - 1])
                        e_tok = int(ctx[min(np.searchsorted(ends[ctx], a_end, side="left"), len(ctx) - 1)])
                        if e_tok < s_tok:
                            s_tok = e_tok = cls
                        else:
                            kept[local] = True
                out.start_positions.append(s_tok)
                out.end_positions.append(e_tok)
        out.answer_kept.extend(kept)
    return out


def question_items(tokenizer: Any, questions: Sequence[str], contexts: Sequence[str], max_length: int,
                   doc_stride: int) -> list[dict]:
    """Unlabelled questions -> question items (each with all its windows), as :func:`collate_questions` takes them."""
    windows = encode_windows(tokenizer, questions, contexts, max_length, doc_stride)
    items = [{"index": i, "windows": [], "example": {"id": None, "context": c, "answers": None, "v2": False}}
             for i, c in enumerate(contexts)]
    arrays = windows.arrays(labelled=False)
    for w, ex in enumerate(windows.example_index):
        items[ex]["windows"].append({f: arrays[f][w] for f in EVAL_FIELDS if f in arrays})
    return items


def collate_questions(items: Sequence[dict], pad_token_id: int, pad_to_multiple_of: int | None = None) -> dict:
    """Whole questions -> one batch of all their windows (padded; offsets padded with -1), with
    ``window_example`` (the question of each window, an index into ``items``), ``example_index`` (each
    question's index in its split) and ``examples`` (id, passage, gold answers: not tensors)."""
    import torch

    from lmforge.data.collate import PadCollator

    windows, owner = [], []
    for i, item in enumerate(items):
        windows.extend(item["windows"])
        owner.extend([i] * len(item["windows"]))
    pad = PadCollator({"input_ids": pad_token_id, "token_type_ids": 0, "char_start": -1, "char_end": -1},
                      pad_to_multiple_of)
    batch = pad(windows)
    batch["window_example"] = torch.as_tensor(owner, dtype=torch.long)
    batch["example_index"] = torch.as_tensor([item["index"] for item in items], dtype=torch.long)
    batch["examples"] = [item["example"] for item in items]
    return batch
