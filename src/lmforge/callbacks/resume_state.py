"""The random-number state a checkpoint carries, so that a resumed run draws what the whole run would have.

Lightning's checkpoints hold the weights, optimizer, schedulers and loop progress, but no generator state:
after a resume, dropout (and anything else drawing from the global generators) takes other random numbers
than the uninterrupted run, and the two runs part ways from the first step. :class:`TrainingRNG` keeps, per
rank, the state of torch's CPU generator and the current CUDA device's generator as they were when the last
training batch ended, and restores it when the next training batch starts; numpy's and Python's ``random``
are saved when the checkpoint is written and restored with the others.

Restoring torch's generators at every batch start, not only after a resume, makes the training stream of
random numbers independent of what runs between two batches: a validation, a sanity check, a new epoch's
DataLoader iterator (which draws its base seed from torch's generator), all of which a resumed run replays
differently or not at all. The cost is two copies of a 5 KB state per batch (a few microseconds); numpy's
and Python's generators are not copied per batch (their state is read only when a checkpoint is written),
so code that draws from them between batches would still part the runs.

Stored in the checkpoint as plain tensors, lists and numbers (lmforge loads checkpoints with
``weights_only=True``): ``{"world_size": R, "ranks": [state of rank 0, ..., rank R-1]}``. Gathered from
every rank when a checkpoint is written (every rank writes, or takes part in writing, each checkpoint).
Data randomness does not come from these generators: the sampler orders each data epoch from
``seed + epoch``, masked-LM masks come from ``(seed, rank, batch number)``, so DataLoader workers hold none.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


def _torch_states(cuda_device: int | None) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if cuda_device is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state(cuda_device)
        state["cuda_device"] = int(cuda_device)
    return state


def _restore_torch(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"], state.get("cuda_device", 0))


def capture(cuda_device: int | None = None, torch_states: dict[str, Any] | None = None) -> dict[str, Any]:
    """This process's generator states as plain containers and tensors (torch's: ``torch_states`` if given)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        **(torch_states if torch_states is not None else _torch_states(cuda_device)),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }


def restore(state: dict[str, Any]) -> None:
    """Set this process's generators to ``state`` (from :func:`capture`)."""
    _restore_torch(state)
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def _cuda_index(trainer: Any) -> int | None:
    device = getattr(trainer.strategy, "root_device", None)
    return device.index if device is not None and device.type == "cuda" else None


class TrainingRNG:
    """The training stream of random numbers, kept across batches and checkpoints (see the module docstring).

    The checkpoint callback calls :meth:`batch_start` / :meth:`batch_end` from its batch hooks and puts
    :meth:`state_dict` into its own state."""

    def __init__(self) -> None:
        self._after_batch: dict[str, Any] | None = None  # torch's states when the last training batch ended
        self._loaded: dict[str, Any] | None = None  # from a checkpoint, until the first batch of the resumed run

    def batch_end(self, trainer: Any) -> None:
        self._after_batch = _torch_states(_cuda_index(trainer))

    def batch_start(self, trainer: Any) -> None:
        if self._loaded is not None:
            state, self._loaded = self._for_rank(self._loaded, trainer), None
            if state is not None:
                restore(state)  # numpy's and Python's too
                self._after_batch = {k: state[k] for k in ("torch", "cuda", "cuda_device") if k in state}
        if self._after_batch is not None:
            _restore_torch(self._after_batch)

    def state_dict(self, trainer: Any) -> dict[str, Any]:
        """Every rank's state at its last batch end (a collective under DDP/FSDP: every rank calls it)."""
        mine = capture(torch_states=self._after_batch) if self._after_batch is not None else None
        world = int(getattr(trainer, "world_size", 1) or 1)
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks: list[Any] = [None] * world
            torch.distributed.all_gather_object(ranks, mine)
        else:
            ranks = [mine]
        if any(r is None for r in ranks):
            return {}
        return {"world_size": len(ranks), "ranks": ranks}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self._loaded = dict(state) if state and state.get("ranks") else None

    @staticmethod
    def _for_rank(saved: dict[str, Any], trainer: Any) -> dict[str, Any] | None:
        ranks, world = saved["ranks"], int(getattr(trainer, "world_size", 1) or 1)
        if len(ranks) != world:
            if trainer.is_global_zero:
                log.warning("the checkpoint holds the random-number state of %d process(es), this run has %d: the "
                            "generators are not restored (dropout draws differ from the uninterrupted run)",
                            len(ranks), world)
            return None
        return ranks[int(trainer.global_rank)]
