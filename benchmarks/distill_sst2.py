"""Knowledge distillation on SST-2, measured (issue 14): teacher, distilled student, undistilled student.

    python benchmarks/distill_sst2.py                       # ~25 min on 2 CPU cores
    python benchmarks/distill_sst2.py --train-samples 2000  # quicker, lower accuracies
    python benchmarks/distill_sst2.py --experiment conll2003 --train-samples 2000  # the NER figure (entity F1)

1. teacher: MiniLM-L6 (the offline pretrained encoder) fine-tuned by lmforge on a subset of SST-2's train split;
2. student, distilled: 3 layers (0, 2, 4) + embeddings + head copied from the teacher, trained with
   ``distill=logits`` (soft targets at T=2 + the labels), teacher outputs cached after the first epoch;
3. student, undistilled: the same initialisation and data, trained on the labels only (the teacher never runs);

all scored on SST-2's dev set (872 sentences) after training (no checkpoint picked on dev), then the inference
speed of the two exports in this process: texts/s over the dev sentences, the same batches, best of several
alternating rounds. Results go to ``<out>/results.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def compose(overrides: list[str], out: Path, cache: Path):
    from conftest import compose_cfg  # the config tree exactly as train.py composes it

    return compose_cfg(overrides, out, cache)


def run(name: str, overrides: list[str], args) -> dict:
    from lmforge.train import train

    out = args.out / name
    data = [f"data.train_file={args.train_file}", "data.max_train_samples=null"] if args.train_file else \
        [f"data.max_train_samples={args.train_samples}"]
    common = [f"experiment={args.experiment}", *data, "trainer.val_check_interval=1.0",
              "extras.print_config=false", "logger=csv", "predict.texts=null", f"seed={args.seed}",
              "callbacks.early_stopping=null"]
    cfg = compose(common + overrides, out, args.out / "token_cache")
    t0 = time.time()
    metrics = train(cfg)
    result = {"name": name, "dev_accuracy": metrics.get("val/accuracy"), "dev_score": metrics.get("val/score"), "params": metrics.get("params/total"),
              "train_sec": round(time.time() - t0, 1), "run": str(out), "overrides": overrides}
    print(json.dumps(result), flush=True)
    return result


def speed(folders: dict[str, Path], texts: list[str], batch_size: int, rounds: int) -> dict[str, float]:
    """Texts/s of each export on the same batches (tokenized once), best of ``rounds`` alternating passes."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(next(iter(folders.values()))))
    batches = [tok(texts[i: i + batch_size], padding=True, truncation=True, max_length=66, return_tensors="pt")
               for i in range(0, len(texts), batch_size)]
    models = {k: AutoModelForSequenceClassification.from_pretrained(str(p)).eval() for k, p in folders.items()}
    best = {k: 0.0 for k in models}
    with torch.inference_mode():
        for m in models.values():  # warm-up
            m(**batches[0])
        for _ in range(rounds):
            for k, m in models.items():
                t0 = time.perf_counter()
                for b in batches:
                    m(**b)
                best[k] = max(best[k], len(texts) / (time.perf_counter() - t0))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "logs" / "distill_sst2")
    p.add_argument("--train-samples", type=int, default=6000)
    p.add_argument("--teacher-epochs", type=int, default=1)
    p.add_argument("--student-epochs", type=int, default=2)
    p.add_argument("--layers", default="[0,2,4]")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--budget", default="00:00:07:00", help="trainer.max_time of each run (DD:HH:MM:SS)")
    p.add_argument("--batch-size", type=int, default=32, help="inference batch size of the speed measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--transfer-samples", type=int, default=0,
                   help="SST-2: split train.tsv into --train-samples labelled rows and this many other sentences, "
                        "given to a fourth arm as distill.transfer_file (unlabelled, soft targets only)")
    p.add_argument("--teacher-run", type=Path, default=None,
                   help="reuse the teacher of an earlier benchmark output folder instead of training one")
    p.add_argument("--experiment", default="sst2", help="sst2, or conll2003 for the NER figure (no speed measurement)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    args.train_file = None
    data_dir = Path(os.environ.get("LMFORGE_DATA_DIR", ROOT.parent / "shared" / "data"))
    if args.transfer_samples and args.experiment == "sst2":
        import random

        lines = (data_dir / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
        header, rows = lines[0], lines[1:]
        random.Random(args.seed).shuffle(rows)
        labelled, transfer = rows[: args.train_samples], rows[args.train_samples: args.train_samples + args.transfer_samples]
        args.train_file = args.out / "train_labelled.tsv"
        args.train_file.write_text("\n".join([header, *labelled]) + "\n", encoding="utf-8")
        args.transfer_file = args.out / "transfer.txt"  # the sentences only: no labels
        args.transfer_file.write_text("\n".join(r.split("\t")[0] for r in transfer) + "\n", encoding="utf-8")

    if args.teacher_run:  # a teacher from an earlier run of this benchmark (its results.json)
        teacher = json.loads((args.teacher_run / "results.json").read_text())["teacher"]
    else:
        teacher = run("teacher", [f"trainer.max_epochs={args.teacher_epochs}", f"+trainer.max_time={args.budget}"],
                      args)
    student = [f"distill.teacher={teacher['run']}", "distill.student.init=teacher_layers",
               f"distill.student.layers={args.layers}", f"distill.temperature={args.temperature}",
               f"trainer.max_epochs={args.student_epochs}", f"+trainer.max_time={args.budget}"]
    try:
        distilled = run("student_distilled", ["distill=logits", *student, "distill.cache_teacher=true"], args)
    except Exception as e:  # noqa: BLE001 - the measurement goes on without the cache, and says so
        print(f"distilled run with cache_teacher=true failed ({e!r}); again without the cache", flush=True)
        distilled = run("student_distilled_nocache", ["distill=logits", *student], args)
    transferred = None
    if args.train_file:
        transferred = run("student_distilled_transfer", ["distill=logits", *student,
                                                         f"distill.transfer_file={args.transfer_file}"], args)
    plain = run("student_undistilled", ["distill=logits", *student, "distill.weights.kd=0"], args)
    if args.experiment != "sst2":  # the NER/QA figure: dev scores only
        ts, ds, us = teacher["dev_score"], distilled["dev_score"], plain["dev_score"]
        results = {"teacher": teacher, "student_distilled": distilled, "student_undistilled": plain,
                   "student_over_teacher_score": ds / ts, "distilled_minus_undistilled": ds - us,
                   "train_samples": args.train_samples, "total_sec": round(time.time() - t_start, 1)}
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
        print(f"\n{args.experiment} dev score: teacher {ts:.4f}, student distilled {ds:.4f} ({100 * ds / ts:.1f}%), "
              f"student labels only {us:.4f}; total {results['total_sec']:.0f} s")
        return

    import csv

    with open(data_dir / "sst2" / "dev.tsv", newline="", encoding="utf-8") as f:
        texts = [r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    tps = speed({"teacher": Path(teacher["run"]) / "export", "student": Path(distilled["run"]) / "export"},
                texts, args.batch_size, args.rounds)
    ta, sa, ua = teacher["dev_accuracy"], distilled["dev_accuracy"], plain["dev_accuracy"]
    results = {"teacher": teacher, "student_distilled": distilled, "student_undistilled": plain,
               "student_distilled_transfer": transferred, "texts_per_sec": tps, "speedup": tps["student"] / tps["teacher"],
               "student_over_teacher_accuracy": sa / ta, "distilled_minus_undistilled": sa - ua,
               "train_samples": args.train_samples, "total_sec": round(time.time() - t_start, 1)}
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n| model | layers | params | dev accuracy | of teacher | texts/s (batch {args.batch_size}) | speed-up |")
    print("|---|---|---|---|---|---|---|")
    print(f"| teacher: MiniLM-L6 fine-tuned | 6 | {teacher['params'] / 1e6:.1f}M | {ta:.4f} | 100% | "
          f"{tps['teacher']:.0f} | 1.00x |")
    print(f"| student, distilled (distill=logits) | 3 | {distilled['params'] / 1e6:.1f}M | {sa:.4f} | "
          f"{100 * sa / ta:.1f}% | {tps['student']:.0f} | {tps['student'] / tps['teacher']:.2f}x |")
    if transferred:
        xa = transferred["dev_accuracy"]
        print(f"| student, distilled + {args.transfer_samples} unlabelled transfer sentences | 3 | "
              f"{transferred['params'] / 1e6:.1f}M | {xa:.4f} | {100 * xa / ta:.1f}% | (same model) | |")
    print(f"| student, labels only | 3 | {plain['params'] / 1e6:.1f}M | {ua:.4f} | {100 * ua / ta:.1f}% | "
          f"(same model) | |")
    print(f"\ntotal {results['total_sec']:.0f} s; {args.train_samples} training sentences")


if __name__ == "__main__":
    main()
