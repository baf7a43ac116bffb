"""``predict.precision`` (auto | 32 | bf16): how ``auto`` is decided, bf16 prediction against 32-bit on a trained tiny
model, eval.py's setting (its ConfigError, ``predict/precision`` in metrics.json, metrics that keep the run's own
precision) and the question-answering predictor's ``precision="auto"``."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY, compose_cfg
from lmforge import serving
from lmforge.utils.errors import ConfigError

TEXTS = ["I really enjoyed this film.", "What a waste of time.", "The soup was cold and bland.",
         "A charming, beautiful little hotel.", "Terrible service, rude staff, never again.",
         "Lovely views and a friendly, helpful crew who made the whole trip a joy from start to finish.",
         "Boring.", "The plot was thin but the acting saved it.", "Great value for the money.",
         "It broke after two days and support never answered my emails."]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny BERT trained for two epochs on 800 texts of the embedded sentiment sample (test accuracy about 0.97;
    one epoch leaves it at chance, where bf16 and 32-bit agree trivially)."""
    from lmforge.train import train

    base = tmp_path_factory.mktemp("precision")
    cfg = compose_cfg([*TINY, "trainer.max_epochs=2", "data.max_train_samples=800", "predict.texts=null"],
                      base / "run", base / "cache")
    metrics = train(cfg)
    assert metrics["test/accuracy"] >= 0.85, metrics  # a model that decides: the agreement checks below mean something
    return cfg, base / "run", metrics


@pytest.fixture(scope="module")
def tiny_module(tiny_run):
    from lmforge.checkpoints import load_checkpoint
    from lmforge.train import build_datamodule, build_module

    cfg, run, _ = tiny_run
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    module = build_module(cfg, facts=dm.model_facts())
    module.configure_model()
    best = json.loads((run / "metrics.json").read_text())["best_checkpoint"]
    module.load_state_dict(load_checkpoint(best)["state_dict"])
    return module, dm


def sample_texts(n: int) -> list[str]:
    from lmforge.utils.compose import project_root

    f = project_root() / "src" / "lmforge" / "samples" / "sentiment" / "test.jsonl"
    rows = [json.loads(line)["text"] for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:n]


# -- deciding auto --------------------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [("auto", "auto"), (None, "auto"), (32, "32"), ("32", "32"),
                                             ("bf16", "bf16"), ("BF16", "bf16")])
def test_check_precision_accepts_the_choices(value, expected):
    assert serving.check_precision(value) == expected


@pytest.mark.parametrize("value", ["fp16", "16", "bfloat16", ""])
def test_check_precision_names_the_key_value_and_choices(value):
    with pytest.raises(ConfigError, match=rf"predict\.precision={value}: expected one of auto, 32, bf16"):
        serving.check_precision(value)


@pytest.mark.parametrize("capability, flags, expected", [
    ("AVX512", {"avx512f", "amx_tile", "amx_bf16", "avx512_bf16"}, True),   # Sapphire Rapids and later
    ("AVX512", {"avx512f", "avx512_bf16"}, False),                          # Cooper Lake, Zen 4: measured slower
    ("AVX512", {"avx512f", "avx512bw"}, False),                              # Skylake/Ice Lake: no bf16 instructions
    ("AVX2", {"avx2", "avx512_bf16"}, False),                                # torch's AVX-512 kernels switched off
    ("DEFAULT", set(), False),                                               # no /proc/cpuinfo (macOS, Windows)
])
def test_bf16_is_faster_on_cpus_with_amx(monkeypatch, capability, flags, expected):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(serving, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(serving, "amx_usable", lambda: True)
    assert serving.bf16_is_faster("cpu") is expected
    assert serving.resolve_precision("auto", "cpu") == ("bf16" if expected else "32")
    assert serving.resolve_precision("32", "cpu") == "32" and serving.resolve_precision("bf16", "cpu") == "bf16"


def test_amx_that_the_os_refuses_keeps_32_bit(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(serving, "cpu_flags", lambda: frozenset({"avx512f", "amx_tile", "amx_bf16"}))
    monkeypatch.setattr(serving, "amx_usable", lambda: False)  # e.g. a Linux kernel before 5.16
    assert serving.resolve_precision("auto", "cpu") == "32"


def test_bf16_is_faster_on_cuda_only_with_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert serving.resolve_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100 or T4
    assert serving.resolve_precision("auto", "cuda") == "32"
    assert serving.resolve_precision("auto", "mps") == "32"


def test_this_machines_cpu_flags_are_read():
    from pathlib import Path

    flags = serving.cpu_flags()
    assert isinstance(flags, frozenset)
    info = Path("/proc/cpuinfo")
    if info.is_file() and "\nflags" in "\n" + info.read_text(errors="replace"):  # Linux x86: flags are listed
        assert "fpu" in flags and len(flags) > 10


# -- prediction ---------------------------------------------------------------------------------
def test_bf16_predictions_agree_with_32_bit_ones(tiny_module, monkeypatch):
    module, dm = tiny_module
    texts = TEXTS + sample_texts(90)
    exact = module.predict(texts, dm, batch_size=16)  # the library default: 32-bit, as before this setting
    assert module.predict_stats["precision"] == "32"
    again = module.predict(texts, dm, batch_size=16, precision="32")
    assert again == exact
    half = module.predict(texts, dm, batch_size=16, precision="bf16")
    assert module.predict_stats["precision"] == "bf16"
    assert [r["text"] for r in half] == texts
    same = sum(a["label"] == b["label"] for a, b in zip(exact, half))
    assert same >= 0.95 * len(texts), (same, len(texts))
    assert max(abs(a["score"] - b["score"]) for a, b in zip(exact, half)) < 0.05
    assert any(a["score"] != b["score"] for a, b in zip(exact, half))  # bf16 really ran: not bit-identical

    monkeypatch.setattr(serving, "bf16_is_faster", lambda device="cpu": True)
    assert module.predict(texts, dm, batch_size=16, precision="auto") == half
    assert module.predict_stats["precision"] == "bf16"
    module.predict_precision = "auto"  # what eval.py sets from predict.precision
    try:
        assert module.predict(texts[:4], dm)[0] == half[0] and module.predict_stats["precision"] == "bf16"
        monkeypatch.setattr(serving, "bf16_is_faster", lambda device="cpu": False)
        assert module.predict(texts, dm, batch_size=16) == exact
        assert module.predict_stats["precision"] == "32"
    finally:
        module.predict_precision = "32"
    with pytest.raises(ConfigError, match="predict.precision=half"):
        module.predict(texts, dm, precision="half")


def test_token_classification_predicts_in_either_precision(make_cfg, monkeypatch):
    from lmforge.train import build_datamodule, build_module

    cfg = make_cfg([*TINY, "task=token_classification"])
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    torch.manual_seed(0)
    module = build_module(cfg, facts=dm.model_facts())
    module.configure_model()
    texts = ["Angela Merkel visited Paris on Monday.", "The United Nations met in Geneva.", "No names here."]
    exact = module.predict(texts, dm)
    assert module.predict_stats["precision"] == "32"
    half = module.predict(texts, dm, precision="bf16")
    assert module.predict_stats["precision"] == "bf16"
    assert [r["text"] for r in half] == texts and all(set(r) == {"text", "tagged", "entities"} for r in half)
    monkeypatch.setattr(serving, "bf16_is_faster", lambda device="cpu": False)
    assert module.predict(texts, dm, precision="auto") == exact and module.predict_stats["precision"] == "32"


# -- eval.py ------------------------------------------------------------------------------------
def eval_cfg(run, tmp_path, *overrides):
    return compose_cfg([f"run={run}", *overrides], tmp_path / "eval", tmp_path / "cache", config_name="eval")


def test_eval_refuses_a_bad_precision_before_loading_anything(tmp_path):
    from lmforge.evaluate import evaluate

    cfg = eval_cfg(tmp_path / "no-such-run", tmp_path, "predict.precision=fp16")
    with pytest.raises(ConfigError, match=r"predict\.precision=fp16: expected one of auto, 32, bf16"):
        evaluate(cfg)  # not the missing run's FileNotFoundError: the setting is checked first


def test_eval_predicts_in_the_chosen_precision_and_keeps_metrics_in_the_runs(tiny_run, tiny_module, tmp_path,
                                                                             monkeypatch, capsys):
    from lmforge.evaluate import evaluate

    _, run, train_metrics = tiny_run
    module, dm = tiny_module
    texts = TEXTS
    reference = module.predict(texts, dm, precision="32")  # the 32-bit path, unchanged by this setting
    exact = evaluate(eval_cfg(run, tmp_path / "a", "split=test", "predict.precision=32",
                              f"predict.texts={json.dumps(texts)}"))
    assert exact["predictions"] == reference
    saved = json.loads((tmp_path / "a" / "eval" / "metrics.json").read_text())
    assert saved["predict/precision"] == "32"
    assert "32-bit" in capsys.readouterr().out

    monkeypatch.setattr(serving, "bf16_is_faster", lambda device="cpu": True)
    auto = evaluate(eval_cfg(run, tmp_path / "b", "split=test", f"predict.texts={json.dumps(texts)}"))  # default
    saved = json.loads((tmp_path / "b" / "eval" / "metrics.json").read_text())
    assert saved["predict/precision"] == "bf16"
    assert "bf16 autocast; predict.precision=32 for exact 32-bit" in capsys.readouterr().out
    assert sum(a["label"] == b["label"] for a, b in zip(auto["predictions"], reference)) >= len(texts) - 1
    # the test split's metrics are computed in the run's own precision (32-true), whatever predict.precision says
    assert auto["test/accuracy"] == pytest.approx(train_metrics["test/accuracy"], abs=1e-6)
    assert auto["test/accuracy"] == pytest.approx(exact["test/accuracy"], abs=1e-9)
    assert auto["test/loss"] == pytest.approx(exact["test/loss"], abs=1e-9)


# -- question answering's predictor ---------------------------------------------------------------
def test_question_answering_predictor_takes_auto(make_cfg, tmp_path, monkeypatch):
    from lmforge.tasks.question_answering.predictor import QuestionAnsweringPredictor
    from lmforge.train import build_datamodule, build_module

    cfg = make_cfg([*TINY, "task=question_answering"])
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    torch.manual_seed(0)
    module = build_module(cfg, facts=dm.model_facts())
    module.configure_model()
    folder = module.export(tmp_path / "export", dm.tokenizer)
    inputs = [{"question": "Who designed the bridge?", "context": "The bridge was designed by Mara Quell in 1871."}]
    monkeypatch.setattr(serving, "bf16_is_faster", lambda device="cpu": True)
    qa = serving.load(folder, precision="auto")
    assert qa.precision == "bf16"
    answer = qa.predict(inputs)[0]
    assert inputs[0]["context"][answer["start"]: answer["end"]] == answer["answer"]
    monkeypatch.setattr(serving, "bf16_is_faster", lambda device="cpu": False)
    assert QuestionAnsweringPredictor(folder, precision="auto").precision == "32"
    assert QuestionAnsweringPredictor(folder).precision == "32"  # the library default: exact 32-bit
    with pytest.raises(ValueError, match="precision='fp16': expected one of 'auto', '32', 'bf16'"):
        QuestionAnsweringPredictor(folder, precision="fp16")
