"""Evaluate a finished run or predict with it: python eval.py run=<run dir> [split=...] [predict.texts=[...]]"""

import hydra
from omegaconf import DictConfig

import lmforge  # noqa: F401  (registers config resolvers)
from lmforge.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
