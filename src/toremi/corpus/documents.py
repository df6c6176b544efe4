"""Reading a corpus directory (the contract in docs/ARCHITECTURE.md): shards per split, tables."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from toremi import layout
from toremi.io import read_json

SPLITS = layout.CORPUS_SPLITS


def iter_shards(corpus_dir: str | Path, split: str = "train", domain: str | None = None) -> list[Path]:
    """Shard paths of a split (``train`` or ``heldout``/``eval``), sorted by domain then index."""
    root = layout.corpus_documents(corpus_dir, split)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found: is {corpus_dir} a corpus directory? Build one "
                                f"with `toremi corpus build --out {corpus_dir}`")
    pattern = f"{domain}/shard-*.parquet" if domain else "*/shard-*.parquet"
    return sorted(root.glob(pattern))


def read_documents(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """One shard as a pyarrow Table (columns id, text, domain, label, source)."""
    return pq.read_table(path, columns=columns)


def read_split(corpus_dir: str | Path, split: str = "train", columns: list[str] | None = None) -> pa.Table:
    """All shards of a split concatenated (small corpora, tests, the demo)."""
    tables = [read_documents(p, columns) for p in iter_shards(corpus_dir, split)]
    return pa.concat_tables(tables) if tables else pa.table({})


def domains(corpus_dir: str | Path) -> list[str]:
    """Domain names in manifest order."""
    return list(load_manifest(corpus_dir)["domains"])


def load_manifest(corpus_dir: str | Path) -> dict:
    path = layout.corpus_manifest(corpus_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the corpus build did not finish; rerun "
                                f"`toremi corpus build --out {corpus_dir}` (it resumes)")
    return read_json(path)
