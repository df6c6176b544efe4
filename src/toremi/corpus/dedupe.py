"""Exact and near-duplicate detection: normalised-text hashes and MinHash-LSH over word shingles.

Near duplicates (a licence with one name changed, a reposted e-mail, a chapter printed twice)
would leak between the training and held-out splits and inflate a domain's weight, so they go
before the split. Everything after word hashing is vectorised numpy: shingle hashes of all
documents are concatenated, permuted with multiply-shift hashing in chunks and reduced per
document with ``np.minimum.reduceat``; LSH buckets are found by sorting band keys, and every
candidate pair is verified by its estimated Jaccard similarity before a document is dropped.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import zlib
from typing import Iterator

import numpy as np

_WORD = re.compile(r"\w+")
_MIX = np.uint64(0x9E3779B97F4A7C15)


_NON_SPACE = re.compile(r"\S+")  # the runs str.split() returns (same Unicode whitespace set)


def normalise_key(text: str, batch: int = 65_536) -> bytes:
    """Hash of the case- and whitespace-normalised text: equal keys are exact duplicates.

    The hash of ``" ".join(text.lower().split()).encode()``, fed ``batch`` words at a time so a
    multi-megabyte document never becomes a list of every word (~10x its size in str objects)."""
    h = hashlib.blake2b(digest_size=16)
    words = (m.group() for m in _NON_SPACE.finditer(text))
    sep = ""
    while chunk := list(itertools.islice(words, batch)):
        h.update((sep + " ".join(chunk).lower()).encode())
        sep = " "
    return h.digest()


def _word_id_chunks(text: str, cache: dict, chunk: int) -> Iterator[np.ndarray]:
    """The word ids of ``text`` in arrays of at most ``chunk`` (memory bounded for long texts)."""
    it = (m.group() for m in _WORD.finditer(text.lower()))
    while True:
        ids = [cache[w] if w in cache else cache.setdefault(w, zlib.crc32(w.encode()) | 1 << 32)
               for w in itertools.islice(it, chunk)]
        if not ids:
            return
        yield np.asarray(ids, dtype=np.uint64)


def _combine(h: np.ndarray, k: int) -> np.ndarray:
    """Polynomial combination of ``k`` consecutive word hashes at every position (vectorised)."""
    n = max(1, len(h) - k + 1)
    out = np.zeros(n, dtype=np.uint64)
    mult = np.uint64(1)
    with np.errstate(over="ignore"):
        for j in range(min(k, len(h))):
            out += h[j:j + n] * mult
            mult = np.uint64((int(mult) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF)
    return out


def iter_shingle_hashes(text: str, k: int, cache: dict, chunk: int = 1 << 16) -> Iterator[np.ndarray]:
    """64-bit hashes of the word k-grams of ``text`` (at least one per document), in chunks, so a
    multi-megabyte document never materialises all its words at once."""
    carry = np.zeros(0, dtype=np.uint64)
    produced = False
    for ids in _word_id_chunks(text, cache, chunk):
        with np.errstate(over="ignore"):
            h = np.concatenate([carry, ids * _MIX])
        if len(h) >= k:
            yield _combine(h, k)
            produced = True
            carry = h[len(h) - k + 1:] if k > 1 else h[:0]
        else:
            carry = h
    if not produced:
        if len(carry):
            yield _combine(carry, k)
        else:
            with np.errstate(over="ignore"):
                yield _combine(np.array([zlib.crc32(text.encode("utf-8", "replace")) | 1 << 32],
                                        dtype=np.uint64) * _MIX, k)


def shingle_hashes(text: str, k: int, cache: dict) -> np.ndarray:
    """64-bit hashes of the word k-grams of ``text`` (at least one per document)."""
    return np.concatenate(list(iter_shingle_hashes(text, k, cache)))


def minhash_params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


def minhash_signatures(texts: list[str], num_perm: int = 64, k: int = 5, seed: int = 0,
                       chunk: int = 1 << 13, cache: dict | None = None) -> np.ndarray:
    """[len(texts), num_perm] uint32 MinHash signatures.

    Shingle hashes are permuted ``chunk`` at a time and folded into a running minimum, so memory
    stays at ``chunk x num_perm`` words however long a document is. ``cache`` memoises word
    hashes across calls (callers clear it when it grows)."""
    a, b = minhash_params(num_perm, seed)
    cache = {} if cache is None else cache
    sig = np.full((len(texts), num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    parts: list[np.ndarray] = []
    owners: list[int] = []
    total = 0

    def flush():
        nonlocal parts, owners, total
        if not parts:
            return
        h = np.concatenate(parts)
        lens = np.array([len(p) for p in parts])
        offsets = np.cumsum(lens) - lens
        with np.errstate(over="ignore"):
            vals = ((h[:, None] * a[None, :] + b[None, :]) >> np.uint64(32)).astype(np.uint32)
        red = np.minimum.reduceat(vals, offsets, axis=0)
        np.minimum.at(sig, np.asarray(owners), red)  # a long document spans several chunks
        parts, owners, total = [], [], 0

    for i, text in enumerate(texts):
        for h in iter_shingle_hashes(text, k, cache, chunk):
            parts.append(h)
            owners.append(i)
            total += len(h)
            if total >= chunk:
                flush()
    flush()
    return sig


def near_duplicates(sig: np.ndarray, threshold: float = 0.8, bands: int = 16) -> np.ndarray:
    """Boolean mask of documents with an earlier document of estimated Jaccard >= threshold.

    Documents sharing any LSH band are candidates; each candidate is compared with the first
    (earliest) document of its bucket, so of a cluster of near duplicates the earliest survives.
    """
    n, p = sig.shape
    dup = np.zeros(n, dtype=bool)
    if n < 2:
        return dup
    rows = p // bands
    weights = np.random.default_rng(12345).integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)
    for band in range(bands):
        cols = sig[:, band * rows:(band + 1) * rows].astype(np.uint64)
        with np.errstate(over="ignore"):
            key = (cols * weights[None, :]).sum(axis=1)
        order = np.argsort(key, kind="stable")  # stable: within a bucket, earlier docs first
        k = key[order]
        new_run = np.r_[True, k[1:] != k[:-1]]
        anchor_pos = np.maximum.accumulate(np.where(new_run, np.arange(n), 0))
        member = order[~new_run]
        anchor = order[anchor_pos[~new_run]]
        if len(member) == 0:
            continue
        sim = (sig[member] == sig[anchor]).mean(axis=1)
        dup[member[sim >= threshold]] = True
    return dup


def jaccard(a: str, b: str, k: int = 5) -> float:
    """Exact shingle Jaccard similarity (for tests and diagnostics)."""
    cache: dict = {}
    sa, sb = set(shingle_hashes(a, k, cache).tolist()), set(shingle_hashes(b, k, cache).tolist())
    return len(sa & sb) / max(1, len(sa | sb))
