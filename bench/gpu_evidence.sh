#!/usr/bin/env bash
# GPU evidence run, one script: the whole 13-domain corpus -> GPT-2 tokenizer, T=1024 ->
# uniform, toremi (per-token statistic) and toremi (per-byte statistic), GPT-2 small, 2 seeds ->
# paired Δ NLL / bits-per-byte per domain and macro (results.md leads with it) + report.
# configs/gpu-evidence.yaml holds the sizes (8.2M tokens per run; the experiment is capped at 8
# minutes by `timeout`, and it resumes if rerun). Set-up (corpus build, prepare) is done once and
# reused: point CORPUS / TOKENS at existing dirs to skip it.
#
#   bash bench/gpu_evidence.sh --prepare-only  # CPU: corpus slice + tokens into out/gpu-evidence/carry
#                                         # (tokens + the corpus's eval/ and manifest: < 64 MiB)
#   CORPUS=out/gpu-evidence/carry/corpus TOKENS=out/gpu-evidence/carry/tokens \
#     bash bench/gpu_evidence.sh            # GPU machine; results under $OUT/gpu_evidence (or out/)
#   bash bench/gpu_evidence.sh --smoke    # CPU, CI-sized: 13 tiny domain slices, tiny model, 4 steps,
#                                         # 3 short-document domains scored
#
# Writes <dest>/results.md, results.json, report/ (HTML + PNGs), timings.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[[ -x .venv/bin/python && -z "${PYTHON:-}" ]] && PY=.venv/bin/python
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
SMOKE=0; PREP=0
if [[ "${1:-}" == "--smoke" ]]; then SMOKE=1; shift; fi
if [[ "${1:-}" == "--prepare-only" ]]; then PREP=1; shift; fi
DEST=${DEST:-${OUT:-out}/gpu_evidence}
WORK=${WORK:-out/gpu-evidence}
mkdir -p "$DEST" "$WORK"
T0=$(date +%s)
stamp() { echo "$1 $(( $(date +%s) - T0 ))s" | tee -a "$DEST/timings.txt"; }
: > "$DEST/timings.txt"

if [[ $SMOKE == 1 ]]; then
  MB=0.15; SEQ=64
  SIZES=(train.model.size=tiny train.steps=4 train.batch_size=2 train.eval_every=2 train.eval_batches=1
         train.log_every=2 train.device=cpu train.compile=false train.dtype=float32 seeds=[1,2]
         eval.max_docs=1 eval.max_tokens=200 eval.stride=64 eval.domains=[news,email,quotes]
         eval.downstream=[bbc_topic] eval.batch_size=64
         eval.dtype=float32 eval.device=cpu)
  LIMIT=900
elif [[ $PREP == 1 ]]; then
  MB=3; SEQ=512; SIZES=(); LIMIT=0
else
  MB=3; SEQ=512; SIZES=(); LIMIT=480
  "$PY" -c 'import torch; assert torch.cuda.is_available(), "bench/gpu_evidence.sh needs a CUDA GPU (use --smoke on CPU)"; print("GPU:", torch.cuda.get_device_name())'
  export TORCHINDUCTOR_FX_GRAPH_CACHE=1
fi

CORPUS=${CORPUS:-$WORK/corpus}
TOKENS=${TOKENS:-$WORK/tokens}
if [[ ! -f "$CORPUS/manifest.json" ]]; then
  "$PY" -c "import sys; from toremi.cli import main; sys.exit(main(sys.argv[1:]))" corpus build \
    --out "$CORPUS" max_mb_per_domain=$MB count_tokens=false
fi
stamp "corpus"
if [[ ! -f "$TOKENS/manifest.json" ]]; then
  "$PY" -c "import sys; from toremi.cli import main; sys.exit(main(sys.argv[1:]))" prepare \
    --corpus "$CORPUS" --out "$TOKENS" --tokenizer "${TOKENIZER:-bpe:8192}" --seq-len $SEQ topics_from=domain
fi
stamp "prepare"
if [[ $PREP == 1 ]]; then  # what travels to the GPU machine: tokens, and the corpus minus its training text
  C=$WORK/carry; rm -rf "$C"; mkdir -p "$C/corpus"
  cp -r "$TOKENS" "$C/tokens"; cp -r "$CORPUS/eval" "$CORPUS/manifest.json" "$C/corpus/"
  du -sh "$C"; exit 0
fi
timeout $LIMIT "$PY" -c "import sys; from toremi.cli import main; sys.exit(main(sys.argv[1:]))" \
  experiment --config configs/gpu-evidence.yaml out="$WORK/exp" tokens="$TOKENS" corpus="$CORPUS" \
  "${SIZES[@]}" "$@"
stamp "experiment"
cp "$WORK/exp/results.md" "$WORK/exp/results.json" "$DEST/"
rm -rf "$DEST/report" && cp -r "$WORK/exp/report" "$DEST/report"
echo "gpu_evidence: results in $DEST (results.md, results.json, report/, timings.txt)"
