"""lmforge: Lightning + Hydra recipes for pretraining and fine-tuning language models."""

from lmforge.utils.resolvers import register_resolvers

__version__ = "0.1.0"

register_resolvers()
