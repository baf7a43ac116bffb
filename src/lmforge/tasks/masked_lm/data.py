"""Masked-LM data: packed blocks (``[SEP]``, or the tokenizer's eos, between documents), the model's
own tokenizer or a WordPiece trained on the training documents, and BERT's masking.

Training masks are dynamic (80/10/10, ``mlm_probability``, optional whole-word masking) and drawn
in ``on_before_batch_transfer`` from a generator seeded by ``(seed, rank, batch number)``: fresh
masks every step, yet a resumed run draws exactly the masks the uninterrupted run would have.
Validation/test masks are fixed per sequence by ``eval_mask_seed`` (in the DataLoader's collate),
so validation loss is comparable across steps and runs.
"""

from __future__ import annotations

from typing import Any

import torch

from lmforge.data.lm_datamodule import LMDataModule
from lmforge.data.masking import MaskingCollator, word_start_table
from lmforge.utils.errors import ConfigError


class MaskedLMDataModule(LMDataModule):
    namespace = "masked_lm"
    tokenizer_kind = "wordpiece"

    def __init__(self, mlm_probability: float = 0.15, whole_word_masking: bool = False, eval_mask_seed: int = 0,
                 **kwargs: Any):
        if not 0.0 < mlm_probability < 1.0:
            raise ConfigError(f"data.mlm_probability={mlm_probability}: expected a fraction in (0, 1)")
        super().__init__(**kwargs)
        if self.train_tokenizer and self.tokenizer_training["kind"] != "wordpiece":
            raise ConfigError("masked LM needs a [MASK] token: data.tokenizer_training.kind must be wordpiece (or auto)")
        if self._tokenizer is not None and self._tokenizer.mask_token_id is None:
            raise ConfigError(f"tokenizer {self.tokenizer_name} has no mask token; masked LM needs one "
                              "(or train one: data.tokenizer_training.enabled=true)")
        self.mlm_probability, self.whole_word_masking, self.eval_mask_seed = mlm_probability, whole_word_masking, eval_mask_seed
        self._collators: dict[str, MaskingCollator] = {}

    def collator(self, stage: str) -> MaskingCollator:
        if stage not in self._collators:
            tok = self.tokenizer
            self._collators[stage] = MaskingCollator(
                mask_id=tok.mask_token_id, vocab_size=len(tok), special_ids=tok.all_special_ids, pad_id=tok.pad_token_id,
                mlm_probability=self.mlm_probability, whole_word=self.whole_word_masking,
                word_start_mask=word_start_table(tok) if self.whole_word_masking else None,
                seed=self.eval_mask_seed if stage == "eval" else None)
        return self._collators[stage]

    def eval_collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        return self.collator("eval")(examples)

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if "labels" in batch:  # validation/test: masked in the collate, fixed by eval_mask_seed
            return batch
        trainer = self.trainer
        n = trainer.fit_loop.epoch_loop.batch_progress.total.ready  # batches before this one (restored on resume)
        collator = self.collator("train")
        collator.generator = torch.Generator().manual_seed((self.seed * 1_000_003 + trainer.global_rank) * 1_000_003 + n)
        return collator([{"input_ids": row} for row in batch["input_ids"]])
