"""The resolved config tree, printed with rich at the start of a run and saved beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import rich
import rich.syntax
import rich.tree
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

ORDER = ("task", "data", "model", "trainer", "strategy", "optimizer", "scheduler", "callbacks", "logger", "paths")


@rank_zero_only
def print_config_tree(cfg: DictConfig, order: Sequence[str] = ORDER, resolve: bool = True,
                      save_to: str | Path | None = None) -> None:
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        branch = tree.add(str(key), style="bold", guide_style="dim")
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=resolve) if isinstance(value, DictConfig) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    rich.print(tree)
    if save_to is not None:
        with open(save_to, "w") as f:
            rich.print(tree, file=f)
