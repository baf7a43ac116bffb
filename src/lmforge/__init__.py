"""lmforge: Lightning + Hydra recipes for pretraining and fine-tuning language models."""

from typing import Any

from lmforge.utils.resolvers import register_resolvers

__version__ = "0.1.0"

register_resolvers()


def load(folder: Any, **kwargs: Any) -> Any:
    """A predictor over an exported model folder alone (no run folder, no Hydra): for a question-answering
    export, ``lmforge.load(folder)("question", "passage")`` -> ``{"answer", "start", "end", "score"}``.
    Imports torch and transformers only when called, so ``import lmforge`` stays cheap."""
    from lmforge.serving import load as _load

    return _load(folder, **kwargs)
