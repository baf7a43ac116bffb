"""Text classification end to end: train, test, export, reload in transformers, eval.py, DDP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY, needs_shared, run_script
from lmforge.train import train

NEW_TEXTS = ["I really enjoyed this film.", "What a waste of time.", "The soup was cold and bland.",
             "A charming, beautiful little hotel."]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A short real MiniLM fine-tuning run on the embedded sample, shared by the tests below."""
    from conftest import compose_cfg

    base = tmp_path_factory.mktemp("finished")
    cfg = compose_cfg(["trainer.max_epochs=1", "data.max_train_samples=800", "optimizer.lr=1e-4", f"predict.texts={json.dumps(NEW_TEXTS)}"],
                      base / "run", base / "cache")
    metrics = train(cfg)
    return base / "run", metrics


@pytest.mark.parametrize("overrides", [[], TINY], ids=["minilm", "bert-tiny"])
def test_fast_dev_run(make_cfg, overrides):
    cfg = make_cfg(overrides + ["debug=fdr"])
    metrics = train(cfg)
    assert "test/accuracy" in metrics and 0.0 <= metrics["test/accuracy"] <= 1.0


@pytest.mark.slow  # a learning test: 4 epochs of a from-scratch model
def test_tiny_model_learns_the_sample(make_cfg):
    metrics = train(make_cfg(TINY + ["trainer.max_epochs=4", "predict.texts=null"]))
    assert metrics["test/accuracy"] >= 0.85, metrics
    assert metrics["test/mcc"] >= 0.7
    assert metrics["params/non_embedding"] < 1_000_000


@pytest.mark.slow
def test_run_directory_holds_everything(finished_run):
    run, metrics = finished_run
    assert metrics["test/accuracy"] >= 0.9, metrics  # MiniLM learns the sample in one short epoch
    for name in ("config.yaml", "metrics.json", "predictions.jsonl", "predictions.tsv", "export/config.json",
                 "export/model.safetensors",
                 "export/tokenizer.json", "checkpoints/last.ckpt", "csv/metrics.csv"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "metrics.json").read_text())
    assert Path(saved["best_checkpoint"]).is_file()
    preds = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert [p["label"] for p in preds] == ["positive", "negative", "negative", "positive"]
    assert [p["text"] for p in preds] == NEW_TEXTS
    # GLUE's submission format beside it
    assert (run / "predictions.tsv").read_text().splitlines() == [
        "index\tprediction", "0\tpositive", "1\tnegative", "2\tnegative", "3\tpositive"]


@pytest.mark.slow
def test_export_reloads_in_transformers_with_the_same_predictions(finished_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    run, _ = finished_run
    model = AutoModelForSequenceClassification.from_pretrained(run / "export")
    tok = AutoTokenizer.from_pretrained(run / "export")
    assert model.config.id2label == {0: "negative", 1: "positive"}
    clf = pipeline("text-classification", model=model, tokenizer=tok, device="cpu")
    ours = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    theirs = clf(NEW_TEXTS)
    assert [t["label"] for t in theirs] == [o["label"] for o in ours]
    for t, o in zip(theirs, ours):
        assert abs(t["score"] - o["score"]) < 1e-4


@pytest.mark.slow
def test_eval_script_evaluates_and_predicts_from_the_run_config(finished_run, tmp_path):
    run, metrics = finished_run
    texts = tmp_path / "texts.txt"
    texts.write_text("I really enjoyed this film.\nWhat a waste of time.\n")
    out = tmp_path / "preds.jsonl"
    run_script(["eval.py", f"run={run}", "split=test", f"predict.file={texts}", f"predict.output={out}",
                f"hydra.run.dir={tmp_path / 'eval'}"])
    preds = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["label"] for p in preds] == ["positive", "negative"] and all(0.5 < p["score"] <= 1 for p in preds)
    ev = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert abs(ev["test/accuracy"] - metrics["test/accuracy"]) < 1e-6  # same model, same split, same number
    report = (tmp_path / "eval" / "report.md").read_text()  # the metrics, named by their split, and the speed
    assert "| labelled data | the run's test split |" in report and "| test/accuracy |" in report
    assert "| predict/texts_per_sec |" in report and f"First lines of `{out}`" in report


@pytest.mark.slow
def test_eval_on_a_file_given_on_the_command_line(finished_run, tmp_path):
    run, _ = finished_run
    f = tmp_path / "new.csv"
    f.write_text("review,sentiment\nI loved this lovely book.,positive\nA dull and boring movie.,negative\n"
                 "Truly wonderful concert.,positive\nThe laptop was broken and awful.,negative\n")
    run_script(["eval.py", f"run={run}", f"file={f}", "data.text_column=review", "data.label_column=sentiment",
                f"hydra.run.dir={tmp_path / 'eval'}"])
    ev = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert ev["source"] == str(f) and ev["file/accuracy"] == 1.0 and "test/accuracy" not in ev


def test_eval_without_a_run_fails_clearly(tmp_path):
    with pytest.raises(AssertionError, match="run=<run directory> or ckpt_path"):
        run_script(["eval.py", f"hydra.run.dir={tmp_path / 'eval'}"])


@pytest.mark.slow  # a learning test: 4 epochs on 800 generated pairs
def test_regression_on_pairs(make_cfg, tmp_path):
    """Scores on sentence pairs (STS-B's shape): the score counts the positive words in both sentences."""
    import random

    rng = random.Random(0)
    good, plain = "great lovely superb fine happy".split(), "table chair door window road lamp".split()
    rows = []
    for _ in range(800):
        k1, k2 = rng.randint(0, 2), rng.randint(0, 2)
        s1 = rng.sample(good, k1) + rng.sample(plain, 3 - k1)
        s2 = rng.sample(good, k2) + rng.sample(plain, 3 - k2)
        rng.shuffle(s1), rng.shuffle(s2)
        rows.append({"sentence1": " ".join(s1), "sentence2": " ".join(s2), "score": f"{(k1 + k2) * 1.25:.3f}"})
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    metrics = train(make_cfg([*TINY, "data=local", f"data.train_file={path}", "trainer.max_epochs=4",
                              "predict.texts=null", "export=false"]))
    # only a training file: validation is carved from it, and there is no test split to report
    assert "val/spearman" in metrics and "val/pearson" in metrics
    assert not any(k.startswith("test/") for k in metrics), metrics
    assert metrics["val/spearman"] > 0.8, metrics


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_fast_dev_run_with_two_cpu_processes(strategy, tmp_path):
    run_script(["train.py", *TINY, "debug=fdr", f"strategy={strategy}", "accelerator=cpu", "trainer.devices=2",
                f"hydra.run.dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"])
    assert (tmp_path / "metrics.json").is_file()


@pytest.mark.slow
def test_minilm_on_real_sst2(make_cfg):
    needs_shared("sst2", "train.tsv")
    # a few thousand rows, one epoch, validation every quarter epoch; the best checkpoint is tested
    metrics = train(make_cfg(["experiment=sst2", "data.max_train_samples=4000", "predict.texts=null", "export=false"]))
    # GLUE's test labels are hidden: the run has no test split and reports no test/* metric
    assert not any(k.startswith("test/") for k in metrics), metrics
    assert metrics["val/accuracy"] >= 0.80, metrics
