#!/usr/bin/env python
"""lmforge vs ``transformers.Trainer`` on instruction tuning: a tiny GPT-2 from scratch on the embedded chat sample.

    python benchmarks/instruction_tuning_vs_trainer.py                               # 3,000 conversations, 2 epochs, ABBA x 2
    python benchmarks/instruction_tuning_vs_trainer.py --train-samples 1000 --epochs 1 --threads 1 --repeats 1
    python benchmarks/instruction_tuning_vs_trainer.py --train-samples 64 --eval-samples 32 --batch-size 16 --epochs 1 --repeats 1

Arms, each run in a fresh subprocess of this script (``--arm <arm>``), so that peak memory is the arm's own:

* ``lmforge``: the real config tree (``task=instruction_tuning`` plus the overrides below) and
  ``lmforge.train.train(cfg)`` in process, with lmforge's data defaults for the task: one conversation per example
  (``data.packing=false``), random batches (``data.group_by_length=false``: the Trainer's order, so no
  ``lmforge_same`` arm is needed), padding-free batches (``data.padding_free=auto``, on for GPT-2: each batch's
  conversations in rows of at most 256 tokens with restarting position ids, so the same batches and the same loss
  without computing on padding), labels on the assistant tokens only, the conversations tokenized once before
  training (token cache), ``torch.optim.AdamW``, the per-epoch ``last.ckpt`` write;
* ``lmforge_padded`` (not in the default ``--arms``): lmforge with ``data.padding_free=false``: one conversation per
  row, right padding and an attention mask, as the Trainer's batches;
* ``trainer``: ``transformers.Trainer`` + ``DataCollatorForSeq2Seq`` (``input_ids`` padded with the pad id,
  ``labels`` with -100, an attention mask) on a ``datasets.Dataset`` holding EXACTLY the token ids and label
  masks lmforge's datamodule produced for the same conversations (same tokenizer, chat template and prompt
  masking), the model's own loss (HF's causal-LM loss: mean over the labelled tokens, as lmforge's), random
  batches, ``report_to=[]``, no evaluation or saving during training;
* ``lmforge_grouped`` (not in the default ``--arms``): lmforge with ``data.group_by_length=true``: batches of
  conversations of similar lengths (less padding), in random order; other batches than the Trainer's.

Same in every arm: the tiny GPT-2 (``model=gpt2 model/size=tiny``, 0.66M parameters, the task's dropout 0), built
by lmforge's factory with the same seed (the initial weights are checksummed in both arms), the BPE tokenizer lmforge
trains on the sample, batch size 32, lr 3e-3, AdamW betas (0.9, 0.95) and weight decay 0.1 on matrices (the
Trainer's "all but biases and LayerNorm weights": the same set for GPT-2), a linear schedule with 5% warmup (the
task's own schedule is cosine to 10%: linear is what both engines share), gradient clipping 1.0, the epochs,
fp32, the number of torch threads, no dataloader workers. The task's lr, betas, weight decay, warmup, batch size,
epochs and max_length 256 are lmforge's defaults for ``task=instruction_tuning``; the Trainer gets them explicitly.

Timed: all training epochs in one window (``PhaseClock`` of ``text_classification_vs_trainer.py``: from the first
epoch's start to the last optimizer step); samples are conversations, tokens are non-padding tokens, the padding
fraction is over the batches actually trained. Quality: the validation loss on the answer tokens (mean per
labelled token over the sample's validation split, ``--eval-samples`` of it) of each arm's final model, computed by
one function (``answer_loss`` below) on lmforge's validation token ids.

Output: a table, and ``logs/benchmarks/instruction_tuning_vs_trainer.json`` (``--out``). Ratios in
``summary.ratio_lmforge_over_trainer``: rates lmforge/trainer (above 1: lmforge faster), ``cpu_ms_per_sample``
trainer/lmforge (above 1: lmforge spends less CPU per conversation), ``peak_rss`` lmforge/trainer (below 1: lmforge
uses less), ``val_loss_diff`` lmforge - trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from text_classification_vs_trainer import OFFLINE_ENV, PhaseClock, schedule  # noqa: E402  (the shared harness)

import text_classification_vs_trainer as harness  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / "logs" / "benchmarks" / "instruction_tuning_vs_trainer.json"
# lmforge: the task's defaults (random batches, padding-free); lmforge_padded: the same batches, padded
# (data.padding_free=false); lmforge_grouped: data.group_by_length=true (batches of conversations of similar lengths:
# less padding, other batches than the Trainer's)
ARMS = ("lmforge", "trainer", "lmforge_padded", "lmforge_grouped")
ARM_OVERRIDES = {"lmforge": [], "lmforge_padded": ["data.padding_free=false"],
                 "lmforge_grouped": ["data.group_by_length=true"]}


# -- shared by both arms -------------------------------------------------------------------------------
def base_overrides(a: argparse.Namespace) -> list[str]:
    n = "null" if a.train_samples is None else a.train_samples
    m = "null" if a.eval_samples is None else a.eval_samples
    return ["task=instruction_tuning", f"seed={a.seed}", f"data.max_train_samples={n}", f"data.max_eval_samples={m}",
            f"data.batch_size={a.batch_size}", "data.num_workers=0", f"trainer.max_epochs={a.epochs}",
            "trainer.val_check_interval=null", "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
            "trainer.gradient_clip_val=1.0", "trainer.precision=32-true", f"optimizer.lr={a.lr}",
            f"optimizer.weight_decay={a.weight_decay}", "scheduler=linear", f"scheduler.warmup={a.warmup}",
            "export=false", "test=false", "predict.texts=[]", "callbacks.early_stopping=null",
            *(["accelerator=cpu"] if a.device == "cpu" else [])]


def checksum(arrays: Any) -> dict:
    """Conversations, token count and id sums of a split's ``input_ids`` and ``labels``: the arms' data must agree."""
    ids, labels = arrays["input_ids"], arrays["labels"]
    return {"conversations": len(ids), "tokens": int(sum(len(x) for x in ids)),
            "ids_sum": int(sum(int(x.sum()) for x in ids)),
            "labelled": int(sum(int((y != -100).sum()) for y in labels))}


def weights_sum(model: Any) -> float:
    import torch

    with torch.no_grad():
        return float(sum(p.double().abs().sum() for p in model.parameters()))


def answer_loss(model: Any, arrays: Any, pad_id: int, batch_size: int = 32) -> dict:
    """Mean cross-entropy per labelled (answer) token of ``model`` over the split ``arrays`` (lmforge's token ids and
    labels), in order, right-padded batches, each token predicted from the tokens before it."""
    import torch
    import torch.nn.functional as F

    from lmforge.tasks.instruction_tuning.data import collate_chat

    model.eval()
    ids, labels = arrays["input_ids"], arrays["labels"]
    total, count = 0.0, 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(ids), batch_size):
            rows = [{"input_ids": ids[i], "labels": labels[i]} for i in range(start, min(len(ids), start + batch_size))]
            b = collate_chat(rows, pad_id)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
            targets = b["labels"][:, 1:].reshape(-1)
            total += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets,
                                           ignore_index=-100, reduction="sum"))
            count += int((targets != -100).sum())
    return {"val_loss": total / max(1, count), "val_tokens": count, "eval_sec": time.perf_counter() - t0}


# -- arm: lmforge --------------------------------------------------------------------------------------
def run_lmforge(a: argparse.Namespace, clock: PhaseClock, run_dir: Path, extra: list[str]) -> dict:
    import lightning as L
    from omegaconf import open_dict

    from lmforge.train import train
    from lmforge.utils.compose import compose_config

    class Clock(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.init_sum = weights_sum(pl_module.trainable())

        def on_train_epoch_start(self, trainer, pl_module):
            if clock.t0 is None:  # one window over every epoch
                clock.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.count(batch["input_ids"], batch.get("attention_mask"), batch.get("num_sequences"),
                        batch.get("num_tokens"))
            clock.step_end(last=batch_idx + 1 >= trainer.num_training_batches
                           and trainer.current_epoch + 1 >= trainer.max_epochs)

        def on_train_end(self, trainer, pl_module):
            clock.finish()

        def on_fit_end(self, trainer, pl_module):
            self.module, self.datamodule = pl_module, trainer.datamodule

    cb = Clock()
    sys.modules["__main__"]._BenchClock = lambda: cb  # type: ignore[attr-defined]
    overrides = base_overrides(a) + list(extra)
    cfg = compose_config(overrides, run_dir, Path(a.cache_dir), Path(a.data_dir))
    with open_dict(cfg):
        cfg.callbacks.bench_clock = {"_target_": "__main__._BenchClock"}
    train(cfg)
    dm = cb.datamodule
    quality = answer_loss(cb.module.trainable(), dm.datasets["validation"].arrays, dm.tokenizer.pad_token_id)
    return {**quality, "train_data": checksum(dm.datasets["train"].arrays),
            "val_data": checksum(dm.datasets["validation"].arrays), "init_weights_sum": cb.init_sum,
            "packing": bool(cfg.data.packing), "group_by_length": bool(cfg.data.group_by_length),
            "padding_free": bool(dm.flatten),
            "config": {"overrides": overrides}}


# -- arm: transformers.Trainer ---------------------------------------------------------------------------
def run_trainer(a: argparse.Namespace, clock: PhaseClock, run_dir: Path) -> dict:
    import lightning as L
    import torch
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments, set_seed

    from lmforge.tasks.base import resolve_warmup
    from lmforge.train import build_datamodule, build_module
    from lmforge.utils.compose import compose_config

    # lmforge's datamodule (same config; the tokenizer and token cache are reused): the exact token ids and labels
    cfg = compose_config(base_overrides(a), run_dir / "cfg", Path(a.cache_dir), Path(a.data_dir))
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    tr = dm.datasets["train"].arrays
    rows = {"input_ids": [x.tolist() for x in tr["input_ids"]], "labels": [y.tolist() for y in tr["labels"]]}
    rows["attention_mask"] = [[1] * len(x) for x in rows["input_ids"]]
    train_ds = Dataset.from_dict(rows)
    del rows
    # the same model as lmforge's arm: lmforge's factory, the same config and seed
    L.seed_everything(a.seed, verbose=False)
    module = build_module(cfg, facts=dm.model_facts())
    module.configure_model()
    model = module.trainable()
    init_sum = weights_sum(model)
    tok = dm.tokenizer
    tok.padding_side = "right"
    inner = DataCollatorForSeq2Seq(tok, model=None, label_pad_token_id=-100, padding=True)
    armed = {"on": False}

    def collate(features):
        batch = inner(features)
        if armed["on"]:
            clock.count(batch["input_ids"], batch.get("attention_mask"), batch.get("num_sequences"),
                        batch.get("num_tokens"))
        return batch

    class BenchClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            armed["on"] = True

        def on_epoch_begin(self, args, state, control, **kw):
            if clock.t0 is None:  # one window over every epoch
                clock.start()

        def on_step_end(self, args, state, control, **kw):
            clock.step_end(last=state.global_step >= state.max_steps)

        def on_train_end(self, args, state, control, **kw):
            armed["on"] = False
            clock.finish()

    steps = -(-len(train_ds) // a.batch_size) * a.epochs
    set_seed(a.seed)
    args = TrainingArguments(
        output_dir=str(run_dir), per_device_train_batch_size=a.batch_size, learning_rate=a.lr,
        weight_decay=a.weight_decay, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, lr_scheduler_type="linear",
        warmup_steps=resolve_warmup(a.warmup, steps), max_grad_norm=1.0, num_train_epochs=a.epochs, seed=a.seed,
        eval_strategy="no", save_strategy="no", logging_steps=10, report_to=[], dataloader_num_workers=0,
        fp16=False, bf16=False, use_cpu=a.device == "cpu" or not torch.cuda.is_available())
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=collate, callbacks=[BenchClock()])
    trainer.train()
    quality = answer_loss(model, dm.datasets["validation"].arrays, tok.pad_token_id)
    return {**quality, "train_data": checksum(tr), "val_data": checksum(dm.datasets["validation"].arrays),
            "init_weights_sum": init_sum, "packing": False, "group_by_length": False,
            "config": {"batch_size": a.batch_size, "lr": a.lr, "optim": str(args.optim), "epochs": a.epochs,
                       "warmup_steps": args.warmup_steps, "steps": steps}}


def child(a: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(a.threads)
    clock = PhaseClock(profile=a.profile, profile_steps=a.profile_steps)
    run_dir = Path(a.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    out = run_trainer(a, clock, run_dir) if a.arm == "trainer" else run_lmforge(a, clock, run_dir, ARM_OVERRIDES[a.arm])
    res = {"arm": a.arm, **clock.result(), **out, "process_sec": time.perf_counter() - t0,
           "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "loadavg_end": os.getloadavg()}
    if a.profile != "none":
        res["profile"] = harness.write_profile(clock, run_dir / f"profile_{a.arm}.txt")
    Path(a.result_file).write_text(json.dumps(res, indent=2, default=str))
    return 0


# -- parent --------------------------------------------------------------------------------------------
METRICS = [("samples_per_sec", "conv/s", "{:.2f}"), ("tokens_per_sec", "non-pad tok/s", "{:.0f}"),
           ("train_sec", "train s", "{:.1f}"), ("cpu_ms_per_sample", "CPU ms/conv", "{:.1f}"),
           ("cpu_per_wall", "cpu/wall", "{:.2f}"), ("padding_fraction", "pad frac", "{:.3f}"),
           ("ru_maxrss_mib", "peak RSS MiB", "{:.0f}"), ("val_loss", "val loss", "{:.4f}")]


def run_child(a: argparse.Namespace, arm: str, idx: int, runs_dir: Path, passthrough: list[str]) -> dict:
    return harness.run_arm_child(Path(__file__).resolve(), a, arm, idx, runs_dir, passthrough, METRICS)


def summarize(results: list[dict]) -> dict:
    return harness.summarize_vs_trainer(results, ARMS, METRICS, {"val_loss": "val_loss_diff"})


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-samples", type=int, default=None,
                   help="training conversations (lmforge data.max_train_samples; default: all 3,000 of the sample)")
    p.add_argument("--eval-samples", type=int, default=None,
                   help="validation conversations scored (data.max_eval_samples; default: all 160)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=float, default=0.05, help="linear warmup, a fraction of the training steps")
    p.add_argument("--profile", choices=["none", "cprofile", "torch"], default="none",
                   help="profile the first --profile-steps training steps of each arm (distorts the timing)")
    p.add_argument("--profile-steps", type=int, default=20)
    harness.add_arm_args(p, ARMS, DEFAULT_DATA, DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse(argv)
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    if a.arm:
        return child(a)
    chosen = harness.chosen_arms(a, ARMS)
    passthrough = harness.without_out(argv) + ["--threads", str(a.threads), "--data-dir", a.data_dir]
    out = Path(a.out)
    order = schedule(a.repeats, a.order, chosen)
    print(f"{len(order)} runs ({', '.join(order)}), {a.train_samples or 'all'} conversations, {a.epochs} epochs, "
          f"batch {a.batch_size}, lr {a.lr}, {a.threads} torch threads", flush=True)
    t0 = time.time()
    results = [run_child(a, arm, i, out.parent / (out.stem + "_runs"), passthrough) for i, arm in enumerate(order)]
    # the arms trained on the same token ids and labels, from the same initial weights, and were scored on the same set
    for key in ("train_data", "val_data"):
        if len({json.dumps(r[key], sort_keys=True) for r in results}) != 1:
            raise SystemExit(f"the arms saw different {key}: {[(r['arm'], r[key]) for r in results]}")
    inits = [r["init_weights_sum"] for r in results]
    if max(inits) - min(inits) > 1e-6 * max(inits):
        raise SystemExit(f"the arms started from different weights: {[(r['arm'], r['init_weights_sum']) for r in results]}")
    summary = summarize(results)
    import torch

    doc = {"benchmark": "instruction_tuning_vs_trainer",
           "command": " ".join(["python", str(Path(__file__).relative_to(ROOT)), *argv]),
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "settings": {"model": "gpt2 tiny from scratch (task=instruction_tuning)", "data": "sample: assistant",
                        "train_samples": a.train_samples, "eval_samples": a.eval_samples, "epochs": a.epochs,
                        "batch_size": a.batch_size, "lr": a.lr, "weight_decay": a.weight_decay, "warmup": a.warmup,
                        "threads": a.threads, "order": order, "train_data": results[0]["train_data"],
                        "val_data": results[0]["val_data"]},
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                       "cuda": torch.cuda.is_available(), "loadavg": os.getloadavg()},
           "summary": summary, "runs": results, "total_wall_sec": time.time() - t0}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str))
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"tiny GPT-2 chat SFT ({results[0]['train_data']['conversations']} conversations, {a.epochs} "
                        f"epochs, batch {a.batch_size}, {a.threads} threads): lmforge vs transformers.Trainer")
    for h in ["run", "arm", *(h for _, h, _ in METRICS)]:
        table.add_column(h, justify="left" if h in ("run", "arm") else "right")
    for r in results:
        table.add_row(str(r["run"]), r["arm"], *(f.format(r[k]) if r.get(k) is not None else "-" for k, _, f in METRICS))
    for arm, m in summary["median"].items():
        table.add_row("median", arm, *(f.format(m[k]) for k, _, f in METRICS))
    for key, ratio in summary.items():
        if key.startswith("ratio_"):
            table.add_row("ratio", key[6:].replace("_over_", "/"), f"{ratio['samples_per_sec']:.3f}x",
                          f"{ratio['tokens_per_sec']:.3f}x", "", f"{ratio['cpu_ms_per_sample']:.3f}x (t/l)", "", "",
                          f"{ratio['peak_rss']:.2f}x", f"{ratio['val_loss_diff']:+.4f}")
    Console(width=200).print(table)
    print(f"wrote {out} ({doc['total_wall_sec']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
