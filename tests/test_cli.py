"""The command line as a user meets it: user errors read as errors (``error: <message>``, exit status 2,
no traceback) from train.py, eval.py and the console scripts, in sweeps and in DDP's child processes;
crashes keep their traceback; sweeps and Optuna studies run with the default paths; the wheel carries
the config tree and runs outside the clone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hydra.errors import InstantiationException

from conftest import CONFIG_DIR, ROOT, TINY
from lmforge.cli import UserError, config_dir, user_error_message
from lmforge.utils.errors import ConfigError, DataError, LMForgeError

FAST = ["trainer.max_epochs=1", "data.max_train_samples=64", "predict.texts=null", "export=false"]

PROBE = '''
import lightning as L
from lmforge.utils.errors import ConfigError


class Mistake(L.Callback):
    def on_fit_start(self, trainer, pl_module):  # after DDP has started its processes: every rank raises
        raise ConfigError("probe.value=7: a user's mistake found once training started")


class Crash(L.Callback):
    def on_fit_start(self, trainer, pl_module):
        raise RuntimeError("probe crash")
'''


def run_cmd(args: list[str], cwd: Path = ROOT, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command (``python ...`` when the first argument is a script) and return it, whatever its status."""
    cmd = [sys.executable, *args] if args[0].endswith(".py") or args[0] == "-m" else args
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _probe(tmp_path: Path) -> dict:
    (tmp_path / "probe_callbacks.py").write_text(PROBE)
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def assert_user_error(proc: subprocess.CompletedProcess, message: str) -> None:
    out = f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    assert proc.returncode == 2, out
    assert f"error: {message}" in proc.stderr, out
    assert "Traceback" not in proc.stderr + proc.stdout, out


# -- which exceptions are a user's mistake (in process) -----------------------------------------------

def test_user_errors_are_lmforge_errors_and_its_missing_files():
    assert user_error_message(ConfigError("optimizer.lr=-1: expected > 0")) == "optimizer.lr=-1: expected > 0"
    try:  # Hydra wraps what a _target_ raises
        try:
            raise DataError("data/train.tsv:3: bad row")
        except DataError as inner:
            raise InstantiationException("Error in call to target") from inner
    except InstantiationException as e:
        assert user_error_message(e) == "data/train.tsv:3: bad row"
    from lmforge.data import sources

    with pytest.raises((FileNotFoundError, LMForgeError)) as lm:
        sources.check_exists(str(ROOT / "no-such-file.csv"), "data.train_file")
    assert "no-such-file.csv" in user_error_message(lm.value)
    with pytest.raises(FileNotFoundError) as other:  # raised outside lmforge: a crash
        open(ROOT / "no-such-file.csv")
    assert user_error_message(other.value) is None
    assert user_error_message(RuntimeError("boom")) is None
    err = UserError("a message", "ConfigError")
    assert str(err) == "error: a message" and user_error_message(err) == "a message"
    import pickle  # joblib hands a failed job's exception back pickled

    back = pickle.loads(pickle.dumps(err))
    assert str(back) == "error: a message" and back.kind == "ConfigError"


# -- train.py / eval.py / console scripts ----------------------------------------------------------

def test_data_error_is_one_line_with_status_2(tmp_path):
    missing = tmp_path / "missing.csv"
    proc = run_cmd(["train.py", *TINY, "data=local", f"data.train_file={missing}", f"hydra.run.dir={tmp_path}/run"])
    assert_user_error(proc, f"data.train_file={missing}: file not found")
    # the run's log keeps it too (cluster jobs)
    assert f"error: data.train_file={missing}" in (tmp_path / "run" / "train.log").read_text()


def test_hydra_full_error_shows_the_traceback(tmp_path):
    missing = tmp_path / "missing.csv"
    proc = run_cmd(["train.py", *TINY, "data=local", f"data.train_file={missing}", f"hydra.run.dir={tmp_path}/run"],
                   env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    trace, _, last = proc.stderr.rpartition("Traceback (most recent call last):")[2].rpartition("\nerror: ")
    assert trace.count('File "') >= 3  # the whole trace, down to where lmforge raised it
    assert last.startswith(f"data.train_file={missing}: file not found")


def test_a_crash_keeps_its_traceback(tmp_path):
    proc = run_cmd(["train.py", *TINY, *FAST, "+callbacks.probe._target_=probe_callbacks.Crash",
                    f"hydra.run.dir={tmp_path}/run"], env=_probe(tmp_path))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" in proc.stderr and "RuntimeError: probe crash" in proc.stderr
    assert "error: " not in proc.stderr


def test_failed_job_of_a_sweep_is_a_user_error(tmp_path):
    proc = run_cmd(["train.py", "-m", *TINY, "data=local", f"data.train_file={tmp_path}/a.csv,{tmp_path}/b.csv",
                    f"hydra.sweep.dir={tmp_path}/sweep"])
    assert_user_error(proc, f"data.train_file={tmp_path}/a.csv: file not found")


def test_eval_reports_user_errors(tmp_path):
    assert_user_error(run_cmd(["eval.py", f"run={tmp_path}/nothing", f"hydra.run.dir={tmp_path}/eval"]),
                      f"run={tmp_path}/nothing")


@pytest.mark.slow  # three more processes: the installed console scripts
def test_console_scripts_report_user_errors(tmp_path):
    scripts = Path(sys.executable).parent
    if not (scripts / "lmforge-train").exists():
        pytest.skip("console scripts not installed (pip install -e .)")
    missing = tmp_path / "missing.csv"
    assert_user_error(run_cmd([str(scripts / "lmforge-train"), *TINY, "data=local", f"data.train_file={missing}",
                               f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path),
                      f"data.train_file={missing}: file not found")
    assert (tmp_path / "run" / "train.log").is_file()  # the job is named train, as with train.py
    assert_user_error(run_cmd([str(scripts / "lmforge-eval"), f"run={tmp_path}/nothing"], cwd=tmp_path),
                      f"run={tmp_path}/nothing")


@pytest.mark.slow
def test_user_error_in_ddp_child_processes(tmp_path):
    # Lightning's DDP starts rank 1 by re-running train.py: it must report the same way, and rank 0 too
    proc = run_cmd(["train.py", *TINY, *FAST, "strategy=ddp", "accelerator=cpu", "trainer.devices=2",
                    "+callbacks.probe._target_=probe_callbacks.Mistake", f"hydra.run.dir={tmp_path}/run"],
                   env=_probe(tmp_path))
    assert_user_error(proc, "probe.value=7: a user's mistake found once training started")


# -- default paths: sweeps and Optuna studies ------------------------------------------------------

@pytest.mark.slow  # two sweeps in subprocesses; a real Optuna study runs in the fast subset (test_sweeps.py)
def test_sweep_and_optuna_run_with_default_paths(tmp_path):
    """``python train.py -m ...`` and ``hparams_search=optuna`` with no hydra.sweep.dir / paths.*: the
    sweep directory and the study's storage resolve before any job exists (under <cwd>/logs)."""
    env = {k: v for k, v in os.environ.items() if k != "LMFORGE_ROOT"}
    tiny = [*TINY, *FAST, "test=false", "logger=none", "trainer.limit_val_batches=2"]
    train = str(ROOT / "train.py")
    # cwd: a directory outside the repo, so nothing is left under the repo's logs/
    proc = subprocess.run([sys.executable, train, "-m", "seed=1", *tiny], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (job,) = list((tmp_path / "logs" / "text_classification" / "multiruns").glob("*/0"))
    assert (job / "metrics.json").is_file() and (job / "config.yaml").is_file()
    proc = subprocess.run([sys.executable, train, "hparams_search=optuna", "hydra.sweeper.n_trials=1", *tiny],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "logs" / "text_classification" / "optuna.db").is_file()
    assert list((tmp_path / "logs" / "text_classification" / "multiruns").glob("*/optimization_results.yaml"))
    assert "best trial 0" in proc.stdout


# -- the wheel -------------------------------------------------------------------------------------

def test_config_dir_is_the_shipped_tree():
    assert Path(config_dir()).resolve() == CONFIG_DIR.resolve()
    assert Path(config_dir()).resolve().parent.name == "lmforge"  # inside the package


@pytest.mark.slow
def test_wheel_carries_the_config_tree_and_runs_outside_the_clone(tmp_path):
    # build from a copy of the sources: no stale build/ folder, nothing written into the checkout
    src = tmp_path / "src_copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel"), str(src)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = list((tmp_path / "wheel").glob("lmforge-*.whl"))
    shipped = {n[len("lmforge/configs/"):] for n in zipfile.ZipFile(wheel).namelist() if n.startswith("lmforge/configs/")}
    tree = {p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml")}
    assert tree and tree <= shipped, f"not in the wheel: {sorted(tree - shipped)}"
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "-q", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, timeout=600)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("LMFORGE_ROOT", "LMFORGE_CONFIG_DIR")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    where = subprocess.run([sys.executable, "-c", "import lmforge.cli as c; print(c.__file__); print(c.config_dir())"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(p).resolve().is_relative_to(site.resolve()) for p in where), where
    script = Path(sys.executable).parent / "lmforge-train"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "lmforge.cli"]
    proc = subprocess.run([*cmd, "debug=fdr", "model=bert", "model/size=tiny", "extras.print_config=false"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run,) = list((elsewhere / "logs" / "text_classification" / "runs").iterdir())
    assert (run / "metrics.json").is_file() and (run / "train.log").is_file()


@pytest.mark.parametrize("choice", ["cpu", "auto"])
def test_eval_takes_the_accelerator_group_as_train_does(tmp_path, choice):
    """`eval.py accelerator=cpu` picks the group option (it once collided with a plain key of eval.yaml)."""
    from conftest import compose_cfg

    cfg = compose_cfg([f"accelerator={choice}", "split=null"], tmp_path / "eval", tmp_path / "cache",
                      config_name="eval")
    assert cfg.trainer.accelerator == choice
