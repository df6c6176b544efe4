"""The annotation stage: embed -> cluster -> keywords -> label, from a corpus_dir to an
annotation dir (layout in docs/ARCHITECTURE.md).

Embedding, assignment, keyword counting and attribute writing are per-shard maps over plain
items (annotate/maps.py), run by an engine: in-process (default, annotate/local_engine.py) or a
streaming Ray Data pipeline (``engine=ray``, annotate/ray_engine.py) whose driver holds only the
k-means sample and per-cluster aggregates. Every shard output carries a done marker
(``toremi.done``) with its row count, sha256 and the fingerprint of its inputs, so a rerun skips
what is complete, recomputes what is corrupt or stale, and a changed upstream step invalidates
the rest.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Literal

import numpy as np

from toremi import done, layout
from toremi.annotate.cluster import ClusterConfig, default_k, fit_kmeans, transform
from toremi.annotate.embed import EmbedConfig, save_npy
from toremi.annotate.keywords import KeywordsConfig
from toremi.annotate.label import SimilarityConfig, SimilarityLabeller, TopicSet
from toremi.annotate.llm import LLMConfig, LLMLabeller
from toremi.annotate.local_engine import LocalEngine
from toremi.annotate.maps import get_embedder
from toremi.config import to_dict
from toremi.io import atomic_write_json, read_json, sha256_json
from toremi.ray_cluster import EngineConfig, as_engine

STEPS = ("embed", "cluster", "keywords", "label")


@dataclasses.dataclass
class LabelConfig:
    labeller: Literal["similarity", "llm"] = "similarity"
    topics: str = ""                 # topic file ("" = the 41 Wikipedia categories)
    similarity: SimilarityConfig = dataclasses.field(default_factory=SimilarityConfig)
    llm: LLMConfig = dataclasses.field(default_factory=LLMConfig)


@dataclasses.dataclass
class AnnotateConfig:
    embed: EmbedConfig = dataclasses.field(default_factory=EmbedConfig)
    cluster: ClusterConfig = dataclasses.field(default_factory=ClusterConfig)
    keywords: KeywordsConfig = dataclasses.field(default_factory=KeywordsConfig)
    label: LabelConfig = dataclasses.field(default_factory=LabelConfig)
    engine: EngineConfig | str = "local"  # engine=ray, or engine.name=ray engine.address=auto ...
    progress: bool = True

    def __post_init__(self):
        self.engine = as_engine(self.engine)


def make_engine(cfg: AnnotateConfig):
    if cfg.engine.name == "ray":
        from toremi.annotate.ray_engine import RayEngine

        return RayEngine(cfg.engine)
    return LocalEngine(cfg.progress)


# ---------------------------------------------------------------- the stage
class Annotator:
    def __init__(self, corpus_dir: str | Path, out_dir: str | Path | None = None,
                 cfg: AnnotateConfig | None = None, split: str = "documents"):
        self.corpus = Path(corpus_dir)
        self.out = layout.annotation_dir(self.corpus, out_dir)
        self.cfg = cfg or AnnotateConfig()
        self.shards = sorted(self.corpus.glob(f"{split}/*/shard-*.parquet"))
        if not self.shards:
            raise FileNotFoundError(f"no document shards under {self.corpus}/{split}/<domain>/"
                                    "shard-*.parquet; build the corpus first (toremi corpus build)")
        self.engine = make_engine(self.cfg)

    def _p(self, kind: str, shard: Path, ext: str) -> Path:
        return layout.annotation_shard_file(self.out, kind, shard, ext)

    def _log(self, step: str, info: dict) -> None:
        path = layout.annotation_manifest(self.out)
        man = read_json(path) if path.exists() else {"format": "toremi.annotations/1",
                                                      "corpus": str(self.corpus), "steps": {}}
        man["config"] = to_dict(self.cfg)
        man["versions"] = _versions()
        man["steps"][step] = info
        atomic_write_json(path, man)

    def embed(self) -> dict:
        t0 = time.perf_counter()
        res = self.engine.embed(self.shards, [self._p("embeddings", s, ".npy") for s in self.shards],
                                self.cfg.embed, layout.embeddings_dir(self.out) / ".parts")
        info = {"shards": len(res), "rows": sum(r["rows"] for r in res),
                "recomputed": sum(not r["skipped"] for r in res),
                "empty_docs": sum(r.get("empty", 0) for r in res), "seconds": round(time.perf_counter() - t0, 2)}
        self._log("embed", info)
        return info

    def _emb_paths(self) -> list[Path]:
        paths = [self._p("embeddings", s, ".npy") for s in self.shards]
        missing = [str(p) for p in paths if not done.is_done(p)]
        if missing:
            raise FileNotFoundError(f"embeddings missing for {missing[:3]}...; run `toremi annotate embed` first")
        return paths

    def cluster(self) -> dict:
        t0, cfg = time.perf_counter(), self.cfg.cluster
        emb_paths = self._emb_paths()
        emb_shas = [done.read(p)["sha256"] for p in emb_paths]
        cpath = layout.clusters_file(self.out, "centroids.npy")
        fit_key = {"fit": sha256_json([to_dict(cfg), emb_shas])[:16]}
        fit_info = {}
        if not (cpath.exists() and done.valid(cpath, len(np.load(cpath)), fit_key)):
            sample, n_nonempty = self.engine.sample(emb_paths, cfg.sample_size, cfg.seed)
            k = cfg.k or default_k(n_nonempty)
            fit_info["sample_coverage"] = round(len(sample) / n_nonempty, 6)
            center = sample.mean(0) if cfg.center else np.zeros(sample.shape[1], np.float32)
            centroids, info = fit_kmeans(transform(sample, center), k, cfg)
            fit_info = {**info, "sample_coverage": fit_info["sample_coverage"], "nonempty_docs": n_nonempty}
            del sample
            save_npy(cpath.with_name("center.npy"), center.astype(np.float32)[None], fit_key)
            save_npy(cpath, centroids, fit_key)
        centroids_sha = done.file_sha256(cpath)
        k = len(np.load(cpath))
        items = [{"emb": str(e), "emb_sha": sh, "out": str(self._p("clusters", s, ".npy")),
                  "centroids": str(cpath), "centroids_sha": centroids_sha, "k": k,
                  "center": str(cpath.with_name("center.npy")) if cfg.center else "",
                  "chunk_rows": cfg.chunk_rows, "spherical": cfg.spherical and cfg.backend == "faiss"}
                 for s, e, sh in zip(self.shards, emb_paths, emb_shas)]
        sizes, sums = self.engine.assign(items)  # per-cluster aggregates only
        means = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        save_npy(cpath.with_name("member_means.npy"), means.astype(np.float32), {"centroids": centroids_sha})
        stats = stats_from_sizes(np.asarray(sizes), k)
        atomic_write_json(layout.clusters_file(self.out, "stats.json"), stats)
        info = {**fit_info, **{x: stats[x] for x in ("k", "empty_clusters", "singleton_clusters",
                                                    "unassigned_docs", "largest", "median_size")},
                "seconds": round(time.perf_counter() - t0, 2)}
        self._log("cluster", info)
        return info

    def _label_paths(self) -> list[Path]:
        paths = [self._p("clusters", s, ".npy") for s in self.shards]
        if not all(done.is_done(p) for p in paths):
            raise FileNotFoundError("cluster assignments missing; run `toremi annotate cluster` first")
        return paths

    def keywords(self) -> dict:
        t0 = time.perf_counter()
        lab_paths = self._label_paths()
        k = len(np.load(layout.clusters_file(self.out, "centroids.npy")))
        kpath = layout.keywords_json(self.out)
        key = sha256_json([to_dict(self.cfg.keywords), [done.read(p)["sha256"] for p in lab_paths]])[:16]
        if done.valid(kpath, expect={"inputs": key}):
            return {"skipped": True}
        items = [{"doc": str(s), "labels": str(p), "k": k, "cfg": to_dict(self.cfg.keywords)}
                 for s, p in zip(self.shards, lab_paths)]
        top, vocabulary = self.engine.keywords(items, k, self.cfg.keywords)
        atomic_write_json(kpath, {str(c): v for c, v in top.items()})
        done.mark(kpath, {"inputs": key, "k": k, "vocabulary": vocabulary})
        info = {"k": k, "vocabulary": vocabulary, "clusters_without_keywords": sum(not v for v in top.values()),
                "seconds": round(time.perf_counter() - t0, 2)}
        self._log("keywords", info)
        return info

    def make_labeller(self, topics: TopicSet):
        center = None
        if self.cfg.label.similarity.corpus_center and self.cfg.cluster.center:
            center = np.load(layout.clusters_file(self.out, "center.npy"))
        sim = SimilarityLabeller(get_embedder(self.cfg.embed), topics, self.cfg.label.similarity, center)
        if self.cfg.label.labeller == "llm":
            return LLMLabeller(topics, self.cfg.label.llm, sim, layout.llm_cache(self.out))
        return sim

    def label(self) -> dict:
        t0 = time.perf_counter()
        lab_paths = self._label_paths()
        if not layout.keywords_json(self.out).exists():
            raise FileNotFoundError("keywords.json missing; run `toremi annotate keywords` first")
        centroids = np.load(layout.clusters_file(self.out, "member_means.npy"))  # original embedding space
        kw = {int(c): v for c, v in read_json(layout.keywords_json(self.out)).items()}
        sizes = read_json(layout.clusters_file(self.out, "stats.json"))["sizes"]
        topics = TopicSet.load(self.cfg.label.topics or None)
        clusters = {c: {"keywords": kw.get(c, []), "centroid": centroids[c], "size": int(sizes[c])}
                    for c in range(len(centroids))}
        labeller = self.make_labeller(topics)
        result = labeller.label(clusters)
        missing = sorted(set(clusters) - set(result))
        if missing:  # the interface promises every cluster; a bug here must not pass silently
            raise RuntimeError(f"labeller {labeller.name} left clusters unlabelled: {missing[:10]}")
        summary = np.zeros(len(topics.names), np.int64)
        for c, rec in result.items():
            summary[rec["topic_ids"]] += sizes[c]
        doc = {"topic_names": topics.names, "topic_descriptions": topics.descriptions,
               "labeller": labeller.name,
               "clusters": {str(c): result[c] for c in sorted(result)},
               "summary": {n: int(v) for n, v in zip(topics.names, summary)}}
        fallbacks = sum("fallback_reason" in r["evidence"] for r in result.values())
        if labeller.name.startswith("llm"):
            doc["llm"] = {"requests": labeller.requests, "cache_hits": labeller.cache.hits, "fallbacks": fallbacks}
        atomic_write_json(layout.topics_json(self.out), doc)
        topics_sha = done.file_sha256(layout.topics_json(self.out))
        table = [result[c]["topic_ids"] for c in range(len(centroids))]
        items = [{"doc": str(s), "labels": str(p), "out": str(self._p("attributes/topics", s, ".parquet")),
                  "topics_sha": topics_sha} for s, p in zip(self.shards, lab_paths)]
        self.engine.attributes(items, table, layout.topics_json(self.out))
        info = {"labeller": labeller.name, "fallbacks": fallbacks, "seconds": round(time.perf_counter() - t0, 2),
                "labels_per_cluster": float(np.mean([len(r["topic_ids"]) for r in result.values()]))}
        self._log("label", info)
        return info

    def run(self, steps=STEPS) -> dict:
        return {s: getattr(self, s)() for s in steps}


def stats_from_sizes(sizes: np.ndarray, k: int) -> dict:
    """Cluster sizes and counts (empty, singleton, unassigned, largest, median) from the bincount of
    ``labels + 1`` (entry 0 = unassigned documents), so the driver never holds one label per
    document."""
    c = sizes[1:]
    return {"k": k, "sizes": c.tolist(), "empty_clusters": int((c == 0).sum()),
            "singleton_clusters": int((c == 1).sum()), "unassigned_docs": int(sizes[0]),
            "largest": int(c.max(initial=0)), "median_size": float(np.median(c)) if k else 0.0}


def summary_table(out_dir: str | Path) -> str:
    """Documents per topic from topics.json (a document counts once per topic it carries)."""
    doc = read_json(layout.topics_json(out_dir))
    rows = sorted(doc["summary"].items(), key=lambda kv: -kv[1])
    total_clusters = len(doc["clusters"])
    lines = [f"labeller: {doc['labeller']}  clusters: {total_clusters}", f"{'topic':<22}{'documents':>10}"]
    lines += [f"{n:<22}{v:>10}" for n, v in rows if v]
    return "\n".join(lines)


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("toremi", "numpy", "faiss-cpu", "scikit-learn", "wordllama", "sentence-transformers", "ray"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
