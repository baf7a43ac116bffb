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
    ``{"answer", "start", "end", "score"}``.
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
