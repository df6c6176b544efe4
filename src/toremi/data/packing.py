"""Packed windows: documents back to back, cut into full ``seq_len + 1`` windows, with a CSR segment map.

A token shard already holds its documents back to back, each ending with ``<|endoftext|>``, so
packing needs no new token data: it is a second index over the same shard bytes. Windows start
every ``seq_len`` tokens of a shard (consecutive windows share one token), so every token after
the shard's first is a target exactly once and only a shard's last window is short.

Ownership convention: a *target* token belongs to the document it is part of, and an input
position belongs to the document of its target. The EOT that ends document d is therefore the
input that predicts the first token of document d+1 and acts as its BOS: with document-aware
attention a segment is ``[EOT, t1 .. tn]`` -> ``[t1 .. tn, EOT]``, the same as running that
document alone behind a BOS.

Segments are the pieces of documents inside windows: ``seg_ptr`` [W+1] (CSR offsets) into
``seg_start`` (input position in the window), ``seg_len`` (target tokens), ``seg_doc``,
``seg_bytes`` (UTF-8 bytes of the targets). Topics and domains are stored once per document
(``doc_topics`` [D, M], ``doc_domain`` [D]) and reached through ``seg_doc``. All arrays are plain
``.npy`` files in ``packed-<split>/`` read with ``mmap_mode="r"``: no Python object per segment.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


WINDOW_KEYS = ("shard", "offset", "length", "bytes", "domain", "seg_ptr", "topics")
SEGMENT_KEYS = ("seg_start", "seg_len", "seg_doc", "seg_bytes")
DOC_KEYS = ("doc_topics", "doc_domain")


def pack_shard(lengths: np.ndarray, seq_len: int, byte_cumsum: np.ndarray) -> dict[str, np.ndarray]:
    """Packed windows and their segments for one shard of documents of ``lengths`` tokens (EOT
    included), laid out back to back. ``byte_cumsum[i]`` = UTF-8 bytes of tokens ``[0, i)``.

    Returns window ``offset``/``length``/``bytes``, CSR ``seg_ptr`` and per-segment
    ``seg_start``/``seg_len``/``seg_doc`` (row of the document in this shard)/``seg_bytes``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = int(lengths.sum())
    inputs = max(n - 1, 0)                       # positions with a target
    n_win = -(-inputs // seq_len)
    offset = np.arange(n_win, dtype=np.int64) * seq_len
    length = (np.minimum(offset + seq_len, inputs) - offset + 1).astype(np.int32)
    # input-position start of each document's targets: its first token's predecessor (the EOT
    # of the document before); the shard's first document starts at 0 (its first token is no target)
    doc_start = np.maximum(np.cumsum(lengths) - lengths - 1, 0)
    points = np.union1d(doc_start[doc_start < inputs], offset)   # every segment start, sorted
    ends = np.append(points[1:], inputs)[: len(points)]  # no segment at all: no end either
    window = points // seq_len
    doc = np.searchsorted(doc_start, points, side="right") - 1  # last doc starting there (skips empty docs)
    seg_ptr = np.concatenate([[0], np.cumsum(np.bincount(window, minlength=n_win))]).astype(np.int64)
    return {"offset": offset, "length": length,
            "bytes": (byte_cumsum[offset + length] - byte_cumsum[offset + 1]).astype(np.int32),
            "seg_ptr": seg_ptr, "seg_start": (points - window * seq_len).astype(np.int32),
            "seg_len": (ends - points).astype(np.int32), "seg_doc": doc.astype(np.int64),
            "seg_bytes": (byte_cumsum[ends + 1] - byte_cumsum[points + 1]).astype(np.int32)}


def window_topics(seg_ptr: np.ndarray, seg_doc: np.ndarray, doc_topics: np.ndarray) -> np.ndarray:
    """A window's topics = the union of its segments' topics, [W, U] padded with -1 (U = the
    largest union)."""
    n_win = len(seg_ptr) - 1
    win_of_seg = np.repeat(np.arange(n_win), np.diff(seg_ptr))
    t = doc_topics[seg_doc]                                     # [S, M]
    rows, cols = np.nonzero(t >= 0)
    pairs = np.unique(np.stack([win_of_seg[rows], t[rows, cols]], 1), axis=0) if len(rows) else \
        np.zeros((0, 2), dtype=np.int64)
    counts = np.bincount(pairs[:, 0], minlength=n_win) if len(pairs) else np.zeros(n_win, dtype=np.int64)
    out = np.full((n_win, max(1, int(counts.max(initial=0)))), -1, dtype=np.int32)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out[pairs[:, 0], np.arange(len(pairs)) - first[pairs[:, 0]]] = pairs[:, 1]
    return out


def topic_shares(seg_ptr: np.ndarray, seg_len: np.ndarray, seg_doc: np.ndarray, doc_topics: np.ndarray,
                 num_topics: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(window, bucket, share) triples: the token share of each topic in each window; a segment with
    m topics gives each 1/m of its tokens, unlabelled segments go to bucket ``num_topics``."""
    n_win = len(seg_ptr) - 1
    win_of_seg = np.repeat(np.arange(n_win), np.diff(seg_ptr))
    t = doc_topics[seg_doc]
    m = (t >= 0).sum(1)
    bucket = np.where(t >= 0, t, -1)
    bucket[:, 0] = np.where(m == 0, num_topics, bucket[:, 0])   # unlabelled -> its own bucket
    per = seg_len / np.maximum(m, 1)
    rows, cols = np.nonzero(bucket >= 0)
    key = win_of_seg[rows] * (num_topics + 1) + bucket[rows, cols]
    uniq, inv = np.unique(key, return_inverse=True)
    share = np.bincount(inv, weights=per[rows], minlength=len(uniq))
    win_tokens = np.maximum(np.bincount(win_of_seg, weights=seg_len, minlength=n_win), 1)
    win = uniq // (num_topics + 1)
    return win, uniq % (num_topics + 1), share / win_tokens[win]


def read_packed(in_dir: Path) -> dict[str, np.ndarray]:
    missing = [k for k in WINDOW_KEYS + SEGMENT_KEYS + DOC_KEYS if not (in_dir / f"{k}.npy").exists()]
    if missing:
        raise FileNotFoundError(f"{in_dir}: packed index incomplete (missing {missing}); re-run "
                                f"`toremi prepare ... packing=docs`")
    return {k: np.load(in_dir / f"{k}.npy", mmap_mode="r") for k in WINDOW_KEYS + SEGMENT_KEYS + DOC_KEYS}


def fill(real_targets: int, windows: int, seq_len: int) -> float:
    """Real target tokens / target slots of the windows."""
    return real_targets / max(1, windows * seq_len)
