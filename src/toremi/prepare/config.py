"""``PrepareConfig``: the settings of ``toremi prepare`` (every engine reads the same ones)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from toremi.ray_cluster import EngineConfig, as_engine
from toremi.tokenizer import check_spec

INDEX_VERSION = 4  # bump when the per-shard index gains fields: older shards are redone on resume


@dataclass
class PrepareConfig:
    corpus: Path = Path("out/corpus")
    out: Path = Path("out/tokens")
    tokenizer: str = "gpt2"            # gpt2 | bpe:<vocab> (trained on the train split) | path
    seq_len: int = 1024
    annotations: Path | None = None    # default: <corpus>/annotations
    topics_from: Literal["annotations", "domain", "label", "none"] = "annotations"
    max_topics: int = 3
    batch_docs: int = 8192         # documents per encode_batch call (Rust-parallel)
    dev_fraction: float = 0.05         # share of each domain's bytes (whole source units) carved out as dev
    dev_seed: int = 0
    dev_sequences_per_domain: int = 256  # dev windows kept per domain (evenly drawn)
    bpe_train_mb: float = 20.0         # text used to train a bpe:<vocab> tokenizer
    packing: Literal["none", "docs"] = "docs"  # docs: also write packed-train/ (full windows)
    engine: EngineConfig | str = "local"  # engine.name=ray: the per-shard work as Ray tasks

    def __post_init__(self):
        self.engine = as_engine(self.engine)
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {self.seq_len}")
        if self.max_topics < 1:
            raise ValueError(f"max_topics must be >= 1, got {self.max_topics}")
        check_spec(self.tokenizer)
        if self.packing not in ("none", "docs"):
            raise ValueError(f"packing={self.packing!r}: choose none or docs")
        if not 0.0 <= self.dev_fraction < 1.0:
            raise ValueError(f"dev_fraction must be in [0, 1), got {self.dev_fraction}")
