"""Ray Data engine for annotation: a streaming pipeline whose driver memory does not grow with
the corpus (``engine.name=ray``; ``pip install 'toremi[ray]'``).

- embed: ``ray.data.read_parquet`` of the shards still to do -> ``map_batches`` through a pool of
  embedding actors (each loads its model once; ``num_gpus=1`` each where GPUs exist, WordLlama on
  CPUs). Each batch is written as part files keyed by its document ids; a per-shard map then
  assembles the shard's ``.npy`` in row order and writes its done marker.
- cluster: per-shard non-empty counts -> the same uniform sample as the in-process engine,
  gathered shard by shard -> k-means fit on the driver (sample-sized) -> assignment as a second
  streaming map; per-cluster sizes and member sums are combined by a tree of tasks.
- keywords: per-shard partial counts combined by a tree of tasks; c-TF-IDF runs in the last one,
  so only the keywords reach the driver.
- label: per cluster on the driver; the attribute files are a streaming map.
The per-shard work is the in-process engine's (annotate/maps.py), so outputs and markers are its
outputs and markers (tests/annotate/test_ray_engine.py).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from toremi import done
from toremi.annotate.embed import EmbedConfig, embed_fingerprint, embed_texts, make_embedder, save_npy
from toremi.annotate.keywords import KeywordsConfig, ctfidf_top, merge_counts
from toremi.annotate.maps import assign_map, attributes_map, count_map
from toremi.config import from_dict, to_dict
from toremi.io import read_json
from toremi.ray_cluster import EngineConfig, cluster_cpus, cluster_gpus, connect, fault_point, map_items, \
    stream_small, tree_reduce


# ---------------------------------------------------------------- embed
def _shard_key(path: str) -> str:
    return hashlib.sha1(os.path.abspath(path.removeprefix("file://")).encode()).hexdigest()[:16]


class EmbedActor:
    """One model per actor, loaded once; a batch -> one part file per source shard in it."""

    def __init__(self, cfg: dict, parts: str):
        self.cfg = from_dict(EmbedConfig, cfg)
        self.embedder = make_embedder(self.cfg)
        self.parts = Path(parts)

    def __call__(self, batch: dict) -> dict:
        paths = np.asarray(batch["path"]).astype(str)
        ids = np.asarray(batch["id"]).astype(str)
        texts = [t if isinstance(t, str) else "" for t in batch["text"]]
        emb = embed_texts(self.embedder, texts, self.cfg).astype(np.float16)
        out_p, out_n = [], []
        for p in np.unique(paths):
            sel = np.flatnonzero(paths == p)
            fault_point(f"embed-{Path(p).parent.name}-{Path(p).stem}")
            name = hashlib.sha1("\n".join(ids[sel]).encode()).hexdigest()[:20]
            d = self.parts / _shard_key(p)
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f".{name}.{os.getpid()}.tmp.npz"
            np.savez(tmp, ids=ids[sel], emb=emb[sel])
            os.replace(tmp, d / f"{name}.npz")  # a retried batch rewrites the same name
            out_p.append(p), out_n.append(len(sel))
        return {"path": np.array(out_p), "rows": np.array(out_n, np.int64), "model": [self.embedder.name] * len(out_p)}


def assemble_map(item: dict) -> dict:
    """Parts of one shard -> its ``.npy`` in document order (+ marker); parts are then removed."""
    import pyarrow.parquet as pq

    ids = np.asarray(pq.read_table(item["doc"], columns=["id"]).column("id").to_pylist(), dtype=str)
    pos = {d: i for i, d in enumerate(ids)}
    if len(pos) != len(ids):
        raise ValueError(f"{item['doc']}: duplicate document ids; engine=ray needs ids unique per shard")
    parts = sorted(Path(item["parts"]).glob("*.npz"))
    out, seen = None, np.zeros(len(ids), bool)
    for p in parts:
        with np.load(p) as z:
            rows = np.array([pos[d] for d in z["ids"].astype(str)], np.int64)
            if out is None:
                out = np.zeros((len(ids), z["emb"].shape[1]), np.float16)
            out[rows], seen[rows] = z["emb"], True
    if not seen.all():
        raise RuntimeError(f"{item['doc']}: embedding parts cover {int(seen.sum())} of {len(ids)} rows")
    save_npy(Path(item["out"]), out, {"model": item["model"], "config": item["config"]})
    for p in parts:
        p.unlink()
    Path(item["parts"]).rmdir()
    return {"rows": len(ids), "empty": int((np.abs(out).sum(1) == 0).sum())}


def embed_done_map(item: dict) -> dict:
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(item["doc"]).metadata.num_rows
    return {"rows": rows, "done": done.valid(Path(item["out"]), rows, {"config": item["config"]})}


# ---------------------------------------------------------------- cluster
def nonempty_map(item: dict) -> int:
    emb = np.load(item["emb"], mmap_mode="r")
    return int(np.any(emb != 0, axis=1).sum())


def gather_map(item: dict) -> np.ndarray:
    emb = np.load(item["emb"], mmap_mode="r")
    rows = np.flatnonzero(np.any(emb != 0, axis=1))
    return np.asarray(emb[rows[np.asarray(item["sel"], np.int64)]], dtype=np.float32)


def _sum_assign(parts: list) -> dict | None:
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    return {"sizes": np.sum([p["sizes"] for p in parts], axis=0), "sums": np.sum([p["sums"] for p in parts], axis=0)}


def _assign_part(item: dict) -> dict:
    r = assign_map(item)
    return {"sizes": np.asarray(r["sizes"], np.int64), "sums": r["sums"]}


# ---------------------------------------------------------------- keywords
def _count_part(item: dict) -> dict:
    return count_map(item)


def _merge_parts(k: int):
    def combine(parts: list) -> dict:
        terms, counts, df = merge_counts([p for p in parts if p is not None], k)
        return {"terms": terms, "counts": counts, "df": df}
    return combine


def _top_keywords(cfg: dict):
    def finish(total: dict) -> tuple[dict, int]:
        return ctfidf_top(total["terms"], total["counts"], total["df"], from_dict(KeywordsConfig, cfg)), \
            len(total["terms"])
    return finish


_TABLES: dict = {}


def _attributes_part(item: dict) -> dict:
    if item["topics_sha"] not in _TABLES:  # the cluster -> topics table, read once per worker
        clusters = read_json(Path(item["topics_json"]))["clusters"]
        _TABLES[item["topics_sha"]] = [clusters[str(c)]["topic_ids"] for c in range(len(clusters))]
    return attributes_map({**item, "cluster_topics": _TABLES[item["topics_sha"]]})


# ---------------------------------------------------------------- the engine
class RayEngine:
    name = "ray"

    def __init__(self, cfg: EngineConfig | None = None, progress: bool = False):
        self.cfg = cfg or EngineConfig(name="ray")
        self.ray = connect(self.cfg)

    def map(self, fn, items: list[dict], desc: str) -> list:
        """Small per-shard results, in item order (the generic path; big results use a reduce)."""
        out: list = [None] * len(items)
        for i, r in stream_small(map_items(self.ray, fn, items, desc)):
            out[i] = r
        return out

    def embed(self, shards: list[Path], outs: list[Path], cfg: EmbedConfig, parts_root: Path) -> list[dict]:
        fp = embed_fingerprint(cfg)
        items = [{"doc": str(s), "out": str(o), "config": fp} for s, o in zip(shards, outs)]
        done = self.map(embed_done_map, items, "embed-check")
        todo = [it for it, d in zip(items, done) if not d["done"]]
        res = [{"rows": d["rows"], "skipped": True} for d in done]
        if not todo:
            return res
        parts = parts_root / fp
        gpus = cluster_gpus(self.ray)
        use_gpu = gpus > 0 and cfg.device != "cpu"
        n = self.cfg.concurrency or (gpus if use_gpu else max(1, cluster_cpus(self.ray) - 1))
        ds = self.ray.data.read_parquet([it["doc"] for it in todo], include_paths=True) \
            .select_columns(["path", "id", "text"])
        ds = ds.map_batches(EmbedActor, fn_constructor_kwargs={"cfg": to_dict(cfg), "parts": str(parts)},
                            batch_size=self.cfg.batch_rows, batch_format="numpy", num_cpus=1,
                            compute=self.ray.data.ActorPoolStrategy(size=n), num_gpus=1 if use_gpu else 0)
        model, rows = "", 0
        for b in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
            model, rows = str(b["model"][0]) if len(b["model"]) else model, rows + int(b["rows"].sum())
        asm = [{"doc": it["doc"], "out": it["out"], "parts": str(parts / _shard_key(it["doc"])),
                "model": model, "config": fp} for it in todo]
        got = self.map(assemble_map, asm, "assemble")
        for d in (parts, parts_root):  # empty now; a failed run leaves its parts for the rerun
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        by_doc = {it["doc"]: r for it, r in zip(todo, got)}
        for i, it in enumerate(items):
            if it["doc"] in by_doc:
                res[i] = {**by_doc[it["doc"]], "skipped": False}
        return res

    def sample(self, emb_paths: list[Path], n: int, seed: int) -> tuple[np.ndarray, int]:
        """The in-process engine's sample (same RNG calls), gathered by per-shard tasks."""
        counts = np.array(self.map(nonempty_map, [{"emb": str(p)} for p in emb_paths], "nonempty"), np.int64)
        total = int(counts.sum())
        if total == 0:
            raise ValueError("cluster: every document embedding is empty (no text in the corpus?)")
        pick = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
        starts = np.concatenate([[0], np.cumsum(counts)])
        items = []
        for p, a, b in zip(emb_paths, starts[:-1], starts[1:]):
            sel = pick[np.searchsorted(pick, a):np.searchsorted(pick, b)] - a
            if len(sel):
                items.append({"emb": str(p), "sel": sel.tolist()})
        return np.concatenate(self.map(gather_map, items, "sample")), total

    def assign(self, items: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        total = tree_reduce(self.ray, map_items(self.ray, _assign_part, items, "assign"), _sum_assign, lambda t: t)
        return total["sizes"], total["sums"]

    def keywords(self, items: list[dict], k: int, cfg: KeywordsConfig) -> tuple[dict, int]:
        return tree_reduce(self.ray, map_items(self.ray, _count_part, items, "keywords"), _merge_parts(k),
                           _top_keywords(to_dict(cfg)))

    def attributes(self, items: list[dict], table: list, topics_json: Path) -> None:
        items = [{**it, "topics_json": str(topics_json)} for it in items]  # the table is read by workers
        for _ in stream_small(map_items(self.ray, _attributes_part, items, "attributes")):
            pass

    def shutdown(self) -> None:
        self.ray.shutdown()

