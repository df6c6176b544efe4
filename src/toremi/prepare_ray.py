"""``toremi prepare engine.name=ray``: the same token shards, indexes and manifest as the
in-process path (prepare.py), with the per-shard work on Ray Data and a driver whose memory does
not grow with the corpus.

- Tokenization, windowing and the per-shard index run in a streaming map, one task per document
  shard, through prepare's own per-shard function; the task writes the shard's ``.meta.json`` and
  done marker itself, so a rerun after the driver dies resumes from the markers.
- Only small per-shard summaries (counts, no document ids) return to the driver.
- The split indexes are merged by streaming: each ``index-<split>.npz`` member is written part by
  part from the per-shard indexes, and ``documents.parquet`` row group by row group, so the driver
  holds one shard's index at a time (the held-out split's per-window domain ids excepted: the
  per-domain cap draws over them, 2 bytes a window).
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from toremi import __version__
from toremi import prepare as P
from toremi.config import from_dict, save_config, to_dict
from toremi.io import atomic_path, atomic_write_json, is_done, mark_done, read_json, sha256_file, sha256_json
from toremi.ray_cluster import connect, map_items, stream_small

KEYS = ("shard", "offset", "length", "bytes", "doc", "domain", "topics")
_TOK: dict = {}


def _tokenizer(out: Path, spec: str):
    """The driver's tokenizer, from the ``tokenizer.json`` it saved (loaded once per worker)."""
    key = (str(out), spec)
    if key not in _TOK:
        from toremi.tokenizer import from_file

        _TOK[key] = from_file(out / "tokenizer.json", name=spec.replace(":", ""))
    return _TOK[key]


def shard_map(item: dict) -> dict:
    """One document shard -> token shard + index + meta + marker (prepare's per-shard function)."""
    cfg = from_dict(P.PrepareConfig, item["cfg"])
    tok = _tokenizer(cfg.out, cfg.tokenizer)
    topics = P.TopicLookup(cfg, item["domains"])
    if cfg.topics_from == "label":  # the label vocabulary fixed by the driver
        topics.names = list(item["label_names"])
        topics._labels = {n: i for i, n in enumerate(topics.names)}
    shard, out_bin = Path(item["shard"]), Path(item["out_bin"])
    encoded = P._read_and_encode(shard, tok, cfg.batch_docs)
    info = P._prepare_shard(encoded, shard, item["split_dir"], tok, cfg, topics,
                            {d: i for i, d in enumerate(item["domains"])}, out_bin, tok.token_byte_lengths())
    info.update(split=item["split"], source=item["source"], index_version=P.INDEX_VERSION,
                domain=shard.parent.name, path=str(out_bin.relative_to(cfg.out)))
    atomic_write_json(out_bin.with_suffix(".meta.json"), info)  # doc ids stay in the meta file
    mark_done(out_bin, {"tokens": info["tokens"]})
    info.pop("doc_ids")
    return info


def sha_map(item: dict) -> str:
    return sha256_file(Path(item["path"]))


def prepare_ray(cfg: P.PrepareConfig) -> Path:
    t0 = time.time()
    ray = connect(cfg.engine)
    cfg.out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.out / "prepare.yaml")
    tok = P._resolve_tokenizer(cfg)
    train_shards = P.document_shards(cfg.corpus, "train")
    eval_shards = P.document_shards(cfg.corpus, "eval")
    domains = sorted({p.parent.name for p in train_shards + eval_shards})
    topics = P.TopicLookup(cfg, domains)
    if topics.warning:
        print(f"toremi prepare: warning: {topics.warning}")
    if cfg.topics_from == "label":  # one column per shard, read in turn: bounded
        for shard in train_shards:
            topics.for_shard("documents", shard, pq.read_table(shard, columns=["label", "domain"]))
    jobs = [("train", "documents", s) for s in train_shards] + [("val", "eval", s) for s in eval_shards]
    out_bins = [cfg.out / "shards" / f"{split}-{k:05d}.bin" for k, (split, _, _) in enumerate(jobs)]
    stats: list[dict | None] = [None] * len(jobs)
    todo = []
    for k, (split, split_dir, shard) in enumerate(jobs):
        meta_path = out_bins[k].with_suffix(".meta.json")
        source = str(shard.relative_to(cfg.corpus))
        meta = read_json(meta_path) if is_done(out_bins[k]) and meta_path.exists() else {}
        if meta.get("source") == source and meta.get("index_version") == P.INDEX_VERSION:
            meta.pop("doc_ids", None)
            stats[k] = meta
        else:
            todo.append({"cfg": to_dict(cfg), "shard": str(shard), "out_bin": str(out_bins[k]), "split": split,
                         "split_dir": split_dir, "source": source, "domains": domains,
                         "label_names": topics.names if cfg.topics_from == "label" else []})
    where = [k for k in range(len(jobs)) if stats[k] is None]
    for i, info in stream_small(map_items(ray, shard_map, todo, "prepare")):
        stats[where[i]] = info
    shas = [None] * len(jobs)
    for i, sha in stream_small(map_items(ray, sha_map, [{"path": str(p)} for p in out_bins], "sha")):
        shas[i] = sha
    return finalize_streamed(cfg, tok, stats, shas, domains, topics, time.time() - t0)


# ---------------------------------------------------------------- streamed merge
def _write_member(zf: zipfile.ZipFile, name: str, dtype, shape: tuple, chunks) -> None:
    """One ``.npy`` member of an ``.npz`` written chunk by chunk (what ``np.savez`` writes at once)."""
    with zf.open(name + ".npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                 "fortran_order": False, "shape": shape})
        for c in chunks:
            f.write(np.ascontiguousarray(c, dtype=dtype).tobytes())


def _part(cfg, shard_no: int, info: dict, doc_base: int, key: str) -> np.ndarray:
    with np.load(cfg.out / Path(info["path"]).with_suffix(".idx.npz")) as z:
        if key == "shard":
            return np.full(len(z["offset"]), shard_no, dtype=np.int32)
        if key == "doc":
            return z["doc_row"] + doc_base
        return z[key]


def _merge_split(cfg, entries: list[tuple[int, dict, int]], keep: list | None, path: Path) -> None:
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key in KEYS:
            if not entries:
                _write_member(zf, key, np.int32, (0, cfg.max_topics) if key == "topics" else (0,), [])
                continue
            first = _part(cfg, *entries[0], key)
            n = sum(int(e[1]["sequences"]) for e in entries) if keep is None else sum(len(k) for k in keep)
            chunks = (_part(cfg, *e, key) if keep is None else _part(cfg, *e, key)[keep[j]]
                      for j, e in enumerate(entries))
            _write_member(zf, key, first.dtype, (n, *first.shape[1:]), chunks)


def finalize_streamed(cfg, tok, stats, shas, domains, topics, seconds) -> Path:
    """prepare._finalize without the corpus in memory: same files, same contents."""
    doc_base = np.concatenate([[0], np.cumsum([s["documents"] for s in stats])]).astype(int)
    parts = {"train": [], "val": []}
    for shard_no, info in enumerate(stats):
        parts[info["split"]].append((shard_no, info, int(doc_base[shard_no])))
    sequences = {}
    for split, entries in parts.items():
        keep = None
        if split == "val" and entries:  # the per-domain cap, drawn exactly as prepare._finalize does
            domain = np.concatenate([_part(cfg, *e, "domain") for e in entries])
            if len(domain):
                rng = np.random.default_rng(0)
                sel = np.sort(np.concatenate([rng.permutation(np.nonzero(domain == d)[0])[:cfg.val_sequences_per_domain]
                                              for d in np.unique(domain)]))
                bounds = np.cumsum([0] + [int(e[1]["sequences"]) for e in entries])
                keep = [sel[(sel >= a) & (sel < b)] - a for a, b in zip(bounds[:-1], bounds[1:])]
        _merge_split(cfg, entries, keep, cfg.out / f"index-{split}.npz")
        sequences[split] = int(sum(e[1]["sequences"] for e in entries))
    with atomic_path(cfg.out / "documents.parquet") as tmp:
        with pq.ParquetWriter(tmp, pa.schema([("id", pa.string())])) as w:
            for s in stats:
                ids = read_json(cfg.out / Path(s["path"]).with_suffix(".meta.json"))["doc_ids"]
                w.write_table(pa.table({"id": pa.array(ids, pa.string())}))
    shards = [{"path": s["path"], "sha256": sha, "split": s["split"], "domain": s["domain"], "tokens": s["tokens"],
               "documents": s["documents"], "sequences": s["sequences"], "bytes": s["bytes"]}
              for s, sha in zip(stats, shas)]
    per_domain: dict[str, dict] = {}
    for s in stats:
        d = per_domain.setdefault(s["domain"], {"train": dict(documents=0, tokens=0, bytes=0),
                                                "val": dict(documents=0, tokens=0, bytes=0)})
        for key in ("documents", "tokens", "bytes"):
            d[s["split"]][key] += s[key]
    index_hashes = {split: sha256_file(cfg.out / f"index-{split}.npz") for split in parts}
    data_hash = sha256_json([[s["sha256"] for s in shards], index_hashes, topics.names, tok.fingerprint, cfg.seq_len])
    manifest = {
        "format": "toremi.tokens/1", "toremi_version": __version__,
        "tokenizer": tok.info(), "seq_len": cfg.seq_len, "topic_names": topics.names,
        "topics_from": cfg.topics_from, "domain_names": domains, "shards": shards,
        "index_sha256": index_hashes, "per_domain": per_domain,
        "sequences": sequences,
        "tokens": {split: int(sum(s["tokens"] for s in stats if s["split"] == split)) for split in parts},
        "data_hash": data_hash, "config": to_dict(cfg), "seconds": round(seconds, 2),
    }
    atomic_write_json(cfg.out / "manifest.json", manifest)
    return cfg.out
