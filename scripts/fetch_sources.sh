#!/usr/bin/env bash
# `make sources`: the raw text sources into DIR (default $TOREMI_SOURCES, else .cache/sources).
# The script itself ships with the package (src/toremi/resources/fetch_sources.sh), so that an
# installed toremi fetches them too: `toremi corpus fetch-sources [DIR]`.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-${TOREMI_SOURCES:-.cache/sources}}
PYTHON=${PYTHON:-.venv/bin/python}
[[ -x $PYTHON ]] || PYTHON=python3
PYTHON=$PYTHON exec bash src/toremi/resources/fetch_sources.sh "$DIR"
