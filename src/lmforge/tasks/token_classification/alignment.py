"""Words to sub-tokens and back: labels, windows, and which window predicts each word.

* **Labels**: the first sub-token of each word carries the word's label, the others ``-100``
  (ignored by the loss); with ``label_all_subtokens`` every sub-token carries it, ``B-X`` turned into
  ``I-X`` after the first.
* **Windows**: a sentence whose sub-tokens do not fit in ``max_length`` (special tokens included) is
  cut into windows of ``max_length`` that overlap by ``stride`` sub-tokens; no word is dropped, however
  long. Every window is trained on; for evaluation each word is predicted exactly once, from the
  window where its first sub-token has the most context (the most sub-tokens on its shorter side).
* **Empty words**: a word the tokenizer turns into nothing (a control character, a zero-width space)
  is given the tokenizer's unknown token, so it still gets a prediction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmforge.utils import progress

IGNORE = -100


@dataclass
class Template:
    """The special tokens a tokenizer puts around one sequence (``[CLS] ... [SEP]``), and their type ids."""

    prefix: list[int]
    suffix: list[int]
    prefix_types: list[int]
    suffix_types: list[int]

    @property
    def size(self) -> int:
        return len(self.prefix) + len(self.suffix)

    @property
    def typed(self) -> bool:
        """Whether single sequences need token type ids other than 0 (XLNet's cls): then they are stored."""
        return any(self.prefix_types) or any(self.suffix_types)


def special_template(tokenizer: Any) -> Template:
    """The tokenizer's special tokens around a single sequence, found by tokenizing one word with and without them."""
    probe = ["x"]
    plain = tokenizer(probe, is_split_into_words=True, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, is_split_into_words=True, add_special_tokens=True, return_token_type_ids=True)
    ids = list(full["input_ids"])
    types = list(full.get("token_type_ids") or [0] * len(ids))
    for i in range(len(ids) - len(plain) + 1):
        if ids[i: i + len(plain)] == list(plain):
            j = i + len(plain)
            return Template(ids[:i], ids[j:], types[:i], types[j:])
    raise ValueError(f"cannot find the special-token template of {type(tokenizer).__name__}")


@dataclass
class Encoded:
    """Per window: ``input_ids``, ``labels`` (None without tags), ``word_index`` (the word a position predicts
    for evaluation, -1 elsewhere), ``sentence``; and counts for the report."""

    input_ids: list[np.ndarray] = field(default_factory=list)
    token_type_ids: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] | None = None
    word_index: list[np.ndarray] = field(default_factory=list)
    sentence: list[int] = field(default_factory=list)
    windowed_sentences: int = 0
    unknown_words: int = 0

    @property
    def windows(self) -> int:
        return len(self.input_ids)


def window_starts(n: int, length: int, stride: int) -> list[int]:
    """Starts of the windows of ``length`` sub-tokens, consecutive ones overlapping by ``stride``, over ``n``."""
    starts = [0]
    while starts[-1] + length < n:
        starts.append(starts[-1] + length - stride)
    return starts


def owners(first: Sequence[int], starts: Sequence[int], length: int, n: int) -> dict[int, int]:
    """Position of each word's first sub-token -> the window that predicts it: the one where it has the
    most context on its shorter side (ties: the earlier window)."""
    out: dict[int, int] = {}
    for p in first:
        best, best_ctx = -1, -1
        for w, s in enumerate(starts):
            e = min(s + length, n)
            if s <= p < e:
                ctx = min(p - s, e - 1 - p)
                if ctx > best_ctx:
                    best, best_ctx = w, ctx
        out[p] = best
    return out


def subtokens(tokenizer: Any, sentences: Sequence[Sequence[str]]) -> tuple[list[list[int]], list[list[int]], int]:
    """Sub-token ids and the word of each sub-token, per sentence, without special tokens; words that
    became nothing are given the unknown token. Returns (ids, word ids, number of such words)."""
    ids_out: list[list[int]] = []
    words_out: list[list[int]] = []
    unknown = 0
    chunk = 1024
    for start in range(0, len(sentences), chunk):
        part = [list(s) for s in sentences[start: start + chunk]]
        enc = tokenizer(part, is_split_into_words=True, add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False, verbose=False)
        progress.advance(len(part))  # the datamodule's "tokenizing <split>" stage, when one is open
        for i, words in enumerate(part):
            ids, wids = list(enc["input_ids"][i]), list(enc.word_ids(i))
            missing = set(range(len(words))) - set(wids)
            if missing:
                if tokenizer.unk_token is None:
                    raise ValueError(f"the words {[words[j] for j in sorted(missing)]} give no sub-token and the "
                                     "tokenizer has no unknown token to stand for them")
                unknown += len(missing)
                fixed = [tokenizer.unk_token if j in missing else w for j, w in enumerate(words)]
                one = tokenizer([fixed], is_split_into_words=True, add_special_tokens=False,
                                return_attention_mask=False, return_token_type_ids=False, verbose=False)
                ids, wids = list(one["input_ids"][0]), list(one.word_ids(0))
            ids_out.append(ids)
            words_out.append(wids)
    return ids_out, words_out, unknown


def encode_words(tokenizer: Any, sentences: Sequence[Sequence[str]], labels: Sequence[Sequence[int]] | None,
                 max_length: int, stride: int, label_all_subtokens: bool = False,
                 inside_of: Mapping[int, int] | None = None, template: Template | None = None) -> Encoded:
    """Windows of model inputs for pre-tokenized ``sentences`` (see the module docstring).

    ``labels``: a label id per word (None: no labels). ``inside_of``: label id of ``B-X`` -> id of ``I-X``,
    for ``label_all_subtokens``.
    """
    template = template or special_template(tokenizer)
    length = max_length - template.size
    if length < 1:
        raise ValueError(f"max_length={max_length} leaves no room for a sub-token beside {template.size} special tokens")
    if not 0 <= stride < length:
        raise ValueError(f"stride={stride} must be at least 0 and less than the window's {length} sub-tokens "
                         f"(max_length={max_length} minus {template.size} special tokens)")
    inside_of = inside_of or {}
    all_ids, all_wids, unknown = subtokens(tokenizer, sentences)
    out = Encoded(labels=[] if labels is not None else None, unknown_words=unknown)
    pre, post = [IGNORE] * len(template.prefix), [IGNORE] * len(template.suffix)
    pre_w, post_w = [-1] * len(template.prefix), [-1] * len(template.suffix)
    for i, (ids, wids) in enumerate(zip(all_ids, all_wids)):
        n = len(ids)
        first = [p for p in range(n) if p == 0 or wids[p] != wids[p - 1]]
        is_first = np.zeros(n, dtype=bool)
        is_first[first] = True
        starts = window_starts(n, length, stride)
        owner = owners(first, starts, length, n) if len(starts) > 1 else {p: 0 for p in first}
        if len(starts) > 1:
            out.windowed_sentences += 1
        if labels is not None:
            word_labels = labels[i]
            token_labels = np.full(n, IGNORE, dtype=np.int64)
            for p in range(n):
                lab = int(word_labels[wids[p]])
                if is_first[p]:
                    token_labels[p] = lab
                elif label_all_subtokens:
                    token_labels[p] = inside_of.get(lab, lab)
        for w, s in enumerate(starts):
            e = min(s + length, n)
            out.input_ids.append(np.asarray(template.prefix + ids[s:e] + template.suffix, dtype=np.int32))
            if template.typed:
                out.token_type_ids.append(np.asarray(template.prefix_types + [0] * (e - s) + template.suffix_types,
                                                     dtype=np.int8))
            word_index = [wids[p] if is_first[p] and owner[p] == w else -1 for p in range(s, e)]
            out.word_index.append(np.asarray(pre_w + word_index + post_w, dtype=np.int32))
            if labels is not None:
                out.labels.append(np.asarray(pre + token_labels[s:e].tolist() + post, dtype=np.int16))
            out.sentence.append(i)
    return out
