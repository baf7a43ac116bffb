"""Shared fixtures: configs composed from the real tree, run directories under tmp_path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig

import lmforge  # noqa: F401  (resolvers)
from lmforge.utils.compose import compose_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
SHARED_DATA = Path(os.environ.get("LMFORGE_DATA_DIR", ROOT.parent / "shared" / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# Under pytest-xdist each worker (and every `python train.py` it starts) gets its share of the cores: two workers
# on two cores with two torch threads each would oversubscribe them. An explicit OMP_NUM_THREADS wins.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, _cpus() // _WORKERS))
if _WORKERS > 1:
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def compose_cfg(overrides: list[str], out_dir: Path, cache_dir: Path, config_name: str = "train") -> DictConfig:
    """The config ``python train.py <overrides>`` would get, with its run directory at ``out_dir``."""
    return compose_config(overrides, out_dir, cache_dir, SHARED_DATA, config_name)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token_cache")


@pytest.fixture(scope="module", autouse=True)
def _drop_module_runs(request, tmp_path_factory):
    """Delete the folders a test file's module-scoped fixtures made (``tmp_path_factory.mktemp``) once its tests are
    done, unless one of them failed: a file's shared MiniLM runs hold hundreds of MB, and the whole suite's would
    fill a small CI disk by the end. One test's ``tmp_path`` goes when it passes (``tmp_path_retention_policy``)."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed != failed:
        return  # keep what the failing tests left, to look at
    for d in set(base.iterdir()) - before:
        if not d.name.startswith("token_cache"):  # the session's tokenization cache, shared by every file
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_cfg(tmp_path, cache_dir):
    def _make(overrides: list[str] | None = None, name: str = "run", config_name: str = "train") -> DictConfig:
        return compose_cfg(list(overrides or []), tmp_path / name, cache_dir, config_name)

    return _make


def run_script(args: list[str], cwd: Path = ROOT, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python <args>`` as a user would; fail with its output when it fails."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}\n"
                             f"--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def needs_shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real dataset not found at {path} (../shared/data is beside the project only in CI/dev checkouts)")
    return path


TINY = ["model=bert", "model/size=tiny", "optimizer.lr=1e-3", "extras.print_config=false"]


# -- pytest-xdist (``-n auto`` in pyproject's addopts) --------------------------------------------------------

def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker a core, at most 8; none (the tests run in this process, no worker start-up) when the
    command names tests of one file only. PYTEST_XDIST_AUTO_NUM_WORKERS sets the number; ``-n 0`` turns it off."""
    env = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if env:
        return int(env)
    files = {a.split("::")[0] for a in config.args}
    if len(files) == 1 and next(iter(files)).endswith(".py"):
        return 0
    return max(1, min(_cpus(), 8))


# whole modules go to one worker (--dist loadfile: their module-scoped runs are made once); the longest first,
# so that the README test does not start last and leave the other workers idle at the end
FIRST = ["test_readme.py", "test_resume.py"]


def pytest_collection_modifyitems(config, items) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: the rest keep their order
