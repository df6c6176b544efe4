#!/usr/bin/env bash
# The one prepared script for a lent GPU machine: throughput bench (uniform vs toremi, GPT-2 124M,
# T=1024, bf16, compiled) and a real `toremi train` run on prepared tokens (CUDA path end to end).
# Usage there: OUT=<dir> bash bench/gpu_session.sh <tokens_dir>
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHON=${PYTHON:-python3}
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
nvidia-smi -L
timeout 400 bash bench/gpu_train.sh 2>&1 | tee "$OUT/gpu_train.log"
cp out/bench/gpu_train.json "$OUT/" 2>/dev/null
if [[ -n "${1:-}" ]]; then
  timeout 150 $PYTHON -m toremi.cli train --tokens "$1" --out /tmp/gpu-run method.name=toremi \
    method.interval=20 steps=200 batch_size=64 model.size=medium-cpu eval_every=100 progress=false \
    2>&1 | tail -25 | tee "$OUT/gpu_toremi_train.log"
  cp /tmp/gpu-run/run.json "$OUT/gpu_run.json" 2>/dev/null
  tail -3 /tmp/gpu-run/metrics.jsonl > "$OUT/gpu_metrics_tail.jsonl" 2>/dev/null
fi
