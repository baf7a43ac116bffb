"""Console scripts ``lmforge-train`` and ``lmforge-eval``: the same entry points as train.py / eval.py,
usable from any directory. The config tree is found in this order: ``$LMFORGE_CONFIG_DIR``, the
``configs/`` folder of the checkout the package is installed from (``pip install -e .``).
Add your own config folder with ``hydra.searchpath=[file:///path/to/my/configs]``: its
``experiment/*.yaml`` and other group options join ours without editing them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def config_dir() -> str:
    env = os.environ.get("LMFORGE_CONFIG_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "configs")
    for c in candidates:
        if (c / "train.yaml").is_file():
            return str(c)
    raise SystemExit(f"lmforge: no config tree found (looked in {', '.join(map(str, candidates))}); "
                     "set LMFORGE_CONFIG_DIR=<folder with train.yaml>")


def _run(config_name: str, fn) -> None:
    import hydra

    import lmforge  # noqa: F401

    main = hydra.main(version_base="1.3", config_path=config_dir(), config_name=config_name)(fn)
    main()


def train_main() -> None:
    from lmforge.train import metric_value, train

    def task(cfg):
        return metric_value(train(cfg), cfg.get("optimized_metric"))

    _run("train", task)


def eval_main() -> None:
    from lmforge.evaluate import evaluate

    _run("eval", evaluate)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
