"""Causal-LM data: packed blocks of text, the model's own tokenizer or a byte-level BPE trained on the
training documents. Batches are ``{"input_ids"}`` only: every token is real (no padding), and the
module predicts each next token, so the labels are the inputs (shifted inside the loss).

Everything else (sources, validation carving, tokenizer training and caching, packing, the
resumable sampler, streaming) is shared with masked LM in :mod:`lmforge.data.lm_datamodule`.
"""

from __future__ import annotations

from lmforge.data.lm_datamodule import LMDataModule


class CausalLMDataModule(LMDataModule):
    namespace = "causal_lm"
    tokenizer_kind = "bpe"

    def model_facts(self) -> dict:
        facts = super().model_facts()
        # nothing is padded: a pad id equal to eos would only make HF warn about padding in every batch
        facts.pop("pad_token_id", None)
        return facts
