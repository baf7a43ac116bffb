"""The path from the config to L.Trainer: checkpoint resolution, runs without validation or test splits,
honest test metrics, and what train() leaves in the run directory."""

from __future__ import annotations

import json
import math
import re
import os
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONFIG_DIR, TINY
from lmforge.train import metric_value, resolve_ckpt_path, train
from lmforge.utils.errors import ConfigError


def test_an_fsdp2_checkpoint_folder_without_strategy_fsdp_is_a_clear_error(make_cfg, tmp_path):
    import torch
    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "epoch00.ckpt"
    dcp.save({"state_dict": {"w": torch.ones(3)}}, checkpoint_id=str(folder), no_dist=True)
    torch.save({"global_step": 1, "loops": {}, "callbacks": {}}, folder / "meta.pt")
    (folder / "COMPLETE").write_text("{}")
    with pytest.raises(ConfigError, match=r"FSDP2 sharded checkpoint folder: resume it with strategy=fsdp"):
        resolve_ckpt_path(make_cfg([f"ckpt_path={folder}"]))
    assert resolve_ckpt_path(make_cfg([f"ckpt_path={folder}", "strategy=fsdp", "accelerator=cpu",
                                       "trainer.devices=2"])) == str(folder)


def _fake_run(log_dir: Path, task: str, name: str, cfg, age: float) -> Path:
    run = log_dir / task / "runs" / name
    (run / "checkpoints").mkdir(parents=True)
    OmegaConf.save(cfg, run / "config.yaml", resolve=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    import torch

    torch.save({"state_dict": {}, "loops": {}, "global_step": 1}, ckpt)
    t = time.time() - age
    os.utime(ckpt, (t, t))
    return ckpt


def test_ckpt_path_last_resumes_the_newest_run_with_this_model_and_data(make_cfg):
    cfg = make_cfg(["task=causal_lm", "ckpt_path=last"], name="now")
    log_dir = Path(cfg.paths.log_dir)
    other_data = make_cfg(["task=causal_lm", "data=text", "data.train_files=corpus.txt"], name="other")
    mine = _fake_run(log_dir, "causal_lm", "old-same", cfg, age=100)
    _fake_run(log_dir, "causal_lm", "new-other", other_data, age=10)  # newer, but another corpus
    assert resolve_ckpt_path(cfg) == str(mine)
    lonely = make_cfg(["task=causal_lm", "ckpt_path=last", "model/size=small"], name="lonely")
    with pytest.raises(ConfigError, match="has this run's model and data config"):
        resolve_ckpt_path(lonely)


def test_a_run_without_validation_or_test_split_trains_and_says_so(make_cfg, tmp_path, capsys):
    rows = [{"text": f"{w} {i}", "label": w} for i in range(40) for w in ("good", "bad")]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_cfg([*TINY, "data=local", f"data.train_file={path}", "data.validation_fraction=0",
                    "trainer.max_epochs=1", "predict.texts=null"])
    metrics = train(cfg)
    out = capsys.readouterr().out
    assert "no labelled validation split" in out and "no labelled test split" in out
    assert not any(k.startswith(("val/", "test/")) for k in metrics), metrics
    assert math.isnan(metric_value(metrics, "val/score"))  # a sweep records the trial as failed, no crash
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("name", ["sst2", "stsb"])
def test_glue_recipes_have_no_test_split(name):
    """GLUE's test labels are hidden: the dev file is the validation split, never reported as test/*."""
    data = OmegaConf.load(CONFIG_DIR / "data" / f"{name}.yaml")
    assert "test_file" not in data or data.test_file is None
    assert re.search(r"test\s+(#\s*)?labels are hidden", (CONFIG_DIR / "data" / f"{name}.yaml").read_text())
