"""Kill at any moment, resume exactly; damaged checkpoints.

A run killed with SIGKILL at a random step (after its first step checkpoint, often in the middle of writing
one) and rerun with ``ckpt_path=last`` ends with the weights, optimizer state and metrics of the run that was
never interrupted (same seed, 1e-5 in float32 on the CPU): text classification, NER (with gradient
accumulation) and causal LM in one process, text classification under DDP with 2 CPU processes. The models
keep their dropout, so the random-number state the checkpoint carries is what makes the runs agree
(:func:`test_resume_is_exact_only_with_the_rng_state` shows they do not without it).

The unit tests: the temporary-name write keeps the previous checkpoint when the writer dies mid-write,
checkpoints fall on optimizer-step boundaries under gradient accumulation, a sharded folder without its
COMPLETE marker is passed by with a warning, a damaged checkpoint is an error naming the file before any
data is read, and ``ckpt_path=last`` falls back to the newest good checkpoint with a warning.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf, open_dict
from torch import nn
from torch.utils.data import TensorDataset

from conftest import ROOT
from lmforge.callbacks.checkpoint import Checkpoint
from lmforge.callbacks.resume_state import TrainingRNG, capture, restore
from lmforge.data.samplers import ResumableLoader, ResumableSampler
from lmforge.checkpoints import (COMPLETE_MARKER, CheckpointError, check_intact, commit_checkpoint,
                                 resolve_ckpt_path)

TOL = 1e-5

# -- unit tests: a small Lightning module, in this process ---------------------------------------------------


class Tiny(L.LightningModule):
    """Two linear layers with dropout between them: a run draws random numbers at every step."""

    def __init__(self, rows: int = 12) -> None:
        super().__init__()
        self.rows = rows
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.05)

    def train_dataloader(self):
        # lmforge's sampler, which continues after the batches the restored loop progress counts
        def progress() -> tuple[int, int]:
            done = self.trainer.fit_loop.epoch_loop.batch_progress
            return done.total.processed, done.current.processed

        data = TensorDataset(torch.randn(self.rows, 4, generator=torch.Generator().manual_seed(0)))
        sampler = ResumableSampler(self.rows, 4, self.rows // 4, seed=0, infinite=False, progress=progress)
        return ResumableLoader(data, batch_size=4, sampler=sampler)  # rows / 4 batches an epoch


def fit_tiny(folder: Path, max_steps: int, ckpt_path: str | None = None, rows: int = 12, accumulate: int = 1,
             **checkpoint: object) -> tuple[Tiny, L.Trainer]:
    L.seed_everything(7)
    module = Tiny(rows)
    cb = Checkpoint(dirpath=str(folder), monitor=None, **checkpoint)
    trainer = L.Trainer(max_steps=max_steps, callbacks=[cb], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu", devices=1,
                        accumulate_grad_batches=accumulate)
    trainer.fit(module, ckpt_path=ckpt_path, weights_only=True)  # the random-number state loads safely
    return module, trainer


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random as py_random

    import numpy as np

    torch.manual_seed(3), np.random.seed(3), py_random.seed(3)
    state = capture()
    expected = (torch.rand(5), np.random.rand(3), py_random.random())
    torch.save({"rng": state}, tmp_path / "s.ckpt")
    torch.manual_seed(99), np.random.seed(99), py_random.seed(99)
    restore(torch.load(tmp_path / "s.ckpt", weights_only=True)["rng"])  # plain containers: loads safely
    got = (torch.rand(5), np.random.rand(3), py_random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_resume_is_exact_only_with_the_rng_state(tmp_path, monkeypatch):
    """Resuming at an epoch boundary (a new DataLoader iterator draws from the global generator in between):
    the same weights as the uninterrupted run; without the random-number state, other dropout masks."""
    def whole_and_resumed(name: str) -> float:
        whole, _ = fit_tiny(tmp_path / name / "whole", 6, every_n_train_steps=1)
        fit_tiny(tmp_path / name / "first", 3, every_n_train_steps=1)
        resumed, trainer = fit_tiny(tmp_path / name / "second", 6,
                                    ckpt_path=str(tmp_path / name / "first" / "last.ckpt"), every_n_train_steps=1)
        assert trainer.global_step == 6
        return max_diff(weights(whole), weights(resumed))

    assert whole_and_resumed("with") <= TOL
    monkeypatch.setattr(TrainingRNG, "batch_start", lambda self, trainer: None)
    assert whole_and_resumed("without") > 1e-3


def test_a_writer_dying_mid_write_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    real = TorchCheckpointIO.save_checkpoint
    targets: list[str] = []

    def dies_halfway(self, checkpoint, path, storage_options=None):
        targets.append(str(path))
        if checkpoint["global_step"] < 2:
            return real(self, checkpoint, path, storage_options)
        real(self, checkpoint, path, storage_options)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])  # the first half is on disk ...
        raise OSError(28, "No space left on device")  # ... when the writer dies

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", dies_halfway)
    with pytest.raises(Exception, match="No space left"):
        fit_tiny(tmp_path, 4, every_n_train_steps=1)
    last = tmp_path / "last.ckpt"
    assert all(t == f"{last}.tmp" for t in targets), targets  # never written in place
    check_intact(last)
    assert torch.load(last, weights_only=True)["global_step"] == 1  # the previous checkpoint, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # the half-written file is gone


def test_step_checkpoints_fall_on_optimizer_steps_under_accumulation(tmp_path, monkeypatch):
    saved: list[tuple[int, int]] = []
    real = Checkpoint._save_checkpoint

    def spy(self, trainer, filepath):
        saved.append((trainer.global_step, trainer.fit_loop.epoch_loop.batch_progress.total.processed))
        return real(self, trainer, filepath)

    monkeypatch.setattr(Checkpoint, "_save_checkpoint", spy)
    fit_tiny(tmp_path, 4, rows=16, accumulate=2, every_n_train_steps=1)  # 4 batches an epoch, 2 steps
    assert [s for s, _ in saved] == [1, 2, 3, 4], saved
    assert all(batches == 2 * step for step, batches in saved), saved  # never half an accumulated step


def test_a_resumed_run_keeps_the_best_checkpoints_and_scores_of_the_run_it_continues(tmp_path):
    old, new = tmp_path / "old" / "checkpoints", tmp_path / "new" / "checkpoints"
    best = lightning_checkpoint(old / "epoch00-step000008.ckpt", 8)
    cb = Checkpoint(dirpath=str(new), monitor="val/score", mode="max", save_top_k=1)
    score = torch.tensor(0.9)
    cb.load_state_dict({"monitor": "val/score", "best_model_score": score, "best_model_path": str(best),
                        "current_score": score, "dirpath": str(old), "best_k_models": {str(best): score},
                        "kth_best_model_path": str(best), "kth_value": score, "last_model_path": str(old / "x.ckpt")})
    adopted = new / best.name
    assert cb.best_model_path == str(adopted) and os.path.samefile(adopted, best)  # a hard link, no second copy
    assert float(cb.best_model_score) == pytest.approx(0.9) and list(cb.best_k_models) == [str(adopted)]
    # a worse score at the next validation is not the new best, as in the uninterrupted run
    one_process = SimpleNamespace(strategy=SimpleNamespace(reduce_boolean_decision=lambda decision: decision))
    assert not cb.check_monitor_top_k(one_process, current=torch.tensor(0.5))
    assert cb.check_monitor_top_k(one_process, current=torch.tensor(0.95))


def test_commit_replaces_a_sharded_folder_and_marks_it_complete(tmp_path):
    final, tmp = tmp_path / "last.ckpt", tmp_path / "last.ckpt.tmp"
    final.mkdir()
    (final / "meta.pt").write_text("old")
    tmp.mkdir()
    (tmp / "meta.pt").write_text("new")
    commit_checkpoint(tmp, final, {"global_step": 7})
    assert (final / "meta.pt").read_text() == "new" and not tmp.exists() and not Path(f"{final}.old").exists()
    assert json.loads((final / COMPLETE_MARKER).read_text()) == {"global_step": 7}


# -- ckpt_path=last and damaged checkpoints ----------------------------------------------------------------------


def lightning_checkpoint(path: Path, step: int, weights_only: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"state_dict": {"w": torch.ones(3) * step}, "global_step": step, "epoch": 0}
    if not weights_only:
        state.update(loops={"fit_loop": {}}, optimizer_states=[], callbacks={})
    torch.save(state, path)
    return path


def fake_run(cfg, name: str, age: float = 0.0) -> Path:
    """A run folder as train.py leaves it: ``<log_dir>/<task>/runs/<name>`` with ``config.yaml``."""
    run = Path(cfg.paths.log_dir) / str(cfg.task_name) / "runs" / name
    (run / "checkpoints").mkdir(parents=True)
    OmegaConf.save(cfg, run / "config.yaml", resolve=True)
    return run


def age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (t, t))


def sharded_checkpoint(folder: Path, step: int, complete: bool) -> Path:
    import torch.distributed.checkpoint as dcp

    dcp.save({"state_dict": {"w": torch.ones(3) * step}}, checkpoint_id=str(folder), no_dist=True)
    torch.save({"global_step": step, "loops": {}, "callbacks": {}}, folder / "meta.pt")
    if complete:
        (folder / COMPLETE_MARKER).write_text("{}")
    return folder


@pytest.fixture
def last_cfg(make_cfg):
    def make(*overrides: str):
        cfg = make_cfg(["model=bert", "model/size=tiny", "ckpt_path=last", *overrides], name="now")
        with open_dict(cfg):
            cfg.paths.log_dir = str(Path(cfg.paths.output_dir).parent / "logs")
        return cfg

    return make


def test_last_passes_by_a_sharded_folder_without_its_marker(last_cfg, caplog):
    cfg = last_cfg("strategy=fsdp", "accelerator=cpu", "trainer.devices=2")
    older = sharded_checkpoint(fake_run(cfg, "older") / "checkpoints" / "last.ckpt", 3, complete=True)
    age(older, 100)
    unfinished = sharded_checkpoint(fake_run(cfg, "newer") / "checkpoints" / "last.ckpt", 6, complete=False)
    with caplog.at_level(logging.WARNING, logger="lmforge.checkpoints"):
        assert resolve_ckpt_path(cfg) == str(older)
    assert f"passing by {unfinished}" in caplog.text and COMPLETE_MARKER in caplog.text


def test_last_falls_back_to_the_newest_good_checkpoint(last_cfg, caplog):
    cfg = last_cfg()
    run = fake_run(cfg, "killed")
    older_run = fake_run(cfg, "before")
    oldest = lightning_checkpoint(older_run / "checkpoints" / "last.ckpt", 2)
    age(oldest, 300)
    best = lightning_checkpoint(run / "checkpoints" / "epoch00-step000004.ckpt", 4)
    age(best, 200)
    weights_only = lightning_checkpoint(run / "checkpoints" / "epoch00-step000005.ckpt", 5, weights_only=True)
    age(weights_only, 100)
    last = lightning_checkpoint(run / "checkpoints" / "last.ckpt", 6)
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # cut in half
    (run / "checkpoints" / "last.ckpt.tmp").write_bytes(b"PK\x03\x04 a write in progress")  # never a candidate
    with caplog.at_level(logging.WARNING, logger="lmforge.checkpoints"):
        assert resolve_ckpt_path(cfg) == str(best)
    assert re.search(rf"passing by {re.escape(str(last))}: damaged checkpoint", caplog.text), caplog.text
    assert f"passing by {weights_only}: a weights-only checkpoint" in caplog.text
    assert "last.ckpt.tmp" not in caplog.text

    for p in (best, oldest):  # nothing good left: an error listing every checkpoint passed by
        p.write_bytes(os.urandom(2000))
    with pytest.raises(CheckpointError, match="none of the 4 checkpoints") as info:
        resolve_ckpt_path(cfg)
    assert all(str(p) in str(info.value) for p in (last, best, weights_only, oldest))


@pytest.mark.parametrize("damage", ["cut_in_half", "random_bytes", "empty"])
def test_a_damaged_checkpoint_is_an_error_naming_it_before_any_data_is_read(make_cfg, tmp_path, monkeypatch, damage):
    import lmforge.train as train_module

    path = lightning_checkpoint(tmp_path / "shared" / "epoch01.ckpt", 3)
    data = path.read_bytes()
    path.write_bytes({"cut_in_half": data[: len(data) // 2], "random_bytes": os.urandom(len(data)),
                      "empty": b""}[damage])
    cfg = make_cfg(["model=bert", "model/size=tiny", "extras.print_config=false", f"ckpt_path={path}"])

    def no_data(cfg):
        raise AssertionError("the data was read before the checkpoint was checked")

    monkeypatch.setattr(train_module, "build_datamodule", no_data)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: damaged checkpoint"):
        train_module.train(cfg)


# -- kill -9 at a random step, then ckpt_path=last ------------------------------------------------------------

COMMON = ["extras.print_config=false", "predict.texts=null", "export=false", "trainer.log_every_n_steps=1",
          "callbacks.progress_bar.every_n_steps=1", "++callbacks.plots=null"]
BERT = ["model=bert", "model/size=tiny", "optimizer.lr=1e-3"]
# (overrides, steps of the whole run); every model keeps its dropout (BERT and GPT-2's default 0.1)
TASKS = {
    "text_classification": ([*BERT, "data.max_train_samples=64", "data.max_eval_samples=32", "data.batch_size=4",
                             "trainer.max_epochs=2", "callbacks.model_checkpoint.every_n_train_steps=3"], 32),
    # two micro-batches an optimizer step: checkpoints only between steps
    "token_classification": (["task=token_classification", *BERT, "data.max_train_samples=64",
                              "data.max_eval_samples=32", "data.batch_size=4", "trainer.accumulate_grad_batches=2",
                              "trainer.max_epochs=2", "callbacks.model_checkpoint.every_n_train_steps=2"], 16),
    # step-based, validation (and text generation) every 8 steps
    "causal_lm": (["task=causal_lm", "trainer.max_steps=24", "trainer.val_check_interval=8", "data.block_size=32",
                   "data.batch_size=4", "data.max_eval_blocks=8", "data.tokenizer_training.vocab_size=600",
                   "task.generation.max_new_tokens=4", "callbacks.model_checkpoint.every_n_train_steps=3"], 24),
}
DDP = ["strategy=ddp", "trainer.devices=2", "accelerator=cpu"]
STEP = re.compile(r"^step (\d+)/(\d+) ", flags=re.M)


def command(task: str, log_dir: Path, name: str, cache_dir: Path, extra: list[str]) -> tuple[list[str], Path]:
    run = log_dir / task / "runs" / name
    overrides, _ = TASKS[task]
    return ([sys.executable, "train.py", *overrides, *COMMON, *extra, f"hydra.run.dir={run}",
             f"paths.log_dir={log_dir}", f"paths.cache_dir={cache_dir}"], run)


def run_to_end(args: list[str]) -> str:
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args[1:])} exited {proc.returncode}\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc.stdout


def run_and_kill(args: list[str], run: Path, total: int, rng: random.Random, mid_write: bool) -> tuple[str | None, str]:
    """Start the run and SIGKILL its whole process group (every DDP rank) once it has printed step ``k`` (random,
    after its first step checkpoint): after a random fraction of a second, or with ``mid_write`` as soon as a
    checkpoint is being written (``last.ckpt.tmp`` exists). Returns when it was killed (None: the run ended
    before this loop saw step ``k``, as on a loaded machine whose output arrives late), and its output."""
    kill_at = rng.randint(total // 4, total - 6)
    delay = rng.uniform(0.0, 0.4)
    folder = run / "checkpoints"
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # each step line at once
    out: list[str] = []
    step = [0]

    def read() -> None:
        for line in proc.stdout:
            out.append(line)
            m = STEP.match(line)
            if m:
                step[0] = int(m.group(1))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    when = "never"
    deadline = time.monotonic() + 900
    while proc.poll() is None and time.monotonic() < deadline:
        if kill_at <= step[0] < total and (folder / "last.ckpt").exists():  # mid-run: never after the last step
            if not mid_write:
                time.sleep(delay)
                when = f"{delay:.2f} s after step {step[0]}"
                break
            if (folder / "last.ckpt.tmp").exists():
                when = f"while writing a checkpoint after step {step[0]}"
                break
            if step[0] >= kill_at + 8:  # no write seen (too quick to catch): kill anyway
                when = f"at step {step[0]} (no write in progress seen)"
                break
        time.sleep(0.002)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=120)
    reader.join(timeout=30)
    text = "".join(out)
    if proc.returncode != -signal.SIGKILL:  # it printed its steps too late (a loaded machine) and ended unkilled
        assert proc.returncode == 0 and when == "never", f"the run failed before the kill at step {kill_at}:\n{text[-3000:]}"
        return None, text
    return when, text


def load(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def train_losses(run: Path) -> dict[int, float]:
    with open(run / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def final_metrics(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    m["best_checkpoint"] = Path(m.get("best_checkpoint", "")).name
    return {k: v for k, v in m.items() if not k.startswith(("time/", "perf/"))}


def assert_same_run(whole: Path, resumed: Path, context: str) -> None:
    a, b = load(whole), load(resumed)
    assert a["global_step"] == b["global_step"], context
    assert max_diff(a["state_dict"], b["state_dict"]) <= TOL, context
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert sa.keys() == sb.keys(), context
    assert max(max_diff(sa[i], sb[i]) for i in sa) <= TOL, context  # AdamW's moments and step counts
    assert a["lr_schedulers"] == b["lr_schedulers"], context
    ma, mb = final_metrics(whole), final_metrics(resumed)
    assert ma.keys() == mb.keys(), context
    for k in ma:
        assert ma[k] == (pytest.approx(mb[k], abs=TOL, rel=TOL) if isinstance(ma[k], float) else mb[k]), (k, context)
    la, lb = train_losses(whole), train_losses(resumed)
    assert lb and all(la[s] == pytest.approx(lb[s], abs=TOL, rel=TOL) for s in lb), context  # step by step


@pytest.fixture(scope="module")
def baselines(tmp_path_factory, cache_dir):
    """The uninterrupted runs, one per (task, strategy), made when a test first asks for one."""
    done: dict[tuple[str, bool], Path] = {}

    def get(task: str, ddp: bool = False) -> Path:
        if (task, ddp) not in done:
            log_dir = tmp_path_factory.mktemp(f"whole_{task}{'_ddp' if ddp else ''}")
            args, run = command(task, log_dir, "whole", cache_dir, DDP if ddp else [])
            run_to_end(args)
            done[task, ddp] = run
        return done[task, ddp]

    return get


def kill_and_resume(task: str, tmp_path: Path, cache_dir: Path, whole: Path, extra: list[str],
                    mid_write: bool = False, processes: int = 1) -> None:
    seed = random.randrange(2**32)
    log_dir = tmp_path / "logs"
    rng = random.Random(seed)
    total = TASKS[task][1] // processes
    for attempt in range(3):
        # a run that ended before the kill, or was killed after its last step's checkpoint (the random delay can
        # outlast the remaining steps on a fast or loaded machine), leaves nothing to resume: run it again
        args, killed = command(task, log_dir, "killed", cache_dir, extra)
        when, out = run_and_kill(args, killed, total, rng, mid_write)
        if when is not None:
            done = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
            if done["global_step"] < total:
                break
            when = None
        print(f"{task}: attempt {attempt + 1} was not killed before its last step; again")
        shutil.rmtree(killed)
    assert when is not None, f"{task}: three runs were not killed before their last step (seed {seed}):\n{out[-3000:]}"
    left = sorted(p.name for p in (killed / "checkpoints").iterdir())
    args, resumed = command(task, log_dir, "resumed", cache_dir, [*extra, "ckpt_path=last"])
    out = run_to_end(args)
    context = f"{task} {' '.join(extra)}: killed {when} (seed {seed}); left {left}"
    print(context)  # shown by pytest -s or -rP
    # the newest checkpoint: last.ckpt, or a step checkpoint of the same step written after it (at an epoch's end
    # both are written for one step, and a kill between the two writes leaves either order; seen in CI)
    used = re.search(r"^resuming from (.+)$", out, re.M)
    assert used and Path(used.group(1)).parent == killed / "checkpoints", context + "\n" + out[-3000:]
    start = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    if Path(used.group(1)).name != "last.ckpt":
        step = torch.load(used.group(1), map_location="cpu", weights_only=True)["global_step"]
        assert step == start, f"{context}: resumed from {used.group(1)} (step {step}), not the newest (step {start})"
    first = int(STEP.search(out).group(1))
    assert first == start + 1, f"{context}: resumed at step {first} from a checkpoint of step {start}"
    assert_same_run(whole, resumed, context)
    if when.startswith("while writing"):
        assert "last.ckpt.tmp" in left, context  # the kill did land mid-write; the previous last.ckpt served


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_kill_at_a_random_step_then_resume_is_exact(task, baselines, tmp_path, cache_dir):
    # text classification: killed while a checkpoint is being written
    kill_and_resume(task, tmp_path, cache_dir, baselines(task), [], mid_write=task == "text_classification")


@pytest.mark.slow
def test_kill_under_ddp_then_resume_is_exact(baselines, tmp_path, cache_dir):
    # each rank trains half the data: 16 optimizer steps in all
    kill_and_resume("text_classification", tmp_path, cache_dir, baselines("text_classification", ddp=True), DDP,
                    processes=2)


@pytest.mark.slow
def test_train_py_names_a_damaged_checkpoint_and_exits_2(tmp_path, cache_dir):
    path = lightning_checkpoint(tmp_path / "cut.ckpt", 3)
    path.write_bytes(path.read_bytes()[:1000])
    args, _ = command("text_classification", tmp_path / "logs", "run", cache_dir, [f"ckpt_path={path}"])
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: {path}: damaged checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    assert "tokenized" not in proc.stdout  # before any data was read
