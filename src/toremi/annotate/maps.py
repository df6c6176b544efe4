"""The per-shard work of annotation, as plain functions of small picklable items.

Both engines run these same functions (in-process: ``annotate/local_engine.py``; on Ray:
``annotate/ray_engine.py``), so their outputs and done markers are the same by construction.
Every output is written atomically, then marked (``toremi.done``): a rerun reuses a shard whose
marker records the same rows and inputs and whose bytes still match.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toremi import done
from toremi.annotate.cluster import assign
from toremi.annotate.embed import EmbedConfig, embed_fingerprint, embed_shard, make_embedder, save_npy
from toremi.annotate.keywords import KeywordsConfig, count_shard, load_stop_words
from toremi.config import from_dict
from toremi.io import atomic_path

_EMBEDDERS: dict = {}


def get_embedder(cfg: EmbedConfig):
    """One embedder per process and config (Ray reuses worker processes, so it loads once)."""
    key = embed_fingerprint(cfg)
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = make_embedder(cfg)
    return _EMBEDDERS[key]


def read_texts(path: str) -> tuple[list[str], list[str]]:
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["id", "text"])
    return [str(x) for x in t.column("id").to_pylist()], [x or "" for x in t.column("text").to_pylist()]


def embed_map(item: dict) -> dict:
    cfg = from_dict(EmbedConfig, item["cfg"])
    _, texts = read_texts(item["doc"])
    return embed_shard(get_embedder(cfg), cfg, texts, Path(item["out"]))


def assign_map(item: dict) -> dict:
    out, emb = Path(item["out"]), np.load(item["emb"], mmap_mode="r")
    expect = {"centroids": item["centroids_sha"], "embeddings": item["emb_sha"]}
    center = np.load(item["center"]) if item["center"] else None
    if done.valid(out, len(emb), expect):  # member sums are cheap to redo; labels are kept
        labels = np.load(out)
        sums = np.zeros((item["k"], emb.shape[1]), np.float64)
        np.add.at(sums, labels[labels >= 0], np.asarray(emb[labels >= 0], np.float64))
    else:
        sums = np.zeros((item["k"], emb.shape[1]), np.float64)
        labels, _ = assign(emb, np.load(item["centroids"]), item["chunk_rows"], item["spherical"], center, sums)
        save_npy(out, labels, expect)
    return {"out": str(out), "sizes": np.bincount(labels + 1, minlength=item["k"] + 1).tolist(), "sums": sums}


def count_map(item: dict) -> dict:
    cfg = from_dict(KeywordsConfig, item["cfg"])
    _, texts = read_texts(item["doc"])
    return count_shard(texts, np.load(item["labels"]), item["k"], cfg, load_stop_words(cfg.stop_words))


def attributes_map(item: dict) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(item["out"])
    ids, _ = read_texts(item["doc"])
    if done.valid(out, len(ids), {"topics": item["topics_sha"]}):
        return {"out": str(out), "skipped": True}
    labels = np.load(item["labels"])
    table = item["cluster_topics"]
    topic_ids = [table[c] if c >= 0 else [] for c in labels.tolist()]
    tbl = pa.table({"id": pa.array(ids, pa.string()), "cluster": pa.array(labels, pa.int32()),
                    "topic_ids": pa.array(topic_ids, pa.list_(pa.int32()))})
    with atomic_path(out) as tmp:
        pq.write_table(tbl, tmp)
    done.mark(out, {"rows": len(ids), "topics": item["topics_sha"]})
    return {"out": str(out), "skipped": False}
