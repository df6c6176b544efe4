"""Shared fixtures: tiny corpora and token dirs built from real text (BBC news articles)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import bbc_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_bbc_corpus(root: Path, train_per_topic: int = 40, eval_per_topic: int = 8) -> Path:
    """A corpus dir (docs/ARCHITECTURE.md layout): one domain per BBC topic, label = topic."""
    for topic_dir in sorted(p for p in bbc_dir().iterdir() if p.is_dir()):
        files = sorted(topic_dir.glob("*.txt"))[: train_per_topic + eval_per_topic]
        for split, chunk in (("documents", files[:train_per_topic]), ("eval", files[train_per_topic:])):
            rows = {"id": [], "text": [], "domain": [], "label": [], "source": []}
            for f in chunk:
                rows["id"].append(f"{topic_dir.name}/{f.stem}")
                rows["text"].append(f.read_text(encoding="utf-8", errors="replace"))
                rows["domain"].append(topic_dir.name)
                rows["label"].append(topic_dir.name)
                rows["source"].append(f.name)
            out = root / split / topic_dir.name / "shard-00000.parquet"
            out.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table(rows), out)
    return root


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
