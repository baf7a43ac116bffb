"""Sweep helpers: one GPU (or group of GPUs) per local parallel job, and the resolvers sweeps need
before any job exists (the SLURM launcher's counts, the launch directory behind ``paths.root_dir``).

``assign_device_for_job(cfg)`` is called first thing in ``train()``: under ``-m hydra/launcher=joblib``
several trials run at once on one machine, and without it every job would see (and Lightning would
use) every GPU. Each job process claims a slot of ``trainer.devices`` GPUs (1 when ``auto``) and sets
``CUDA_VISIBLE_DEVICES`` to it before torch touches CUDA.

Slots are claimed with ``flock`` on ``<tmp>/lmforge-gpu-locks-<uid>/<gpus>.lock`` and held for the
life of the process, because joblib's loky backend reuses worker processes: a worker that has
initialised CUDA on GPU 0 cannot move to GPU 1 for its next job, so a worker keeps its first slot, and
a new worker takes a slot no live worker holds (starting from ``job number % slots``). When every slot
is held (more workers than slots), the job shares ``job number % slots`` and says so. The lock is
released by the OS when the process ends, killed or not.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

# this process's slot: (gpu ids, open lock file or None)
_PINNED: dict = {}


def visible_gpus() -> List[str]:
    """The GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else ``0..n-1`` (NVML count,
    which does not initialise CUDA)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001  (no torch / no driver: no GPUs)
        return []


def gpu_slots(gpus: Sequence[str], per_job: int) -> List[List[str]]:
    """Disjoint groups of ``per_job`` GPUs: ``['0','1','2','3'], 2 -> [['0','1'], ['2','3']]``."""
    per_job = max(1, int(per_job))
    return [list(gpus[i:i + per_job]) for i in range(0, len(gpus) - per_job + 1, per_job)]


def pick_slot(job_num: int, n_slots: int, try_claim: Callable[[int], bool]) -> tuple[int, bool]:
    """The slot for job ``job_num``: the first one ``try_claim`` wins, from ``job_num % n_slots`` on;
    ``(slot, claimed)``, with ``(job_num % n_slots, False)`` when all are taken."""
    start = int(job_num) % n_slots
    for k in range(n_slots):
        slot = (start + k) % n_slots
        if try_claim(slot):
            return slot, True
    return start, False


def _lock_claimer(slots: List[List[str]], lock_dir: Path, holder: dict) -> Callable[[int], bool]:
    def claim(slot: int) -> bool:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no locks, job number decides
            return True
        lock_dir.mkdir(parents=True, exist_ok=True)
        f = open(lock_dir / f"gpu-{'_'.join(slots[slot])}.lock", "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return False
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        holder["file"] = f
        return True

    return claim


def assign_gpus(job_num: int, per_job: int = 1, gpus: Optional[Sequence[str]] = None,
                lock_dir: Optional[Path] = None) -> Optional[List[str]]:
    """Claim this process's GPU slot (once per process) and set ``CUDA_VISIBLE_DEVICES`` to it.
    Returns the slot's GPU ids, or None when there is nothing to assign (fewer GPUs than ``per_job``)."""
    if _PINNED:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(_PINNED["gpus"])
        return list(_PINNED["gpus"])
    gpus = list(visible_gpus() if gpus is None else gpus)
    slots = gpu_slots(gpus, per_job)
    if not slots:
        if gpus:
            log.warning("job %s: %d GPU(s) visible, fewer than trainer.devices=%d: not assigning", job_num, len(gpus), per_job)
        return None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        log.warning("job %s: CUDA was initialised in this process before the GPU assignment; "
                    "call assign_device_for_job(cfg) before anything touches CUDA", job_num)
        return None
    lock_dir = Path(lock_dir) if lock_dir is not None else Path(tempfile.gettempdir()) / f"lmforge-gpu-locks-{os.getuid()}"
    holder: dict = {}
    slot, claimed = pick_slot(job_num, len(slots), _lock_claimer(slots, lock_dir, holder))
    if not claimed:
        log.warning("job %s: all %d GPU slots are held by other jobs: sharing slot %d (GPUs %s)",
                    job_num, len(slots), slot, ",".join(slots[slot]))
    _PINNED.update(gpus=slots[slot], file=holder.get("file"))
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(slots[slot])
    log.info("job %s: CUDA_VISIBLE_DEVICES=%s (slot %d of %d)", job_num, os.environ["CUDA_VISIBLE_DEVICES"], slot, len(slots))
    return list(slots[slot])


def _devices_per_job(devices: Any) -> int:
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, str) and devices.strip().isdigit() and int(devices) > 0:
        return int(devices)
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return max(1, len(devices))
    return 1  # auto / -1: one GPU per job


def assign_device_for_job(cfg: Any) -> Optional[List[str]]:
    """Give this job its own GPU(s) when it is one of several local parallel jobs (``hydra/launcher=joblib``).

    A no-op elsewhere: single runs, the basic launcher (one job at a time), SLURM (each job has its
    allocation), ``trainer.accelerator=cpu``, no GPUs, or ``LMFORGE_ASSIGN_GPUS=0``.
    """
    if os.environ.get("LMFORGE_ASSIGN_GPUS", "1") == "0":
        return None
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None
        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN or "joblib" not in str(OmegaConf.select(hc, "launcher._target_", default="")):
            return None
        job_num = int(hc.job.num)
    except Exception:  # noqa: BLE001
        return None
    trainer = cfg.get("trainer") or {}
    if str(trainer.get("accelerator", "auto")).lower() in ("cpu", "mps"):
        return None
    return assign_gpus(job_num, _devices_per_job(trainer.get("devices", "auto")))


def slurm_int(value: Any, key: str = "value") -> int:
    """``${lmforge_int:${trainer.devices},trainer.devices}``: SLURM needs counts, not ``auto``."""
    if isinstance(value, bool):
        raise ValueError(f"{key}={value}: hydra/launcher=slurm needs a whole number")
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, str) and value.strip().isdigit() and int(value) > 0:
        return int(value)
    raise ValueError(f"{key}={value}: hydra/launcher=slurm needs a whole number of GPUs (tasks) per node, "
                     f"e.g. {key}=4 (the SLURM job asks for that many; 'auto' cannot be requested)")


def launch_dir() -> str:
    """``${lmforge_cwd:}``: the directory the command was started in.

    Inside a Hydra job this is ``hydra.runtime.cwd`` (right even with ``hydra.job.chdir=true``); outside
    one (a sweeper or launcher resolving ``hydra.sweep.dir`` or the Optuna storage before any job
    exists, a notebook composing the config) it is the process's working directory. It replaces
    ``${hydra:runtime.cwd}`` in ``configs/paths/default.yaml``, which fails outside a job.
    """
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            cwd = OmegaConf.select(HydraConfig.get(), "runtime.cwd", default=None)
            if cwd:
                return str(cwd)
    except Exception:  # noqa: BLE001  (no usable Hydra config: the process's directory)
        pass
    return os.getcwd()


def register_resolvers() -> None:
    """``lmforge_int`` (SLURM counts) and ``lmforge_cwd`` (the launch directory, for ``paths.root_dir``)."""
    if not OmegaConf.has_resolver("lmforge_int"):
        OmegaConf.register_new_resolver("lmforge_int", slurm_int)
    if not OmegaConf.has_resolver("lmforge_cwd"):
        OmegaConf.register_new_resolver("lmforge_cwd", launch_dir)
