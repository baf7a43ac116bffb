"""Train: python train.py [group=option ...] [key=value ...]   (see configs/train.yaml)"""

import hydra
from omegaconf import DictConfig

import lmforge  # noqa: F401  (registers config resolvers)
from lmforge.train import metric_value, train


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
