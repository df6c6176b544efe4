"""The in-process annotation engine: the per-shard maps (``annotate/maps.py``) in a loop.

The Ray engine (``annotate/ray_engine.py``) has the same methods and runs the same maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toremi.annotate.cluster import sample_rows
from toremi.annotate.embed import EmbedConfig
from toremi.annotate.keywords import KeywordsConfig, ctfidf_top, merge_counts
from toremi.annotate.maps import assign_map, attributes_map, count_map, embed_map
from toremi.config import to_dict


class LocalEngine:
    """In-process engine. The Ray engine (annotate/ray_engine.py) has the same methods."""
    name = "local"

    def __init__(self, progress: bool = True):
        self.progress = progress

    def map(self, fn, items: list[dict], desc: str) -> list:
        from toremi.progress import bar

        return [fn(it) for it in bar(items, desc=desc, unit="shard", disable=not self.progress)]

    def embed(self, shards: list[Path], outs: list[Path], cfg: EmbedConfig, parts_root: Path) -> list[dict]:
        items = [{"doc": str(s), "out": str(o), "cfg": to_dict(cfg)} for s, o in zip(shards, outs)]
        return self.map(embed_map, items, "embed")

    def sample(self, emb_paths: list[Path], n: int, seed: int) -> tuple[np.ndarray, int]:
        arrays = [np.load(p, mmap_mode="r") for p in emb_paths]
        return sample_rows(arrays, n, seed), sum(int(np.any(a != 0, axis=1).sum()) for a in arrays)

    def assign(self, items: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        res = self.map(assign_map, items, "assign")
        return np.sum([r["sizes"] for r in res], axis=0), np.sum([r["sums"] for r in res], axis=0)

    def keywords(self, items: list[dict], k: int, cfg: KeywordsConfig) -> tuple[dict, int]:
        terms, counts, df = merge_counts(self.map(count_map, items, "keywords"), k)
        return ctfidf_top(terms, counts, df, cfg), len(terms)

    def attributes(self, items: list[dict], table: list, topics_json: Path) -> None:
        self.map(attributes_map, [{**it, "cluster_topics": table} for it in items], "attributes")

