#!/usr/bin/env bash
# Create .venv with the CPU build of torch first (a plain `torch` would pull a multi-GB CUDA build),
# then the package with its extras. Idempotent: a stamp file records what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
STAMP=$VENV/.toremi-installed
WANT=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [[ -f $STAMP && "$(cat $STAMP)" == "$WANT" ]]; then exit 0; fi
python3 -m venv $VENV
$VENV/bin/pip install -q --upgrade pip
$VENV/bin/pip install -q torch==2.13.0
$VENV/bin/pip install -q -e ".[st,sources,hf,ray,dev]"
echo "$WANT" > $STAMP
