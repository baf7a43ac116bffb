"""trainer.compile: torch.compile of the trained model inside configure_model; checkpoints and the export stay clean."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY
from lmforge.faults import split_trainer_config
from lmforge.tasks.base import compile_options
from lmforge.train import train
from lmforge.utils.errors import ConfigError

SMALL = [*TINY, "data.max_train_samples=32", "data.batch_size=8", "data.max_length=32", "trainer.max_steps=3",
         "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0", "test=false"]


def test_compile_is_off_by_default_and_not_an_l_trainer_argument(make_cfg):
    cfg = make_cfg(TINY)
    assert cfg.trainer.compile is False and cfg.trainer.compile_mode is None
    assert compile_options(cfg.trainer) is None
    rest, own = split_trainer_config(cfg.trainer)
    assert "compile" not in rest and "compile_mode" not in rest
    assert own["compile"] is False


def test_compile_values_are_checked():
    assert compile_options({"compile": True, "accelerator": "cpu"}) == {"mode": None}
    assert compile_options({"compile": "true", "compile_mode": "max-autotune-no-cudagraphs",
                            "accelerator": "cpu"}) == {"mode": "max-autotune-no-cudagraphs"}
    with pytest.raises(ConfigError, match=r"trainer.compile=maybe: expected true or false"):
        compile_options({"compile": "maybe"})
    with pytest.raises(ConfigError, match=r"trainer.compile_mode=fast: expected null or one of default"):
        compile_options({"compile": True, "compile_mode": "fast"})


def test_compile_on_cpu_without_a_cxx_compiler_fails_early_saying_why(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ConfigError, match=r"trainer.compile=true: torch.compile on a CPU .* no C\+\+ compiler"):
        compile_options({"compile": True, "accelerator": "cpu"})
    assert compile_options({"compile": False, "accelerator": "cpu"}) is None  # off: nothing to check


@pytest.mark.slow  # ~60 s: inductor compiles the forward and backward graphs on the CPU
@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="needs a C++ compiler")
def test_compiled_run_trains_checkpoints_and_exports_clean_weights(make_cfg, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    compiled = []
    original = torch.nn.Module.compile

    def spy(self, *args, **kwargs):
        compiled.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", spy)
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    cfg = make_cfg([*SMALL, "trainer.compile=true"])
    metrics = train(cfg)
    assert compiled == ["BertForSequenceClassification"]  # the HF model, once, in configure_model
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo really traced it
    assert metrics["val/loss"] == metrics["val/loss"]  # finite, a number

    out = Path(cfg.paths.output_dir)
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 3
    keys = list(saved["state_dict"])
    assert keys and not [k for k in keys if "_orig_mod" in k]
    assert all(k.startswith(("model.", "metrics.")) for k in keys)

    model, info = AutoModelForSequenceClassification.from_pretrained(out / "export", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    exported = model.state_dict()
    best = torch.load(metrics_best(out), map_location="cpu", weights_only=False)["state_dict"]
    name = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(exported[name], best[f"model.{name}"])


def metrics_best(out: Path) -> Path:
    import json

    best = json.loads((out / "metrics.json").read_text()).get("best_checkpoint")
    return Path(best) if best else out / "checkpoints" / "last.ckpt"


def test_bf16_mixed_with_the_default_fused_adamw_clips_gradients(make_cfg, monkeypatch):
    # Lightning's MixedPrecision refuses any fused optimizer with gradient clipping; bf16-mixed has no loss
    # scaler, so lmforge clips as in 32-bit and keeps the fused AdamW
    clipped = []
    original = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        clipped.append(float(max_norm))
        return original(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    fused = []
    original_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        fused.append(bool(self.defaults.get("fused")))
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    cfg = make_cfg([*SMALL, "trainer.precision=bf16-mixed", "export=false", "predict.texts=[]"])
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.optimizer.get("fused", "absent") is None
    metrics = train(cfg)
    assert clipped == [1.0, 1.0, 1.0]  # one clip per optimizer step
    assert fused and all(fused)
    assert metrics["val/loss"] == metrics["val/loss"]
