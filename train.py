"""Train: python train.py [group=option ...] [key=value ...]   (see configs/train.yaml)"""

from lmforge.utils.quiet import quiet

# before the heavy imports, and at import: also in the processes ddp_spawn starts, which import this
# file but do not call main()
quiet()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from lmforge.cli import reported_errors, run  # noqa: E402
from lmforge.sweeps import register_resolvers  # noqa: E402
from lmforge.train import metric_value, train  # noqa: E402

register_resolvers()  # ${lmforge_cwd:} and friends (importing lmforge registers the others)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with reported_errors():  # a data or config mistake: `error: <message>`, exit status 2
        metrics = train(cfg)
        return metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    run(main)
