#!/usr/bin/env python
"""Causal-LM pretraining throughput: lmforge (``train(cfg)``) against a plain PyTorch loop, same model, data, batch.

    python benchmarks/causal_lm_vs_plain_loop.py                           # tiny GPT-2, tinyshakespeare, ABAB
    python benchmarks/causal_lm_vs_plain_loop.py --size small --steps 40 --repeats 3
    python benchmarks/causal_lm_vs_plain_loop.py --data sample             # the embedded corpus (no ../shared)

Arms, each in a fresh subprocess of this script (``--arm lmforge|plain``) so no state leaks between them:

* ``lmforge``: the config tree composed with Hydra's compose API (``task=causal_lm`` + the overrides
  below) and ``lmforge.train.train(cfg)`` in process, with lmforge's default callbacks (checkpointing,
  LR monitor, throughput, rich progress bar) and CSV logger; a timing callback is added from outside.
* ``plain``: the same datamodule (its packed blocks, its sampler order), the same model built by
  ``lmforge.models.factory.build_model`` from the same seed, ``torch.optim.AdamW`` with the same
  parameter groups, the same warmup + cosine ``LambdaLR``, gradient clipping at 1.0, fp32; a bare
  ``for batch in loader`` loop.

Timed phase: from the start of training step ``--warmup`` to the end of the last step; validation is
off (``limit_val_batches=0``) and the sanity check skipped. Tokens are counted from the batches trained
(all tokens are real: packing leaves no padding), and the process's CPU time over the same window (all its
threads; steadier than tokens/s when other work shares the cores). Output: a table, the medians, the
lmforge/plain ratio of tokens/s (target >= 0.95) and plain/lmforge of CPU time per token (above 1: lmforge
needs less), and ``logs/benchmarks/causal_lm_vs_plain_loop.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "logs" / "benchmarks" / "causal_lm_vs_plain_loop.json"


def overrides(a: argparse.Namespace, run_dir: Path) -> list[str]:
    data = ["data=tinyshakespeare"] if a.data == "tinyshakespeare" else ["data=sample"]
    return ["task=causal_lm", *data, "model=gpt2", f"model/size={a.size}", f"data.block_size={a.block_size}",
            f"data.batch_size={a.batch_size}", f"data.tokenizer_training.vocab_size={a.vocab_size}",
            f"trainer.max_steps={a.steps}", "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
            "trainer.log_every_n_steps=10", "task.prompts=[]", "predict.texts=[]", "test=false", "export=false",
            "extras.print_config=false", "accelerator=cpu", f"seed={a.seed}"]


def compose(a: argparse.Namespace, run_dir: Path):
    """The config ``python train.py <overrides>`` would get, run in ``run_dir``."""
    from lmforge.utils.compose import compose_config

    return compose_config(overrides(a, run_dir), run_dir)


class Clock:
    def __init__(self, warmup: int):
        self.warmup, self.t0, self.t1, self.tokens, self.steps = warmup, None, None, 0, 0
        self.c0 = self.c1 = None  # the process's CPU time (every thread), steadier than wall time on shared cores

    def step_start(self, i: int) -> None:
        if i == self.warmup:
            self.t0, self.c0 = time.perf_counter(), time.process_time()

    def step_end(self, i: int, tokens: int) -> None:
        if i >= self.warmup:
            self.tokens += tokens
            self.steps += 1
            self.t1, self.c1 = time.perf_counter(), time.process_time()

    def result(self) -> dict:
        dt = self.t1 - self.t0
        return {"timed_steps": self.steps, "tokens": self.tokens, "seconds": dt, "tokens_per_sec": self.tokens / dt,
                "cpu_ms_per_ktoken": 1e6 * (self.c1 - self.c0) / self.tokens}


def run_lmforge(a: argparse.Namespace, run_dir: Path) -> dict:
    import lightning as L

    from lmforge.train import train

    clock = Clock(a.warmup)

    class Timing(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            clock.step_start(batch_idx)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.step_end(batch_idx, batch["input_ids"].numel())

    cfg = compose(a, run_dir)
    import lmforge.train as lt

    build = lt.build_callbacks
    lt.build_callbacks = lambda *args: [*build(*args), Timing()]  # the timing callback joins lmforge's own
    metrics = train(cfg)
    return {**clock.result(), "final_train_loss": metrics.get("train/loss")}


def run_plain(a: argparse.Namespace, run_dir: Path) -> dict:
    import lightning as L
    import torch
    from transformers import AutoModelForCausalLM

    from lmforge.models.factory import build_model
    from lmforge.tasks.base import lr_lambda, resolve_warmup
    from lmforge.train import build_datamodule

    cfg = compose(a, run_dir)
    L.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()  # no trainer attached: epoch mode length; take the first `steps` batches
    model = build_model(AutoModelForCausalLM, cfg.model, **dm.model_facts())
    model.train()
    opt_cfg = cfg.optimizer
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": opt_cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=opt_cfg.lr, betas=tuple(opt_cfg.betas),
                            eps=opt_cfg.eps)
    total = a.steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.scheduler.name, resolve_warmup(cfg.scheduler.warmup, total),
                                                             total, cfg.scheduler.min_lr_ratio))
    clock = Clock(a.warmup)
    it = iter(loader)
    loss = None
    for i in range(a.steps):
        clock.step_start(i)
        batch = next(it)
        ids = batch["input_ids"]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        clock.step_end(i, ids.numel())
    return {**clock.result(), "final_train_loss": float(loss)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arm", choices=["lmforge", "plain"], help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    p.add_argument("--data", choices=["tinyshakespeare", "sample"], default="tinyshakespeare")
    p.add_argument("--size", default="tiny")
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--vocab-size", type=int, default=2000)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10, help="untimed first steps")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()
    if a.data == "tinyshakespeare" and not (ROOT.parent / "shared" / "data" / "tinyshakespeare").is_dir():
        a.data = "sample"
    if a.arm:
        import torch

        if a.threads:
            torch.set_num_threads(a.threads)
        run_dir = ROOT / "logs" / "benchmarks" / "causal_lm_vs_plain_loop_runs" / f"{a.arm}-{os.getpid()}"
        result = (run_lmforge if a.arm == "lmforge" else run_plain)(a, run_dir)
        Path(a.result_file).write_text(json.dumps({"arm": a.arm, **result}))
        return

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    passthrough = [f"--data={a.data}", f"--size={a.size}", f"--block-size={a.block_size}", f"--batch-size={a.batch_size}",
                   f"--vocab-size={a.vocab_size}", f"--steps={a.steps}", f"--warmup={a.warmup}", f"--seed={a.seed}"]
    if a.threads:
        passthrough.append(f"--threads={a.threads}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    runs = []
    for r in range(a.repeats):
        for arm in (["lmforge", "plain"] if r % 2 == 0 else ["plain", "lmforge"]):  # ABBA: drift hits both
            result_file = OUT.parent / f"causal_lm_vs_plain_loop.{arm}.{r}.json"
            subprocess.run([sys.executable, __file__, f"--arm={arm}", f"--result-file={result_file}", *passthrough],
                           check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            runs.append({"repeat": r, **json.loads(result_file.read_text())})
            result_file.unlink()
            print(f"repeat {r} {arm:8s} {runs[-1]['tokens_per_sec']:10.0f} tokens/s, "
                  f"{runs[-1]['cpu_ms_per_ktoken']:.1f} CPU ms per 1k tokens "
                  f"({runs[-1]['timed_steps']} steps, loss {runs[-1]['final_train_loss']:.3f})", flush=True)
    med = {arm: statistics.median(x["tokens_per_sec"] for x in runs if x["arm"] == arm) for arm in ("lmforge", "plain")}
    cpu = {arm: statistics.median(x["cpu_ms_per_ktoken"] for x in runs if x["arm"] == arm) for arm in ("lmforge", "plain")}
    ratio = med["lmforge"] / med["plain"]
    summary = {"settings": vars(a) | {"arm": None}, "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
               "runs": runs, "median_tokens_per_sec": med, "ratio_lmforge_over_plain": ratio,
               "median_cpu_ms_per_ktoken": cpu, "cpu_ratio_plain_over_lmforge": cpu["plain"] / cpu["lmforge"],
               "target": 0.95}
    OUT.write_text(json.dumps(summary, indent=2))
    print(f"median tokens/s: lmforge {med['lmforge']:.0f}, plain loop {med['plain']:.0f}; "
          f"ratio {ratio:.3f} (target >= 0.95); CPU per token plain/lmforge {cpu['plain'] / cpu['lmforge']:.3f} -> {OUT}")


if __name__ == "__main__":
    main()
