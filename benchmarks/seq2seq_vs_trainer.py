#!/usr/bin/env python
"""lmforge vs ``Seq2SeqTrainer`` on translation and summarization: a tiny T5 from scratch, interleaved.

    python benchmarks/seq2seq_vs_trainer.py                               # Multi30k de->en, 4000 pairs, 1 epoch, ABBA x 2
    python benchmarks/seq2seq_vs_trainer.py --data samsum --epochs 2      # summarization: SAMSum dialogues
    python benchmarks/seq2seq_vs_trainer.py --data chats --epochs 2       # summarization: the embedded chat sample
    python benchmarks/seq2seq_vs_trainer.py --data sample --epochs 4 --threads 1   # the embedded sample, to BLEU ~20+
    python benchmarks/seq2seq_vs_trainer.py --train-pairs 8000 --epochs 3 --repeats 1
    python benchmarks/seq2seq_vs_trainer.py --arms lmforge,trainer,lmforge_same --repeats 1
    python benchmarks/seq2seq_vs_trainer.py --train-pairs 1000 --eval-pairs 200 --repeats 1

Arms, each run in a fresh subprocess of this script (``--arm ...``), so that peak memory is the arm's own:

* ``lmforge``: the real config tree (``experiment=multi30k`` plus the overrides below) and
  ``lmforge.train.train(cfg)`` in process, with lmforge's defaults for translation (random batches since
  2026-12-02: ``data.group_by_length=false``, see the README's "Translation quality"; padding-free training
  batches, ``data.padding_free=auto``, on for T5: each batch's pairs in shared rows, the same batches and loss)
  against the Trainer's defaults (random batches, padded): the figure the README and ``run_all.py`` report;
* ``lmforge_same``: random batches of one pair a row, padded (``data.group_by_length=false data.padding_free=false``:
  the Trainer's batches): identical settings, the framework overhead alone;
* ``trainer``: ``transformers.Seq2SeqTrainer`` + ``DataCollatorForSeq2Seq`` (labels padded with -100), the pairs
  tokenized with ``text_target=`` as ``run_translation.py`` does, ``predict_with_generate=True``.

``--data samsum`` is summarization at ``python train.py task=summarization data=samsum``'s settings (its defaults:
length-grouped batches, padding-free T5 rows; batch 32, lr 3e-3, 5% warmup, sources up to 512 tokens, summaries up
to 128, 64 new tokens): the dialogues of ``../shared/data/samsum/val.csv`` less the 15% that ``data=samsum`` carves
out for validation, scored on that carved split; ``--data chats`` the same recipe on the embedded chat dialogues of
``python train.py task=summarization`` (train split 2,000 dialogues, validation 200). Summarization is scored with
ROUGE-1/2/L (``rouge-score``, stemming, as lmforge's own ``val/rougeL``), translation with BLEU and chrF.

``--data sample`` trains on the embedded de->en sample of ``python train.py task=translation`` instead (its train
split, 4,000 pairs; BLEU on its validation split, 300 pairs) with that recipe's batch 32, lr 3e-3, 5% warmup, lengths
128 and 64 new tokens; multi30k keeps ``experiment=multi30k``'s batch 64, lengths 64 and 48 new tokens. ``--epochs N``
trains every arm N epochs, the linear schedule decaying over all N epochs' steps (one timed window over all of them;
lmforge's per-epoch ``last.ckpt`` write stays inside it, the Trainer saves nothing).

Same in every arm: the training pairs (lmforge's ``data.max_train_samples`` selection), the tokenizer (trained
once by lmforge on those pairs, then given to every arm as a folder), the model (``model=t5 model/size=tiny``,
built by lmforge's factory with the same seed), batch size, lr, linear schedule with warmup (``--warmup``, 5%), AdamW weight
decay 0.01 except biases and norm weights (the Trainer decays all but biases and LayerNorm weights: the same
set for T5), gradient clipping 1.0, the epochs, fp32, greedy decoding with ``--max-new-tokens``, the number of
torch threads, no dataloader workers. Timed: the training epoch (``PhaseClock`` of
``text_classification_vs_trainer.py``: tokens are source + target tokens), then the generation of
``--eval-pairs`` validation sentences (lmforge: ``module.predict``; Trainer: ``trainer.predict``), scored against
the references as written (translation: ``sacrebleu``'s BLEU and chrF; summarization: ``rouge-score``'s ROUGE).

Output: a table, and ``logs/benchmarks/seq2seq_vs_trainer.json``. Ratios are arm/trainer for rates: above 1
means lmforge is faster.
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
DEFAULT_OUT = ROOT / "logs" / "benchmarks" / "seq2seq_vs_trainer.json"
ARMS = ("lmforge", "trainer", "lmforge_same", "lmforge_grouped", "lmforge_padded")
# lmforge: the recipe's own defaults (translation: random batches, padding-free rows for T5); lmforge_same: random
# batches one pair a row, padded (the Trainer's batches); lmforge_grouped: data.group_by_length=true;
# lmforge_padded: the recipe's own batch order, one pair a row (data.padding_free=false)
ARM_OVERRIDES = {"lmforge": [], "lmforge_same": ["data.group_by_length=false", "data.padding_free=false"],
                 "lmforge_grouped": ["data.group_by_length=true"], "lmforge_padded": ["data.padding_free=false"]}


# what each --data trains on, and the settings lmforge's own recipe for it uses (both arms get them)
DATA_DEFAULTS = {
    # experiment=multi30k's batch, lengths and decoding
    "multi30k": {"overrides": ["experiment=multi30k"], "title": "Multi30k de-en", "train_pairs": 4000,
                 "batch_size": 64, "max_length": 64, "max_target_length": 64, "max_new_tokens": 48,
                 "kind": "translation"},
    # `python train.py task=translation`: the embedded phrasebook sample (train split 4,000 pairs, validation
    # split 300), task_defaults/translation.yaml's batch 32, lr 3e-3, warmup 0.05; task/translation.yaml's lengths
    "sample": {"overrides": ["task=translation", "data=sample"], "title": "the embedded de-en sample (phrasebook)",
               "train_pairs": None, "batch_size": 32, "max_length": 128, "max_target_length": 128,
               "max_new_tokens": 64, "kind": "translation"},
    # `python train.py task=summarization data=samsum`: task_defaults/summarization.yaml's lr 3e-3, warmup 0.05,
    # sources up to 512 tokens and summaries up to 128; data/_seq2seq.yaml's batch 32; 64 new tokens
    "samsum": {"overrides": ["task=summarization", "data=samsum"], "title": "SAMSum dialogues (summarization)",
               "train_pairs": None, "batch_size": 32, "max_length": 512, "max_target_length": 128,
               "max_new_tokens": 64, "kind": "summarization"},
    # `python train.py task=summarization`: the embedded chat dialogues (train split 2,000, validation 200)
    "chats": {"overrides": ["task=summarization", "data=sample"],
              "title": "the embedded chat dialogues (summarization)", "train_pairs": None, "batch_size": 32,
              "max_length": 512, "max_target_length": 128, "max_new_tokens": 64, "kind": "summarization"},
}
# the quality figures of each kind of task: (result key, heading, format); the first is the one run_all reports
QUALITY = {"translation": [("bleu", "BLEU", "{:.2f}"), ("chrf", "chrF", "{:.2f}")],
           "summarization": [("rougeL", "ROUGE-L", "{:.2f}"), ("rouge1", "ROUGE-1", "{:.2f}"),
                             ("rouge2", "ROUGE-2", "{:.2f}")]}


def resolve(a: argparse.Namespace) -> argparse.Namespace:
    """Fill the options left unset from ``--data``'s defaults (the parent and every child resolve alike)."""
    d = DATA_DEFAULTS[a.data]
    for key in ("train_pairs", "batch_size", "max_length", "max_target_length", "max_new_tokens"):
        if getattr(a, key) is None:
            setattr(a, key, d[key])
    if a.epochs < 1:
        raise SystemExit(f"--epochs {a.epochs}: expected a whole number of epochs, 1 or more")
    if not 0.0 <= a.warmup < 1.0:
        raise SystemExit(f"--warmup {a.warmup}: expected a fraction of the training steps in [0, 1)")
    return a


def base_overrides(a: argparse.Namespace) -> list[str]:
    pairs = "null" if a.train_pairs is None else a.train_pairs
    return [*DATA_DEFAULTS[a.data]["overrides"], f"seed={a.seed}", f"data.max_train_samples={pairs}",
            f"data.max_eval_samples={a.eval_pairs}", f"data.batch_size={a.batch_size}",
            f"data.max_source_length={a.max_length}", f"data.max_target_length={a.max_target_length}",
            "data.num_workers=0", f"paths.data_dir={a.data_dir}", f"paths.cache_dir={a.cache_dir}"]


def tokenizer_folder(a: argparse.Namespace) -> tuple[str, list[dict], list[dict]]:
    """The tokenizer lmforge trains on the training pairs (once, cached), the evaluation and the training pairs."""
    import tempfile

    from lmforge.train import build_datamodule
    from lmforge.utils.compose import compose_config

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(base_overrides(a), Path(tmp) / "run", Path(a.cache_dir), Path(a.data_dir))
        dm = build_datamodule(cfg)
        dm.prepare_data()
        dm.setup("fit")
        ds = dm.datasets["validation"]
        pairs = [{"source": ds.source(i), "target": ds.reference(i)} for i in range(len(ds))]
        train = dm.datasets["train"]
        rows = [{"source": train.source(i), "target": train.reference(i)} for i in range(len(train))]
        return str(dm.tokenizer_dir), pairs, rows


def lmforge_overrides(a: argparse.Namespace, extra: list[str]) -> list[str]:
    """``extra``: the arm's own overrides (ARM_OVERRIDES), after the shared ones."""
    return [*base_overrides(a), f"model.tokenizer={a.tokenizer}", *extra,
            f"trainer.max_epochs={a.epochs}", "++trainer.max_time=null", "trainer.val_check_interval=null",
            "trainer.check_val_every_n_epoch=1", "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
            "trainer.gradient_clip_val=1.0", "trainer.precision=32-true", f"optimizer.lr={a.lr}",
            "optimizer.weight_decay=0.01", "scheduler=linear", f"scheduler.warmup={a.warmup}", "export=false", "test=false",
            "predict.texts=[]", f"task.generation.max_new_tokens={a.max_new_tokens}",
            f"task.generation.batch_size={a.eval_batch_size}", "callbacks.early_stopping=null",
            *(["accelerator=cpu"] if a.device == "cpu" else [])]


def run_lmforge(a: argparse.Namespace, clock: PhaseClock, run_dir: Path, extra: list[str]) -> dict:
    import lightning as L
    from omegaconf import open_dict

    from lmforge.train import train
    from lmforge.utils.compose import compose_config

    class Clock(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if clock.t0 is None:  # one window over every epoch
                clock.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            # padding-free rows hold several pairs: count the pairs and their source tokens, not rows and padding
            sources = int((batch["source_segments"] >= 0).sum()) if "source_segments" in batch else None
            clock.count(batch["input_ids"], batch.get("attention_mask"), batch.get("num_sequences"), sources)
            clock.tokens += int((batch["labels"] != -100).sum())
            clock.padded_tokens += int(batch["labels"].numel())
            clock.step_end(last=batch_idx + 1 >= trainer.num_training_batches
                           and trainer.current_epoch + 1 >= trainer.max_epochs)

        def on_train_end(self, trainer, pl_module):
            clock.finish()

        def on_fit_end(self, trainer, pl_module):
            self.module, self.datamodule = pl_module, trainer.datamodule

    harness._LMFORGE_CLOCK = clock
    cb = Clock()
    sys.modules["__main__"]._BenchClock = lambda: cb  # type: ignore[attr-defined]
    overrides = lmforge_overrides(a, extra)
    cfg = compose_config(overrides, run_dir, Path(a.cache_dir), Path(a.data_dir))
    with open_dict(cfg):
        cfg.callbacks.bench_clock = {"_target_": "__main__._BenchClock"}
    train(cfg)
    pairs = json.loads(Path(a.pairs_file).read_text())
    t0 = time.perf_counter()
    hyps = [r["prediction"] for r in cb.module.predict([p["source"] for p in pairs], cb.datamodule)]
    gen_sec = time.perf_counter() - t0
    return {"hyps": hyps, "gen_sec": gen_sec, "config": {"overrides": overrides},
            "padding_free": bool(cb.datamodule.flatten)}


def run_trainer(a: argparse.Namespace, clock: PhaseClock, run_dir: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments,
                              TrainerCallback, set_seed)

    from lmforge.tasks.seq2seq.module import Seq2SeqModule
    from lmforge.train import build_datamodule, build_module
    from lmforge.utils.compose import compose_config

    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    # the same model as lmforge's arm: built by lmforge's factory from the same config and seed
    cfg = compose_config(lmforge_overrides(a, ARM_OVERRIDES["lmforge_same"]), run_dir / "cfg", Path(a.cache_dir), Path(a.data_dir))
    dm = build_datamodule(cfg)
    module: Seq2SeqModule = build_module(cfg, facts=dm.model_facts())
    module.configure_model()
    model = module.trainable()
    rows = json.loads(Path(a.train_file).read_text())
    pairs = json.loads(Path(a.pairs_file).read_text())

    def encode(batch):
        enc = tok(batch["source"], truncation=True, max_length=a.max_length)
        enc["labels"] = tok(text_target=batch["target"], truncation=True, max_length=a.max_target_length)["input_ids"]
        return enc

    train_ds = Dataset.from_list(rows).map(encode, batched=True, remove_columns=["source", "target"])
    eval_ds = Dataset.from_list(pairs).map(encode, batched=True, remove_columns=["source", "target"])
    inner = DataCollatorForSeq2Seq(tok, model=model, label_pad_token_id=-100)
    armed = {"on": False}

    def collate(features):
        batch = inner(features)
        if armed["on"]:
            clock.count(batch["input_ids"], batch.get("attention_mask"))
            clock.tokens += int((batch["labels"] != -100).sum())
            clock.padded_tokens += int(batch["labels"].numel())
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

    set_seed(a.seed)
    args = Seq2SeqTrainingArguments(
        output_dir=str(run_dir), per_device_train_batch_size=a.batch_size, per_device_eval_batch_size=a.eval_batch_size,
        learning_rate=a.lr, weight_decay=0.01, lr_scheduler_type="linear", warmup_steps=a.warmup, max_grad_norm=1.0,
        num_train_epochs=a.epochs, seed=a.seed, eval_strategy="no", save_strategy="no", logging_steps=10, report_to=[],
        dataloader_num_workers=0, fp16=False, bf16=False, predict_with_generate=True,
        generation_max_length=None, generation_num_beams=1,
        use_cpu=a.device == "cpu" or not torch.cuda.is_available())
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=train_ds, data_collator=collate,
                             processing_class=tok, callbacks=[BenchClock()])
    trainer.train()
    t0 = time.perf_counter()
    pred = trainer.predict(eval_ds, max_new_tokens=a.max_new_tokens, num_beams=1)
    gen_sec = time.perf_counter() - t0
    ids = [[t for t in row if t >= 0] for row in pred.predictions.tolist()]
    hyps = [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
    return {"hyps": hyps, "gen_sec": gen_sec,
            "config": {"batch_size": a.batch_size, "lr": a.lr, "optim": str(args.optim), "epochs": a.epochs,
                       "warmup": a.warmup}}


def child(a: argparse.Namespace) -> int:
    import torch

    from lmforge.tasks.seq2seq.metrics import SCORERS

    torch.set_num_threads(a.threads)
    clock = PhaseClock()
    run_dir = Path(a.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    out = run_trainer(a, clock, run_dir) if a.arm == "trainer" else \
        run_lmforge(a, clock, run_dir, ARM_OVERRIDES[a.arm])
    refs = [p["target"] for p in json.loads(Path(a.pairs_file).read_text())]
    hyps = out.pop("hyps")
    res = {"arm": a.arm, **clock.result(), **out, "pairs": a.train_pairs, "process_sec": time.perf_counter() - t0,
           "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "loadavg_end": os.getloadavg(),
           **SCORERS[DATA_DEFAULTS[a.data]["kind"]](hyps, refs), "samples_hyps": hyps[:5]}
    res["train_tokens_per_sec"] = res["tokens"] / res["train_sec"]
    res["gen_sentences_per_sec"] = len(hyps) / res["gen_sec"]
    Path(a.result_file).write_text(json.dumps(res, indent=2, default=str))
    return 0


SPEED = [("train_tokens_per_sec", "train tok/s", "{:.0f}"), ("train_sec", "train s", "{:.1f}"),
         ("padding_fraction", "pad frac", "{:.3f}"), ("gen_sentences_per_sec", "gen sent/s", "{:.1f}"),
         ("rss_peak_through_train_mib", "peak RSS train MiB", "{:.0f}"), ("ru_maxrss_mib", "peak RSS MiB", "{:.0f}")]
TAIL = [("cpu_ms_per_sample", "CPU ms/pair", "{:.1f}"), ("cpu_per_wall", "cpu/wall", "{:.2f}")]


def metrics(kind: str = "translation") -> list[tuple[str, str, str]]:
    """The columns of the table and the keys of the medians: speed, the task's quality figures, CPU."""
    return [*SPEED, *QUALITY[kind], *TAIL]


METRICS = metrics()  # translation's


def run_child(a: argparse.Namespace, arm: str, idx: int, runs_dir: Path, passthrough: list[str]) -> dict:
    return harness.run_arm_child(Path(__file__).resolve(), a, arm, idx, runs_dir, passthrough,
                                 metrics(DATA_DEFAULTS[a.data]["kind"]))


def summarize(results: list[dict], kind: str = "translation") -> dict:
    arms = [arm for arm in ARMS if any(r["arm"] == arm for r in results)]
    med = {arm: {k: statistics.median(vals) for k, _, _ in metrics(kind)
                 if (vals := [r[k] for r in results if r["arm"] == arm and r.get(k) is not None])} for arm in arms}
    out: dict[str, Any] = {"median": med}
    if "trainer" in med:
        for arm in (x for x in med if x != "trainer"):
            out[f"ratio_{arm}_over_trainer"] = {
                "train_tokens_per_sec": med[arm]["train_tokens_per_sec"] / med["trainer"]["train_tokens_per_sec"],
                "gen_sentences_per_sec": med[arm]["gen_sentences_per_sec"] / med["trainer"]["gen_sentences_per_sec"],
                "peak_rss": med[arm]["ru_maxrss_mib"] / med["trainer"]["ru_maxrss_mib"],
                # the peak up to the end of training (generation and scoring excluded)
                "peak_rss_train": (med[arm]["rss_peak_through_train_mib"] / med["trainer"]["rss_peak_through_train_mib"]
                                   if med[arm].get("rss_peak_through_train_mib")
                                   and med["trainer"].get("rss_peak_through_train_mib")
                                   else None),
                **{f"{k}_diff": med[arm][k] - med["trainer"][k] for k, _, _ in QUALITY[kind]},
                # CPU time per pair, trainer/arm (above 1: lmforge spends less): steadier than rates on shared cores
                "cpu_ms_per_sample": med["trainer"]["cpu_ms_per_sample"] / med[arm]["cpu_ms_per_sample"]}
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=sorted(DATA_DEFAULTS), default="multi30k",
                   help="translation: multi30k (../shared/data) or sample, the embedded de-en sample of "
                        "`task=translation` (trained on its train split, scored on its validation split); "
                        "summarization: samsum (../shared/data) or chats, the embedded dialogues of `task=summarization`")
    p.add_argument("--epochs", type=int, default=1, help="epochs in every arm (linear decay over all their steps)")
    p.add_argument("--train-pairs", type=int, default=None,
                   help="training pairs (default: 4000 for multi30k, all 4000 of the sample)")
    p.add_argument("--eval-pairs", type=int, default=300, help="validation pairs generated and scored")
    p.add_argument("--data-dir", default=os.environ.get("LMFORGE_DATA_DIR", str(DEFAULT_DATA)))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--order", choices=["abab", "abba"], default="abba")
    p.add_argument("--arms", default="lmforge,trainer", help=f"comma-separated, one repeat's order: {', '.join(ARMS)}")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=None, help="default: 64 for multi30k, 32 for the sample")
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=None,
                   help="source tokens (default: 64 for multi30k, 128 for the sample, 512 for summarization)")
    p.add_argument("--max-target-length", type=int, default=None,
                   help="target tokens (default: as --max-length for translation, 128 for summarization)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: 48 for multi30k, 64 for the sample")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=float, default=0.05, help="linear warmup, a fraction of all training steps")
    p.add_argument("--device", choices=["auto", "cpu"], default="auto")
    p.add_argument("--cache-dir", default=str(ROOT / "logs" / "benchmarks" / "cache"))
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--arm", choices=list(ARMS), help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", help=argparse.SUPPRESS)
    p.add_argument("--pairs-file", help=argparse.SUPPRESS)
    p.add_argument("--train-file", help=argparse.SUPPRESS)
    return resolve(p.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse(argv)
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    if a.arm:
        return child(a)
    needed = {"multi30k": Path("multi30k") / "train.de", "samsum": Path("samsum") / "val.csv"}.get(a.data)
    if needed is not None and not (Path(a.data_dir) / needed).is_file():
        raise SystemExit(f"{Path(a.data_dir) / needed} not found (use --data-dir)")
    kind = DATA_DEFAULTS[a.data]["kind"]
    chosen = harness.chosen_arms(a, ARMS)
    out = Path(a.out)
    runs_dir = out.parent / (out.stem + "_runs")
    runs_dir.mkdir(parents=True, exist_ok=True)
    tok_dir, pairs, rows = tokenizer_folder(a)
    (runs_dir / "eval_pairs.json").write_text(json.dumps(pairs[: a.eval_pairs], ensure_ascii=False))
    (runs_dir / "train_pairs.json").write_text(json.dumps(rows, ensure_ascii=False))
    passthrough = harness.without_out(argv) + ["--threads", str(a.threads), "--data-dir", a.data_dir, "--tokenizer", tok_dir,
                    "--pairs-file", str(runs_dir / "eval_pairs.json"), "--train-file", str(runs_dir / "train_pairs.json")]
    order = schedule(a.repeats, a.order, chosen)
    print(f"{len(order)} runs ({', '.join(order)}), {DATA_DEFAULTS[a.data]['title']}: {len(rows)} training pairs x "
          f"{a.epochs} epoch(s), batch {a.batch_size}, lr {a.lr}, warmup {a.warmup}, {a.threads} torch threads",
          flush=True)
    t0 = time.time()
    results = [run_child(a, arm, i, runs_dir, passthrough) for i, arm in enumerate(order)]
    summary = summarize(results, kind)
    import torch

    doc = {"benchmark": "seq2seq_vs_trainer",
           "command": " ".join(["python", str(Path(__file__).relative_to(ROOT)), *argv]),
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "settings": {"model": "t5 tiny", "data": DATA_DEFAULTS[a.data]["title"], "kind": kind,
                        "quality": [k for k, _, _ in QUALITY[kind]], "train_pairs": len(rows),
                        "eval_pairs": len(pairs[: a.eval_pairs]), "epochs": a.epochs, "batch_size": a.batch_size,
                        "lr": a.lr, "warmup": a.warmup, "max_new_tokens": a.max_new_tokens,
                        "max_length": a.max_length, "max_target_length": a.max_target_length,
                        "threads": a.threads, "order": order},
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                       "cuda": torch.cuda.is_available(), "loadavg": os.getloadavg()},
           "summary": summary, "runs": results, "total_wall_sec": time.time() - t0}
    out.write_text(json.dumps(doc, indent=2, default=str))
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"tiny T5 / {DATA_DEFAULTS[a.data]['title']} ({len(rows)} pairs x {a.epochs} epoch(s), "
                        f"batch {a.batch_size}, {a.threads} threads): lmforge vs Seq2SeqTrainer")
    cols = metrics(kind)
    for h in ["run", "arm", *(h for _, h, _ in cols)]:
        table.add_column(h, justify="left" if h in ("run", "arm") else "right")
    for r in results:
        table.add_row(str(r["run"]), r["arm"], *(f.format(r[k]) if r.get(k) is not None else "-" for k, _, f in cols))
    for arm, m in summary["median"].items():
        table.add_row("median", arm, *(f.format(m[k]) if k in m else "-" for k, _, f in cols))
    for key, ratio in summary.items():
        if key.startswith("ratio_"):
            table.add_row("ratio", key[6:].replace("_over_", "/"), f"{ratio['train_tokens_per_sec']:.3f}x", "", "",
                          f"{ratio['gen_sentences_per_sec']:.3f}x",
                          f"{ratio['peak_rss_train']:.2f}x" if ratio.get("peak_rss_train") else "",
                          f"{ratio['peak_rss']:.2f}x",
                          *(f"{ratio[k + '_diff']:+.2f}" for k, _, _ in QUALITY[kind]),
                          f"{ratio['cpu_ms_per_sample']:.3f}x", "")
    Console(width=200).print(table)
    print(f"wrote {out} ({doc['total_wall_sec']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
