"""Strategies: FSDP2 for every model family lmforge builds (shard each transformer block, then the root),
and DDP with spawned processes that leave their process group together.

Blocks are found from the model itself, never from a per-model class list: Hugging Face models name
the classes that must not be split across devices in ``_no_split_modules`` (``BertLayer``,
``GPT2Block``, ``LlamaDecoderLayer``, ...). A model without that attribute falls back to the
children of its largest ``nn.ModuleList`` (the layer stack).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from torch import nn

log = logging.getLogger(__name__)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if blocks:
        return blocks
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        return []
    biggest = max(lists, key=lambda ml: sum(p.numel() for p in ml.parameters()))
    return list(biggest)


def fully_shard_model(model: nn.Module, mesh: Any, reshard_after_forward: bool = True,
                      param_dtype: torch.dtype | None = None, reduce_dtype: torch.dtype | None = None) -> int:
    """Apply ``fully_shard`` to each block and to the root; returns the number of blocks sharded."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dp_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    kwargs: dict[str, Any] = {"mesh": dp_mesh, "reshard_after_forward": reshard_after_forward}
    if param_dtype is not None or reduce_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    blocks = transformer_blocks(model)
    for block in blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    log.info("FSDP2: sharded %d %s blocks + root over %d ranks", len(blocks),
             type(blocks[0]).__name__ if blocks else "(no)", dp_mesh.size())
    return len(blocks)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The full (unsharded) state dict on CPU; a collective: every rank must call it. None if not sharded."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_checkpoint_any(path: str | Path, unsafe: bool = False) -> dict:
    """A Lightning checkpoint as one dict: a ``.ckpt`` file, or a sharded (distributed) checkpoint folder.

    Read without running code from the file (``lmforge.checkpoints.load_checkpoint``: ``weights_only=True``
    and an explicit allow-list); ``unsafe=True`` (``unsafe_load=true``) unpickles a trusted checkpoint as is.
    """
    from lmforge.checkpoints import load_checkpoint

    return load_checkpoint(path, unsafe=unsafe)


class FSDP2Strategy(ModelParallelStrategy):
    """``strategy=fsdp``: Lightning's ``ModelParallelStrategy`` with ``data_parallel_size="auto"`` meaning every
    process (divided by the tensor-parallel size), not Lightning's one data-parallel group per node: FSDP2
    here shards over all ranks. The task module applies ``fully_shard`` to its blocks (``configure_model``)."""

    def resolved_data_parallel_size(self) -> int:
        if self._data_parallel_size != "auto":
            return int(self._data_parallel_size)
        tp = self._tensor_parallel_size if isinstance(self._tensor_parallel_size, int) else 1
        return max(1, self.num_nodes * self.num_processes // tp)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.resolved_data_parallel_size()
        super().setup_environment()


class _OrderlyExitLauncher(_MultiProcessingLauncher):
    """Lightning's launcher for spawned workers; a worker that finished its job waits for the others (a barrier),
    then leaves the process group before it exits. A worker that fails does not wait (the others would hang)."""

    def _wrapping_function(self, *args: Any, **kwargs: Any) -> None:
        super()._wrapping_function(*args, **kwargs)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def launch(self, function: Any, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        try:
            return super().launch(function, *args, trainer=trainer, **kwargs)
        except torch.multiprocessing.ProcessRaisedException as e:
            error = worker_user_error(str(e))
            if error is None:
                raise
            raise error from None


def worker_user_error(text: str) -> Exception | None:
    """An lmforge error (a config or data mistake, a non-finite loss) raised in a spawned worker, rebuilt from the
    traceback text torch.multiprocessing hands back, so the command ends with its ``error:`` line, not two
    tracebacks."""
    import importlib

    from lmforge.utils.errors import LMForgeError

    lines = text.strip().splitlines()
    start = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith("lmforge.")), None)
    if start is None:
        return None
    name, sep, message = "\n".join(lines[start:]).partition(": ")
    module, _, cls = name.rpartition(".")
    if not sep or not module.startswith("lmforge"):
        return None
    try:
        kind = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):
        return None
    if not (isinstance(kind, type) and issubclass(kind, LMForgeError)):
        return None
    try:
        return kind(message)
    except TypeError:  # pragma: no cover - an error class with other arguments
        return LMForgeError(message)


class SpawnDDPStrategy(DDPStrategy):
    """``strategy=ddp_spawn``: Lightning's DDP with processes started by ``torch.multiprocessing``, whose workers
    leave the process group together before they exit. Without that, one worker could exit while gloo's threads
    still served the other: in a clean-clone CI run a worker aborted after the test loop (``terminate called
    without an active exception``, SIGABRT), once in many runs."""

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if type(self._launcher) is _MultiProcessingLauncher:
            self._launcher = _OrderlyExitLauncher(self, start_method=self._start_method)
