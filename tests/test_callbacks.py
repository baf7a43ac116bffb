"""What a run does besides training, as a user sees it: last.ckpt is the newest state and one file when it
is the best one, a run that stops before its first validation validates at its end, debug=fdr and
logger=none, the CSV log under ddp_spawn, plain progress lines when stdout is not a terminal, and no
library noise. Runs are tiny (random 2-layer BERT / GPT-2) with stdout to a pipe, as in a cluster job."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY

FAST = ["predict.texts=null", "export=false", "data.max_train_samples=64"]
NOISE = ("litlogger", "💡", "LOAD REPORT", "\x1b[", "is deprecated", "DeprecationWarning", "FutureWarning",
         "loss_type=None", "Total FLOPs", "Loading weights", "Loading `train_dataloader` to estimate")
PROGRESS = re.compile(r"^step (\d+)/(\d+) \(\d+%\) \| epoch \d+(/\d+)? \| .*train/loss [-\d.e+]+ .*\| lr \S+ \| "
                      r"[\d.e+]+ it/s \| ETA \d+:\d\d:\d\d$")


def train(tmp_path: Path, name: str, *overrides: str, cache_dir: Path, ok: bool = True) -> subprocess.CompletedProcess:
    """``python train.py <overrides>`` with its run in ``tmp_path/name``, stdout and stderr to pipes."""
    proc = subprocess.run([sys.executable, "train.py", *overrides, f"hydra.run.dir={tmp_path / name}",
                           f"paths.cache_dir={cache_dir}"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONWARNINGS": ""})
    if ok and proc.returncode != 0:
        raise AssertionError(f"train.py {' '.join(overrides)} exited {proc.returncode}\n--- stdout ---\n"
                             f"{proc.stdout[-5000:]}\n--- stderr ---\n{proc.stderr[-5000:]}")
    return proc


def ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_quiet(proc: subprocess.CompletedProcess) -> None:
    text = proc.stdout + proc.stderr
    found = [n for n in NOISE if n in text]
    assert not found, f"noise {found} in the output:\n{text[-5000:]}"


# -- checkpoints -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory, cache_dir):
    """2 epochs of the tiny model whose "best" is its first validation (monitor=step, mode=min): the case
    where Lightning left last.ckpt at that first state."""
    tmp = tmp_path_factory.mktemp("two_epochs")
    proc = train(tmp, "run", *TINY, *FAST, "trainer.max_epochs=2", "test=false", "logger=none",
                 "callbacks.model_checkpoint.monitor=step", "callbacks.model_checkpoint.mode=min",
                 "callbacks.progress_bar.every_n_steps=1", cache_dir=cache_dir)
    return tmp / "run", proc


def _final_step(proc: subprocess.CompletedProcess) -> int:
    (done,) = re.findall(r"^training done: (\d+) steps", proc.stdout, flags=re.M)
    return int(done)


def test_last_checkpoint_is_the_newest_state(two_epochs):
    run, proc = two_epochs
    final = _final_step(proc)
    last = run / "checkpoints" / "last.ckpt"
    assert ckpt(last)["global_step"] == final and final >= 4
    (best,) = [p for p in (run / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    assert ckpt(best)["global_step"] < final and not os.path.samefile(best, last)


def test_resume_from_last_continues_from_its_step(two_epochs, tmp_path, cache_dir):
    run, first = two_epochs
    step = _final_step(first)
    proc = train(tmp_path, "resumed", *TINY, *FAST, "trainer.max_epochs=3", "test=false", "logger=none",
                 f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "callbacks.progress_bar.every_n_steps=1",
                 # best = newest: last.ckpt and the best checkpoint are one file
                 "callbacks.model_checkpoint.monitor=step", "callbacks.model_checkpoint.mode=max", cache_dir=cache_dir)
    steps = [int(m) for m in re.findall(r"^step (\d+)/", proc.stdout, flags=re.M)]
    per_epoch = step // 2
    assert steps == list(range(step + 1, step + per_epoch + 1)), proc.stdout[-3000:]  # only the third epoch ran
    folder = tmp_path / "resumed" / "checkpoints"
    assert ckpt(folder / "last.ckpt")["global_step"] == step + per_epoch
    (best,) = [p for p in folder.glob("*.ckpt") if p.name != "last.ckpt"]
    assert os.path.samefile(best, folder / "last.ckpt")  # one copy on disk


@pytest.mark.parametrize("task", [
    ["model=bert", "model/size=tiny", "trainer.val_check_interval=50"],
    # the other tasks in the slow part: test_task_contract.py runs every task to its end before a validation
    pytest.param(["task=causal_lm"], marks=pytest.mark.slow),
    pytest.param(["task=masked_lm"], marks=pytest.mark.slow),
], ids=["text_classification", "causal_lm", "masked_lm"])
def test_run_ending_before_its_first_validation_validates_at_the_end(task, tmp_path, cache_dir):
    # 3 steps, below every task's validation interval: before, EarlyStopping/ModelCheckpoint/optimized_metric
    # found no val/* metric and the run crashed at its very end
    proc = train(tmp_path, "run", *task, "trainer.max_steps=3", "extras.print_config=false", "predict.texts=null",
                 "export=false", "test=false", cache_dir=cache_dir)
    assert re.search(r"^validation at step 3: ", proc.stdout, flags=re.M), proc.stdout[-3000:]
    folder = tmp_path / "run" / "checkpoints"
    assert ckpt(folder / "last.ckpt")["global_step"] == 3
    assert any(p.name != "last.ckpt" for p in folder.glob("*.ckpt"))  # the best by task.monitor
    import json

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert any(k.startswith("val/") for k in metrics)
    assert_quiet(proc)  # causal LM: no `loss_type=None`


# -- debug=fdr, logger=none ------------------------------------------------------------------------

def test_fast_dev_run_writes_no_checkpoint_and_no_logger_files(tmp_path, cache_dir):
    train(tmp_path, "run", "debug=fdr", *TINY, cache_dir=cache_dir)
    files = [p.relative_to(tmp_path / "run").as_posix() for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith(".ckpt") or f.startswith(("checkpoints", "csv", "tensorboard", "wandb"))], files


def test_logger_none_trains_without_the_lr_monitor(tmp_path, cache_dir):
    proc = train(tmp_path, "run", "logger=none", *TINY, *FAST, "trainer.max_epochs=1", "trainer.max_steps=2",
                 "trainer.limit_val_batches=1", "test=false", cache_dir=cache_dir)
    assert proc.stdout.count("no logger for the learning rate") == 1


def test_build_callbacks_leaves_out_the_lr_monitor_without_loggers(make_cfg):
    from lightning.pytorch.callbacks import LearningRateMonitor

    from lmforge.callbacks import build_callbacks
    from lmforge.loggers import build_loggers

    cfg = make_cfg(TINY)
    assert any(isinstance(c, LearningRateMonitor) for c in build_callbacks(cfg, build_loggers(cfg)))
    assert not any(isinstance(c, LearningRateMonitor) for c in build_callbacks(cfg, []))
    assert not any(isinstance(c, LearningRateMonitor) for c in build_callbacks(make_cfg([*TINY, "logger=none"])))


# -- CSV log under ddp_spawn -----------------------------------------------------------------------

def test_csv_writer_takes_its_columns_from_the_file(tmp_path):
    """ddp_spawn: fit and test each run in new processes with copies of a logger made before metrics.csv
    existed; the test copy must extend the file's columns, not replace them."""
    import copy

    from lmforge.loggers import CSVLogger

    logger = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    logger.log_hyperparams({"seed": 1})  # the writer exists (in the parent process) before any metric
    fit, test = copy.deepcopy(logger), copy.deepcopy(logger)  # what each spawned process gets
    fit.log_metrics({"train/loss": 0.5}, step=1)
    fit.log_metrics({"val/loss": 0.4, "val/score": 0.6}, step=2)
    fit.save()
    test.log_metrics({"test/score": 0.7}, step=2)
    test.save()
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    assert [r["step"] for r in rows] == ["1", "2", "2"]
    assert rows[1]["val/score"] == "0.6" and rows[2]["test/score"] == "0.7" and rows[0]["train/loss"] == "0.5"


@pytest.mark.slow
def test_ddp_spawn_run_logs_to_csv(tmp_path, cache_dir):
    train(tmp_path, "run", "strategy=ddp_spawn", "accelerator=cpu", "trainer.devices=2", *TINY, *FAST,
          "trainer.max_epochs=1", cache_dir=cache_dir)
    rows = list(csv.DictReader(open(tmp_path / "run" / "csv" / "metrics.csv")))
    assert any(r.get("val/score") for r in rows) and any(r.get("test/score") for r in rows)


# -- progress without a terminal -------------------------------------------------------------------

def test_plain_progress_lines_when_stdout_is_not_a_terminal(two_epochs):
    _, proc = two_epochs
    lines = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert lines and all(PROGRESS.match(line) for line in lines), "\n".join(lines)
    final = _final_step(proc)
    assert [int(PROGRESS.match(line).group(1)) for line in lines] == list(range(1, final + 1))  # every_n_steps=1
    assert all(int(PROGRESS.match(line).group(2)) == final for line in lines)
    assert len(re.findall(r"^validation at step \d+: .*val/loss [\d.]+", proc.stdout, flags=re.M)) == 2
    assert not re.search(r"^Epoch \d+/\d+ ", proc.stdout, flags=re.M)  # no rich bar


def test_progress_bar_kind(monkeypatch):
    from lightning.pytorch.callbacks import RichProgressBar

    from lmforge.callbacks.progress import PlainProgressBar, progress_bar

    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.setattr(sys, "stdout", Stream(False))  # a log file, a pipe
    bar = progress_bar(every_n_steps=5)
    assert isinstance(bar, PlainProgressBar) and bar.every_n_steps == 5
    monkeypatch.setattr(sys, "stdout", Stream(True))
    assert isinstance(progress_bar(), RichProgressBar)
    assert isinstance(progress_bar(kind="plain"), PlainProgressBar)


# -- noise -----------------------------------------------------------------------------------------

@pytest.mark.slow  # the real MiniLM in a subprocess; the tiny models' runs above are checked for noise too
def test_minilm_run_is_quiet_and_says_the_head_is_new(tmp_path, cache_dir):
    proc = train(tmp_path, "run", "model=minilm", "trainer.max_steps=1", "trainer.limit_val_batches=1",
                 "data.max_train_samples=32", "test=false", "predict.texts=null", "extras.print_config=false",
                 cache_dir=cache_dir)
    assert_quiet(proc)
    head = [line for line in (proc.stdout + proc.stderr).splitlines() if "freshly initialised" in line]
    assert len(head) == 1 and "classifier" in head[0], head


def test_load_report_summary():
    from lmforge.utils.quiet import load_report_summary

    report = ("\x1b[1mBertForSequenceClassification LOAD REPORT\x1b[0m from: /models/minilm\n"
              "Key               | Status  | \n------------------+---------+-\n"
              "classifier.bias   | \x1b[31mMISSING\x1b[0m | \nclassifier.weight | MISSING | \n"
              "pooler.dense.bias | UNEXPECTED | \n\nNotes:\n- MISSING:\tthose params were newly initialized")
    line = load_report_summary(report)
    assert line == ("model weights: classifier.bias, classifier.weight freshly initialised (not in the checkpoint at "
                    "/models/minilm); this run trains them; pooler.dense.bias in the checkpoint but not used by this model")
