#!/usr/bin/env bash
# GPU numbers in one go (under 8 minutes on one H100/H200-class GPU), from the repository alone:
#   GPT-2 small (124M) causal-LM pretraining, bf16-mixed, one GPU, FSDP2 and DDP: tokens/s, MFU, peak memory;
#   MiniLM fine-tuning, lmforge vs transformers.Trainer: samples/s, dev accuracy, peak memory.
# Each case runs in a fresh process (benchmarks/gpu_bench.py). Results: <out>/*.json and <out>/SUMMARY.md.
#
#   bash benchmarks/gpu.sh                      # on the GPU machine; out = logs/benchmarks/gpu
#   bash benchmarks/gpu.sh --dry-run            # the same steps on CPU, tiny sizes (about two minutes)
#   bash benchmarks/gpu.sh --out /tmp/gpu --steps 300
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=logs/benchmarks/gpu
FLAGS=()
GPT2_FLAGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) FLAGS+=(--dry-run) ;;
    --out) OUT="$2"; shift ;;
    --steps) GPT2_FLAGS+=(--steps "$2"); shift ;;
    --batch-size) GPT2_FLAGS+=(--batch-size "$2"); shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1 (expected --dry-run, --out DIR, --steps N, --batch-size N)" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
mkdir -p "$OUT"
start=$(date +%s)
"$PY" benchmarks/gpu_bench.py prepare --out "$OUT" "${FLAGS[@]}"
for strategy in fsdp ddp; do
  "$PY" benchmarks/gpu_bench.py gpt2 --strategy "$strategy" --out "$OUT" "${FLAGS[@]}" "${GPT2_FLAGS[@]}" \
    2>&1 | tee "$OUT/gpt2_$strategy.log"
done
"$PY" benchmarks/gpu_bench.py minilm --out "$OUT" "${FLAGS[@]}" 2>&1 | tee "$OUT/minilm.log"
"$PY" benchmarks/gpu_bench.py summary --out "$OUT"
echo "gpu.sh: $(( $(date +%s) - start )) s; table: $OUT/SUMMARY.md"
