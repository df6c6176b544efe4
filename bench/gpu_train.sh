#!/usr/bin/env bash
# GPU throughput of the reweighting engine, one self-contained run (< 6 minutes on an H100/H200):
# GPT-2 124M, T=1024, batch 16, bf16 autocast, the whole forward+weighted loss under torch.compile,
# fused AdamW, vocabulary 50257 padded to 50304, synthetic random tokens with 41 topics.
# Prints tokens/s and MFU for plain / uniform / toremi (+ K=10,000 topics, + the authors' per-sample
# loop) and the step-time ratios; writes out/bench/gpu_train.json.
#
#   bash bench/gpu_train.sh            # on the GPU machine (needs python with CUDA torch + numpy)
#   bash bench/gpu_train.sh --smoke    # CPU check of the script itself (tiny model, few steps)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[[ -x .venv/bin/python && -z "${PYTHON:-}" ]] && PY=.venv/bin/python
if [[ "${1:-}" == "--smoke" ]]; then
  shift
  exec "$PY" bench/train_step.py --smoke --device cpu --json out/bench/gpu_train_smoke.json "$@"
fi
"$PY" - <<'PYEOF'
import torch
assert torch.cuda.is_available(), "bench/gpu_train.sh needs a CUDA GPU (use --smoke on CPU)"
print("torch", torch.__version__, "|", torch.cuda.get_device_name(), flush=True)
PYEOF
export TORCHINDUCTOR_FX_GRAPH_CACHE=1
timeout 540 "$PY" bench/train_step.py --device cuda --model gpt2 --seq 1024 --batch 16 \
  --vocab 50257 --topics 41 --steps 30 --warmup 3 --compile on \
  --variants plain,uniform,toremi,toremi10k,authors --json out/bench/gpu_train.json "$@"
