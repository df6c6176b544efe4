# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export TOREMI_SOURCES ?= $(CURDIR)/.cache/sources

.PHONY: setup sources chromium demo test bench quality noise corpus-full mutants clean

setup:
	bash scripts/setup.sh

sources: setup
	bash scripts/fetch_sources.sh "$(TOREMI_SOURCES)"

chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

demo: setup sources
	$(VENV)/bin/toremi demo

test: setup sources chromium
	$(PY) -m pytest -x --timeout=900 -p no:cacheprovider tests

# Mutation check (not part of `make test`/CI): the named core-invariant mutants must all be killed,
# then mutmut on methods/, train/step.py, data/loader.py and the eval scoring with the fast tests.
mutants: setup sources
	$(VENV)/bin/pip install -q mutmut==3.8.1
	nice -n 10 $(PY) scripts/mutants.py; rc=$$?; nice -n 10 $(PY) scripts/mutants.py --mutmut; exit $$rc

bench: setup sources
	$(PY) bench/prepare.py
	$(PY) bench/train_step.py
	$(PY) bench/annotate.py

corpus-full: setup sources
	$(VENV)/bin/toremi corpus build --out out/corpus-full

quality: setup sources
	$(VENV)/bin/toremi experiment --config configs/quality.yaml

noise: setup sources
	$(VENV)/bin/toremi experiment --config configs/noise.yaml

clean:
	rm -rf out runs
