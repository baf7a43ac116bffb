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
    assert cells[3].endswith("x") and float(cells[3][:-1]) > 0  # CPU time per token, plain over lmforge
    assert cells[8].startswith("ok")


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


def _bench(name: str):
    """benchmarks/<name>.py as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _seq2seq_bench():
    return _bench("seq2seq_vs_trainer")


def test_seq2seq_benchmark_data_and_epochs_reach_both_arms():
    bench = _seq2seq_bench()
    a = bench.parse(["--data", "sample", "--epochs", "3", "--warmup", "0.1"])
    # the sample's recipe (task_defaults/translation.yaml: batch 32, lr 3e-3; task/translation.yaml: lengths 128, 64 tokens)
    assert (a.train_pairs, a.batch_size, a.max_length, a.max_new_tokens, a.lr) == (None, 32, 128, 64, 3e-3)
    ov = bench.lmforge_overrides(a, bench.ARM_OVERRIDES["lmforge_same"])
    assert ov[:2] == ["task=translation", "data=sample"] and "data.max_train_samples=null" in ov
    assert "trainer.max_epochs=3" in ov and "scheduler.warmup=0.1" in ov and "data.group_by_length=false" in ov
    assert "data.padding_free=false" in ov  # lmforge_same: the Trainer's batches, padded
    m = bench.parse(["--train-pairs", "100"])  # multi30k stays the default, with experiment=multi30k's settings
    assert (m.data, m.epochs, m.train_pairs, m.batch_size, m.max_length, m.max_new_tokens) == ("multi30k", 1, 100, 64, 64, 48)
    assert bench.lmforge_overrides(m, bench.ARM_OVERRIDES["lmforge_grouped"])[0] == "experiment=multi30k"
    for bad in (["--epochs", "0"], ["--warmup", "1.5"], ["--data", "wmt"]):
        with pytest.raises(SystemExit):
            bench.parse(bad)


def test_seq2seq_benchmark_summarization_uses_the_summarization_recipe_and_rouge():
    bench = _seq2seq_bench()
    for data, ds in (("samsum", "data=samsum"), ("chats", "data=sample")):
        a = bench.parse(["--data", data])
        # task_defaults/summarization.yaml: sources up to 512 tokens, summaries up to 128; data/_seq2seq.yaml: batch 32
        assert (a.batch_size, a.max_length, a.max_target_length, a.max_new_tokens) == (32, 512, 128, 64)
        ov = bench.lmforge_overrides(a, bench.ARM_OVERRIDES["lmforge"])
        assert ov[:2] == ["task=summarization", ds]
        assert "data.max_source_length=512" in ov and "data.max_target_length=128" in ov
        assert not any(o.startswith(("data.group_by_length", "data.padding_free")) for o in ov)  # the recipe's own
    t = bench.parse(["--data", "sample", "--max-length", "40"])  # translation: targets as long as sources
    assert (t.max_length, t.max_target_length) == (40, 128) and bench.parse([]).max_target_length == 64
    runs = [{"arm": arm, **{k: 1.0 for k, _, _ in bench.metrics("summarization")}, "rougeL": r, "rouge1": r + 1,
             "rouge2": r - 1} for arm, r in (("lmforge", 30.0), ("trainer", 28.0))]
    for r in runs:
        r.update(train_tokens_per_sec=2.0 if r["arm"] == "lmforge" else 1.0, gen_sentences_per_sec=1.0,
                 ru_maxrss_mib=100.0, cpu_ms_per_sample=1.0)
    ratio = bench.summarize(runs, "summarization")["ratio_lmforge_over_trainer"]
    assert ratio["train_tokens_per_sec"] == 2.0 and ratio["rougeL_diff"] == 2.0 and "bleu_diff" not in ratio


@pytest.mark.slow
def test_seq2seq_benchmark_runs_both_arms_on_the_sample(tmp_path):
    out = tmp_path / "s2s.json"
    r = _run([sys.executable, "benchmarks/seq2seq_vs_trainer.py", "--data", "sample", "--epochs", "2", "--train-pairs", "64",
              "--eval-pairs", "8", "--repeats", "1", "--threads", "1", "--cache-dir", str(tmp_path / "cache"),
              "--out", str(out)], 600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["settings"]["epochs"] == 2 and doc["settings"]["train_pairs"] == 64 and "sample" in doc["settings"]["data"]
    runs = {x["arm"]: x for x in doc["runs"]}
    assert set(runs) == {"lmforge", "trainer"}
    for x in runs.values():  # 64 pairs in batches of 32, twice: 4 steps, one timed window over both epochs
        assert x["steps"] == 4 and x["samples"] == 128 and x["train_sec"] > 0 and 0 <= x["bleu"] <= 100
        assert 0 <= x["chrf"] <= 100 and len(x["samples_hyps"]) == 5
    ratio = doc["summary"]["ratio_lmforge_over_trainer"]
    assert ratio["cpu_ms_per_sample"] > 0 and "chrf_diff" in ratio


@pytest.mark.slow
def test_seq2seq_benchmark_summarizes_the_chat_sample_with_rouge(tmp_path):
    out = tmp_path / "sum.json"
    r = _run([sys.executable, "benchmarks/seq2seq_vs_trainer.py", "--data", "chats", "--train-pairs", "64",
              "--eval-pairs", "8", "--repeats", "1", "--threads", "1", "--cache-dir", str(tmp_path / "cache"),
              "--out", str(out)], 600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["settings"]["kind"] == "summarization" and doc["settings"]["max_target_length"] == 128
    runs = {x["arm"]: x for x in doc["runs"]}
    assert set(runs) == {"lmforge", "trainer"}
    for x in runs.values():  # 64 dialogues in batches of 32, one epoch; ROUGE from rouge-score, no BLEU
        assert x["steps"] == 2 and x["samples"] == 64 and "bleu" not in x
        assert all(0 <= x[k] <= 100 for k in ("rouge1", "rouge2", "rougeL")) and len(x["samples_hyps"]) == 5
    assert runs["lmforge"]["padding_free"] is False  # grouped batches: padding_free=auto keeps one pair a row
    assert "rougeL_diff" in doc["summary"]["ratio_lmforge_over_trainer"] and "ROUGE-L" in r.stdout


@pytest.mark.slow
def test_sentence_embedding_benchmark_runs_both_arms_on_the_same_pairs(tmp_path):
    from conftest import needs_shared

    needs_shared("stsb", "train.tsv")
    out = tmp_path / "se.json"
    r = _run([sys.executable, "benchmarks/sentence_embedding_vs_trainer.py", "--train-pairs", "16", "--eval-pairs", "16",
              "--batch-size", "16", "--repeats", "1", "--threads", "1", "--cache-dir", str(tmp_path / "cache"),
              "--out", str(out)], 600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(out.read_text())
    runs = {x["arm"]: x for x in doc["runs"]}
    assert set(runs) == {"lmforge", "trainer"}
    for x in runs.values():  # 16 pairs in one batch of 16: one step, both texts counted, cosine regression
        assert x["steps"] == 1 and x["samples"] == 16 and x["train_sec"] > 0 and x["objective"] == "cosine"
        assert -1 <= x["dev_spearman"] <= 1 and x["cpu_ms_per_sample"] > 0 and x["ru_maxrss_mib"] > 100
    # the same pairs, tokenized alike (lmforge's token cache vs sentence-transformers' collator)
    assert runs["lmforge"]["tokens"] == runs["trainer"]["tokens"]
    assert runs["lmforge"]["train_score_sum"] == pytest.approx(runs["trainer"]["train_score_sum"], abs=1e-3)
    med, ratio = doc["summary"]["median"], doc["summary"]["ratio_lmforge_over_trainer"]
    assert set(med) == {"lmforge", "trainer"} and med["lmforge"]["samples_per_sec"] > 0
    assert {"samples_per_sec", "tokens_per_sec", "cpu_ms_per_sample", "peak_rss", "spearman_diff"} <= set(ratio)
    assert ratio["cpu_ms_per_sample"] == pytest.approx(med["trainer"]["cpu_ms_per_sample"] / med["lmforge"]["cpu_ms_per_sample"])


def test_sentence_embedding_groups_pairs_by_their_longer_text(tmp_path, cache_dir):
    from conftest import needs_shared

    needs_shared("stsb", "train.tsv")
    cfg = compose_cfg(["experiment=stsb_embedding", "data.max_train_samples=48", "data.max_eval_samples=16",
                       "data.group_by_length=true", "data.num_workers=0"], tmp_path / "run", cache_dir)
    dm = build_datamodule(cfg)
    dm.setup()
    arrays = dm.datasets["train"].arrays
    a = [len(x) for x in arrays["input_ids"]]
    b = [len(x) for x in arrays["pair_input_ids"]]
    # each text is padded to its own batch maximum: the sampler groups by the wider of the two
    assert list(dm.lengths("train")) == [max(x, y) for x, y in zip(a, b)]
    assert any(y > x for x, y in zip(a, b))  # the pair is sometimes the longer text


@pytest.mark.slow
def test_instruction_tuning_benchmark_runs_both_arms_on_the_same_tokens(tmp_path):
    out = tmp_path / "it.json"
    r = _run([sys.executable, "benchmarks/instruction_tuning_vs_trainer.py", "--train-samples", "64", "--eval-samples",
              "16", "--batch-size", "16", "--epochs", "1", "--repeats", "1", "--threads", "1",
              "--cache-dir", str(tmp_path / "cache"), "--out", str(out)], 600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(out.read_text())
    runs = {x["arm"]: x for x in doc["runs"]}
    assert set(runs) == {"lmforge", "trainer"}
    for x in runs.values():  # 64 conversations in batches of 16: 4 steps, answer-token loss below the untrained ~7
        assert x["steps"] == 4 and x["samples"] == 64 and x["train_sec"] > 0 and x["cpu_ms_per_sample"] > 0
        assert 0 < x["val_loss"] < 6.9 and x["val_tokens"] > 0 and 0 < x["padding_fraction"] < 1
        assert x["train_data"]["conversations"] == 64 and x["val_data"]["conversations"] == 16
    # lmforge's token ids and labels handed to the Trainer, the same initial weights, the same non-padding tokens
    assert runs["lmforge"]["train_data"] == runs["trainer"]["train_data"]
    assert runs["lmforge"]["init_weights_sum"] == pytest.approx(runs["trainer"]["init_weights_sum"])
    assert runs["lmforge"]["tokens"] == runs["trainer"]["tokens"]
    # lmforge's default batches are padding-free: the same conversations per step, less padding computed
    assert runs["lmforge"]["padding_free"] is True
    assert runs["lmforge"]["padding_fraction"] < runs["trainer"]["padding_fraction"]
    # both samplers draw epoch 1 from randperm seeded 42 and 4 steps get no warmup: the same batches, the same updates
    assert runs["lmforge"]["val_loss"] == pytest.approx(runs["trainer"]["val_loss"], abs=2e-3)
    med, ratio = doc["summary"]["median"], doc["summary"]["ratio_lmforge_over_trainer"]
    assert set(med) == {"lmforge", "trainer"} and med["lmforge"]["samples_per_sec"] > 0
    assert {"samples_per_sec", "tokens_per_sec", "cpu_ms_per_sample", "peak_rss", "val_loss_diff"} <= set(ratio)
    assert ratio["cpu_ms_per_sample"] == pytest.approx(med["trainer"]["cpu_ms_per_sample"] / med["lmforge"]["cpu_ms_per_sample"])


def test_seq2seq_inference_benchmark_inputs_and_options():
    bench = _bench("seq2seq_inference")
    a = bench.parse(["--task", "summarization", "--n", "5"])
    dialogues = bench.sources(a)
    assert len(dialogues) == 5 and all("\n" in d and ":" in d for d in dialogues)  # whole dialogues, turns kept
    assert bench.sources(bench.parse(["--n", "3"]))[0].endswith(".")  # German sentences of the phrasebook
    for bad in (["--n", "0"], ["--train-samples", "0"], ["--task", "qa"], ["--n", "100000"]):
        with pytest.raises(SystemExit):
            bench.sources(bench.parse(bad))
    with pytest.raises(SystemExit, match="not a model folder"):
        bench.export_folder(bench.parse(["--export", str(ROOT)]))


@pytest.mark.slow
def test_seq2seq_inference_benchmark_runs_both_arms(tmp_path):
    out = tmp_path / "inf.json"
    r = _run([sys.executable, "benchmarks/seq2seq_inference.py", "--task", "summarization", "--n", "8", "--batch-size",
              "4", "--train-epochs", "1", "--train-samples", "64", "--threads", "1", "--out-dir", str(tmp_path / "w"),
              "--out", str(out)], 600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert (tmp_path / "w" / "run_summarization_1ep_64" / "export" / "generation_config.json").is_file()
    assert [x["arm"] for x in doc["runs"]] == ["lmforge", "plain"] and doc["ratio"] > 0 and doc["cpu_ratio"] > 0
    assert all(x["inputs"] == 8 for x in doc["runs"]) and 0.0 <= doc["agreement"] <= 1.0
    assert len(doc["examples"]) == 3 and all(isinstance(x["lmforge"], str) for x in doc["examples"])
