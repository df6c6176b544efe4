"""Shared fixtures: tiny corpora and token dirs built from real text (BBC news articles)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import write_bbc_corpus

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    return write_bbc_corpus(tmp_path_factory.mktemp("bbc-corpus"))


@pytest.fixture(scope="session")
def tiny_tokens(tiny_corpus, tmp_path_factory) -> Path:
    """Prepared tokens: 5 topics (BBC ground truth), BPE vocabulary 512, seq_len 64."""
    from toremi.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("bbc-tokens")
    return prepare(PrepareConfig(corpus=tiny_corpus, out=out, tokenizer="bpe:512", seq_len=64,
                                 topics_from="label", bpe_train_mb=1.0))
