"""Distillation on 2 CPU processes: DDP (teacher replicated) and FSDP2 (teacher sharded like the student)."""

from __future__ import annotations

import json
import pytest
from safetensors.torch import load_file

from conftest import TINY, run_script
from test_distill import make_teacher

COMMON = [*TINY, "task=text_classification", "data.max_train_samples=128", "data.batch_size=16", "predict.texts=null",
          "trainer.num_sanity_val_steps=0", "callbacks.early_stopping=null", "accelerator=cpu", "trainer.devices=2"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_distillation_runs_on_two_processes(tmp_path, strategy):
    cache = tmp_path / "cache"
    teacher = make_teacher(tmp_path, cache, "text_classification", seed=7)
    if strategy == "ddp":  # hidden states through a learned projection (student width 64, teacher 128)
        extra = ["distill=hidden", "model.size.hidden_size=64", "model.size.intermediate_size=128"]
    else:  # student = teacher layer 1; teacher outputs cached in epoch 1, read in epoch 2
        extra = ["distill=logits", "distill.student.init=teacher_layers", "distill.student.layers=[1]",
                 "distill.cache_teacher=true"]
    run = tmp_path / strategy
    run_script(["train.py", *COMMON, f"strategy={strategy}", "trainer.max_epochs=2", f"distill.teacher={teacher}",
                *extra, f"paths.cache_dir={cache}", f"hydra.run.dir={run}"], timeout=600)
    m = json.loads((run / "metrics.json").read_text())
    assert m["world_size"] == 2.0 and m["train/distill_kd"] > 0
    exported = load_file(run / "export" / "model.safetensors")
    assert not any(k.startswith(("teacher", "distill_proj")) for k in exported)
    ckpt = run / "checkpoints" / "last.ckpt"
    if strategy == "fsdp":
        assert m["train/distill_cache_hit_rate"] > 0
        from torch.distributed.checkpoint import FileSystemReader

        keys = list(FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata)
        assert any("model." in k for k in keys) and not any("teacher." in k for k in keys)
    else:
        import torch

        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        assert not any(k.startswith("teacher.") for k in state) and any(k.startswith("distill_proj.") for k in state)
    run_script(["eval.py", f"run={run}", f"hydra.run.dir={tmp_path / (strategy + '_eval')}"], timeout=300)
    ev = json.loads((tmp_path / (strategy + "_eval") / "metrics.json").read_text())
    assert abs(ev["test/accuracy"] - m["test/accuracy"]) < 1e-6  # eval reads the run as the plain student
