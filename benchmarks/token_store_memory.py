#!/usr/bin/env python
"""Memory of causal-LM pretraining as the corpus grows, and tokenizing throughput.

    python benchmarks/token_store_memory.py                      # corpora of 4, 16 and 64 MB, 20 steps each
    python benchmarks/token_store_memory.py --sizes 2 8 32 --steps 20

For each size a corpus of generated prose (blank-line separated documents, a fixed seed) is written, then
a tiny GPT-2 (``model=gpt2 model/size=tiny``, MiniLM's WordPiece tokenizer so no tokenizer is trained)
is trained for ``--steps`` steps (blocks of 64 tokens, batches of 8) on it, twice, each in a fresh subprocess of this script:

* ``cold``: an empty token cache, so the run reads the corpus, tokenizes it into the token store and
  trains (what a first run costs);
* ``warm``: the same run again: a cache hit, it only maps the token file and trains.

Reported per run: the peak resident memory of the training process (``ru_maxrss``), the peak of its
tokenizing worker processes (``RUSAGE_CHILDREN``), the wall time, and the training throughput
(``perf/tokens_per_sec`` of the run's ``metrics.json``). Validation runs on the default
``data.max_eval_blocks`` subset of the 5% carved out of each corpus.

Tokenizing throughput: the middle corpus written into a token store with 1 and with 2 processes
(``lmforge.data.token_store.write_tokens``), MB of text and tokens per second.

The machine may be shared: the load average is printed beside the figures. Output: a table, and
``logs/benchmarks/token_store_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "logs" / "benchmarks" / "token_store_memory.json"
WORDS = ("the a of and to in is was he she it they river stone king queen forest night light dark old new "
         "walked spoke found lost gave took under over between before after quickly slowly never always "
         "village castle mountain sea ship horse dragon child mother father friend enemy gold silver").split()


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> None:
    """Generated documents (3-12 sentences, a blank line between) until the file holds ``megabytes`` MB."""
    rng = random.Random(seed)
    target = int(megabytes * 1_000_000)
    written = 0
    with open(path, "w") as f:
        while written < target:
            doc = " ".join(" ".join(rng.choices(WORDS, k=rng.randint(5, 20))).capitalize() + "."
                           for _ in range(rng.randint(3, 12)))
            f.write(doc + "\n\n")
            written += len(doc) + 2


def child(args: argparse.Namespace) -> None:
    """One training run in this (fresh) process; prints a JSON line with its figures."""
    from lmforge.train import train
    from lmforge.utils.compose import compose_config
    from lmforge.utils.resolvers import minilm_path

    run_dir = Path(args.run_dir)
    cfg = compose_config(["task=causal_lm", "model=gpt2", "model/size=tiny", f"model.tokenizer={minilm_path()}",
                          "data=text", f"data.train_files={args.corpus}", "data.block_size=64",
                          "data.batch_size=8", f"trainer.max_steps={args.steps}",
                          f"trainer.val_check_interval={args.steps}", "trainer.log_every_n_steps=5",
                          "extras.print_config=false", "callbacks.progress_bar=null", "export=false",
                          "test=false"], run_dir, args.cache_dir)
    start = time.perf_counter()
    metrics = train(cfg)
    wall = time.perf_counter() - start
    saved = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    tps = saved.get("perf/tokens_per_sec", metrics.get("perf/tokens_per_sec"))
    print("RESULT " + json.dumps({
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workers_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "wall_s": wall, "tokens_per_sec": tps, "val_loss": metrics.get("val/loss")}), flush=True)


def run_child(corpus: Path, cache: Path, run_dir: Path, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--corpus", str(corpus), "--cache-dir", str(cache),
           "--run-dir", str(run_dir), "--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "LMFORGE_PROGRESS": "plain"})
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"run on {corpus} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def tokenize_throughput(corpus: Path, work: Path) -> list[dict]:
    from transformers import AutoTokenizer

    from lmforge.data.text_corpus import CorpusDocuments
    from lmforge.data.token_store import write_tokens
    from lmforge.utils.resolvers import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    docs = CorpusDocuments([corpus])
    mb = corpus.stat().st_size / 1e6
    out, first = [], None
    for processes in (1, 2):
        start = time.perf_counter()
        info = write_tokens(work / f"tokens-{processes}.bin", docs, tok, tok.sep_token_id, processes=processes)
        dt = time.perf_counter() - start
        data = (work / f"tokens-{processes}.bin").read_bytes()
        first = first or data
        out.append({"processes": processes, "seconds": dt, "mb_per_sec": mb / dt, "tokens": info["n_tokens"],
                    "tokens_per_sec": info["n_tokens"] / dt, "same_bytes_as_1": data == first,
                    "loadavg": os.getloadavg()})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[4, 16, 64], help="corpus sizes in MB")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--work", default=str(ROOT / "logs" / "benchmarks" / "token_store_work"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows = []
    for mb in args.sizes:
        corpus = work / f"corpus-{mb:g}mb.txt"
        write_corpus(corpus, mb)
        cache = work / f"cache-{mb:g}"
        for phase in ("cold", "warm"):
            load = os.getloadavg()
            r = run_child(corpus, cache, work / f"run-{mb:g}-{phase}", args.steps)
            rows.append({"corpus_mb": mb, "phase": phase, **r, "loadavg_before": load})
            print(f"{mb:>6g} MB {phase:>4}: peak RSS {r['peak_rss_mb']:7.0f} MB (workers {r['workers_peak_rss_mb']:5.0f} MB)"
                  f"  {r['tokens_per_sec'] or float('nan'):8.0f} tokens/s  wall {r['wall_s']:6.1f} s  "
                  f"load {load[0]:.2f}", flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    middle = work / f"corpus-{args.sizes[len(args.sizes) // 2]:g}mb.txt"
    tok_rows = tokenize_throughput(middle, work)
    for t in tok_rows:
        print(f"tokenizing {middle.name} with {t['processes']} process(es): {t['seconds']:.1f} s, "
              f"{t['mb_per_sec']:.2f} MB/s, {t['tokens_per_sec']:,.0f} tokens/s, same bytes: {t['same_bytes_as_1']}, "
              f"load {t['loadavg'][0]:.2f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"runs": rows, "tokenize": tok_rows, "cpus": os.cpu_count(), "steps": args.steps}, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    print(f"-> {OUT}")


if __name__ == "__main__":
    main()
