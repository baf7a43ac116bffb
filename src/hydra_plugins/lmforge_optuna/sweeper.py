"""An Optuna study as a Hydra sweeper, on current optuna (>= 3.6).

Why not ``hydra-optuna-sweeper``: its last release (1.3.0) pins ``optuna<3``, and optuna 2.10 with the
SQLAlchemy 2.x that pip installs beside it cannot open SQLite storage, so its studies can't be resumed.
This sweeper keeps that plugin's command-line contract (``hydra.sweeper.params`` in Hydra's sweep
grammar, ``n_trials``, ``n_jobs``, ``direction``, ``storage``, ``study_name``, ``sampler``) and runs the
study through optuna's ask-and-tell API:

* the search space is ``hydra.sweeper.params`` plus the command line's own overrides, both parsed by
  Hydra's override parser: ``interval(a,b)`` (float), ``int(interval(a,b))``, ``tag(log, interval(a,b))``,
  ``choice(a,b,c)`` / ``a,b,c``, ``range(a,b[,step])``, or a plain value (fixed in every trial). A command
  line entry replaces a ``params`` entry of the same key, so ``optimizer.lr=1e-4`` pins the rate and
  ``seed=1,2`` adds ``seed`` as a categorical dimension (it is no per-trial grid);
* each batch asks ``n_jobs`` trials and hands them to Hydra's launcher as one batch (so the joblib and
  submitit launchers run them in parallel); job numbers (and so sweep subfolders) are trial numbers;
* a trial whose job raised, whose config does not compose, or which returned None / NaN / a non-number
  is told FAIL (the reason is the trial's ``error`` user attribute) and the sweep goes on;
* ``load_if_exists``: the same storage + study name continues the study. Trials left RUNNING by a killed
  sweeper are marked FAIL when the next one starts (``fail_stale_trials``); a sweeper that is
  interrupted (Ctrl-C, an exception) marks its own in-flight trials FAIL on the way out;
* after every batch, ``<sweep dir>/optimization_results.yaml`` holds the best trial (params, value, the
  overrides that reproduce it) and a summary of every trial of the study.
"""

# no `from __future__ import annotations`: Hydra's plugin scan loads this module outside sys.modules,
# where dataclasses cannot resolve string annotations
import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"
_DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}
_PRIMITIVE = (type(None), bool, int, float, str)


@dataclass
class SearchParam:
    """One entry of the search space: an optuna distribution, or a value fixed in every trial."""

    name: str  # the optuna parameter name: the override key without '+', '++' or '~'
    key: str  # the key as the override writes it
    text: str  # the override's value as written, for messages
    distribution: Any = None  # None: fixed
    fixed: Optional[str] = None  # the fixed value, as an override string
    raw: bool = False  # categorical choices that are override strings already (lists, dicts)

    def override(self, value: Any = None) -> str:
        if self.distribution is None:
            return f"{self.key}={self.fixed}" if self.fixed is not None else self.key  # '~key' has no value
        text = str(value) if self.raw else Override._get_value_element_as_str(value)
        return f"{self.key}={text}"


def _yaml_text(value: Any) -> str:
    """A value of ``hydra.sweeper.params`` as the command line writes it: ``true``, not Python's ``True``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _bad(override: Override, why: str) -> ValueError:
    return ValueError(f"search space entry '{override.input_line}': {why}")


def distribution_for(override: Override) -> SearchParam:
    """The optuna distribution for one parsed override (Hydra's sweep grammar)."""
    import optuna.distributions as od

    key = override.get_key_element()
    name = key.lstrip("+~")
    text = override.input_line or key
    if not override.is_sweep_override():
        fixed = None if override.is_delete() and override.value() is None else override.get_value_element_as_str()
        return SearchParam(name, key, text, fixed=fixed)
    value = override.value()
    tags = set(getattr(value, "tags", ()) or ())
    if isinstance(value, ChoiceSweep):
        choices = list(value.list)
        if not choices:
            raise _bad(override, "choice() needs at least one value")
        if all(isinstance(c, _PRIMITIVE) for c in choices):
            return SearchParam(name, key, text, od.CategoricalDistribution(choices))
        # lists / dicts: optuna stores primitives only, so the choices are their override strings
        return SearchParam(name, key, text, od.CategoricalDistribution(list(override.sweep_string_iterator())), raw=True)
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise _bad(override, "the range is empty")
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            step = abs(int(value.step)) if len(values) > 1 else 1
            try:
                return SearchParam(name, key, text, od.IntDistribution(min(values), max(values), step=step, log="log" in tags))
            except ValueError as e:
                raise _bad(override, str(e)) from e
        # float ranges: their values (optuna's float step would round the ends)
        return SearchParam(name, key, text, od.CategoricalDistribution(values))
    if isinstance(value, IntervalSweep):
        lo, hi, log_scale = value.start, value.end, "log" in tags
        try:
            if isinstance(lo, int) and isinstance(hi, int):
                dist = od.IntDistribution(lo, hi, log=log_scale)
            else:
                dist = od.FloatDistribution(float(lo), float(hi), log=log_scale)
        except ValueError as e:
            raise _bad(override, str(e)) from e
        return SearchParam(name, key, text, dist)
    raise _bad(override, f"{type(value).__name__} sweeps are not supported by the optuna sweeper "
                         "(use interval(), int(interval()), tag(log, interval()), choice() or range())")


def parse_search_space(lines: Sequence[str], config_loader: Any = None) -> Dict[str, SearchParam]:
    """``key=value`` lines (``params`` first, then the command line) -> the search space, in order;
    a later line replaces an earlier one with the same key."""
    parser = OverridesParser.create(config_loader=config_loader)
    space: Dict[str, SearchParam] = {}
    for override in parser.parse_overrides(list(lines)):
        p = distribution_for(override)
        space[p.name] = p
    return space


def job_return_value(ret: JobReturn) -> tuple[Optional[float], Optional[str]]:
    """(value, None) for a usable objective, (None, why) for a trial to record as FAIL."""
    if ret.status != JobStatus.COMPLETED:
        err = ret._return_value
        if not isinstance(err, BaseException):
            return None, f"job status {ret.status.name}"
        if getattr(err, "kind", None) and getattr(err, "message", None) is not None:
            return None, f"{err.kind}: {err.message}"  # lmforge.cli.UserError: the original error's class and message
        return None, f"{type(err).__name__}: {err}"
    value = ret._return_value
    if value is None:
        return None, "the job returned None (is optimized_metric set and logged?)"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None, f"the job returned {value!r}, not a number"
    if math.isnan(value):
        return None, "the job returned NaN"
    return value, None


def retrain_overrides(overrides: Sequence[str]) -> List[str]:
    """A trial's overrides as a single run: without the ``hparams_search`` choice (it selects this sweeper)."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~").split("@", 1)[0] != "hparams_search"]


def _direction(direction: Any) -> str:
    d = _DIRECTIONS.get(str(direction).lower())
    if d is None:
        raise ValueError(f"hydra.sweeper.direction={direction}: expected max/min (maximize/minimize)")
    return d


def _storage(url: Optional[str]) -> Any:
    if not url:
        return None
    url = str(url)
    if url.startswith("sqlite:///"):
        import optuna

        path = Path(url[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        # waits for a lock instead of failing when two sweepers share one file
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return url


def default_study_name(config: DictConfig, arguments: Sequence[str]) -> str:
    """``<task_name>-<8 hex digits of the sorted command-line overrides>``: the same command continues
    the same study, a command that changes the objective (another model, epochs, data) starts its own."""
    prefix = OmegaConf.select(config, "task_name", default=None) or config.hydra.job.name
    digest = hashlib.sha1("\n".join(sorted(arguments)).encode()).hexdigest()[:8]
    return f"{prefix}-{digest}"


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        params: Optional[Dict[str, Any]] = None,
        direction: str = "maximize",
        n_trials: int = 20,
        n_jobs: int = 1,
        max_trials: Optional[int] = None,
        study_name: Optional[str] = None,
        storage: Optional[str] = None,
        sampler: Any = None,
        fail_stale_trials: bool = True,
        results_file: str = RESULTS_FILE,
    ) -> None:
        super().__init__()
        self.params = OmegaConf.to_container(params, resolve=True) if OmegaConf.is_config(params) else dict(params or {})
        self.direction = _direction(direction)
        if int(n_trials) < 0 or int(n_jobs) < 1:
            raise ValueError(f"hydra.sweeper: n_trials={n_trials} must be >= 0 and n_jobs={n_jobs} >= 1")
        self.n_trials, self.n_jobs = int(n_trials), int(n_jobs)
        self.max_trials = None if max_trials is None else int(max_trials)
        self.study_name = study_name
        self.storage_url = storage
        self.sampler_cfg = sampler
        self.fail_stale_trials = bool(fail_stale_trials)
        self.results_file = results_file
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher: Optional[Launcher] = None
        # picture name -> written file, or why it was not drawn (write_pictures)
        self.pictures: Dict[str, str] = {}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        launcher_cfg = config.hydra.launcher
        if "joblib" in str(launcher_cfg.get("_target_", "")) and launcher_cfg.get("n_jobs", -1) in (-1, None):
            # hydra/launcher=joblib: as many worker processes as trials per batch, not one per CPU
            with read_write(config.hydra), open_dict(config.hydra):
                launcher_cfg.n_jobs = self.n_jobs
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # -- study ---------------------------------------------------------------------------------------
    def _sampler(self, n_existing: int) -> Any:
        from hydra.utils import instantiate

        cfg = self.sampler_cfg
        if cfg is None:
            return None
        if not OmegaConf.is_config(cfg) and not isinstance(cfg, dict):
            if n_existing:  # an object built elsewhere: re-seed so it does not repeat the earlier trials
                cfg.reseed_rng()
            return cfg
        cfg = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        if n_existing and cfg.get("seed") is not None:
            # a resumed study with the same seed would replay the first invocation's random trials
            cfg["seed"] = int(cfg["seed"]) + n_existing
            log.info("resumed study: sampler seed %s -> %s", cfg["seed"] - n_existing, cfg["seed"])
        return instantiate(cfg)

    def _open_study(self, name: str) -> Any:
        import optuna
        from optuna.trial import TrialState

        study = optuna.create_study(study_name=name, storage=_storage(self.storage_url),
                                    direction=self.direction, load_if_exists=True)
        if study.direction.name.lower() != self.direction:
            raise ValueError(f"study '{name}' in {self.storage_url} exists with direction "
                             f"{study.direction.name.lower()}, not {self.direction}: use another hydra.sweeper.study_name")
        trials = study.get_trials(deepcopy=False)
        study.sampler = self._sampler(len(trials)) or study.sampler
        stale = [t for t in trials if t.state == TrialState.RUNNING]
        if stale and self.fail_stale_trials:
            for t in stale:
                self._fail(study, t.number, "left RUNNING by an earlier sweeper (interrupted)", interrupted=True)
            log.warning("marked %d trial(s) left RUNNING by an earlier sweeper as FAIL: %s",
                        len(stale), ", ".join(str(t.number) for t in stale))
        return study

    @staticmethod
    def _fail(study: Any, trial: Any, why: str, interrupted: bool = False) -> None:
        import optuna
        from optuna.trial import TrialState

        if isinstance(trial, int):
            trial = optuna.trial.Trial(study, study._storage.get_trial_id_from_study_id_trial_number(study._study_id, trial))
        trial.set_user_attr("error", why[:2000])
        if interrupted:
            trial.set_user_attr("interrupted", True)
        study.tell(trial, state=TrialState.FAIL)

    def _counted(self, study: Any) -> int:
        """Trials that count towards ``max_trials``: all but the WAITING ones and those FAILed by an interruption."""
        from optuna.trial import TrialState

        return sum(1 for t in study.get_trials(deepcopy=False)
                   if t.state != TrialState.WAITING and not t.user_attrs.get("interrupted"))

    # -- sweep ---------------------------------------------------------------------------------------
    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        from optuna.trial import TrialState

        if os.environ.get("LOCAL_RANK", "0") != "0" and "SLURM_JOB_ID" not in os.environ:
            # Lightning's subprocess launcher (ddp, fsdp) re-runs the whole command line in every rank:
            # this rank would start a study of its own in the same storage
            raise RuntimeError(
                f"the optuna sweeper started again in rank LOCAL_RANK={os.environ['LOCAL_RANK']}: a multi-device "
                "strategy re-runs the command line in each rank. Give each trial one device (trainer.devices=1), "
                "use strategy=ddp_spawn, or run the trials with hydra/launcher=slurm")
        config_loader = self.hydra_context.config_loader
        lines = [f"{k}={_yaml_text(v)}" for k, v in self.params.items()] + list(arguments)
        space = parse_search_space(lines, config_loader)
        searched = {p.name: p.distribution for p in space.values() if p.distribution is not None}
        fixed = [p.override() for p in space.values() if p.distribution is None]
        if not searched:
            raise ValueError("hydra.sweeper.params and the command line define no search dimension "
                             "(interval(), choice(), range(), a,b,...)")
        # a broken fixed override is the user's typo: fail now, not in every trial
        config_loader.load_sweep_config(self.config, list(fixed))

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        name = self.study_name or default_study_name(self.config, arguments)
        study = self._open_study(name)
        earlier = len(study.get_trials(deepcopy=False))
        log.info("optuna study '%s' (%s, %s; %d earlier trials): %d trial(s), %d per batch; search space: %s",
                 name, self.storage_url or "in memory", self.direction, earlier, self.n_trials, self.n_jobs,
                 ", ".join(f"{p.name}={p.text.split('=', 1)[-1]}" for p in space.values() if p.distribution is not None))

        # samplers that finish a space (BruteForceSampler, GridSampler) call study.stop(), which optuna
        # allows only inside its optimize loop: this loop is one, and ends when they do
        study._thread_local.in_optimize_loop, study._stop_flag = True, False
        returns: List[Sequence[JobReturn]] = []
        asked: List[Any] = []  # this sweeper's trials, failed if it stops half-way
        try:
            self._run_trials(study, name, space, searched, fixed, asked, returns)
        except BaseException as e:
            for t in asked:
                if study._storage.get_trial(t._trial_id).state == TrialState.RUNNING:
                    self._fail(study, t, f"sweep interrupted: {type(e).__name__}: {e}", interrupted=True)
            self.write_pictures(study)
            self.write_results(study)
            raise
        finally:
            study._thread_local.in_optimize_loop = False
        if study._stop_flag:
            log.info("the sampler stopped the study (its search space is exhausted)")
        self.write_pictures(study)
        self.write_results(study, show=True)
        return returns

    def _run_trials(self, study: Any, name: str, space: Dict[str, SearchParam], searched: Dict[str, Any],
                    fixed: List[str], asked: List[Any], returns: List[Sequence[JobReturn]]) -> None:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        config_loader = self.hydra_context.config_loader
        done = 0
        while done < self.n_trials and not study._stop_flag:
            n = min(self.n_jobs, self.n_trials - done)
            if self.max_trials is not None:
                n = min(n, self.max_trials - self._counted(study))
                if n <= 0:
                    log.info("study '%s' holds max_trials=%d trials: nothing left to run", name, self.max_trials)
                    break
            trials, batch = [], []
            for _ in range(n):
                trial = study.ask(fixed_distributions=searched)
                asked.append(trial)
                overrides = fixed + [p.override(trial.params[p.name]) for p in space.values() if p.distribution is not None]
                trial.set_user_attr("overrides", overrides)
                try:  # a sampled config that does not compose (a bad group option) fails alone
                    config_loader.load_sweep_config(self.config, list(overrides))
                except Exception as e:  # noqa: BLE001
                    self._fail(study, trial, f"config does not compose: {type(e).__name__}: {e}")
                    log.warning("trial %d: config does not compose: %s", trial.number, e)
                    continue
                trials.append(trial)
                batch.append(overrides)
            done += n
            if not trials:
                continue
            results = self.launcher.launch(batch, initial_job_idx=trials[0].number)
            for trial, ret in zip(trials, results):
                self._tell(study, trial, ret)
            returns.append(results)
            self.write_results(study)

    def _tell(self, study: Any, trial: Any, ret: JobReturn) -> None:
        output_dir = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir", default=None) if ret.hydra_cfg else None
        if output_dir:
            trial.set_user_attr("output_dir", str(output_dir))
        value, why = job_return_value(ret)
        if why is not None:
            err = ret._return_value
            log.error("trial %d FAILED: %s", trial.number, why,
                      exc_info=(type(err), err, err.__traceback__) if isinstance(err, BaseException) else None)
            self._fail(study, trial, why)
            return
        study.tell(trial, value)
        try:
            best = f" (best {study.best_value:.6g} at trial {study.best_trial.number})"
        except ValueError:
            best = ""
        log.info("trial %d: %s%s", trial.number, f"{value:.6g}", best)

    # -- results -------------------------------------------------------------------------------------
    def results(self, study: Any) -> Dict[str, Any]:
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        counts: Dict[str, int] = {}
        for t in trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        out: Dict[str, Any] = {
            "name": "optuna",
            "study_name": study.study_name,
            "storage": str(self.storage_url) if self.storage_url else None,
            "direction": self.direction,
            "metric": OmegaConf.select(self.config, "optimized_metric", default=None, throw_on_resolution_failure=False),
            "n_trials": len(trials),
            "states": counts,
            "best_trial": None, "best_value": None, "best_params": None, "best_overrides": None,
        }
        if any(t.state == TrialState.COMPLETE for t in trials):
            best = study.best_trial
            out.update(best_trial=best.number, best_value=best.value, best_params=dict(best.params),
                       best_overrides=retrain_overrides(best.user_attrs.get("overrides", [])),
                       best_output_dir=best.user_attrs.get("output_dir"))
        if self.pictures:
            out["pictures"] = dict(self.pictures)
        out["trials"] = [
            {"number": t.number, "state": t.state.name, "value": t.value if t.state == TrialState.COMPLETE else None,
             "params": dict(t.params),
             "duration_s": round(t.duration.total_seconds(), 2) if t.duration is not None else None,
             **{k: t.user_attrs[k] for k in ("output_dir", "error") if k in t.user_attrs}}
            for t in trials
        ]
        return out

    def write_pictures(self, study: Any) -> Dict[str, str]:
        """``<sweep dir>/plots/optuna_history.png`` and ``optuna_importances.png`` with optuna's own matplotlib
        functions (the whole study, earlier sweeps of it included). Importances need two completed trials
        and a parameter that varied: otherwise the reason is noted (``pictures`` in the results file), and
        a picture that fails to draw is a warning, never a failed sweep."""
        assert self.config is not None
        self.pictures = write_optuna_pictures(study, Path(str(self.config.hydra.sweep.dir)) / "plots")
        return self.pictures

    def write_results(self, study: Any, show: bool = False) -> Dict[str, Any]:
        assert self.config is not None
        res = self.results(study)
        path = Path(str(self.config.hydra.sweep.dir)) / self.results_file
        path.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(res), path)
        if show:
            lines = [f"optuna study '{res['study_name']}': {res['n_trials']} trials "
                     f"({', '.join(f'{v} {k}' for k, v in res['states'].items())}); results in {path}"]
            if res["best_trial"] is None:
                lines.append("no trial completed")
            else:
                lines.append(f"best trial {res['best_trial']}: {res['metric'] or 'value'} = {res['best_value']:.6g}")
                lines += [f"  {k}: {v}" for k, v in res["best_params"].items()]
                if res["best_overrides"]:
                    lines.append("retrain it: python train.py " + " ".join(res["best_overrides"]))
            if res["storage"]:
                lines.append(f"resume / add trials: the same command, or hydra.sweeper.storage={res['storage']} "
                             f"hydra.sweeper.study_name={res['study_name']}")
            print("\n".join(lines), flush=True)
        return res



def write_optuna_pictures(study: Any, folder: Path) -> Dict[str, str]:
    """Optimisation history and parameter importances of ``study`` as PNGs in ``folder`` (see
    :meth:`OptunaSweeper.write_pictures`); returns ``{name: file or reason}``."""
    import sys
    import warnings

    from optuna.trial import TrialState

    out: Dict[str, str] = {}
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        return {"optuna_history": "no completed trial yet", "optuna_importances": "no completed trial yet"}
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # optuna draws through pyplot: no display needed
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    folder.mkdir(parents=True, exist_ok=True)
    varied = sorted({k for t in complete for k in t.params
                     if len({repr(u.params.get(k)) for u in complete}) > 1})
    jobs = {"optuna_history": lambda: ovm.plot_optimization_history(study)}
    if len(complete) < 2:
        out["optuna_importances"] = f"needs 2 or more completed trials (the study has {len(complete)})"
    elif not varied:
        out["optuna_importances"] = "no parameter took more than one value in the completed trials"
    else:
        jobs["optuna_importances"] = lambda: ovm.plot_param_importances(study, params=varied)
    for name, draw in jobs.items():
        try:
            # optuna switches pyplot's style (ggplot): the context puts matplotlib's settings back afterwards
            with warnings.catch_warnings(), matplotlib.rc_context():
                warnings.simplefilter("ignore")  # optuna's ExperimentalWarning for its matplotlib functions
                ax = draw()
                fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                fig.set_size_inches(7, 4.2)
                path = folder / f"{name}.png"
                fig.savefig(path, dpi=100, bbox_inches="tight")
                plt.close(fig)
            out[name] = str(path)
        except Exception as e:  # noqa: BLE001
            log.warning("optuna picture %s not drawn: %s: %s", name, type(e).__name__, e)
            out[name] = f"not drawn: {type(e).__name__}: {e}"
    return out
