"""lmforge's Optuna sweeper for Hydra (``hydra/sweeper=lmforge_optuna``, selected by ``hparams_search=optuna``).

Hydra finds it because ``hydra_plugins`` is a namespace package: this folder must keep its
``__init__.py``, ``src/hydra_plugins`` must not get one.
"""

# the ${lmforge_int:...} (configs/hydra/launcher/slurm.yaml) and ${lmforge_cwd:} (configs/paths) resolvers:
# plugin discovery imports this package in every Hydra process (the sweeper's, a joblib worker's, a
# SLURM job's), before any config is resolved
from lmforge.sweeps import register_resolvers as _register_resolvers

_register_resolvers()
