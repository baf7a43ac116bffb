"""Every benchmark at a small size, one after another, and one table of what they measured.

    python benchmarks/run_all.py                      # all of them (about 11 minutes on 2 quiet CPU cores)
    python benchmarks/run_all.py --only causal_lm,inference_text_classification
    python benchmarks/run_all.py --smoke --only causal_lm --out /tmp/RESULTS.md   # the tiniest sizes (tests)
    python benchmarks/run_all.py --list

Each benchmark runs as its own command (its own arms in fresh processes, as it does alone), its output goes to
``logs/benchmarks/run_all/<name>.log``, and its JSON result is read back. The table (task, what lmforge is measured
against, the speed ratio, the quality figure of both sides) goes to ``benchmarks/RESULTS.md`` with the date and the
machine (CPU model, cores, torch, load average before and after). Small sizes measure speed well enough to see
a regression; the quality figures at these sizes are far below the full-size ones in benchmarks/README.md.
A benchmark that fails or whose data is missing gets a row saying so; the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / "logs" / "benchmarks" / "run_all"
SHARED = Path(os.environ.get("LMFORGE_DATA_DIR", ROOT.parent / "shared" / "data"))


def _vs_trainer(rate: str, quality: str, quality_name: str) -> Callable[[dict], dict]:
    def extract(doc: dict) -> dict:
        med = doc["summary"]["median"]
        ours, base = med["lmforge"], med["trainer"]
        cpu = doc["summary"].get("ratio_lmforge_over_trainer", {}).get("cpu_ms_per_sample")
        if cpu is None and ours.get("cpu_per_wall") and base.get("cpu_per_wall"):  # CPU s per sample = (CPU/wall) / rate
            cpu = (base["cpu_per_wall"] / base[rate]) / (ours["cpu_per_wall"] / ours[rate])
        return {"ratio": ours[rate] / base[rate], "cpu_ratio": cpu, "measure": rate.replace("_", " ").replace(" per sec", "/s"),
                "quality": quality_name, "ours": ours.get(quality), "base": base.get(quality)}
    return extract


def _causal(doc: dict) -> dict:
    return {"ratio": doc["ratio_lmforge_over_plain"], "cpu_ratio": doc.get("cpu_ratio_plain_over_lmforge"),
            "measure": "tokens/s", "quality": "final train loss",
            "ours": _median(r["final_train_loss"] for r in doc["runs"] if r["arm"] == "lmforge"),
            "base": _median(r["final_train_loss"] for r in doc["runs"] if r["arm"] == "plain")}


def _embedding(doc: dict) -> dict:
    return {"ratio": None, "measure": f"{doc.get('bi_encoder_texts_per_s')} texts/s (lmforge encoder)",
            "quality": "STS-B dev Spearman", "ours": doc.get("lmforge_spearman"), "base": doc.get("st_spearman")}


def _distill(doc: dict) -> dict:
    return {"ratio": doc.get("speedup"), "measure": "texts/s, student/teacher",
            "quality": "SST-2 dev accuracy, distilled student vs labels-only student",
            "ours": doc["student_distilled"]["dev_accuracy"], "base": doc["student_undistilled"]["dev_accuracy"]}


def _lead(doc: dict) -> dict:
    return {"ratio": None, "measure": "-", "quality": "lead-3 ROUGE-1/2/L (baseline only)",
            "ours": None, "base": "/".join(str(doc["lead3"].get(k)) for k in ("rouge1", "rouge2", "rougeL"))}


def _inference(doc: dict) -> dict:
    threads = doc.get("threads")
    measure = f"texts/s at batch {doc['batch_size']}" + (f", {threads} thread{'s' * (threads != 1)}" if threads else "")
    per = doc.get("lmforge")
    if isinstance(per, dict):  # inference_vs_pipeline: lmforge at its default (auto) and in exact 32-bit
        x = per.get("auto") or next(iter(per.values()))
        exact = per.get("32")
        doc = {**doc, **x}
        measure += f", lmforge {x['precision_used']}" + (
            f" (exact 32-bit: {exact['ratio']:.2f}x, CPU {exact['cpu_ratio']:.2f}x)" if exact and exact is not x else "")
    return {"ratio": doc["ratio"], "cpu_ratio": doc.get("cpu_ratio"), "measure": measure,
            "quality": "same predictions", "ours": doc.get("agreement"), "base": 1.0}


def _median(xs) -> float | None:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


#: name -> (task, baseline, command args (small, smoke), result: path or "stdout", extractor, data it needs)
BENCHMARKS: dict[str, dict[str, Any]] = {
    "text_classification": dict(
        task="text classification (MiniLM, SST-2)", baseline="transformers.Trainer",
        script="text_classification_vs_trainer.py", needs="sst2",
        small=["--train-rows", "256", "--repeats", "1"], smoke=["--train-rows", "32", "--repeats", "1"],
        out_flag=True, extract=_vs_trainer("samples_per_sec", "dev_accuracy", "dev accuracy")),
    "token_classification": dict(
        task="NER (MiniLM, CoNLL-2003)", baseline="transformers.Trainer",
        script="token_classification_vs_trainer.py", needs="conll2003",
        small=["--train-sentences", "256", "--eval-sentences", "200", "--repeats", "1"],
        smoke=["--train-sentences", "32", "--eval-sentences", "32", "--repeats", "1"],
        out_flag=True, extract=_vs_trainer("sentences_per_sec", "val_f1", "entity F1")),
    "question_answering": dict(
        task="extractive QA (MiniLM, SQuAD)", baseline="transformers.Trainer",
        script="question_answering_vs_trainer.py", needs="squad_v1.1",
        small=["--train-questions", "128", "--eval-questions", "100", "--repeats", "1"],
        smoke=["--train-questions", "16", "--eval-questions", "16", "--repeats", "1"],
        out_flag=True, extract=_vs_trainer("windows_per_sec", "val_f1", "F1")),
    "seq2seq": dict(
        task="translation (tiny T5, Multi30k)", baseline="transformers Seq2SeqTrainer",
        script="seq2seq_vs_trainer.py", needs="multi30k",
        small=["--train-pairs", "512", "--eval-pairs", "100", "--repeats", "1"],
        smoke=["--train-pairs", "64", "--eval-pairs", "16", "--repeats", "1"],
        out_flag=True, extract=_vs_trainer("train_tokens_per_sec", "bleu", "BLEU")),
    "summarization": dict(
        task="summarization (tiny T5, SAMSum)", baseline="transformers Seq2SeqTrainer",
        script="seq2seq_vs_trainer.py", needs="samsum",
        small=["--data", "samsum", "--train-pairs", "400", "--eval-pairs", "64", "--repeats", "1"],
        smoke=["--data", "samsum", "--train-pairs", "32", "--eval-pairs", "8", "--repeats", "1"],
        out_flag=True, extract=_vs_trainer("train_tokens_per_sec", "rougeL", "ROUGE-L")),
    "sentence_embedding_training": dict(
        task="sentence embedding fine-tuning (MiniLM, STS-B)", baseline="sentence-transformers' trainer",
        script="sentence_embedding_vs_trainer.py", needs="stsb",
        small=["--train-pairs", "256", "--eval-pairs", "500", "--repeats", "1", "--threads", "1"],
        smoke=["--train-pairs", "32", "--eval-pairs", "32", "--repeats", "1"],
        out_flag=True, extract=_vs_trainer("samples_per_sec", "dev_spearman", "STS-B dev Spearman")),
    "instruction_tuning": dict(
        task="instruction tuning (tiny GPT-2, chat sample)", baseline="transformers.Trainer",
        script="instruction_tuning_vs_trainer.py", needs=None,
        small=["--train-samples", "1000", "--epochs", "1", "--repeats", "1", "--threads", "1"],
        smoke=["--train-samples", "64", "--eval-samples", "16", "--batch-size", "16", "--epochs", "1", "--repeats", "1"],
        out_flag=True, extract=_vs_trainer("samples_per_sec", "val_loss", "answer-token val loss (lower is better)")),
    "causal_lm": dict(
        task="causal-LM pretraining (tiny GPT-2, sample corpus)", baseline="plain PyTorch loop",
        script="causal_lm_vs_plain_loop.py", needs=None,
        # three repeats, so that the median drops one outlier: a single 35-step window on this shared host moved
        # from 0.72x to 1.15x between runs
        small=["--data", "sample", "--steps", "40", "--warmup", "5", "--repeats", "3"],
        smoke=["--data", "sample", "--steps", "6", "--warmup", "2", "--repeats", "1"],
        result=ROOT / "logs" / "benchmarks" / "causal_lm_vs_plain_loop.json", extract=_causal),
    "sentence_embedding": dict(
        task="sentence embedding (MiniLM, STS-B dev)", baseline="sentence-transformers",
        script="sentence_embedding_stsb.py", needs="stsb",
        small=["--speed-rows", "200"], smoke=["--speed-rows", "32"], result="stdout", extract=_embedding),
    "distillation": dict(
        task="distillation (MiniLM-L6 -> 3 layers, SST-2)", baseline="same student, labels only",
        script="distill_sst2.py", needs="sst2",
        small=["--train-samples", "400", "--student-epochs", "1", "--rounds", "1", "--budget", "00:00:02:00"],
        smoke=["--train-samples", "64", "--student-epochs", "1", "--rounds", "1", "--budget", "00:00:01:00"],
        result=LOGS / "distill" / "results.json", extra=["--out", str(LOGS / "distill")], extract=_distill),
    "summarization_lead": dict(
        task="dialogue summarization (SAMSum)", baseline="lead-3 (first three turns)",
        script="seq2seq_lead_baseline.py", needs="samsum", small=[], smoke=[], result="stdout", extract=_lead),
    "inference_text_classification": dict(
        task="inference: text classification (MiniLM, SST-2 dev)", baseline="transformers.pipeline",
        script="inference_vs_pipeline.py", needs="sst2",
        small=["--task", "text_classification", "--data", "sst2", "--n", "872", "--threads", "1"],
        smoke=["--task", "text_classification", "--n", "64", "--threads", "1"],
        out_flag=True, extract=_inference),
    "inference_token_classification": dict(
        task="inference: NER (MiniLM, CoNLL-2003 dev)", baseline="transformers.pipeline",
        script="inference_vs_pipeline.py", needs="conll2003",
        small=["--task", "token_classification", "--data", "conll", "--n", "1000", "--threads", "1"],
        smoke=["--task", "token_classification", "--n", "64", "--threads", "1"],
        out_flag=True, extract=_inference),
    "inference_translation": dict(
        task="inference: translation (tiny T5, phrasebook sample)", baseline="plain transformers, one input at a time",
        script="seq2seq_inference.py", needs=None,
        small=["--task", "translation", "--n", "128", "--threads", "1"],
        smoke=["--task", "translation", "--n", "8", "--train-epochs", "1", "--train-samples", "64"],
        out_flag=True, extract=_inference),
    "inference_summarization": dict(
        task="inference: summarization (tiny T5, chat sample)", baseline="plain transformers, one input at a time",
        script="seq2seq_inference.py", needs=None,
        small=["--task", "summarization", "--n", "128", "--threads", "1"],
        smoke=["--task", "summarization", "--n", "8", "--train-epochs", "1", "--train-samples", "64"],
        out_flag=True, extract=_inference),
    "inference_question_answering": dict(
        task="inference: question answering (MiniLM, SQuAD dev)", baseline="plain transformers, one question at a time",
        script="qa_inference.py", needs="squad_v1.1",
        small=["--task", "question_answering", "--n", "256", "--threads", "1"],
        smoke=["--task", "question_answering", "--n", "16"],
        out_flag=True, extract=_inference),
}
# every core: one question at a time leaves the second core half idle (its matrix products are too small to share),
# so the ratio at 1 thread and at all cores differ; both rows are kept
BENCHMARKS["inference_question_answering_all_cores"] = dict(
    BENCHMARKS["inference_question_answering"], task="inference: question answering (MiniLM, SQuAD dev), every core",
    small=["--task", "question_answering", "--n", "256", "--repeats", "2"],
    smoke=["--task", "question_answering", "--n", "16", "--threads", "2"])


def repeats(spec: dict, smoke: bool) -> int:
    """The ``--repeats`` a benchmark runs with (1 where its command does not say)."""
    args = spec["smoke" if smoke else "small"]
    return int(args[args.index("--repeats") + 1]) if "--repeats" in args else 1


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {"cpu": cpu or "unknown", "cores": os.cpu_count(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "load": os.getloadavg()}


def last_json(text: str) -> dict:
    """The last JSON object a command printed (pretty-printed, starting on a line of its own)."""
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("{"):
            try:
                return json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON result in the output")


def run_one(name: str, spec: dict, smoke: bool, timeout: int) -> dict:
    row = {"name": name, "task": spec["task"], "baseline": spec["baseline"]}
    if spec.get("needs") and not (SHARED / spec["needs"]).exists():
        return {**row, "status": f"skipped: no {SHARED / spec['needs']} (set LMFORGE_DATA_DIR)"}
    LOGS.mkdir(parents=True, exist_ok=True)
    result = spec.get("result")
    cmd = [sys.executable, str(ROOT / "benchmarks" / spec["script"]), *spec["smoke" if smoke else "small"],
           *spec.get("extra", [])]
    if spec.get("out_flag"):
        result = LOGS / f"{name}.json"
        cmd += ["--out", str(result)]
    t0 = time.time()
    log = LOGS / f"{name}.log"
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[1:])}", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    except subprocess.TimeoutExpired:
        return {**row, "status": f"timed out after {timeout} s", "seconds": time.time() - t0}
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    row["seconds"] = time.time() - t0
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:160]
        return {**row, "status": f"failed (exit {proc.returncode}: {tail}; see {log.relative_to(ROOT)})"}
    try:
        doc = last_json(proc.stdout) if result == "stdout" else json.loads(Path(result).read_text())
        return {**row, "status": "ok", **spec["extract"](doc)}
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as e:
        return {**row, "status": f"no result ({type(e).__name__}: {e}; see {log.relative_to(ROOT)})"}


def _f(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4f}" if abs(x) < 10 else f"{x:.2f}"
    return str(x)


def write_table(rows: list[dict], before: dict, after: dict, path: Path, smoke: bool, seconds: float,
                note: str | None = None) -> None:
    m = before
    more = [f"{repeats(BENCHMARKS[r['name']], smoke)} for {r['task']}" for r in rows
            if repeats(BENCHMARKS[r["name"]], smoke) > 1]
    lines = ["# Benchmark results", "",
             f"Written by `python benchmarks/run_all.py{' --smoke' if smoke else ''}` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in {seconds / 60:.1f} min.", "",
             f"Machine: {m['cpu']}, {m['cores']} cores{', ' + m['gpu'] if m['gpu'] else ''}; torch {m['torch']}, "
             f"Python {m['python']}; load average {', '.join(f'{x:.2f}' for x in m['load'])} before, "
             f"{', '.join(f'{x:.2f}' for x in after['load'])} after.", "",
             "Ratio: lmforge's rate over the baseline's (above 1: lmforge is faster). CPU ratio: the baseline's CPU "
             "time per sample over lmforge's (above 1: lmforge needs less CPU); on a shared machine it moves less "
             "than the wall-clock ratio, so read it first. Small sizes: speed ratios are indicative (one repeat "
             f"each{'; ' + ', '.join(more) if more else ''}); quality figures at these sizes are far below the "
             "full-size ones in benchmarks/README.md.", "",
             *([f"Note: {note}", ""] if note else []),
             "| task | baseline | ratio | CPU ratio | measured | quality | lmforge | baseline | status |",
             "|---|---|---:|---:|---|---|---:|---:|---|"]
    for r in rows:
        ratio, cpu = (f"{r[k]:.2f}x" if isinstance(r.get(k), (int, float)) else "-" for k in ("ratio", "cpu_ratio"))
        lines.append(f"| {r['task']} | {r['baseline']} | {ratio} | {cpu} | {r.get('measure', '-')} | {r.get('quality', '-')} | "
                     f"{_f(r.get('ours'))} | {_f(r.get('base'))} | {r['status']} "
                     f"({r.get('seconds', 0):.0f} s) |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    p.add_argument("--smoke", action="store_true", help="the tiniest sizes (checks that each benchmark still runs)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    p.add_argument("--timeout", type=int, default=900, help="seconds per benchmark")
    p.add_argument("--note", default=None, help="a line for the table (e.g. what else ran on the machine)")
    p.add_argument("--list", action="store_true")
    a = p.parse_args(argv)
    if a.list:
        for k, v in BENCHMARKS.items():
            print(f"{k:32s} {v['task']} vs {v['baseline']}")
        return 0
    names = [x.strip() for x in a.only.split(",")] if a.only else list(BENCHMARKS)
    bad = [x for x in names if x not in BENCHMARKS]
    if bad:
        print(f"error: --only {','.join(bad)}: expected names among {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    before, t0 = machine(), time.time()
    rows = []
    for name in names:
        rows.append(run_one(name, BENCHMARKS[name], a.smoke, a.timeout))
        print(f"    -> {rows[-1]['status']}, ratio {rows[-1].get('ratio')}", flush=True)
        write_table(rows, before, machine(), Path(a.out), a.smoke, time.time() - t0, a.note)  # a partial table survives a kill
    print(Path(a.out).read_text())
    return 0 if all(r["status"] == "ok" or r["status"].startswith("skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
