"""The config tree composes for every option of every group, and bad overrides fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from conftest import CONFIG_DIR, compose_cfg

# options that need a value the user must give (``???``), with one that makes them resolvable
REQUIRED = {
    ("data", "local"): ["data.train_file=x.csv"],
    ("data", "hub"): ["data.hub_name=glue"],
    ("model", "hf"): ["model.name_or_path=bert-base-uncased"],
}
# groups whose options are chosen with a group default (not standalone on the command line)
NESTED = {"model/size": ["model=bert"]}
SKIP_GROUPS = {"hydra"}  # the hydra group configures Hydra itself; composed with every other option


def group_options() -> list[tuple[str, str]]:
    out = []
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        rel = path.relative_to(CONFIG_DIR)
        if len(rel.parts) < 2 or rel.name.startswith("_"):
            continue
        group = "/".join(rel.parts[:-1])
        if group in SKIP_GROUPS:
            continue
        out.append((group, rel.stem))
    return out


OPTIONS = group_options()


def test_every_group_is_covered():
    groups = {g for g, _ in OPTIONS}
    for expected in ("task", "data", "model", "model/size", "strategy", "precision", "accelerator", "trainer",
                     "optimizer", "scheduler", "logger", "callbacks", "paths", "extras", "experiment", "debug"):
        assert expected in groups, f"config group {expected} is missing"


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_resolves(group, option, tmp_path):
    overrides = NESTED.get(group, []) + [f"{group}={option}"] + REQUIRED.get((group, option), [])
    if group == "experiment" and option in ("sst2", "stsb"):
        pass  # these only need ../shared/data at run time, not to compose
    cfg = compose_cfg(overrides, tmp_path / "run", tmp_path / "cache")
    container = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert container["task"]["module"]["_target_"].startswith("lmforge.tasks.")
    if group == "precision":
        assert cfg.trainer.precision == option
    if group == "accelerator":
        assert cfg.trainer.accelerator == option
    if group == "model/size":
        assert cfg.model.size.num_layers >= 1


def test_default_is_minilm_on_the_embedded_sample(tmp_path):
    cfg = compose_cfg([], tmp_path / "run", tmp_path / "cache")
    assert cfg.task.name == "text_classification"
    assert cfg.data.source == "sample" and cfg.data.sample == "sentiment"
    assert Path(cfg.model.name_or_path, "config.json").is_file()  # the package's MiniLM folder
    assert cfg.trainer.precision == "32-true"


def test_command_line_overrides_any_value(tmp_path):
    cfg = compose_cfg(["optimizer.lr=3e-5", "data.batch_size=8", "trainer.max_epochs=5", "model=bert",
                       "model/size=small"], tmp_path / "run", tmp_path / "cache")
    assert cfg.optimizer.lr == 3e-5 and cfg.data.batch_size == 8 and cfg.trainer.max_epochs == 5
    assert cfg.model.size.hidden_size == 512


def test_unknown_option_names_the_group_and_lists_choices(tmp_path):
    with pytest.raises((ConfigCompositionException, MissingConfigException)) as e:
        compose_cfg(["model=bertt"], tmp_path / "run", tmp_path / "cache")
    msg = str(e.value)
    assert "bertt" in msg and "model" in msg and "minilm" in msg  # lists the available options


def test_unknown_key_is_rejected(tmp_path):
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg(["data.batchsize=8"], tmp_path / "run", tmp_path / "cache")
    assert "batchsize" in str(e.value)
