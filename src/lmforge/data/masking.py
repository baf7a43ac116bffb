"""Dynamic masking for masked-LM pretraining (BERT's 80/10/10 rule, optional whole-word masking).

Each batch gets fresh masks: about ``mlm_probability`` of the maskable tokens (not special, not
padding) are selected; a selected token becomes ``mask_id`` with probability 0.8, a random
non-special token with probability 0.1, and stays unchanged with probability 0.1. ``labels`` hold
the original id at selected positions and -100 elsewhere. Every sequence with a maskable token gets
at least one selected token, so a batch never has an undefined (all -100) loss.

``seed=None`` (training) draws from ``generator`` or torch's global RNG, which DataLoader seeds per
worker. ``seed=<int>`` (validation) draws each sequence's mask from a generator seeded by the seed
and a hash of the sequence's token ids, so a sequence gets the same mask every time, whatever batch
it is in: validation loss stays comparable across steps and runs.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

IGNORE_INDEX = -100
MASK_FRACTION, RANDOM_FRACTION = 0.8, 0.1  # of the selected tokens; the remaining 0.1 stay unchanged

WordStarts = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


def word_start_table(vocab: Any, scheme: str = "auto") -> torch.Tensor:
    """Bool lookup table ``table[token_id]``: does this token start a word?

    ``vocab`` is a tokenizer (anything with ``get_vocab()``), a ``{token: id}`` mapping or an
    id-ordered list of tokens. Schemes: ``"wordpiece"`` (a ``##`` prefix continues a word),
    ``"bpe"`` (byte-level BPE: a ``Ġ`` prefix starts a word), ``"sentencepiece"`` (a ``▁`` prefix
    starts a word); ``"auto"`` picks one from the vocabulary. With BPE/SentencePiece a word's trailing
    punctuation counts as part of it, and the first word of a text (no prefix) is joined to the word
    before it unless a special token or padding separates them.
    """
    if hasattr(vocab, "get_vocab"):
        vocab = vocab.get_vocab()
    items = list(vocab.items()) if isinstance(vocab, Mapping) else [(t, i) for i, t in enumerate(vocab)]
    if scheme == "auto":
        tokens = [t for t, _ in items]
        prefixes = (("wordpiece", "##"), ("bpe", "Ġ"), ("sentencepiece", "▁"))
        scheme = next((s for s, p in prefixes if any(t.startswith(p) for t in tokens)), None)
        if scheme is None:
            raise ValueError("cannot tell word boundaries: no '##', 'Ġ' or '▁' tokens in the vocabulary; set scheme")
    if scheme == "wordpiece":
        starts = lambda t: not t.startswith("##")  # noqa: E731
    elif scheme in ("bpe", "sentencepiece"):
        prefix = "Ġ" if scheme == "bpe" else "▁"
        starts = lambda t: t.startswith(prefix)  # noqa: E731
    else:
        raise ValueError(f"scheme={scheme!r} is not one of 'auto', 'wordpiece', 'bpe', 'sentencepiece'")
    table = torch.zeros(max(i for _, i in items) + 1, dtype=torch.bool)
    for token, i in items:
        table[i] = starts(token)
    return table


def word_start_index(input_ids: torch.Tensor, word_starts: WordStarts, maskable: torch.Tensor) -> torch.Tensor:
    """For each position, the index of the first token of its word (words never cross unmaskable tokens)."""
    starts = word_starts[input_ids] if isinstance(word_starts, torch.Tensor) else word_starts(input_ids)
    prev_maskable = torch.nn.functional.pad(maskable[:, :-1], (1, 0), value=False)
    starts = starts.bool() | ~prev_maskable | ~maskable
    positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
    return torch.where(starts, positions, 0).cummax(dim=1).values


class MaskingCollator:
    """Collate ``[{"input_ids": ..., ["attention_mask": ...]}, ...]`` into a masked-LM batch.

    Pads to the longest sequence (rounded up to ``pad_to_multiple_of``) with ``pad_id``; returns
    LongTensors ``input_ids``, ``attention_mask``, ``labels``. ``vocab_size`` should be the number of
    real tokens (``len(tokenizer)``), not a model's padded embedding size, since random replacements
    are drawn from ``[0, vocab_size)`` minus the special ids. ``whole_word=True`` needs
    ``word_start_mask``: a table from :func:`word_start_table` or a callable ``ids -> bool tensor``.
    """

    def __init__(
        self,
        mask_id: int,
        vocab_size: int,
        special_ids: Iterable[int],
        pad_id: int | None = None,
        mlm_probability: float = 0.15,
        whole_word: bool = False,
        word_start_mask: WordStarts | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability={mlm_probability} must be in (0, 1)")
        if whole_word and word_start_mask is None:
            raise ValueError("whole_word=True needs word_start_mask (see word_start_table)")
        special = {int(i) for i in special_ids} | {int(mask_id)} | ({int(pad_id)} if pad_id is not None else set())
        self.special_ids = torch.tensor(sorted(special), dtype=torch.long)
        self.replacements = torch.tensor([i for i in range(vocab_size) if i not in special], dtype=torch.long)
        if len(self.replacements) == 0:
            raise ValueError(f"vocab_size={vocab_size} leaves no non-special token to use as a random replacement")
        self.mask_id, self.vocab_size, self.pad_id = int(mask_id), vocab_size, pad_id
        self.mlm_probability = mlm_probability
        self.whole_word, self.word_start_mask = whole_word, word_start_mask
        self.seed, self.generator = seed, generator
        self.pad_to_multiple_of = pad_to_multiple_of

    def _pad(self, examples: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        seqs = [torch.as_tensor(e["input_ids"], dtype=torch.long).reshape(-1) for e in examples]
        lengths = [len(s) for s in seqs]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        if self.pad_id is None and any(n != width for n in lengths):
            raise ValueError("sequences of different lengths need padding, but the MaskingCollator has no pad_id")
        input_ids = torch.full((len(seqs), width), self.pad_id if self.pad_id is not None else 0, dtype=torch.long)
        attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, (seq, example) in enumerate(zip(seqs, examples)):
            input_ids[row, : len(seq)] = seq
            given = example.get("attention_mask")
            attention_mask[row, : len(seq)] = 1 if given is None else torch.as_tensor(given).long().reshape(-1)
        return input_ids, attention_mask, lengths

    def _draw(self, input_ids: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Uniforms for selection and for the 80/10/10 action, and random replacement indices."""
        shape, n_rep = input_ids.shape, len(self.replacements)
        if self.seed is None:
            g = self.generator
            u_select, u_action = torch.rand(shape, generator=g), torch.rand(shape, generator=g)
            return u_select, u_action, torch.randint(n_rep, shape, generator=g)
        u_select, u_action = torch.ones(shape), torch.ones(shape)
        rand_idx = torch.zeros(shape, dtype=torch.long)
        for row, n in enumerate(lengths):
            digest = zlib.crc32(input_ids[row, :n].numpy().astype(np.int64).tobytes())
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + digest) % (2**63))
            u_select[row, :n], u_action[row, :n] = torch.rand(n, generator=g), torch.rand(n, generator=g)
            rand_idx[row, :n] = torch.randint(n_rep, (n,), generator=g)
        return u_select, u_action, rand_idx

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask, lengths = self._pad(examples)
        maskable = attention_mask.bool() & ~torch.isin(input_ids, self.special_ids)
        u_select, u_action, rand_idx = self._draw(input_ids, lengths)

        if self.whole_word:  # a word is selected when the draw at its first token is
            word_of = word_start_index(input_ids, self.word_start_mask, maskable)
            selected = (u_select.gather(1, word_of) < self.mlm_probability) & maskable
        else:
            selected = (u_select < self.mlm_probability) & maskable
        # a sequence with nothing selected gets its most-likely token (or that token's word)
        empty = ~selected.any(dim=1) & maskable.any(dim=1)
        if empty.any():
            pick = torch.where(maskable, u_select, 2.0).argmin(dim=1, keepdim=True)
            if self.whole_word:
                forced = (word_of == word_of.gather(1, pick)) & maskable
            else:
                forced = torch.zeros_like(selected).scatter_(1, pick, True)
            selected = torch.where(empty[:, None], forced, selected)

        labels = torch.where(selected, input_ids, IGNORE_INDEX)
        to_mask = selected & (u_action < MASK_FRACTION)
        to_random = selected & (u_action >= MASK_FRACTION) & (u_action < MASK_FRACTION + RANDOM_FRACTION)
        masked_ids = input_ids.clone()
        masked_ids[to_mask] = self.mask_id
        masked_ids[to_random] = self.replacements[rand_idx[to_random]]
        return {"input_ids": masked_ids, "attention_mask": attention_mask, "labels": labels}
