"""Causal-LM data: text documents packed into blocks, next-token prediction on every token.

The path of a run's data (the steps shared with masked LM are in
:class:`lmforge.data.packing.PackedTextDataModule`, the rest of the pipeline in
:class:`lmforge.data.datamodule.LMForgeDataModule`):

1. documents: the embedded tales (``data=sample``), text files (``data=text data.train_files=...``,
   ``data.doc_separator``) or a hub split's ``data.text_column``; without validation files,
   ``data.validation_fraction`` of the documents is carved out, seeded by ``data.split_seed``;
2. the tokenizer: the model's own, or a byte-level BPE trained on the training documents
   (``data.tokenizer_training``, cached by the data, the split, streaming and the model's context);
3. every split tokenized once (in ``data.tokenize_workers`` processes) into the token store, one
   flat memory-mapped file (:mod:`lmforge.data.token_store`), an end-of-document token after each
   document, read as ``data.block_size``-token blocks: no padding, so batches are ``{"input_ids"}``
   only and the labels are the inputs (shifted inside the model's loss); validation and test on a
   fixed subset of at most ``data.max_eval_blocks`` blocks, drawn by ``data.split_seed``;
4. training batches from the resumable sampler (a step-based run is one pass over a stream of
   reshuffled data epochs that a resumed run continues exactly), or streamed
   (``data.streaming=true``).

Prediction inputs are prompts: tokenized as the training text (no special tokens) and padded on
the left, so that a batch of prompts is continued from its last real token.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from lmforge.data.collate import PadCollator
from lmforge.data.packing import PackedTextDataModule, separator_id


class CausalLMDataModule(PackedTextDataModule):
    namespace = "causal_lm"
    tokenizer_kind = "bpe"  # what data.tokenizer_training.kind=auto trains
    input_fields = ("text",)  # the prompt

    def model_facts(self) -> dict:
        facts = super().model_facts()
        # nothing is padded: a pad id equal to eos would only make HF warn about padding in every batch
        facts.pop("pad_token_id", None)
        return facts

    def encode_inputs(self, records: Sequence[dict | str]) -> list[dict]:
        tok = self.tokenizer
        out = []
        for r in self.input_records(records):
            ids = tok(r["text"], add_special_tokens=False)["input_ids"]
            out.append({"input_ids": np.asarray(ids or [tok.bos_token_id or separator_id(tok)], dtype=np.int64)})
        return out

    def collate(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else separator_id(tok)
        return PadCollator({"input_ids": pad}, side="left")(examples)

    def eval_collate(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        return self.train_collate(examples)
