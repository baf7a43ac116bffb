#!/usr/bin/env python
"""Translation and summarization inference speed: lmforge's export predictor against plain ``transformers`` code that
generates for one input at a time (transformers 5 has no translation, summarization or text2text pipeline), each arm
in a fresh process, interleaved.

    python benchmarks/seq2seq_inference.py                                  # translation, the phrasebook sample
    python benchmarks/seq2seq_inference.py --task summarization --n 200     # the embedded chat dialogues
    python benchmarks/seq2seq_inference.py --export logs/translation/runs/<timestamp>/export --repeats 2

The model: ``--export`` (a run's export folder), or by default a tiny T5 that lmforge trains once on the task's
embedded sample (``python train.py task=<task> trainer.max_epochs=--train-epochs``, 4 by default, into
``<out dir>/run_<task>_<N>ep``)
so that its outputs end where a trained model's do (an untrained one generates until ``max_new_tokens`` for every
input). Both arms load that folder and decode with its ``generation_config.json`` (greedy, the run's
``max_new_tokens``). Inputs: the first ``--n`` sources of the sample's validation split, in file order (German
sentences of the ``phrasebook`` sample; dialogues of the ``chats`` sample).

lmforge arm: ``lmforge.load(export, batch_size=--batch-size).predict(texts)`` (source lengths measured in one
tokenizer call, batches longest first, ``torch.inference_mode``, outputs back in input order). Plain arm: for each
input, ``tokenizer(prefix + text, truncation=True, max_length=...)`` and ``model.generate`` under ``torch.no_grad``,
decoded with ``skip_special_tokens``. Timed: from the texts in memory to the output texts, after one warm-up call on
8 inputs. Reported: inputs/s per run, the median ratio lmforge/plain (above 1: lmforge is faster), CPU ms per input
and its ratio plain/lmforge (steadier on a shared machine), the share of inputs with the same output text.
Result: ``logs/benchmarks/seq2seq_inference.json`` (or ``--out``).
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
ARMS = ("lmforge", "plain")
SAMPLES = {"translation": ("phrasebook", lambda r: r["translation"]["de"]),
           "summarization": ("chats", lambda r: r["dialogue"])}
ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def sources(a: argparse.Namespace) -> list[str]:
    """The first ``--n`` sources of the task's embedded sample's validation split, in file order."""
    name, field = SAMPLES[a.task]
    f = ROOT / "src" / "lmforge" / "samples" / name / "validation.jsonl"
    rows = [field(json.loads(line)) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    if a.n > len(rows):
        raise SystemExit(f"--n {a.n}: the {name} sample's validation split has {len(rows)} inputs")
    return rows[: a.n]


def export_folder(a: argparse.Namespace) -> Path:
    """``--export``, or the export of a tiny T5 trained once on the task's sample (reused when it exists)."""
    if a.export:
        folder = Path(a.export)
        if not (folder / "config.json").is_file():
            raise SystemExit(f"--export {folder}: not a model folder (no config.json)")
        return folder
    run = Path(a.out_dir) / (f"run_{a.task}_{a.train_epochs}ep"
                             + (f"_{a.train_samples}" if a.train_samples else ""))
    folder = run / "export"
    if not (folder / "config.json").is_file():
        print(f"training a tiny T5 on the {SAMPLES[a.task][0]} sample for {a.train_epochs} epoch(s) -> {run}",
              flush=True)
        subprocess.run([sys.executable, "train.py", f"task={a.task}", f"trainer.max_epochs={a.train_epochs}",
                        f"data.max_train_samples={a.train_samples or 'null'}",
                        "test=false", "predict.texts=[]", "extras.print_config=false", "logger=none",
                        f"hydra.run.dir={run}"], cwd=ROOT, env={**os.environ, **ENV}, check=True,
                       stdout=subprocess.DEVNULL)
    return folder


def plain_predictor(folder: Path):
    """Plain transformers code: one input at a time, the export's own generation settings."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    info = (getattr(model.config, "task_specific_params", None) or {}).get("lmforge_seq2seq", {})
    prefix, max_length = info.get("source_prefix", "") or "", int(info.get("max_source_length", 512))

    def one(text: str) -> str:
        enc = tok(prefix + text, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc)
        return tok.decode(out[0], skip_special_tokens=True).strip()

    return lambda texts: [one(t) for t in texts]


def child(a: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(a.threads)
    folder = Path(a.folder)
    texts = sources(a)
    if a.arm == "lmforge":
        import lmforge

        run = lmforge.load(str(folder), batch_size=a.batch_size).predict
    else:
        run = plain_predictor(folder)
    run(texts[:8])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    outputs = run(texts)
    sec, cpu = time.perf_counter() - t0, time.process_time() - c0
    Path(a.result_file).write_text(json.dumps({"arm": a.arm, "inputs": len(texts), "seconds": sec,
                                               "inputs_per_sec": len(texts) / sec,
                                               "cpu_ms_per_input": 1000 * cpu / len(texts),
                                               "threads": torch.get_num_threads(), "outputs": outputs}))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(SAMPLES), default="translation")
    p.add_argument("--n", type=int, default=256, help="inputs (the first N of the sample's validation split)")
    p.add_argument("--export", default=None, help="a run's export folder (default: train a tiny T5 once)")
    p.add_argument("--train-epochs", type=int, default=4,
                   help="epochs of the default model's training (fewer leave outputs that repeat to max_new_tokens)")
    p.add_argument("--train-samples", type=int, default=None,
                   help="training pairs of the default model (default: the whole sample; fewer for a smoke test)")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per batch (lmforge arm)")
    p.add_argument("--repeats", type=int, default=1, help="lmforge/plain pairs, alternating which goes first")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in both arms")
    p.add_argument("--out", default=str(ROOT / "logs" / "benchmarks" / "seq2seq_inference.json"))
    p.add_argument("--out-dir", default=str(ROOT / "logs" / "benchmarks" / "seq2seq_inference"))
    p.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for key in ("n", "batch_size", "repeats", "threads", "train_epochs", "train_samples"):
        if getattr(a, key) is not None and getattr(a, key) < 1:
            raise SystemExit(f"--{key.replace('_', '-')} {getattr(a, key)}: expected 1 or more")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.arm:
        child(a)
        return 0
    sources(a)  # the inputs exist before anything is trained
    Path(a.out_dir).mkdir(parents=True, exist_ok=True)
    folder = export_folder(a)
    env = {**os.environ, **ENV, "OMP_NUM_THREADS": str(a.threads)}
    runs = []
    for r in range(a.repeats):
        for arm in (ARMS if r % 2 == 0 else ARMS[::-1]):
            rf = Path(a.out_dir) / f"{a.task}.{arm}.{r}.json"
            subprocess.run([sys.executable, __file__, "--arm", arm, "--result-file", str(rf), "--folder", str(folder),
                            "--task", a.task, "--n", str(a.n), "--batch-size", str(a.batch_size),
                            "--threads", str(a.threads)], check=True, cwd=ROOT, env=env)
            runs.append(json.loads(rf.read_text()))
            rf.unlink()
            print(f"repeat {r} {arm:8s} {runs[-1]['inputs_per_sec']:8.2f} inputs/s, "
                  f"{runs[-1]['cpu_ms_per_input']:.1f} CPU ms/input", flush=True)
    med = {arm: statistics.median(x["inputs_per_sec"] for x in runs if x["arm"] == arm) for arm in ARMS}
    cpu = {arm: statistics.median(x["cpu_ms_per_input"] for x in runs if x["arm"] == arm) for arm in ARMS}
    ours = next(x["outputs"] for x in runs if x["arm"] == "lmforge")
    theirs = next(x["outputs"] for x in runs if x["arm"] == "plain")
    agreement = sum(x == y for x, y in zip(ours, theirs)) / max(len(ours), 1)
    doc = {"benchmark": "seq2seq_inference", "task": a.task, "n": a.n, "export": str(folder),
           "batch_size": a.batch_size, "threads": a.threads, "baseline": "plain transformers, one input at a time",
           "median_inputs_per_sec": med, "ratio": med["lmforge"] / med["plain"], "median_cpu_ms_per_input": cpu,
           "cpu_ratio": cpu["plain"] / cpu["lmforge"], "agreement": agreement,
           "examples": [{"source": s, "lmforge": x, "plain": y} for s, x, y in zip(sources(a)[:3], ours, theirs)],
           "runs": [{k: v for k, v in x.items() if k != "outputs"} for x in runs],
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load": os.getloadavg()}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    print(f"{a.task}: lmforge {med['lmforge']:.2f} inputs/s (batch {a.batch_size}), plain transformers "
          f"{med['plain']:.2f} inputs/s (one at a time): {doc['ratio']:.2f}x (CPU time per input: "
          f"{doc['cpu_ratio']:.2f}x); same output for {100 * agreement:.1f}% of inputs; wrote {out}")
    print(json.dumps({k: doc[k] for k in ("task", "ratio", "cpu_ratio", "agreement", "batch_size")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
