"""``lmforge.load(folder)``: a predictor over an exported model folder, without the run folder or Hydra.

A task whose export ``transformers.pipeline`` cannot serve (transformers 5 removed the
question-answering pipeline, for one) writes into the export's ``config.json`` which lmforge class
serves it (:data:`PREDICTOR_KEY`, ``"module:Class"``). :func:`load` reads that key from the JSON file
alone and builds the class with the folder. Only classes inside ``lmforge.tasks`` are accepted, so a
shared export folder cannot make ``load`` import other code (see "Sharing runs safely" in the README).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

#: the key of an export's config.json naming the lmforge predictor class that serves it
PREDICTOR_KEY = "lmforge_predictor"
_ALLOWED_PREFIX = "lmforge.tasks."


def predictor_name(cls: type) -> str:
    """The value of :data:`PREDICTOR_KEY` for a predictor class."""
    return f"{cls.__module__}:{cls.__qualname__}"


def load(folder: str | Path, **kwargs: Any) -> Any:
    """The predictor an lmforge export names, built over ``folder`` (keyword arguments go to it).

    For a question-answering export: ``lmforge.load(folder)("question", "passage")`` ->
    ``{"answer", "start", "end", "score"}``; ``lmforge.load(folder, precision="auto")`` runs it under bfloat16
    autocast where the hardware runs that faster (:func:`bf16_is_faster`), 32-bit elsewhere (default ``"32"``).
    """
    folder = Path(folder).expanduser()
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder}: not a model folder (no config.json); pass a run's export/ folder, "
                                "e.g. logs/question_answering/runs/<timestamp>/export")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_file}: not a JSON config ({e})") from None
    name = config.get(PREDICTOR_KEY) if isinstance(config, dict) else None
    if not name:
        arch = ", ".join(config.get("architectures") or []) if isinstance(config, dict) else ""
        raise ValueError(f"{folder}: its config.json names no lmforge predictor ({PREDICTOR_KEY}); lmforge.load "
                         f"serves exports of tasks that transformers 5's pipeline cannot serve (question answering, translation, summarization). "
                         f"This folder ({arch or 'no architectures listed'}) loads with transformers' Auto classes "
                         "or transformers.pipeline")
    module_name, _, cls_name = str(name).partition(":")
    if not module_name.startswith(_ALLOWED_PREFIX) or not cls_name or not cls_name.isidentifier():
        raise ValueError(f"{config_file}: {PREDICTOR_KEY}={name!r} is not an lmforge predictor "
                         f"(expected 'lmforge.tasks.<task>.<module>:<Class>'); refusing to import it")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{config_file}: {PREDICTOR_KEY}={name!r} cannot be imported ({e}); was the folder "
                         "exported by another lmforge version?") from None
    return cls(folder, **kwargs)


# -- prediction precision -------------------------------------------------------------------------
#: the values of ``predict.precision`` (and of the predictors' ``precision=``)
PRECISIONS = ("auto", "32", "bf16")


def check_precision(value: Any, key: str = "predict.precision") -> str:
    """``value`` as one of :data:`PRECISIONS` (``32`` may come as a number from YAML; null means ``auto``);
    raises ConfigError naming ``key`` otherwise."""
    text = "auto" if value is None else str(value).strip().lower()
    if text not in PRECISIONS:
        from lmforge.utils.errors import ConfigError

        raise ConfigError(f"{key}={value}: expected one of {', '.join(PRECISIONS)} (auto: bfloat16 where the "
                          "hardware runs it faster, else 32-bit; 32: exact 32-bit; bf16: bfloat16 autocast)")
    return text


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (``/proc/cpuinfo``); empty elsewhere."""
    global _CPU_FLAGS
    if _CPU_FLAGS is None:
        flags: set[str] = set()
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith("flags"):
                        flags.update(line.partition(":")[2].split())
                        break
        except OSError:
            pass
        _CPU_FLAGS = frozenset(flags)
    return _CPU_FLAGS


_CPU_FLAGS: frozenset[str] | None = None
#: CPU flags under which bfloat16 matrix products beat 32-bit ones: oneDNN's AMX tiles. Measured on a Xeon with AMX
#: (MiniLM, batch 64 x 32 tokens, 1 thread, 2026-12-02): bf16 autocast took 0.32x the CPU time of 32-bit with AMX,
#: but 1.39x with oneDNN held to AVX-512 BF16 (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``) and 3.6x with plain AVX-512,
#: so ``avx512_bf16`` alone does not count
BF16_CPU_FLAGS = ("amx_bf16",)


def amx_usable() -> bool:
    """Whether the OS lets this process use AMX tiles (Linux asks for them per process; PyTorch does it here)."""
    import torch

    init = getattr(getattr(torch._C, "_cpu", None), "_init_amx", None)
    if init is None:  # an older PyTorch: trust the flag
        return True
    try:
        return bool(init())
    except Exception:  # noqa: BLE001 - any failure means no AMX for us
        return False


def bf16_is_faster(device: Any = "cpu") -> bool:
    """Whether bfloat16 autocast speeds up inference on ``device``: a CUDA GPU that supports bfloat16, or a CPU with
    AMX-BF16 (Xeon Sapphire Rapids and later) that the OS lets this process use. Elsewhere (AVX-512 BF16 alone
    included, see :data:`BF16_CPU_FLAGS`) bfloat16 was slower than 32-bit, so ``auto`` keeps 32-bit."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    if not str(torch.backends.cpu.get_cpu_capability()).startswith("AVX512"):
        return False
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS) and amx_usable()


def resolve_precision(value: Any, device: Any = "cpu", key: str = "predict.precision") -> str:
    """``"32"`` or ``"bf16"``: ``value`` checked (:func:`check_precision`), ``auto`` decided for ``device``."""
    value = check_precision(value, key)
    if value == "auto":
        return "bf16" if bf16_is_faster(device) else "32"
    return value


def precision_context(precision: str, device: Any = "cpu") -> Any:
    """bfloat16 autocast for ``"bf16"`` on ``device``; a no-op context for ``"32"``."""
    import contextlib

    import torch

    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def precision_note(precision: str) -> str:
    """How a prediction's precision reads in its summary line."""
    if precision == "bf16":
        return "bf16 autocast; predict.precision=32 for exact 32-bit"
    return "32-bit"
