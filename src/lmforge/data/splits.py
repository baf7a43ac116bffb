"""Splits: the names every task uses, hub split names mapped onto them, and the one way a
validation split is carved out of the training data.

Carving and sample limits are seeded by ``data.split_seed``, never by the run's ``seed``: a
``seed=1,2,3`` sweep trains and validates on the same rows (and reuses the same token cache),
so its runs differ only in what the seed is meant to change.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SPLITS = ("train", "validation", "test")
# a labelled file given at evaluation time (data.eval_file), read with the task's own reader and checks
EVAL_FILE = "file"
# what hub datasets call their splits
HUB_SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "dev", "val"), "test": ("test",)}


def map_hub_splits(available: Sequence[str]) -> dict[str, str]:
    """``{our split: the hub's split name}`` for the splits a hub dataset has (``dev`` -> ``validation``)."""
    out = {}
    for split, names in HUB_SPLIT_NAMES.items():
        found = next((n for n in names if n in available), None)
        if found is not None:
            out[split] = found
    return out


def carve_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """Which of ``n`` items (in their order) go to the validation split: ``round(n * fraction)`` of
    them, at least 1 and at most ``n - 1``, chosen by ``seed`` alone (no item order or content).

    The one carving rule of every task, whether the items are table rows held in memory or the
    documents of a corpus that is streamed (the mask is then built from the document count).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_fraction={fraction} must be in [0, 1)")
    mask = np.zeros(n, dtype=bool)
    if fraction == 0.0 or n == 0:
        return mask
    if n == 1:
        raise ValueError("only 1 item, so no validation split can be carved out of it; add data, or set "
                         "validation_fraction=0 (or give a validation file)")
    k = min(max(1, round(n * fraction)), n - 1)
    mask[random.Random(seed).sample(range(n), k)] = True
    return mask


def carve(items: Sequence[Any], fraction: float, seed: int) -> tuple[list, list]:
    """``(train, validation)`` items by :func:`carve_mask`, both in their original order."""
    mask = carve_mask(len(items), fraction, seed)
    return [x for x, m in zip(items, mask) if not m], [x for x, m in zip(items, mask) if m]


def subsample(items: Sequence[Any], limit: int | None, seed: int) -> list:
    """At most ``limit`` items, a seeded random subset kept in the original order (``data.max_*_samples``)."""
    if limit is None or len(items) <= limit:
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def ordered(splits: Mapping[str, Any]) -> list[str]:
    """Split names in the order train, validation, test, file, then any others."""
    order = {s: i for i, s in enumerate((*SPLITS, EVAL_FILE))}
    return sorted(splits, key=lambda s: (order.get(s, len(order)), s))
