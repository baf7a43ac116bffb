"""Teacher outputs cached once per example (``distill.cache_teacher=true``).

An example is known by its content: a hash of every tensor field of its batch row (input ids, masks, labels,
...), each cut to the example's own length (the attention mask's real positions; trailing -100 labels).
A key therefore never depends on the batch the example fell into (padding, order), and a changed input
(dynamic masking draws new masks each epoch) is simply another key: the cache is always right, and only
useful when a task's inputs stay the same between epochs.

The cached value holds the outputs the soft-target loss reads (logits, start/end logits, embeddings) for
that example, cut to its length on the sequence axis; a batch's values are padded back (zeros, on positions
the losses mask out) and stacked.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Mapping

import torch

IGNORE = -100
FIELDS = ("logits", "start_logits", "end_logits")


def _lengths(batch: Mapping[str, Any], field: str) -> torch.Tensor | None:
    """Each row's real length along dim 1 of ``batch[field]`` (None: keep the whole row)."""
    x = batch[field]
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        return None
    if field.endswith("labels") and x.dtype in (torch.int64, torch.int32):
        real = x != IGNORE
        idx = torch.arange(1, x.shape[1] + 1, device=x.device)
        return (real * idx).amax(1)  # last real label + 1
    prefix = field[: -len("input_ids")] if field.endswith("input_ids") else None
    for m in ((f"{prefix}attention_mask",) if prefix is not None else ()) + ("attention_mask",):
        mask = batch.get(m)
        if isinstance(mask, torch.Tensor) and mask.shape[:2] == x.shape[:2]:
            return _prefix_length(mask)
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.shape[:2] == x.shape[:2]:
        return _prefix_length(mask)
    return None


def _prefix_length(mask: torch.Tensor) -> torch.Tensor | None:
    n = mask.long().sum(1)
    idx = torch.arange(mask.shape[1], device=mask.device)
    if bool(((idx[None, :] < n[:, None]).long() == mask.long()).all()):  # right padding: real tokens first
        return n
    return None  # left padding: keep whole rows (keys then depend on the batch's padding: a miss, never wrong)


def example_keys(batch: Mapping[str, Any]) -> list[str]:
    """One content key per example of a collated batch."""
    fields = sorted(k for k, v in batch.items() if isinstance(v, torch.Tensor) and v.ndim >= 1)
    n = int(batch[fields[0]].shape[0])
    hashes = [hashlib.sha1() for _ in range(n)]
    for f in fields:
        x = batch[f].detach().cpu()
        lengths = _lengths(batch, f)
        for i in range(n):
            row = x[i]
            if lengths is not None:
                row = row[: int(lengths[i])]
            hashes[i].update(f.encode())
            hashes[i].update(str(tuple(row.shape)).encode())
            hashes[i].update(row.contiguous().numpy().tobytes())
    return [h.hexdigest() for h in hashes]


class TeacherCache:
    """Per-example teacher outputs on CPU, at most ``max_items`` (oldest dropped first)."""

    def __init__(self, max_items: int = 1_000_000):
        self.items: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self.max_items = int(max_items)
        self.hits = self.misses = 0
        self.axes: dict[str, str | None] = {}  # output name -> the batch field its dim 1 follows

    def __len__(self) -> int:
        return len(self.items)

    def lookup(self, keys: list[str]) -> list[dict[str, torch.Tensor] | None]:
        out = [self.items.get(k) for k in keys]
        hit = sum(v is not None for v in out)
        self.hits += hit
        self.misses += len(keys) - hit
        return out

    def store(self, keys: list[str], outputs: Any, batch: Mapping[str, Any], rows: list[int]) -> None:
        """Cache rows ``rows`` of ``outputs`` (the teacher's outputs for those rows, in that order) under their keys."""
        axes = {}
        for name, t in _tensors(outputs).items():
            axes[name] = seq_axis(name, t, batch)
        self.axes.update(axes)
        for j, i in enumerate(rows):
            value = {}
            for name, t in _tensors(outputs).items():
                r = t[j].detach()
                axis = axes[name]
                if axis is not None:
                    lengths = _lengths(batch, axis)
                    if lengths is not None:
                        r = r[: int(lengths[i])]
                value[name] = r.to("cpu", copy=True)
            self.items[keys[i]] = value
            if len(self.items) > self.max_items:
                self.items.popitem(last=False)


def seq_axis(name: str, t: torch.Tensor, batch: Mapping[str, Any]) -> str | None:
    """The batch field whose length dim 1 of output ``name`` follows (None: not a per-token output)."""
    per_token = name in ("start_logits", "end_logits") or (name == "logits" and t.ndim == 3)
    if not per_token:
        return None
    for field in ("input_ids", "labels"):
        x = batch.get(field)
        if isinstance(x, torch.Tensor) and x.ndim >= 2 and x.shape[1] == t.shape[1]:
            return field
    return None


def _tensors(outputs: Any) -> dict[str, torch.Tensor]:
    """The outputs the soft-target losses read, by name."""
    if isinstance(outputs, Mapping) and not hasattr(outputs, "logits"):
        return {k: v for k, v in outputs.items() if isinstance(v, torch.Tensor)}
    return {k: getattr(outputs, k) for k in FIELDS if getattr(outputs, k, None) is not None}


def stack(values: list[dict[str, torch.Tensor]], axes: Mapping[str, str | None], batch: Mapping[str, Any],
          device: torch.device) -> dict[str, torch.Tensor]:
    """Per-example cached values as one batch; per-token outputs zero-padded to the length of the batch field
    they follow (``axes``; padded positions are ones the losses mask out)."""
    out: dict[str, torch.Tensor] = {}
    for name in values[0]:
        rows = [v[name] for v in values]
        axis = axes.get(name)
        if axis is not None:
            width = int(batch[axis].shape[1])
            rows = [torch.cat([r, r.new_zeros((width - r.shape[0], *r.shape[1:]))]) for r in rows]
        out[name] = torch.stack(rows).to(device)
    return out
