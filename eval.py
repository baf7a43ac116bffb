"""Evaluate a finished run or predict with it: python eval.py run=<run dir> [split=...] [predict.texts=[...]]"""

from lmforge.utils.quiet import quiet

quiet()  # before the heavy imports

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from lmforge.cli import reported_errors, run  # noqa: E402
from lmforge.evaluate import evaluate  # noqa: E402
from lmforge.sweeps import register_resolvers  # noqa: E402

register_resolvers()  # ${lmforge_cwd:} and friends (importing lmforge registers the others)


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    with reported_errors():  # a data or config mistake: `error: <message>`, exit status 2
        evaluate(cfg)


if __name__ == "__main__":
    run(main)
