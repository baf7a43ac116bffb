"""The config ``python train.py <overrides>`` would get, composed in process (tests, notebooks, benchmarks)."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, open_dict


def project_root() -> Path:
    """``$LMFORGE_ROOT``, else the checkout this module runs from (``pip install -e .``), else the working
    directory (an installed wheel): what ``paths.root_dir`` is for a composed config."""
    env = os.environ.get("LMFORGE_ROOT")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / "pyproject.toml").is_file() and (checkout / "configs").is_dir():
        return checkout
    return Path.cwd()


def compose_config(overrides: list[str], output_dir: str | Path, cache_dir: str | Path | None = None,
                   data_dir: str | Path | None = None, config_name: str = "train",
                   config_dir: str | Path | None = None) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with ``overrides``, as if Hydra ran it in ``output_dir``.

    Hydra's own run-time values (``hydra:runtime.output_dir`` and friends) are set so that every
    interpolation resolves, then the ``hydra`` node is dropped, as it is inside a real run.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    import lmforge  # noqa: F401  (resolvers)
    from lmforge.cli import config_dir as default_config_dir
    from lmforge.sweeps import register_resolvers

    register_resolvers()
    root = project_root()
    out = Path(output_dir)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir or default_config_dir()), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.runtime.cwd = str(root)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(root)
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out.parent)
        if cache_dir is not None:
            cfg.paths.cache_dir = str(cache_dir)
        if data_dir is not None:
            cfg.paths.data_dir = str(data_dir)
        if config_name == "train":
            cfg.extras.print_config = False
        del cfg.hydra
    return cfg
