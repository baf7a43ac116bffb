"""Masked-LM data: text documents packed into blocks, and BERT's masking.

The path of a run's data (the steps shared with causal LM are in
:class:`lmforge.data.packing.PackedTextDataModule`, the rest of the pipeline in
:class:`lmforge.data.datamodule.LMForgeDataModule`):

1. documents: the embedded tales, text files or a hub split, a validation split carved by
   ``data.split_seed`` when none is given;
2. the tokenizer: the model's own (it needs a mask token), or a WordPiece trained on the training
   documents (``data.tokenizer_training``);
3. every split tokenized once into the token store (:mod:`lmforge.data.token_store`, one flat
   memory-mapped file) and read as ``data.block_size`` blocks, ``[SEP]`` (or eos) between documents;
   validation and test on a fixed subset of at most ``data.max_eval_blocks`` blocks;
4. masking: training masks are dynamic (80/10/10, ``data.mlm_probability``, optional
   ``data.whole_word_masking``), drawn in ``on_before_batch_transfer`` from a generator seeded by
   ``(seed, rank, batch number)``: fresh masks every step, yet a resumed run draws exactly the masks
   the uninterrupted run would have. Validation/test masks are fixed per sequence by
   ``data.eval_mask_seed`` (in the evaluation collate), so validation loss compares across steps
   and runs.

Prediction inputs are texts holding the mask token (``"The fox [MASK] away."``), tokenized with the
special tokens, as a fill-mask model reads them.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from lmforge.data.collate import PadCollator
from lmforge.data.masking import MaskingCollator, word_start_table
from lmforge.data.packing import PackedTextDataModule
from lmforge.utils.errors import ConfigError, DataError


class MaskedLMDataModule(PackedTextDataModule):
    namespace = "masked_lm"
    tokenizer_kind = "wordpiece"  # what data.tokenizer_training.kind=auto trains (it has [MASK])
    input_fields = ("text",)  # a text holding the mask token

    def __init__(self, mlm_probability: float = 0.15, whole_word_masking: bool = False, eval_mask_seed: int = 0,
                 **kwargs: Any):
        if not 0.0 < mlm_probability < 1.0:
            raise ConfigError(f"data.mlm_probability={mlm_probability}: expected a fraction in (0, 1)")
        self.mlm_probability, self.whole_word_masking, self.eval_mask_seed = mlm_probability, whole_word_masking, eval_mask_seed
        self._collators: dict[str, MaskingCollator] = {}
        super().__init__(**kwargs)
        if self.train_tokenizer and self.tokenizer_training["kind"] != "wordpiece":
            raise ConfigError("masked LM needs a [MASK] token: data.tokenizer_training.kind must be wordpiece (or auto)")

    def check_tokenizer(self, tokenizer: Any) -> Any:
        if tokenizer.mask_token_id is None:
            raise ConfigError(f"tokenizer {self.tokenizer_name} has no mask token; masked LM needs one "
                              "(or train one: data.tokenizer_training.enabled=true)")
        return super().check_tokenizer(tokenizer)

    def masking(self, stage: str) -> MaskingCollator:
        if stage not in self._collators:
            tok = self.tokenizer
            self._collators[stage] = MaskingCollator(
                mask_id=tok.mask_token_id, vocab_size=len(tok), special_ids=tok.all_special_ids, pad_id=tok.pad_token_id,
                mlm_probability=self.mlm_probability, whole_word=self.whole_word_masking,
                word_start_mask=word_start_table(tok) if self.whole_word_masking else None,
                seed=self.eval_mask_seed if stage == "eval" else None)
        return self._collators[stage]

    def eval_collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        return self.masking("eval")(examples)

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if "labels" in batch or self.trainer is None or not self.trainer.training:
            return batch  # validation/test: masked in the collate, fixed by eval_mask_seed; prediction: as given
        trainer = self.trainer
        n = trainer.fit_loop.epoch_loop.batch_progress.total.ready  # batches before this one (restored on resume)
        collator = self.masking("train")
        collator.generator = torch.Generator().manual_seed((self.seed * 1_000_003 + trainer.global_rank) * 1_000_003 + n)
        return collator([{"input_ids": row} for row in batch["input_ids"]])

    def encode_inputs(self, records: Sequence[dict | str]) -> list[dict]:
        tok = self.tokenizer
        out = []
        for i, r in enumerate(self.input_records(records), 1):
            ids = tok(r["text"], truncation=True, max_length=self.block_size)["input_ids"]
            if tok.mask_token_id not in ids:
                raise DataError(f"input {i}: no {tok.mask_token} in {r['text']!r}; a masked-LM model predicts the "
                                f"tokens written as {tok.mask_token}")
            out.append({"input_ids": np.asarray(ids, dtype=np.int64)})
        return out

    def collate(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        return PadCollator({"input_ids": self.tokenizer.pad_token_id})(examples)
