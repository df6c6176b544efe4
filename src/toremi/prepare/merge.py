"""The one merge of ``toremi prepare``: finished token shards -> the files of a tokens dir.

Whatever engine did the shards, the driver merges them here, streamed:
- ``merge_split_streamed``: one split's per-shard indexes -> ``index-<split>.npz``, member by
  member and part by part (the held-out split's per-window domain ids excepted: the per-domain cap
  draws over them, 2 bytes a window).
- ``write_documents``: the document ids of every shard (from its ``.meta.json``) ->
  ``documents.parquet``, in row groups of ``ROW_GROUP`` rows (the bytes ``pq.write_table`` writes).
- ``write_manifest``: the packed index (``packed-train/``, also streamed: one shard's arrays at a
  time), fills, data hashes and ``manifest.json``; ``write_derived_manifest``: the manifest of a
  tokens dir another stage derived from a prepared one (``toremi noise``), so that the format of
  ``manifest.json`` and of the shard done markers has one owner.

Nothing here holds more than one shard's index at a time, so the driver's memory does not grow
with the corpus (docs/scale.md).
"""

from __future__ import annotations

import contextlib
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from toremi import __version__, done, layout
from toremi.config import to_dict
from toremi.data import packing as packmod
from toremi.io import atomic_path, atomic_write_json, read_json, sha256_json

INDEX_KEYS = ("shard", "offset", "length", "bytes", "doc", "domain", "topics")
ROW_GROUP = 1 << 20  # rows per row group of documents.parquet: pyarrow's default for a whole table


# ---------------------------------------------------------------- streamed writers
def _write_npy(f, dtype, shape: tuple, chunks) -> None:
    """An ``.npy`` stream written chunk by chunk: the bytes ``np.save`` writes for the whole array."""
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                             "fortran_order": False, "shape": shape})
    for c in chunks:
        f.write(np.ascontiguousarray(c, dtype=dtype).tobytes())


def _index_part(cfg, shard_no: int, info: dict, doc_base: int, key: str) -> np.ndarray:
    with np.load(cfg.out / Path(info["path"]).with_suffix(".idx.npz")) as z:
        if key == "shard":
            return np.full(len(z["offset"]), shard_no, dtype=np.int32)
        if key == "doc":
            return z["doc_row"] + doc_base
        return z[key]


def merge_split_streamed(cfg, stats: list[dict], split: str) -> int:
    """``index-<split>.npz`` from the per-shard indexes (same arrays as prepare's in-memory merge,
    the held-out per-domain cap drawn over the whole split); returns the number of sequences."""
    doc_base = np.concatenate([[0], np.cumsum([s["documents"] for s in stats])]).astype(int)
    entries = [(no, info, int(doc_base[no])) for no, info in enumerate(stats) if info["split"] == split]
    keep = None
    if split == "dev" and entries:
        domain = np.concatenate([_index_part(cfg, *e, "domain") for e in entries])
        if len(domain):
            rng = np.random.default_rng(0)
            sel = np.sort(np.concatenate([rng.permutation(np.nonzero(domain == d)[0])[:cfg.dev_sequences_per_domain]
                                          for d in np.unique(domain)]))
            bounds = np.cumsum([0] + [int(e[1]["sequences"]) for e in entries])
            keep = [sel[(sel >= a) & (sel < b)] - a for a, b in zip(bounds[:-1], bounds[1:])]
    with atomic_path(layout.tokens_index(cfg.out, split)) as tmp, \
            zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key in INDEX_KEYS:
            if not entries:
                with zf.open(key + ".npy", "w", force_zip64=True) as f:
                    _write_npy(f, np.int32, (0, cfg.max_topics) if key == "topics" else (0,), [])
                continue
            first = _index_part(cfg, *entries[0], key)
            n = sum(int(e[1]["sequences"]) for e in entries) if keep is None else sum(len(k) for k in keep)
            chunks = (_index_part(cfg, *e, key) if keep is None else _index_part(cfg, *e, key)[keep[j]]
                      for j, e in enumerate(entries))
            with zf.open(key + ".npy", "w", force_zip64=True) as f:
                _write_npy(f, first.dtype, (n, *first.shape[1:]), chunks)
    return sum(int(e[1]["sequences"]) for e in entries)


def write_documents(cfg, stats: list[dict]) -> None:
    """``documents.parquet``: every shard's document ids in shard order (global document id = row),
    read from the shards' ``.meta.json`` and written in full row groups as they fill up."""
    schema = pa.schema([("id", pa.string())])
    with atomic_path(layout.tokens_documents(cfg.out)) as tmp, pq.ParquetWriter(tmp, schema) as w:
        ids, groups = pa.array([], pa.string()), 0
        for s in stats:
            more = read_json(cfg.out / Path(s["path"]).with_suffix(".meta.json"))["doc_ids"]
            ids = pa.concat_arrays([ids, pa.array(more, pa.string())])
            while len(ids) >= ROW_GROUP:
                w.write_table(pa.table({"id": ids[:ROW_GROUP]}, schema=schema))
                ids, groups = ids[ROW_GROUP:], groups + 1
        if len(ids) or not groups:
            w.write_table(pa.table({"id": ids}, schema=schema))


# ---------------------------------------------------------------- packed index and manifest
def _packed_parts(cfg, stats: list[dict], domains: list[str]):
    """Per shard, in order: its packed arrays with global shard/document/segment numbering (train
    shards), or the padding rows of the per-document arrays (held-out shards)."""
    doc_base, seg_base = 0, 0
    for shard_no, info in enumerate(stats):
        if info["split"] == "train":
            with np.load(cfg.out / Path(info["path"]).with_suffix(".pack.npz")) as z:
                p = {k: z[k] for k in z.files}
            w, dom = len(p["offset"]), p["doc_domain"]
            p["topics"] = packmod.window_topics(p["seg_ptr"], p["seg_doc"], p["doc_topics"])
            p["shard"] = np.full(w, shard_no, dtype=np.int32)
            p["domain"] = np.full(w, dom[0] if len(dom) else 0, dtype=np.int16)  # one domain per shard
            p["seg_doc"] = p["seg_doc"] + doc_base
            p["seg_ptr"] = p["seg_ptr"][1:] + seg_base
            seg_base += int(p["seg_len"].shape[0])
        else:  # val documents keep their global ids: pad the per-document arrays
            p = {"doc_topics": np.full((info["documents"], cfg.max_topics), -1, dtype=np.int32),
                 "doc_domain": np.full(info["documents"], domains.index(info["domain"]), dtype=np.int16)}
        doc_base += info["documents"]
        yield p


def _merge_packed(cfg, stats: list[dict], domains: list[str]) -> tuple[dict, np.ndarray, np.ndarray, int]:
    """Write ``packed-train/``, one shard's arrays at a time (two passes over the shards: sizes,
    then every file's bytes). Returns (sha256 per file, real targets per domain, windows per domain, windows)."""
    dtypes, rows, width = {}, {}, {"topics": 1}
    real = np.zeros(len(domains))
    for p in _packed_parts(cfg, stats, domains):  # pass 1: dtypes, lengths, the widest topic union
        for k, v in p.items():
            dtypes.setdefault(k, v.dtype)
            rows[k] = rows.get(k, 0) + len(v)
            if k in ("topics", "doc_topics"):
                width[k] = max(width.get(k, 1), v.shape[1])
    out_dir = layout.tokens_packed(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = sorted(packmod.WINDOW_KEYS + packmod.SEGMENT_KEYS + packmod.DOC_KEYS)
    with contextlib.ExitStack() as stack:  # pass 2: every file written in one pass over the shards
        files = {}
        for key in keys:
            tmp = stack.enter_context(atomic_path(out_dir / f"{key}.npy"))
            files[key] = stack.enter_context(open(tmp, "wb"))
            n = rows.get(key, 0) + (1 if key == "seg_ptr" else 0)
            _write_npy(files[key], np.int64 if key == "seg_ptr" else dtypes.get(key, np.int32),
                       (n, width[key]) if key in width else (n,), [np.zeros(1, np.int64)] if key == "seg_ptr" else [])
        for p in _packed_parts(cfg, stats, domains):
            for key, v in p.items():
                if key in width and v.shape[1] < width[key]:
                    v = np.concatenate([v, np.full((len(v), width[key] - v.shape[1]), -1, v.dtype)], 1)
                files[key].write(np.ascontiguousarray(v, dtype=np.int64 if key == "seg_ptr" else dtypes[key]).tobytes())
    hashes = {key: done.file_sha256(out_dir / f"{key}.npy") for key in keys}
    doc_domain = np.load(out_dir / "doc_domain.npy", mmap_mode="r")
    seg_doc = np.load(out_dir / "seg_doc.npy", mmap_mode="r")
    seg_len = np.load(out_dir / "seg_len.npy", mmap_mode="r")
    win_domain = np.load(out_dir / "domain.npy", mmap_mode="r")
    step = 1 << 22
    for a in range(0, len(seg_len), step):  # chunked: the segment arrays stay on disk
        real += np.bincount(doc_domain[seg_doc[a:a + step]], weights=seg_len[a:a + step], minlength=len(domains))
    return hashes, real, np.bincount(win_domain, minlength=len(domains)), int(rows.get("offset", 0))


def _fills(cfg, stats: list[dict], domains: list[str], data_hash: str) -> dict:
    """Manifest keys ``packing``, ``fill`` (real target tokens / slots of the train windows, per
    mode, overall and per domain) and, with packing=docs, ``packed`` (the merged packed-train/)."""
    real, wins = np.zeros(len(domains)), np.zeros(len(domains), dtype=np.int64)
    for no, info in enumerate(stats):
        if info["split"] == "train":
            length, domain = (_index_part(cfg, no, info, 0, k) for k in ("length", "domain"))
            real += np.bincount(domain, weights=length - 1, minlength=len(domains))
            wins += np.bincount(domain, minlength=len(domains))
    per = lambda r, n: {d: round(float(r[i] / (n[i] * cfg.seq_len)), 4) for i, d in enumerate(domains) if n[i]}
    out = {"packing": cfg.packing, "fill": {"none": {
        "overall": round(packmod.fill(real.sum(), int(wins.sum()), cfg.seq_len), 4), "per_domain": per(real, wins)}}}
    if cfg.packing == "none":
        return out
    hashes, real, wins, windows = _merge_packed(cfg, stats, domains)
    segments = len(np.load(layout.tokens_packed(cfg.out) / "seg_len.npy", mmap_mode="r"))
    out["fill"]["docs"] = {"overall": round(packmod.fill(real.sum(), windows, cfg.seq_len), 4),
                           "per_domain": per(real, wins)}
    out["packed"] = {"windows": windows, "segments": segments, "sha256": hashes,
                     "data_hash": sha256_json([data_hash, hashes, "packing=docs"])}
    return out


def write_manifest(cfg, tok, stats: list[dict], shard_sha: list[str], domains: list[str], topics,
                   sequences: dict[str, int], seconds: float) -> None:
    """``manifest.json`` from the finished shards and the merged indexes (written last: its
    presence means the tokens dir is complete)."""
    shards = [{"path": s["path"], "sha256": sha, "split": s["split"], "domain": s["domain"], "tokens": s["tokens"],
               "documents": s["documents"], "sequences": s["sequences"], "bytes": s["bytes"]}
              for s, sha in zip(stats, shard_sha)]
    per_domain: dict[str, dict] = {}
    for s in stats:
        d = per_domain.setdefault(s["domain"], {"train": dict(documents=0, tokens=0, bytes=0),
                                                "dev": dict(documents=0, tokens=0, bytes=0)})
        for key in ("documents", "tokens", "bytes"):
            d[s["split"]][key] += s[key]
    index_hashes = {split: done.file_sha256(layout.tokens_index(cfg.out, split)) for split in ("train", "dev")}
    data_hash = sha256_json([[s["sha256"] for s in shards], index_hashes, topics.names, tok.fingerprint, cfg.seq_len])
    manifest = {
        "format": "toremi.tokens/1", "toremi_version": __version__,
        "tokenizer": tok.info(), "seq_len": cfg.seq_len, "topic_names": topics.names,
        "topics_from": cfg.topics_from, "domain_names": domains, "shards": shards,
        "index_sha256": index_hashes, "per_domain": per_domain, "sequences": sequences,
        "tokens": {split: int(sum(s["tokens"] for s in stats if s["split"] == split)) for split in ("train", "dev")},
        "data_hash": data_hash, "config": to_dict(cfg), "seconds": round(seconds, 2),
        **_fills(cfg, stats, domains, data_hash),
    }
    atomic_write_json(layout.tokens_manifest(cfg.out), manifest)


def write_derived_manifest(manifest: dict, out: Path, noise: dict, rewritten: list[int] | None = None) -> dict:
    """``manifest.json`` of a tokens dir derived from a prepared one (``toremi noise``): ``manifest``
    (the source's, or the one ``prepare`` just wrote into ``out``) with ``noise`` recorded. Shards
    rewritten in place (``rewritten``: their indexes in ``shards``) get their new sha256 in the
    manifest and in their done markers, and ``data_hash`` then changes with ``noise``, so runs on
    the derived data never pass for runs on the clean data. Written last, as by ``prepare``."""
    manifest = {**manifest, "shards": [dict(s) for s in manifest["shards"]], "noise": noise}
    if rewritten is not None:
        for s in rewritten:
            dest = out / manifest["shards"][s]["path"]
            manifest["shards"][s]["sha256"] = done.file_sha256(dest)
            if done.is_done(dest):
                done.mark(dest, {**done.read(dest), "sha256": manifest["shards"][s]["sha256"]})
        manifest["data_hash"] = sha256_json([manifest.get("data_hash"), noise])
    atomic_write_json(layout.tokens_manifest(out), manifest)
    return manifest
