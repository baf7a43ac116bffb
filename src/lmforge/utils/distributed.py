"""Multi-process plumbing: sweeps that launch ranks, global batch size, device counts."""

from __future__ import annotations

import logging
import os
import sys

import torch
from omegaconf import DictConfig, open_dict, read_write

from lmforge.utils.errors import ConfigError

log = logging.getLogger(__name__)

# strategies whose Lightning launcher re-runs this script's command line in child processes
SUBPROCESS_STRATEGIES = ("ddp", "fsdp", "fsdp1", "deepspeed")


def pin_sweep_job_for_subprocess_launcher(cfg: DictConfig) -> None:
    """Make Lightning's subprocess launcher start this sweep job's ranks, not the whole sweep again.

    Lightning starts ranks 1..N-1 by re-running ``sys.argv`` with ``hydra.run.dir=<run dir>``
    appended. Under ``-m`` that command line is the whole sweep, so every rank would walk the sweep
    on its own and make sweep directories of its own. Here, inside one sweep job, the command line
    becomes that job's own overrides (a single run, no ``-m``) and Hydra's ``run.dir`` becomes the
    job's directory, so the child ranks join exactly this job, in its directory.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return
    name = str((cfg.get("strategy") or {}).get("name", "auto"))
    if name not in SUBPROCESS_STRATEGIES:
        return
    if os.environ.get("LOCAL_RANK") not in (None, "0") or "SLURM_NTASKS" in os.environ:
        return  # already a launched rank, or a cluster launcher that started every rank itself
    overrides = [o for o in hc.overrides.task if not o.startswith("hydra.")]
    sys.argv = [sys.argv[0], *overrides]
    with read_write(hc), open_dict(hc):
        hc.run.dir = hc.runtime.output_dir
    log.info("sweep job %s: ranks are launched with this job's overrides only: %s", hc.job.num, " ".join(overrides))


def world_size(cfg: DictConfig) -> int:
    """Processes that will train: devices per node x nodes (``auto`` devices resolved as Lightning does)."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if "SLURM_NTASKS" in os.environ:
        return int(os.environ["SLURM_NTASKS"])
    devices = cfg.trainer.get("devices", "auto")
    nodes = int(cfg.trainer.get("num_nodes", 1) or 1)
    if isinstance(devices, int):
        n = devices
    elif isinstance(devices, (list, tuple)) or (hasattr(devices, "__len__") and not isinstance(devices, str)):
        n = len(devices)
    elif str(devices).strip().lstrip("-").isdigit():
        n = int(devices)
        if n == -1:
            n = max(1, torch.cuda.device_count())
    else:  # "auto"
        from lmforge.utils.checks import resolved_accelerator

        acc = resolved_accelerator(str(cfg.trainer.get("accelerator", "auto")))
        n = torch.cuda.device_count() if acc == "gpu" else 1
    return max(1, n) * nodes


def global_batch_accumulation(cfg: DictConfig) -> int | None:
    """``data.global_batch_size`` -> the ``accumulate_grad_batches`` that gives it over this many processes
    (None when no global batch is set). The config is not changed: ``build_trainer`` passes the value."""
    global_bs = cfg.data.get("global_batch_size")
    if not global_bs:
        return None
    micro = int(cfg.data.batch_size)
    world = world_size(cfg)
    per_step = micro * world
    if global_bs % per_step:
        raise ConfigError(
            f"data.global_batch_size={global_bs} is not a multiple of data.batch_size x processes = "
            f"{micro} x {world} = {per_step}; choose a global batch that is a multiple of {per_step}, "
            f"or change data.batch_size / trainer.devices / trainer.num_nodes")
    accumulate = global_bs // per_step
    log.info("global batch %d = %d per process x %d processes x %d accumulation steps", global_bs, micro, world,
             accumulate)
    return accumulate
