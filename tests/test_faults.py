"""Faults end cleanly: a non-finite loss (stop or skip), a rank of a DDP run failing, a full disk while writing
a checkpoint or the export, W&B without a login or a network, more devices than the machine has."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import ROOT, TINY
from lmforge.faults import DiskFullError, NanGuard, NonFiniteLossError, check_devices, cpu_count
from lmforge.tasks.base import TaskModule
from lmforge.train import train
from lmforge.utils.errors import ConfigError

# 64 rows of 8: validation (and a checkpoint) every 2 steps
SMALL = [*TINY, "data.max_train_samples=64", "data.batch_size=8", "trainer.val_check_interval=2",
         "callbacks.early_stopping=null", "predict.texts=null"]


def _nan_at(monkeypatch, steps: set[int]) -> None:
    """The training loss is NaN at these optimizer steps (0-based ``trainer.global_step``)."""
    original = TaskModule.training_step

    def training_step(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.trainer.global_step in steps else loss

    monkeypatch.setattr(TaskModule, "training_step", training_step)


# -- non-finite loss ---------------------------------------------------------------------------------

def test_nan_loss_stops_at_that_step_naming_it_and_the_last_good_checkpoint(make_cfg, monkeypatch):
    _nan_at(monkeypatch, {4})
    cfg = make_cfg([*SMALL, "trainer.max_steps=6"])
    assert cfg.trainer.detect_nan == "stop"  # the default
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg)
    message = str(info.value)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert "training step 5 (epoch 1, batch index 4)" in message, message
    assert f"Last good checkpoint: {last}" in message, message
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4  # the state before the bad step, never a NaN state
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


def test_nan_loss_with_skip_drops_that_step_counts_it_and_finishes(make_cfg, monkeypatch, capsys):
    _nan_at(monkeypatch, {1, 3})
    cfg = make_cfg([*SMALL, "trainer.max_steps=5", "trainer.detect_nan=skip", "export=false", "test=false"])
    metrics = train(cfg)
    assert metrics["train/skipped_batches"] == 2.0
    assert capsys.readouterr().out.count("batch skipped") == 2
    saved = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    assert saved["callbacks"]["NanGuard"] == {"skipped": 2}  # a resumed run goes on counting


class _Line(L.LightningModule):
    """A linear layer whose loss is NaN at chosen steps."""

    def __init__(self, bad: set[int]):
        super().__init__()
        self.layer, self.bad, self.seen = torch.nn.Linear(4, 1), bad, []

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        return loss * float("nan") if self.global_step in self.bad else loss

    def on_train_batch_start(self, batch, batch_idx):
        self.seen.append(self.layer.weight.detach().clone())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1, weight_decay=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(32, 4)), batch_size=4)


def _fit(module: L.LightningModule, guard: NanGuard, steps: int) -> None:
    L.Trainer(max_steps=steps, callbacks=[guard], logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, accelerator="cpu", devices=1).fit(module)


def test_skip_leaves_parameters_and_optimizer_state_untouched_and_stops_past_the_limit():
    module = _Line({2})
    _fit(module, NanGuard("skip", max_skipped_batches=1), steps=4)
    w = module.seen + [module.layer.weight.detach()]
    assert torch.equal(w[2], w[3])  # the skipped step moved nothing (no AdamW update, no weight decay)
    assert not torch.equal(w[1], w[2]) and not torch.equal(w[3], w[4])  # the others did
    assert torch.isfinite(w[-1]).all()

    with pytest.raises(NonFiniteLossError, match=r"1 batches were skipped already \(trainer.max_skipped_batches=1\)"):
        _fit(_Line({1, 2}), NanGuard("skip", max_skipped_batches=1), steps=4)


def test_detect_nan_values_are_checked(make_cfg):
    from lmforge.train import build_trainer

    with pytest.raises(ConfigError, match=r"trainer.detect_nan=maybe: expected one of stop, skip, off"):
        build_trainer(make_cfg(["trainer.detect_nan=maybe"]), [], [])
    off = build_trainer(make_cfg(["trainer.detect_nan=off"]), [], [])
    assert not any(isinstance(c, NanGuard) for c in off.callbacks)
    assert any(isinstance(c, NanGuard) for c in build_trainer(make_cfg([]), [], []).callbacks)


# -- one rank of a DDP run failing -------------------------------------------------------------------

def _fault_run(tmp_path: Path, fault: str, extra: list[str], strategy: str = "ddp"
               ) -> tuple[subprocess.CompletedProcess, float, dict]:
    codes = tmp_path / "codes"
    codes.mkdir()
    env = {**os.environ, "LMFORGE_TEST_FAULT": fault, "LMFORGE_TEST_FAULT_OUT": str(codes)}
    t0 = time.monotonic()
    popen = subprocess.Popen([sys.executable, "tests/fault_inject.py", *SMALL, "trainer.max_steps=6",
                              f"strategy={strategy}", "accelerator=cpu", "trainer.devices=2",
                              f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}", *extra],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = popen.communicate(timeout=180)
    except subprocess.TimeoutExpired:  # a hang: every rank's stacks (tests/fault_inject.py dumps them on SIGUSR1)
        import signal

        for f in codes.glob("stacks_*"):
            try:
                os.kill(int(f.name.split("_")[1]), signal.SIGUSR1)
            except ProcessLookupError:
                pass
        time.sleep(2)
        for f in codes.glob("stacks_*"):
            try:
                os.kill(int(f.name.split("_")[1]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        out, err = popen.communicate()
        stacks = "\n".join(f"--- {f.name}\n{f.read_text()}" for f in codes.glob("stacks_*"))
        raise AssertionError(f"hung\n{stacks}\n--- stderr ---\n{err[-3000:]}") from None
    proc = subprocess.CompletedProcess(popen.args, popen.returncode, out, err)
    elapsed = time.monotonic() - t0
    time.sleep(1)  # a rank that outlived rank 0 writes its status a moment later
    return proc, elapsed, {p.name: p.read_text() for p in codes.glob("exit_*")}


@pytest.mark.slow  # DDP with 2 CPU processes
def test_one_ddp_rank_raising_ends_every_rank_quickly_with_its_error_once(tmp_path):
    proc, elapsed, codes = _fault_run(tmp_path, "raise:1:3", ["export=false"])
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    after_failure = time.time() - float((tmp_path / "codes" / "raised_at").read_text()) - 1  # less _fault_run's 1 s
    assert after_failure < 60 and elapsed < 180, f"{after_failure:.0f} s after the failure, {elapsed:.0f} s in all"
    assert set(codes) == {"exit_rank0", "exit_rank1"} and "0" not in codes.values(), codes
    assert text.count("injected failure on rank 1 at step 3") == 1, text[-4000:]  # the cause, said once
    assert "another process of this distributed run failed" in text  # rank 0: why it stopped, no second traceback
    assert not (tmp_path / "run" / "export").exists()


@pytest.mark.slow
def test_nan_on_one_ddp_rank_is_skipped_by_every_rank(tmp_path):
    proc, elapsed, codes = _fault_run(tmp_path, "nan:1:2", ["trainer.detect_nan=skip", "export=false", "test=false"])
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    # rank 0's own loss was finite: it skipped because rank 1's was not (all-reduced), and said so once
    assert text.count("warning: non-finite loss at training step 3") == 1, text[-4000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train/skipped_batches"] == 1.0


@pytest.mark.slow  # DDP with 2 CPU processes
def test_nan_stop_under_ddp_is_said_once_and_every_rank_exits_non_zero(tmp_path):
    proc, elapsed, codes = _fault_run(tmp_path, "nan:1:3", ["export=false"])
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-4000:]
    assert elapsed < 180, f"took {elapsed:.0f} s"
    assert text.count("non-finite loss (NaN or inf) at training step 4") == 1, text[-4000:]
    assert "Traceback" not in text
    assert codes.get("exit_rank1") == "2", codes


STUCK_RANK = '''
import os, sys, time
import torch.distributed as dist
from lmforge.faults import bound_exit
rank = int(sys.argv[1])
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
dist.init_process_group("gloo", rank=rank, world_size=2)
bound_exit(grace=3)  # as an exception leaves train(): then this rank's cleanup waits forever
time.sleep(120)
'''


def test_a_failing_rank_whose_cleanup_hangs_still_ends(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    t0 = time.monotonic()
    ranks = [subprocess.Popen([sys.executable, "-c", STUCK_RANK, str(r), port], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    results = [p.communicate(timeout=90) for p in ranks]
    assert [p.returncode for p in ranks] == [1, 1], results
    assert time.monotonic() - t0 < 60
    assert "Timeout (0:00:03)!" in results[0][1]  # the stacks of the stuck process, for its bug report


def test_an_lmforge_error_in_a_spawned_worker_is_rebuilt_for_its_error_line():
    from lmforge.strategies import worker_user_error

    text = ("-- Process 1 terminated with the following error:\nTraceback (most recent call last):\n"
            '  File "x.py", line 3, in on_before_optimizer_step\n    raise NonFiniteLossError(...)\n'
            "lmforge.faults.NonFiniteLossError: non-finite loss (NaN or inf) at training step 4")
    error = worker_user_error(text)
    assert isinstance(error, NonFiniteLossError) and str(error) == "non-finite loss (NaN or inf) at training step 4"
    assert worker_user_error("Traceback (most recent call last):\nRuntimeError: boom") is None  # a crash stays one


@pytest.mark.slow
def test_nan_stop_under_ddp_spawn_ends_with_the_error_line(tmp_path):
    proc, elapsed, codes = _fault_run(tmp_path, "nan:1:3", ["export=false"], strategy="ddp_spawn")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-4000:]
    assert text.count("error: non-finite loss (NaN or inf) at training step 4") == 1, text[-4000:]
    assert "Traceback" not in text


# -- a full disk -------------------------------------------------------------------------------------

def test_disk_full_on_a_checkpoint_is_a_clear_error_and_the_earlier_one_stays(make_cfg, monkeypatch):
    import lmforge.faults as faults

    real, calls = faults.write_checkpoint_file, []

    def save(checkpoint, path):
        calls.append(str(path).removesuffix(".tmp"))  # the final name (lmforge writes beside it, then renames)
        if len(calls) == 2:
            Path(path).write_bytes(b"PK\x03\x04" + bytes(1000))  # the disk filled up part-way through the file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(checkpoint, path)

    monkeypatch.setattr(faults, "write_checkpoint_file", save)
    cfg = make_cfg([*SMALL, "trainer.max_steps=6"])
    with pytest.raises(DiskFullError) as info:
        train(cfg)
    assert str(info.value).startswith(f"disk full while writing {calls[1]}: No space left on device"), info.value
    assert "earlier checkpoints are intact" in str(info.value)
    first = Path(calls[0])
    state = torch.load(first, map_location="cpu", weights_only=False)  # whole and loadable
    assert state["global_step"] == 2 and state["state_dict"]


def test_disk_full_on_the_export_is_a_clear_error_and_checkpoints_stay(make_cfg, monkeypatch):
    from transformers import PreTrainedModel

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    cfg = make_cfg([*SMALL, "trainer.max_steps=2", "test=false"])
    out = Path(cfg.paths.output_dir)
    with pytest.raises(DiskFullError, match=rf"disk full while writing {out / 'export'}: No space left on device; "
                                            rf"the checkpoints under {out / 'checkpoints'} are intact"):
        train(cfg)
    assert torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 2


def test_cli_says_disk_full_in_one_line():
    from lmforge.cli import user_error_message

    e = OSError(errno.ENOSPC, "No space left on device", "/data/run/predictions.jsonl")
    assert user_error_message(e) == "disk full while writing /data/run/predictions.jsonl: No space left on device"


# -- W&B without a login or a network ----------------------------------------------------------------

@pytest.mark.parametrize("env", [
    {},  # no key, no ~/.netrc
    {"WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"},  # a key, but nothing listens there
], ids=["not-logged-in", "unreachable"])
def test_wandb_without_login_or_network_goes_offline_with_one_warning(make_cfg, monkeypatch, tmp_path, caplog, env):
    from lmforge.loggers import build_loggers, start_loggers
    from lmforge.train import end_job

    for k in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = make_cfg([*TINY, "logger=wandb"])
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True)
    before = dict(os.environ)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="lmforge.loggers"):
        try:
            start_loggers(build_loggers(cfg, out), cfg, out)
        finally:
            end_job(before)
    assert time.monotonic() - t0 < 45
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("W&B:")]
    assert len(warnings) == 1, warnings
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert f"logging offline to {runs[0]}; sync later with `wandb sync {runs[0]}`" in warnings[0]
    assert ("not logged in" if not env else "http://127.0.0.1:9 is unreachable") in warnings[0]


def test_wandb_failing_to_start_online_falls_back_to_offline(make_cfg, monkeypatch, tmp_path, caplog):
    import wandb

    from lmforge.loggers import build_loggers, start_loggers
    from lmforge.train import end_job

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr("lmforge.loggers.wandb_offline_reason", lambda lg: None)  # looks logged in and reachable
    real, calls = wandb.init, []

    def init(**kwargs):
        calls.append(os.environ.get("WANDB_MODE"))
        if len(calls) == 1:
            raise wandb.errors.CommError("Run initialization has timed out after 60.0 sec.")
        return real(**kwargs)

    monkeypatch.setattr(wandb, "init", init)
    cfg = make_cfg([*TINY, "logger=wandb"])
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True)
    before = dict(os.environ)
    with caplog.at_level(logging.WARNING, logger="lmforge.loggers"):
        try:
            start_loggers(build_loggers(cfg, out), cfg, out)
        finally:
            end_job(before)
    assert calls == [None, "dryrun"]
    assert any("could not start online (CommError: Run initialization has timed out" in r.getMessage()
               for r in caplog.records)


# -- devices -----------------------------------------------------------------------------------------

def test_more_devices_than_the_machine_has_fail_before_any_data_is_read(make_cfg, monkeypatch):
    def no_data(*a, **k):
        raise AssertionError("the data was read before the device check")

    monkeypatch.setattr("lmforge.train.build_datamodule", no_data)
    cores = cpu_count()
    cfg = make_cfg(["accelerator=cpu", "strategy=ddp", "trainer.devices=64"])
    with pytest.raises(ConfigError, match=rf"trainer.devices=64 with accelerator=cpu but this machine has {cores} CPU "
                                          rf"core.*use trainer.devices={cores} or fewer"):
        train(cfg)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"accelerator=gpu but no CUDA device is visible"):
            train(make_cfg(["accelerator=gpu"]))
    check_devices(make_cfg(["accelerator=cpu", "strategy=ddp", "trainer.devices=1"]))  # fits: no error

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"trainer.devices=\[0, 1\] but this machine has 1 CUDA device; "
                                          r"use trainer.devices=1 or fewer"):
        check_devices(make_cfg(["accelerator=gpu", "strategy=ddp", "trainer.devices=[0,1]"]))


def test_eval_checks_its_devices_before_reading_anything(make_cfg, monkeypatch):
    from lmforge.evaluate import evaluate

    monkeypatch.setattr("lmforge.evaluate.find_run", lambda cfg: (_ for _ in ()).throw(AssertionError("read")))
    cfg = make_cfg(["accelerator=cpu", "devices=64", "run=/nowhere"], config_name="eval")
    with pytest.raises(ConfigError, match=r"devices=64 with accelerator=cpu but this machine has"):
        evaluate(cfg)
