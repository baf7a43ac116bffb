"""Shared fixtures: configs composed from the real tree, run directories under tmp_path."""

from __future__ import annotations

import os
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


def compose_cfg(overrides: list[str], out_dir: Path, cache_dir: Path, config_name: str = "train") -> DictConfig:
    """The config ``python train.py <overrides>`` would get, with its run directory at ``out_dir``."""
    return compose_config(overrides, out_dir, cache_dir, SHARED_DATA, config_name)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token_cache")


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
