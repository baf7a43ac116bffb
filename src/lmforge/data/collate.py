"""Collators: each batch is padded to its own longest sequence (dynamic padding), never to max_length."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


class PadCollator:
    """Pads the listed sequence fields of a batch of dict examples; other fields are stacked.

    ``pad_values`` maps a field to its padding value (``input_ids`` -> the tokenizer's pad id,
    ``labels`` -> -100 for token-level labels). ``attention_mask`` is built from the lengths of
    ``input_ids`` when the examples do not carry one. ``side="left"`` pads in front (prompts that a
    decoder continues in a batch).
    """

    def __init__(self, pad_values: dict[str, int], pad_to_multiple_of: int | None = None, side: str = "right"):
        if side not in ("left", "right"):
            raise ValueError(f"side={side!r}: expected 'left' or 'right'")
        self.pad_values = pad_values
        self.multiple = pad_to_multiple_of
        self.left = side == "left"

    def __call__(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        lengths = [len(e["input_ids"]) for e in examples]
        width = max(lengths)
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple
        batch: dict[str, torch.Tensor] = {}
        for key in examples[0]:
            values = [e[key] for e in examples]
            if key in self.pad_values:
                out = np.full((len(values), width), self.pad_values[key], dtype=np.int64)
                for i, v in enumerate(values):
                    if self.left:
                        out[i, width - len(v):] = v
                    else:
                        out[i, : len(v)] = v
                batch[key] = torch.from_numpy(out)
            else:
                batch[key] = torch.as_tensor(np.asarray(values))
        if "attention_mask" not in batch:
            positions = np.arange(width)[None, :]
            if self.left:
                positions = positions[:, ::-1]
            mask = positions < np.asarray(lengths)[:, None]
            batch["attention_mask"] = torch.from_numpy(mask.astype(np.int64))
        return batch
