#!/usr/bin/env python
"""STS-B dev: a bi-encoder's Spearman (lmforge's metric next to sentence-transformers' evaluator) and the
encoding speed of a bi-encoder (texts/s) against a cross-encoder (pairs/s), on this machine.

    python benchmarks/sentence_embedding_stsb.py                                   # MiniLM as shipped (zero-shot)
    python benchmarks/sentence_embedding_stsb.py --model logs/stsb_embedding/runs/<run>/export   # a trained export
    python benchmarks/sentence_embedding_stsb.py --speed-rows 500 --threads 2

* Spearman/Pearson: the model's export folder read by lmforge's own encoder (AutoModel + the folder's
  pooling, :class:`lmforge.tasks.sentence_embedding.module.ExportEncoder`), cosine against gold through
  lmforge's ``SimilarityCorrelation``; and, where sentence-transformers is installed,
  ``EmbeddingSimilarityEvaluator`` on ``SentenceTransformer(<folder>)`` with the same pairs.
* Speed (after one warm-up batch, batch 64, fp32, no gradient): the bi-encoder encodes the dev set's
  ``--speed-rows`` first sentences (texts/s, each text once); a cross-encoder of the same size
  (``AutoModelForSequenceClassification`` on the same weights: the speed does not depend on its head)
  reads the same number of sentence pairs (pairs/s). Comparing n queries with m texts costs the
  bi-encoder n + m encodings and the cross-encoder n x m pair passes.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch

import lmforge  # noqa: F401  (resolvers)
from lmforge.tasks.sentence_embedding.metrics import SimilarityCorrelation
from lmforge.tasks.sentence_embedding.module import ExportEncoder
from lmforge.utils.resolvers import minilm_path

ROOT = Path(__file__).resolve().parents[1]


def read_dev(path: Path) -> tuple[list[str], list[str], list[float]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], [float(r["score"]) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="a sentence-transformers folder (default: MiniLM as shipped)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "stsb" / "dev.tsv"))
    ap.add_argument("--speed-rows", type=int, default=500)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = args.model or minilm_path()
    s1, s2, gold = read_dev(Path(args.data))
    out: dict = {"model": folder, "pairs": len(gold), "threads": torch.get_num_threads()}

    enc = ExportEncoder(folder)
    metric = SimilarityCorrelation()
    metric.update(enc.encode(s1), enc.encode(s2), torch.tensor(gold))
    out.update({f"lmforge_{k}": round(v.item(), 4) for k, v in metric.compute().items()})
    try:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator

        ev = EmbeddingSimilarityEvaluator(s1, s2, [g / 5 for g in gold], name="stsb-dev")
        res = ev(SentenceTransformer(folder, device="cpu"))
        out.update({"st_spearman": round(res["stsb-dev_spearman_cosine"], 4),
                    "st_pearson": round(res["stsb-dev_pearson_cosine"], 4)})
    except ImportError:
        out["st"] = "sentence-transformers not installed"

    n = min(args.speed_rows, len(s1))
    enc.encode(s1[:64])
    t = time.perf_counter()
    enc.encode(s1[:n])
    out["bi_encoder_texts_per_s"] = round(n / (time.perf_counter() - t), 1)

    from transformers import AutoModelForSequenceClassification

    cross = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1).eval()
    tok = enc.tokenizer

    @torch.no_grad()
    def cross_encode(a: list[str], b: list[str]) -> None:
        for i in range(0, len(a), 64):
            cross(**tok(a[i:i + 64], b[i:i + 64], truncation=True, max_length=128, padding=True, return_tensors="pt"))

    cross_encode(s1[:64], s2[:64])
    t = time.perf_counter()
    cross_encode(s1[:n], s2[:n])
    out["cross_encoder_pairs_per_s"] = round(n / (time.perf_counter() - t), 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
