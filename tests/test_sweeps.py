"""Hyperparameter search: lmforge's Optuna sweeper (hparams_search=optuna), the joblib and SLURM launchers,
and the per-job GPU assignment. Studies run the tiny random BERT on the embedded sample for a few steps."""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf, open_dict
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from conftest import CONFIG_DIR, ROOT, TINY, run_script
from hydra_plugins.lmforge_optuna.sweeper import (
    OptunaSweeper,
    default_study_name,
    job_return_value,
    parse_search_space,
    retrain_overrides,
)
from lmforge import sweeps

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _hparams_search() -> str:
    """``hparams_search=optuna`` when train.yaml lists the group (``- hparams_search: null``), else ``+...``."""
    text = (CONFIG_DIR / "train.yaml").read_text()
    return "hparams_search=optuna" if "- hparams_search:" in text else "+hparams_search=optuna"


# a trial = a few optimizer steps of the tiny model (the learning rate is searched, not pinned)
FAST = [o for o in TINY if not o.startswith("optimizer.lr=")] + [
    "trainer.max_epochs=1", "data.max_train_samples=64", "trainer.num_sanity_val_steps=0",
    "trainer.limit_val_batches=2", "predict.texts=null", "export=false", "test=false",
    "logger=none", "callbacks=none",
]


def study_args(tmp_path: Path, *extra: str, db: str = "study.db", name: str = "s") -> list[str]:
    return ["train.py", "-m", _hparams_search(), *FAST, f"paths.log_dir={tmp_path}/logs",
            f"paths.cache_dir={tmp_path}/cache", f"hydra.sweep.dir={tmp_path}/sweep",
            f"hydra.sweeper.storage=sqlite:///{tmp_path}/{db}", f"hydra.sweeper.study_name={name}", *extra]


def load(tmp_path: Path, db: str = "study.db", name: str = "s") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/{db}")


# -- search space, study names, return values (in process, fast) ----------------------------------

def test_search_space_follows_hydra_sweep_grammar():
    space = parse_search_space([
        "optimizer.lr=tag(log, interval(1e-5, 1e-3))", "scheduler.warmup=interval(0, 0.2)",
        "trainer.accumulate_grad_batches=int(interval(1, 4))", "data.batch_size=choice(16, 32, 64)",
        "data.max_length=range(32, 129, 32)", "seed=1,2", "trainer.max_epochs=3",
        "+model.config.dropout=choice([0.1,0.2],[0.3])",
    ])
    assert space["optimizer.lr"].distribution == FloatDistribution(1e-5, 1e-3, log=True)
    assert space["scheduler.warmup"].distribution == FloatDistribution(0.0, 0.2)
    assert space["trainer.accumulate_grad_batches"].distribution == IntDistribution(1, 4)
    assert space["data.batch_size"].distribution == CategoricalDistribution([16, 32, 64])
    assert space["data.max_length"].distribution == IntDistribution(32, 128, step=32)
    assert space["seed"].distribution == CategoricalDistribution([1, 2])
    fixed = space["trainer.max_epochs"]
    assert fixed.distribution is None and fixed.override() == "trainer.max_epochs=3"
    lists = space["model.config.dropout"]  # non-primitive choices travel as override strings
    assert lists.raw and lists.override("[0.3]") == "+model.config.dropout=[0.3]"
    assert space["optimizer.lr"].override(1e-05) == "optimizer.lr=1e-05"
    # a later line (the command line) replaces an earlier one (hydra.sweeper.params)
    assert parse_search_space(["optimizer.lr=interval(0.1, 1)", "optimizer.lr=0.5"])["optimizer.lr"].distribution is None
    with pytest.raises(ValueError, match="glob"):
        parse_search_space(["optimizer=glob(*)"])
    with pytest.raises(ValueError, match="optimizer.lr=tag.log, interval.0, 1"):
        parse_search_space(["optimizer.lr=tag(log, interval(0, 1))"])  # log scale from 0


def test_default_study_name_is_the_command():
    cfg = OmegaConf.create({"task_name": "text_classification", "hydra": {"job": {"name": "train"}}})
    a = default_study_name(cfg, ["+hparams_search=optuna", "model=bert", "trainer.max_epochs=1"])
    assert a == default_study_name(cfg, ["trainer.max_epochs=1", "+hparams_search=optuna", "model=bert"])
    assert a != default_study_name(cfg, ["+hparams_search=optuna", "model=bert", "trainer.max_epochs=2"])
    assert a.startswith("text_classification-")
    assert retrain_overrides(["+hparams_search=optuna", "model=bert"]) == ["model=bert"]


def _ret(status, value) -> JobReturn:
    r = JobReturn(overrides=[], status=status)
    r.return_value = value
    return r


def test_job_return_values():
    assert job_return_value(_ret(JobStatus.COMPLETED, 0.75)) == (0.75, None)
    assert job_return_value(_ret(JobStatus.FAILED, RuntimeError("boom")))[1] == "RuntimeError: boom"
    assert "None" in job_return_value(_ret(JobStatus.COMPLETED, None))[1]
    assert "NaN" in job_return_value(_ret(JobStatus.COMPLETED, math.nan))[1]
    assert "not a number" in job_return_value(_ret(JobStatus.COMPLETED, "x"))[1]


class _FakeLauncher:
    def __init__(self, values):
        self.values, self.batches = list(values), []

    def launch(self, job_overrides, initial_job_idx):
        self.batches.append((initial_job_idx, [list(o) for o in job_overrides]))
        out = []
        for _ in job_overrides:
            v = self.values.pop(0)
            out.append(_ret(JobStatus.FAILED, v) if isinstance(v, BaseException) else _ret(JobStatus.COMPLETED, v))
        return out


def _fake_sweeper(tmp_path, values, **kw) -> tuple[OptunaSweeper, _FakeLauncher]:
    sw = OptunaSweeper(params={"x": "interval(0, 1)", "y": "choice(a, b)"}, storage=f"sqlite:///{tmp_path}/f.db",
                       study_name="fake", sampler={"_target_": "optuna.samplers.RandomSampler", "seed": 0}, **kw)
    sw.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}, "job": {"name": "t"}},
                                  "optimized_metric": "val/score"})
    sw.launcher = _FakeLauncher(values)
    sw.hydra_context = SimpleNamespace(config_loader=SimpleNamespace(load_sweep_config=lambda *a, **k: None))
    return sw, sw.launcher


def test_failed_and_nan_trials_are_recorded_fail_and_the_sweep_goes_on(tmp_path):
    sw, launcher = _fake_sweeper(tmp_path, [ValueError("bad lr"), None, math.nan, 0.25, 0.75], n_trials=5, n_jobs=2)
    sw.sweep(["z=3"])
    trials = load(tmp_path, "f.db", "fake").trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3 + [TrialState.COMPLETE] * 2
    assert "ValueError: bad lr" in trials[0].user_attrs["error"] and "NaN" in trials[2].user_attrs["error"]
    # batches of n_jobs, job numbers = trial numbers, fixed overrides in every job
    assert [(i, len(b)) for i, b in launcher.batches] == [(0, 2), (2, 2), (4, 1)]
    assert all("z=3" in job and any(o.startswith("x=") for o in job) for _, b in launcher.batches for job in b)
    res = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert res.best_trial == 4 and res.best_value == 0.75 and res.states.FAIL == 3
    assert set(res.best_params) == {"x", "y"} and 0 <= res.best_params.x <= 1 and res.best_params.y in ("a", "b")


def test_interrupted_sweep_fails_its_running_trials(tmp_path):
    sw, _ = _fake_sweeper(tmp_path, [0.5, KeyboardInterrupt()], n_trials=3)
    sw.launcher.launch = lambda jobs, initial_job_idx: (_ for _ in ()).throw(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        sw.sweep([])
    (t,) = load(tmp_path, "f.db", "fake").trials
    assert t.state == TrialState.FAIL and t.user_attrs["interrupted"]


def test_resumed_study_fails_stale_trials_reseeds_and_caps(tmp_path):
    sw, _ = _fake_sweeper(tmp_path, [0.1, 0.2], n_trials=2)
    sw.sweep([])
    load(tmp_path, "f.db", "fake").ask()  # left RUNNING, as by a killed sweeper
    sw, _ = _fake_sweeper(tmp_path, [0.3, 0.4], n_trials=2)
    sw.sweep([])
    trials = load(tmp_path, "f.db", "fake").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] + [TrialState.COMPLETE] * 2
    assert trials[2].user_attrs["interrupted"]
    assert trials[3].params != trials[0].params  # same seed, but the resumed sampler is re-seeded
    sw, launcher = _fake_sweeper(tmp_path, [], n_trials=5, max_trials=4)
    sw.sweep([])  # the study holds 4 counted trials already
    assert launcher.batches == [] and len(load(tmp_path, "f.db", "fake").trials) == 5


# -- real studies (subprocess, as a user runs them) -----------------------------------------------

def test_study_runs_and_reports_best_params(tmp_path):
    run_script(study_args(tmp_path, "hydra.sweeper.n_trials=3"))
    assert (tmp_path / "study.db").is_file()
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # task.mode=max
    res = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert res.metric == "val/score" and res.best_value == study.best_value and len(res.trials) == 3
    p = res.best_params
    assert 1e-5 <= p["optimizer.lr"] <= 1e-3 and 0.0 <= p["scheduler.warmup"] <= 0.2 and p["data.batch_size"] in (16, 32, 64)
    assert f"optimizer.lr={p['optimizer.lr']}" in res.best_overrides
    assert not any("hparams_search" in o for o in res.best_overrides)  # the retrain command is a single run
    # each trial ran with its own sampled values, in the sweep subfolder named by its trial number
    for t in study.trials:
        cfg = OmegaConf.load(tmp_path / "sweep" / str(t.number) / "config.yaml")
        assert cfg.optimizer.lr == pytest.approx(t.params["optimizer.lr"]) and cfg.data.batch_size == t.params["data.batch_size"]


@pytest.mark.slow
def test_resume_adds_trials_to_the_same_study(tmp_path):
    args = study_args(tmp_path, "hydra.sweeper.n_trials=2")
    run_script(args)
    assert len(load(tmp_path).trials) == 2
    load(tmp_path).ask()  # a trial left RUNNING, as by a killed sweeper
    run_script(args)  # the same command again
    trials = load(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] + [TrialState.COMPLETE] * 2
    assert trials[2].user_attrs["interrupted"]
    # the resumed sampler does not replay the first invocation's (seeded) trials
    assert trials[3].params != trials[0].params
    # max_trials caps the study (the interrupted trial does not count): nothing left to run
    run_script(args + ["hydra.sweeper.max_trials=4"])
    assert len(load(tmp_path).trials) == 5


def test_failing_trial_is_recorded_and_the_study_goes_on(tmp_path):
    # a command-line sweep joins the space; lr=-1 makes the job raise; the brute-force sampler runs both
    proc = run_script(study_args(tmp_path, "optimizer.lr=choice(-1.0,0.001)", "scheduler.warmup=0.1", "data.batch_size=64",
                                 "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler"))
    trials = load(tmp_path).trials
    assert len(trials) == 2  # the sampler stopped the sweep when the space was exhausted
    by_lr = {t.params["optimizer.lr"]: t for t in trials}
    assert by_lr[-1.0].state == TrialState.FAIL and "learning rate" in by_lr[-1.0].user_attrs["error"]
    assert by_lr[0.001].state == TrialState.COMPLETE
    res = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert res.best_params["optimizer.lr"] == 0.001 and "best trial" in proc.stdout


def _job_interval(job_dir: Path) -> tuple[float, float]:
    # written when the job starts (Hydra) and when train() ends
    return (job_dir / ".hydra" / "config.yaml").stat().st_mtime, (job_dir / "metrics.json").stat().st_mtime


@pytest.mark.slow
def test_joblib_runs_trials_in_parallel(tmp_path):
    run_script(study_args(tmp_path, "hydra/launcher=joblib", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
                          "data.max_train_samples=160", "data.batch_size=16"))
    assert [t.state for t in load(tmp_path).trials] == [TrialState.COMPLETE] * 2
    (s0, e0), (s1, e1) = _job_interval(tmp_path / "sweep" / "0"), _job_interval(tmp_path / "sweep" / "1")
    assert max(s0, s1) < min(e0, e1), f"jobs did not overlap: [{s0}, {e0}] [{s1}, {e1}]"
    hydra_cfg = OmegaConf.load(tmp_path / "sweep" / "multirun.yaml").hydra
    assert "joblib" in hydra_cfg.launcher._target_ and hydra_cfg.launcher.n_jobs == 2  # workers = trials per batch


# -- SLURM: the submission the launcher would make, without a cluster -----------------------------

def _compose_hydra(overrides: list[str], sweep_dir: Path, **hydra_keys):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides + [f"hydra.sweep.dir={sweep_dir}"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.cwd = str(ROOT)
        cfg.hydra.runtime.output_dir = str(sweep_dir)
        cfg.hydra.job.name = "train"
        for k, v in hydra_keys.items():
            OmegaConf.update(cfg.hydra, k, v)
    HydraConfig.instance().set_config(cfg)
    return cfg


def _sbatch_text(cfg, monkeypatch) -> str:
    import submitit
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext

    launcher = Plugins.instance().instantiate_launcher(
        hydra_context=HydraContext(config_loader=None, callbacks=None), task_function=lambda c: None, config=cfg)
    captured = {}

    class Submitted(Exception):
        pass

    def fake_map_array(self, fn, *args):
        captured["text"] = self._executor._make_submission_file_text("python -u -m submitit.core._submit", "uid")
        raise Submitted

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", fake_map_array)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 2))  # "srun is here"
    with pytest.raises(Submitted):
        launcher.launch([["seed=1"]], initial_job_idx=0)
    return captured["text"]


def test_slurm_launcher_requests_the_trainer_layout(tmp_path, monkeypatch):
    cfg = _compose_hydra([_hparams_search(), "hydra/launcher=slurm", "trainer.devices=4", "trainer.num_nodes=2",
                          "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90",
                          "hydra.launcher.setup=[module load cuda]"], tmp_path / "sweep")
    text = _sbatch_text(cfg, monkeypatch)
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu", "--time=90",
                 "--cpus-per-task=8", "--mem=64GB"):
        assert f"#SBATCH {line}\n" in text, f"{line} missing from\n{text}"
    assert "module load cuda" in text and f"{tmp_path}/sweep/.submitit" in text


def test_slurm_launcher_needs_a_device_count(tmp_path):
    cfg = _compose_hydra(["hydra/launcher=slurm"], tmp_path / "sweep")  # trainer.devices=auto
    with pytest.raises(Exception, match=r"trainer.devices=auto: hydra/launcher=slurm needs a whole number"):
        OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


# -- one GPU slot per joblib job -------------------------------------------------------------------

@pytest.fixture
def fresh_pin(monkeypatch):
    monkeypatch.setattr(sweeps, "_PINNED", {})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    yield
    f = sweeps._PINNED.get("file")
    if f is not None:
        f.close()


def test_gpu_slots_and_pick():
    assert sweeps.gpu_slots(["0", "1", "2", "3"], 1) == [["0"], ["1"], ["2"], ["3"]]
    assert sweeps.gpu_slots(["0", "1", "2", "3", "4"], 2) == [["0", "1"], ["2", "3"]]
    assert sweeps.gpu_slots(["0"], 2) == []
    assert sweeps.pick_slot(5, 4, lambda s: True) == (1, True)  # job number modulo slots
    assert sweeps.pick_slot(5, 4, lambda s: s not in (1, 2)) == (3, True)  # the next free one
    assert sweeps.pick_slot(5, 4, lambda s: False) == (1, False)  # all taken: share


@pytest.mark.parametrize("job_num,per_job,expected", [(0, 1, ["0"]), (1, 1, ["1"]), (6, 1, ["2"]), (1, 2, ["2", "3"])])
def test_assign_gpus_sets_cuda_visible_devices(fresh_pin, tmp_path, job_num, per_job, expected):
    assert sweeps.assign_gpus(job_num, per_job, lock_dir=tmp_path) == expected
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ",".join(expected)


def test_assign_gpus_skips_slots_held_by_live_jobs_and_pins_the_process(fresh_pin, tmp_path):
    import fcntl

    held = open(tmp_path / "gpu-1.lock", "a+")  # another worker holds GPU 1
    fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert sweeps.assign_gpus(1, lock_dir=tmp_path) == ["2"]
        # a reused (loky) worker keeps its slot for its next job, whatever the job number
        assert sweeps.assign_gpus(4, lock_dir=tmp_path) == ["2"]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    finally:
        held.close()


def test_assign_device_for_job_only_under_joblib(fresh_pin, monkeypatch, tmp_path):
    monkeypatch.setattr(sweeps.tempfile, "gettempdir", lambda: str(tmp_path))
    cfg = OmegaConf.create({"trainer": {"accelerator": "auto", "devices": "auto"}})
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None
    assert sweeps.assign_device_for_job(cfg) is None  # a plain run: nothing to assign
    _compose_hydra(["hydra/launcher=joblib"], tmp_path / "sweep", **{"mode": "MULTIRUN", "job.num": 3})
    assert sweeps.assign_device_for_job(cfg) == ["3"]
    monkeypatch.setattr(sweeps, "_PINNED", {})
    assert sweeps.assign_device_for_job(OmegaConf.create({"trainer": {"accelerator": "cpu"}})) is None
