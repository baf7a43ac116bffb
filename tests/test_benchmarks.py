"""Prediction batching (longest first, results in input order) and the benchmark runners
(benchmarks/gpu.sh --dry-run, benchmarks/run_all.py)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT, TINY, compose_cfg

from lmforge.tasks.base import batched, length_order
from lmforge.train import build_datamodule, build_module
from lmforge.utils.errors import ConfigError

TEXTS = ["Fine.", "The soup was cold, the staff forgot us twice and the bill was wrong; never again, not even for free.",
         "Good film.", "I loved every minute of this long, slow, beautiful story about two brothers in Lisbon.",
         "Meh", "Peter Smith moved from Berlin to Paris in 1998 to work for Siemens.", "Okay I guess, nothing more."]


def _run(cmd: list[str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def test_length_order_is_longest_first_and_stable():
    examples = [{"input_ids": [1] * n} for n in (3, 7, 3, 1, 7)] + [{"windows": [{"input_ids": [1] * 4}] * 2}]
    assert length_order(examples) == [5, 1, 4, 0, 2, 3]
    assert batched([5, 1, 4, 0, 2], 2) == [[5, 1], [4, 0], [2]]
    with pytest.raises(ConfigError, match="predict.batch_size=0"):
        batched([1], 0)


@pytest.mark.parametrize("task", ["text_classification", "token_classification", "sentence_embedding"])
def test_batched_prediction_keeps_input_order_and_matches_one_by_one(tmp_path, task):
    cfg = compose_cfg([f"task={task}", *TINY], tmp_path / "run", tmp_path / "cache")
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    module = build_module(cfg, facts=dm.model_facts())
    module.configure_model()
    batched_records = module.predict(TEXTS, dm, batch_size=3)
    order = module.predict_order
    stats = module.predict_stats
    saved = [list(map(float, e)) for e in getattr(module, "_embeddings", [])]  # what predictions.npy would hold
    one_by_one = module.predict(TEXTS, dm, batch_size=1)
    assert _close(saved, [list(map(float, e)) for e in getattr(module, "_embeddings", [])])
    assert [r["text"] for r in batched_records] == TEXTS  # the inputs' order, not the length order
    lengths = [len(dm.tokenizer(t)["input_ids"]) for t in TEXTS]
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True) and order != list(range(len(TEXTS)))
    assert stats["texts"] == len(TEXTS) and stats["texts_per_sec"] > 0 and stats["batch_size"] == 3
    assert _close(batched_records, one_by_one), (batched_records, one_by_one)
    if task == "sentence_embedding":  # the saved embeddings follow the inputs too
        assert len(saved) == len(TEXTS)
        alone = module.predict([TEXTS[1]], dm, batch_size=1)
        assert _close(alone[0], batched_records[1])


def test_run_all_rejects_an_unknown_benchmark(tmp_path):
    r = _run([sys.executable, "benchmarks/run_all.py", "--only", "nope", "--out", str(tmp_path / "R.md")], 120)
    assert r.returncode == 2 and "--only nope" in r.stderr and "causal_lm" in r.stderr
    assert not (tmp_path / "R.md").exists()


@pytest.mark.slow
def test_run_all_smoke_writes_its_table(tmp_path):
    out = tmp_path / "RESULTS.md"
    r = _run([sys.executable, "benchmarks/run_all.py", "--smoke", "--only", "causal_lm", "--out", str(out)], 600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = out.read_text()
    assert "Machine:" in text and "torch" in text and "load average" in text
    row = next(line for line in text.splitlines() if line.startswith("| causal-LM"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "plain PyTorch loop" and cells[2].endswith("x") and float(cells[2][:-1]) > 0
    assert cells[7].startswith("ok")


@pytest.mark.slow
def test_gpu_sh_dry_run_writes_its_summary(tmp_path):
    out = tmp_path / "gpu"
    r = _run(["bash", "benchmarks/gpu.sh", "--dry-run", "--out", str(out)], 900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for case in ("gpt2_fsdp", "gpt2_ddp"):
        doc = json.loads((out / f"{case}.json").read_text())
        assert doc["tokens_per_sec"] > 0 and doc["dry_run"] and doc["strategy"] == case.split("_")[1]
    arms = json.loads((out / "minilm.json").read_text())["arms"]
    assert set(arms) == {"lmforge", "trainer"} and all(a["samples_per_sec"] > 0 for a in arms.values())
    summary = (out / "SUMMARY.md").read_text()
    assert "FSDP (FSDP2)" in summary and "DDP" in summary and "lmforge / Trainer" in summary


def test_gpu_sh_rejects_unknown_arguments():
    r = _run(["bash", "benchmarks/gpu.sh", "--bogus"], 60)
    assert r.returncode == 2 and "unknown argument --bogus" in r.stderr
    assert (ROOT / "benchmarks" / "gpu_bench.py").is_file()


def test_eval_reports_prediction_rate(tmp_path, capsys):
    from lmforge.evaluate import evaluate
    from lmforge.train import train

    run = tmp_path / "run"
    train(compose_cfg(["task=text_classification", *TINY, "trainer.max_steps=2", "test=false",
                       "predict.texts=null"], run, tmp_path / "cache"))
    cfg = compose_cfg([f"run={run}", "split=null", f"predict.texts={json.dumps(TEXTS)}", "predict.batch_size=2"],
                      tmp_path / "eval", tmp_path / "cache", config_name="eval")
    metrics = evaluate(cfg)
    assert [r["text"] for r in metrics["predictions"]] == TEXTS
    assert metrics["predict/texts"] == len(TEXTS) and metrics["predict/batch_size"] == 2
    assert metrics["predict/texts_per_sec"] > 0
    assert f"predicted {len(TEXTS)} inputs in" in capsys.readouterr().out
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["predict/texts_per_sec"] == metrics["predict/texts_per_sec"]
