"""``toremi prepare engine.name=ray``: the same token shards, indexes and manifest as the
in-process path (prepare.py), with the per-shard work on Ray Data and a driver whose memory does
not grow with the corpus.

- Tokenization, windowing and the per-shard index run in a streaming map, one task per document
  shard, through prepare's own per-shard function; the task writes the shard's ``.meta.json`` and
  done marker itself, so a rerun after the driver dies resumes from the markers.
- Only small per-shard summaries (counts, no document ids) return to the driver.
- Which shards are reused, their meta and markers, the merged split indexes, the packed index
  (``packed-train/``) and the manifest come from ``prepare_merge``, shared with the in-process
  engine: the same input fingerprints decide reuse (integrity.py), and every merge is streamed, so
  the driver holds one shard's index at a time; ``documents.parquet`` is written row group by row
  group.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from toremi import integrity, layout
from toremi import prepare as P
from toremi import prepare_merge as merge
from toremi.config import from_dict, save_config, to_dict
from toremi.io import atomic_path, read_json, sha256_file
from toremi.ray_cluster import connect, map_items, stream_small

_TOK: dict = {}


def _tokenizer(out: Path, spec: str):
    """The driver's tokenizer, from the ``tokenizer.json`` it saved (loaded once per worker)."""
    key = (str(out), spec)
    if key not in _TOK:
        from toremi.tokenizer import from_file

        _TOK[key] = from_file(layout.tokens_tokenizer(out), name=spec.replace(":", ""))
    return _TOK[key]


def shard_map(item: dict) -> dict:
    """One document shard -> token shard + index (+ packed index) + meta + marker (prepare's own
    per-shard function and ``prepare_merge.record_shard``)."""
    cfg = from_dict(P.PrepareConfig, item["cfg"])
    tok = _tokenizer(cfg.out, cfg.tokenizer)
    topics = P.TopicLookup(cfg, item["domains"])
    if cfg.topics_from == "label":  # the label vocabulary fixed by the driver
        topics.names = list(item["label_names"])
        topics._labels = {n: i for i, n in enumerate(topics.names)}
    shard, out_bin = Path(item["shard"]), Path(item["out_bin"])
    encoded = P._read_and_encode(shard, tok, cfg.batch_docs, item["split"], cfg.dev_fraction, cfg.dev_seed)
    info = P._prepare_shard(encoded, shard, item["split"], tok, cfg, topics,
                            {d: i for i, d in enumerate(item["domains"])}, out_bin, tok.token_byte_lengths())
    merge.record_shard(cfg, info, item["split"], shard, out_bin, item["inputs"], P.INDEX_VERSION)
    info.pop("doc_ids")  # they stay in the meta file
    return info


def sha_map(item: dict) -> str:
    return sha256_file(Path(item["path"]))


def prepare_ray(cfg: P.PrepareConfig) -> Path:
    t0 = time.time()
    ray = connect(cfg.engine)
    cfg.out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, layout.tokens_config(cfg.out))
    tok = P._resolve_tokenizer(cfg)
    train_shards = P.document_shards(cfg.corpus, "train")
    domains = P.corpus_domains(cfg.corpus, train_shards)
    topics = P.TopicLookup(cfg, domains)
    if topics.warning:
        print(f"toremi prepare: warning: {topics.warning}")
    if cfg.topics_from == "label":  # one column per shard, read in turn: bounded
        for shard in train_shards:
            topics.for_shard("documents", shard, pq.read_table(shard, columns=["label", "domain"]))
    jobs = P.split_jobs(cfg, train_shards)
    out_bins = [layout.tokens_shard(cfg.out, split, k) for k, (split, _, _) in enumerate(jobs)]
    inputs = integrity.token_shard_inputs(cfg, tok, jobs, topics, domains, P.INDEX_VERSION)
    finished = merge.plan(cfg, jobs, out_bins, inputs)
    stats: list[dict | None] = [None] * len(jobs)
    todo = []
    for k, (split, split_dir, shard) in enumerate(jobs):
        if k in finished:
            stats[k] = {key: v for key, v in finished[k].items() if key != "doc_ids"}
        else:
            todo.append({"cfg": to_dict(cfg), "shard": str(shard), "out_bin": str(out_bins[k]), "split": split,
                         "split_dir": split_dir, "inputs": inputs[k], "domains": domains,
                         "label_names": topics.names if cfg.topics_from == "label" else []})
    where = [k for k in range(len(jobs)) if stats[k] is None]
    for i, info in stream_small(map_items(ray, shard_map, todo, "prepare")):
        stats[where[i]] = info
    shas = [None] * len(jobs)
    for i, sha in stream_small(map_items(ray, sha_map, [{"path": str(p)} for p in out_bins], "sha")):
        shas[i] = sha
    sequences = {split: merge.merge_split_streamed(cfg, stats, split) for split in ("train", "dev")}
    with atomic_path(layout.tokens_documents(cfg.out)) as tmp:
        with pq.ParquetWriter(tmp, pa.schema([("id", pa.string())])) as w:
            for s in stats:
                ids = read_json(cfg.out / Path(s["path"]).with_suffix(".meta.json"))["doc_ids"]
                w.write_table(pa.table({"id": pa.array(ids, pa.string())}))
    merge.write_manifest(cfg, tok, stats, shas, domains, topics, sequences, time.time() - t0)
    return cfg.out
