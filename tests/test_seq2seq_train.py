"""Translation and summarization end to end: one short shared run of a tiny T5 on the embedded de->en sample
(export reloaded by plain transformers generates what lmforge predicted; eval.py writes predictions.jsonl and
hypotheses.txt that the sacrebleu command line scores as lmforge did), fast_dev_run for t5, bart and bert2bert
(MiniLM warm start) on both tasks, DDP on 2 CPU processes, and the real-data recipes on Multi30k and SAMSum
(slow; skipped with their reason when ../shared/data is absent)."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import compose_cfg, needs_shared, run_script
from lmforge.train import train
from lmforge.utils.errors import ConfigError

NEW = ["Die müde Katze schläft in der Küche.", "Heute kauft der alte Mann einen roten Hut am Strand.",
       "Die Kinder spielen im Garten."]
# a tiny T5 on part of the embedded sample, 40 steps: quality is not the point here (see the slow tests)
SHORT = ["task=translation", "extras.print_config=false", "data.max_train_samples=640", "data.max_eval_samples=32",
         "trainer.max_epochs=2", "task.generation.max_new_tokens=16"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("seq2seq")
    cfg = compose_cfg([*SHORT, f"predict.texts={json.dumps(NEW, ensure_ascii=False)}"], base / "run", base / "cache")
    metrics = train(cfg)
    return base, cfg, metrics


@pytest.mark.slow
def test_the_run_reports_bleu_chrf_and_learns(run):
    _, cfg, metrics = run
    for k in ("val/bleu", "val/chrf", "val/loss", "val/score", "test/bleu", "test/chrf", "test/loss"):
        assert math.isfinite(metrics[k]), k
    assert metrics["val/score"] == metrics["val/bleu"]
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(Path(cfg.paths.output_dir, "export")))
    assert metrics["test/loss"] < math.log(vocab) - 1.0  # it learns: a uniform guess costs ln(vocab)


@pytest.mark.slow
def test_test_files_score_with_the_sacrebleu_command_line_as_lmforge_did(run):
    _, cfg, metrics = run
    out = Path(cfg.paths.output_dir, "test")
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    hyps = (out / "hypotheses.txt").read_text(encoding="utf-8").splitlines()
    assert len(records) == len(hyps) == 32 and all({"source", "reference", "prediction"} <= set(r) for r in records)
    assert [r["prediction"] for r in records] == hyps
    res = subprocess.run([sys.executable, "-m", "sacrebleu", str(out / "references.txt"), "-i", str(out / "hypotheses.txt"),
                          "-m", "bleu", "chrf", "-b", "-w", "4"], capture_output=True, text=True, check=True).stdout
    bleu, chrf = (float(x) for x in json.loads(res))
    assert abs(bleu - metrics["test/bleu"]) < 1e-3 and abs(chrf - metrics["test/chrf"]) < 1e-3


@pytest.mark.slow
def test_the_export_loads_with_plain_transformers_and_generates_the_same_text(run):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    _, cfg, _ = run
    folder = Path(cfg.paths.output_dir, "export")
    ours = [json.loads(line)["prediction"] for line in Path(cfg.paths.output_dir, "predictions.jsonl").read_text().splitlines()]
    hyps = Path(cfg.paths.output_dir, "hypotheses.txt").read_text(encoding="utf-8").splitlines()
    assert hyps == ours
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(NEW, padding=True, return_tensors="pt")
    theirs = [t.strip() for t in tok.batch_decode(model.generate(**enc), skip_special_tokens=True)]  # generation_config.json
    assert theirs == ours


@pytest.mark.slow
def test_lmforge_load_serves_the_export_from_the_folder_alone(run):
    import lmforge

    _, cfg, _ = run
    ours = [json.loads(line)["prediction"] for line in Path(cfg.paths.output_dir, "predictions.jsonl").read_text().splitlines()]
    predictor = lmforge.load(Path(cfg.paths.output_dir, "export"))
    assert predictor.predict(NEW) == ours
    assert predictor(NEW[0]) == ours[0]
    # batches of 2, longest source first, across batches: the answers come back in input order, as one at a time
    mixed = [NEW[0], NEW[1] + " " + NEW[0], NEW[1], NEW[0] + " " + NEW[1] + " " + NEW[0]]
    alone = [predictor(t) for t in mixed]
    predictor.batch_size = 2
    assert predictor.predict(mixed) == alone and predictor.predict([]) == []


@pytest.mark.slow
def test_eval_py_predicts_a_text_file_into_hypotheses_that_sacrebleu_reads(run, tmp_path):
    base, cfg, _ = run
    (tmp_path / "src.txt").write_text("\n".join(NEW) + "\n", encoding="utf-8")
    # batches of 2, longest source first: the hypotheses still come back in the file's order
    res = run_script(["eval.py", f"run={cfg.paths.output_dir}", "split=null", f"predict.file={tmp_path / 'src.txt'}",
                      f"predict.output={tmp_path / 'out' / 'predictions.jsonl'}", f"hydra.run.dir={tmp_path / 'eval'}",
                      "predict.batch_size=2"])
    hyps = (tmp_path / "out" / "hypotheses.txt").read_text(encoding="utf-8").splitlines()
    ours = [json.loads(line)["prediction"] for line in Path(cfg.paths.output_dir, "predictions.jsonl").read_text().splitlines()]
    assert hyps == ours, res.stdout


@pytest.mark.slow
def test_eval_py_on_a_parallel_prefix_file(run, tmp_path):
    _, cfg, _ = run
    sample = Path(__file__).resolve().parents[1] / "src" / "lmforge" / "samples" / "phrasebook" / "test.jsonl"
    pairs = [json.loads(line)["translation"] for line in sample.read_text(encoding="utf-8").splitlines()[:20]]
    (tmp_path / "t.de").write_text("".join(p["de"] + "\r\n" for p in pairs), encoding="utf-8")
    (tmp_path / "t.en").write_text("".join(p["en"] + "\n" for p in pairs), encoding="utf-8")
    run_script(["eval.py", f"run={cfg.paths.output_dir}", f"file={tmp_path / 't'}", f"hydra.run.dir={tmp_path / 'eval'}"])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert math.isfinite(metrics["file/bleu"])
    assert len((tmp_path / "eval" / "file" / "hypotheses.txt").read_text().splitlines()) == 20


@pytest.mark.parametrize("task", ["translation", "summarization"])
@pytest.mark.parametrize("model", ["t5", "bart", pytest.param("bert2bert", marks=pytest.mark.slow)])
def test_fast_dev_run_for_every_model(make_cfg, task, model, caplog):
    cfg = make_cfg([f"task={task}", f"model={model}", "debug=fdr", "extras.print_config=false", "data.batch_size=4",
                    "task.generation.max_new_tokens=8", "predict.texts=null"], name=f"{task}-{model}")
    with caplog.at_level(logging.INFO, logger="lmforge.tasks.seq2seq.data"):
        metrics = train(cfg)
    assert metrics["params/total"] > 0
    # data.padding_free=auto: shared rows for T5 (relative positions) on translation's random batches, one pair a
    # row for the others and for summarization's length-grouped batches
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training batches: ")]
    want = ("training batches: padding-free" if model == "t5" and task == "translation" else
            "training batches: one pair per row, padded (data.padding_free=auto, ")
    assert said and said[0].startswith(want), said
    if model == "t5" and task == "summarization":
        assert "grouped by length" in said[0]


def test_padding_free_true_refuses_a_model_with_absolute_positions(make_cfg):
    cfg = make_cfg(["task=translation", "model=bart", "debug=fdr", "data.padding_free=true", "extras.print_config=false",
                    "predict.texts=null"])
    with pytest.raises(ConfigError, match=r"data.padding_free=true: the model \(bart\) would not keep the pairs"):
        train(cfg)


def test_bert2bert_export_loads_with_auto_class_and_generates_the_same_text(make_cfg):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    # one batch of everything (debug=fdr), then the export and the predictions
    cfg = make_cfg(["task=translation", "model=bert2bert", "debug=fdr", "export=true", "data.batch_size=8",
                    "task.generation.max_new_tokens=8", "extras.print_config=false",
                    f"predict.texts={json.dumps(NEW[:2], ensure_ascii=False)}"])
    train(cfg)
    folder = Path(cfg.paths.output_dir, "export")
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    assert type(model).__name__ == "EncoderDecoderModel"
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.generation_config.decoder_start_token_id == tok.cls_token_id
    assert model.generation_config.eos_token_id == tok.sep_token_id and model.generation_config.pad_token_id == tok.pad_token_id
    enc = tok(NEW[:2], padding=True, return_tensors="pt")
    theirs = [t.strip() for t in tok.batch_decode(model.generate(**enc), skip_special_tokens=True)]
    ours = [json.loads(line)["prediction"] for line in Path(cfg.paths.output_dir, "predictions.jsonl").read_text().splitlines()]
    assert theirs == ours


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path):
    run_script(["train.py", "task=translation", "strategy=ddp", "accelerator=cpu", "trainer.devices=2",
                "trainer.max_steps=4", "trainer.max_epochs=-1", "trainer.val_check_interval=1000",
                "trainer.check_val_every_n_epoch=null", "data.max_eval_samples=40", "task.generation.max_new_tokens=8",
                "extras.print_config=false", f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2.0 and math.isfinite(metrics["val/bleu"])
    hyps = (tmp_path / "run" / "test" / "hypotheses.txt").read_text(encoding="utf-8").splitlines()
    records = [json.loads(x) for x in (tmp_path / "run" / "test" / "predictions.jsonl").read_text().splitlines()]
    # every test example (data.max_eval_samples=40 of them) once, gathered from both ranks, in order
    assert len(hyps) == len(records) == 40 and len({r["source"] for r in records}) == 40


@pytest.mark.slow
def test_multi30k_recipe_learns(tmp_path):
    """The recipe (tiny T5, tokenizer trained on Multi30k) cut from its 10-minute budget to 150 steps, so the
    suite stays short. Measured 2026-12-01 on 2 shared CPU cores: 150 steps (4.6 min) gave val BLEU 2.0 / chrF 8.6
    on 200 validation pairs (the whole recipe, 406 steps in 10 minutes: 2.6 / 16.6 on 500); the thresholds only
    say that it learns (an untrained model scores BLEU 0, chrF about 2)."""
    needs_shared("multi30k", "train.de")
    cfg = compose_cfg(["experiment=multi30k", "extras.print_config=false", "predict.texts=null", "export=false",
                       "trainer.max_time=null", "trainer.max_steps=150", "trainer.val_check_interval=150",
                       "task.generate_val_samples=200"], tmp_path / "run", tmp_path / "cache")
    metrics = train(cfg)
    assert metrics["val/chrf"] > 6.0 and metrics["val/bleu"] > 0.5, metrics


@pytest.mark.slow
def test_samsum_bert2bert_recipe_reports_rouge_beside_the_lead_baseline(tmp_path):
    """experiment=samsum (bert2bert from MiniLM, 10-minute budget) and the lead-3 baseline on the same carved
    validation dialogues, both with lmforge's ROUGE."""
    needs_shared("samsum", "val.csv")
    from lmforge.tasks.seq2seq.metrics import rouge
    from lmforge.train import build_datamodule

    # 8 steps, not the recipe's 10 minutes (88 steps: ROUGE-1 14.8, in the README): after 24 steps bert2bert still
    # generates empty summaries (ROUGE 0, measured), so this checks that the recipe runs and reports ROUGE, and the
    # lead-3 baseline that the README sets it against, not that it learns
    cfg = compose_cfg(["experiment=samsum", "extras.print_config=false", "predict.texts=null", "export=false",
                       "trainer.max_time=null", "trainer.max_steps=8", "trainer.val_check_interval=8",
                       "trainer.num_sanity_val_steps=0", "task.generate_val_samples=16"],
                      tmp_path / "run", tmp_path / "cache")
    metrics = train(cfg)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    ds = dm.datasets["validation"]
    lead = rouge(["\n".join(ds.source(i).splitlines()[:3]) for i in range(len(ds))],
                 [ds.reference(i) for i in range(len(ds))])
    print(f"SAMSum carved validation ({len(ds)} dialogues): bert2bert {metrics}, lead-3 {lead}")
    assert len(ds) == 123  # 15% of 818
    assert all(math.isfinite(metrics[f"val/{k}"]) for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")), metrics
    # lead-3 on the carved validation dialogues, measured 32.7 / 9.6 / 24.8 / 28.7 (README)
    assert abs(lead["rouge1"] - 32.7) < 0.1 and abs(lead["rouge2"] - 9.6) < 0.1, lead
