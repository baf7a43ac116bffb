"""Serving a translation or summarization export from the folder alone (no run folder, no Hydra).

``transformers`` 5 has no translation, summarization or text2text-generation pipeline, so
``lmforge.load("<export>")`` builds this predictor: ``AutoModelForSeq2SeqLM`` and ``AutoTokenizer`` from the
folder, the source prefix and length limit the run used (``config.task_specific_params``), and
``model.generate`` with the export's own ``generation_config.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

SERVE_KEY = "lmforge_seq2seq"  # where the export keeps what serving needs besides the model


class Seq2SeqPredictor:
    """``predictor("Die Kinder spielen im Garten.")`` -> the generated text; ``predictor.predict([...])`` -> texts."""

    def __init__(self, folder: str | Path, device: str = "cpu", batch_size: int | None = None):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        folder = Path(folder)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(str(folder)).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        info = (getattr(self.model.config, "task_specific_params", None) or {}).get(SERVE_KEY, {})
        self.source_prefix = info.get("source_prefix", "") or ""
        self.max_source_length = int(info.get("max_source_length", 512))
        self.batch_size = int(batch_size or info.get("batch_size", 16))
        self.device = device

    def __call__(self, text: str) -> str:
        return self.predict([text])[0]

    def predict(self, inputs: Sequence[Mapping[str, Any] | str]) -> list[str]:
        """The generated text of each input (a source text, or a record with ``source``), in input order: the
        sources measured in one tokenizer call, generated ``batch_size`` at a time longest first (little padding, and a batch's
        outputs end at about the same step) under ``torch.inference_mode``; more inputs than one batch are shown as
        a progress stage."""
        from lmforge.utils.progress import stage

        texts = [x if isinstance(x, str) else x["source"] for x in inputs]
        if not texts:
            return []
        sources = [self.source_prefix + t for t in texts]
        lengths = [len(x) for x in self.tokenizer(sources, truncation=True, max_length=self.max_source_length)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        out = [""] * len(texts)
        shown = stage("generating", total=len(texts), unit="inputs", mode="off" if len(texts) <= self.batch_size else None)
        with shown, torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start: start + self.batch_size]
                batch = self.tokenizer([sources[i] for i in chunk], truncation=True, max_length=self.max_source_length,
                                       padding=True, return_tensors="pt")
                generated = self.model.generate(input_ids=batch["input_ids"].to(self.device),
                                                attention_mask=batch["attention_mask"].to(self.device))
                for i, text in zip(chunk, self.tokenizer.batch_decode(generated, skip_special_tokens=True)):
                    out[i] = text.strip()
                shown.advance(len(chunk))
        return out
