"""Flat token shards with a versioned header, read by memory map.

A shard is ``HEADER`` (32 bytes) followed by the tokens of many documents back to back, each ending
with ``<|endoftext|>``. A sequence is a window into a shard described by the index (offset, length);
windows of one document overlap by one token so that every token is a target exactly once.
"""

from __future__ import annotations

import struct
from functools import cached_property
from pathlib import Path

import numpy as np

from toremi import layout
from toremi.io import atomic_path, read_json, sha256_json

MAGIC = b"TOREMI\0\0"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")  # magic, version, bytes per token, token count, reserved
DTYPES = {2: np.uint16, 4: np.uint32}


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def write_shard(path: Path, tokens: np.ndarray) -> None:
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:
        f.write(HEADER.pack(MAGIC, FORMAT_VERSION, tokens.dtype.itemsize, len(tokens)))
        f.write(np.ascontiguousarray(tokens).tobytes())


def open_shard(path: Path) -> np.memmap:
    """Memory-map a shard's tokens after checking its header against the file size."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(HEADER.size)
    if len(raw) < HEADER.size:
        raise ValueError(f"{path}: truncated token shard (no header); rerun `toremi prepare`")
    magic, version, width, count = HEADER.unpack(raw)
    if magic != MAGIC:
        raise ValueError(f"{path}: not a toremi token shard (bad magic)")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: shard format v{version}, this toremi reads v{FORMAT_VERSION}; "
                         f"re-run `toremi prepare`")
    expected = HEADER.size + width * count
    if path.stat().st_size != expected:
        raise ValueError(f"{path}: {path.stat().st_size} bytes, header says {expected}; the shard is "
                         f"truncated or corrupted, delete it and re-run `toremi prepare`")
    return np.memmap(path, dtype=DTYPES[width], mode="r", offset=HEADER.size, shape=(count,))


def resolve_packing(manifest: dict, split: str, packing: str | None, where: Path) -> str:
    """The mode a split is read in: ``packing`` if given (refused, naming the fix, when the dir
    lacks it), else what prepare wrote. Only the train split is ever packed."""
    have = manifest.get("packing", "none") if split == "train" else "none"
    if packing in (None, "auto"):
        return have
    if packing not in ("none", "docs"):
        raise ValueError(f"packing={packing!r}: choose none, docs or auto")
    if packing == "docs" and have != "docs":
        raise ValueError(f"{where}: split {split!r} was prepared with packing=none, training asked for "
                         f"packing=docs; re-run `toremi prepare ... packing=docs` or train with packing=none")
    return packing  # packing=none on a packed dir reads the per-document index, which is always there


class TokenDataset:
    """Sequences of one split of a prepared tokens dir (see docs/ARCHITECTURE.md).

    ``packing``: None/``auto`` = what prepare wrote; ``none`` = one document per window;
    ``docs`` = packed windows with a segment map (toremi.data.packing).
    """

    def __init__(self, tokens_dir: str | Path, split: str = "train", packing: str | None = None):
        self.dir = Path(tokens_dir)
        manifest_path = layout.tokens_manifest(self.dir)
        if not manifest_path.exists():
            raise FileNotFoundError(f"{self.dir}: no manifest.json; run `toremi prepare` first")
        self.manifest = read_json(manifest_path)
        self.split = split
        self.packing = resolve_packing(self.manifest, split, packing, self.dir)
        self.packed = self.packing == "docs"
        index_path = layout.tokens_index(self.dir, split)
        if not index_path.exists():
            raise FileNotFoundError(f"{index_path} missing: split {split!r} was not prepared")
        if self.packed:
            from toremi.data.packing import read_packed

            self.pack = read_packed(layout.tokens_packed(self.dir, split))
            for key in ("shard", "offset", "length", "bytes", "domain", "topics"):
                setattr(self, key, self.pack[key])
            self.doc = None  # a packed window holds several documents: see self.pack["seg_doc"]
        else:
            with np.load(index_path) as z:
                self.shard = z["shard"]
                self.offset = z["offset"]
                self.length = z["length"]
                self.bytes = z["bytes"]  # UTF-8 bytes of each sequence's targets
                self.doc = z["doc"]
                self.domain = z["domain"]
                self.topics = z["topics"]
        self.seq_len: int = self.manifest["seq_len"]
        self.vocab_size: int = self.manifest["tokenizer"]["vocab_size"]
        self.eot_id: int = self.manifest["tokenizer"]["eot_id"]
        self.topic_names: list[str] = self.manifest["topic_names"]
        self.domain_names: list[str] = self.manifest["domain_names"]
        self.data_hash: str = self.manifest["data_hash"]
        if self.packed:  # the per-document data and the packed index both identify the run's data
            self.data_hash = sha256_json([self.data_hash, self.manifest["packed"]["data_hash"]])
        self._shards = [self.dir / s["path"] for s in self.manifest["shards"]]

    def __len__(self) -> int:
        return len(self.offset)

    @cached_property
    def fill(self) -> float:
        """Real target tokens / target slots over this split's windows."""
        real = int(self.pack["seg_len"].sum()) if self.packed else int(self.length.sum()) - len(self)
        return real / max(1, len(self) * self.seq_len)

    @property
    def num_topics(self) -> int:
        return len(self.topic_names)

    @property
    def max_topics(self) -> int:
        return self.topics.shape[1]

    @cached_property
    def memmaps(self) -> list[np.memmap]:
        return [open_shard(p) for p in self._shards]

    def gather(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """Assemble sequences ``indices`` into padded tensors with one fancy-index per shard."""
        import torch  # here, not at the top: `toremi prepare` writes shards without torch
        indices = np.asarray(indices, dtype=np.int64)
        width = self.seq_len + 1
        tokens = np.full((len(indices), width), self.eot_id, dtype=np.int64)
        lengths = self.length[indices]
        shard_of = self.shard[indices]
        steps = np.arange(width)
        for s in np.unique(shard_of):
            rows = np.nonzero(shard_of == s)[0]
            mm = self.memmaps[s]
            pos = self.offset[indices[rows]][:, None] + steps[None, :]
            valid = steps[None, :] < lengths[rows][:, None]
            np.minimum(pos, len(mm) - 1, out=pos)
            tokens[rows] = np.where(valid, mm[pos], self.eot_id)
        target_valid = steps[None, 1:] < lengths[:, None]
        labels = np.where(target_valid, tokens[:, 1:], -100)
        out = self._segments(indices) if self.packed else {}
        return {
            **out,
            "input_ids": torch.from_numpy(tokens[:, :-1]),
            "labels": torch.from_numpy(labels),
            "topic_ids": torch.from_numpy(self.topics[indices].astype(np.int64)),
            "domain_ids": torch.from_numpy(self.domain[indices].astype(np.int64)),
            "target_bytes": torch.from_numpy(self.bytes[indices].astype(np.int64)),
            "sample_index": torch.from_numpy(indices),
        }

    def _segments(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """Segment map of packed windows ``indices``: ``seg_ids`` [B, T] (segment of each input
        position's target, numbered over the batch; -1 = no target) and per segment ``seg_topics``
        [S, M], ``seg_bytes`` [S], ``seg_domain`` [S]. Vectorised over the CSR offsets."""
        import torch
        p = self.pack
        lo, hi = p["seg_ptr"][indices], p["seg_ptr"][indices + 1]
        counts = hi - lo
        first = np.cumsum(counts) - counts                      # batch-level id of each row's first segment
        row = np.repeat(np.arange(len(indices)), counts)
        seg = np.repeat(lo - first, counts) + np.arange(int(counts.sum()))  # rows of the segment arrays
        start, length, doc = p["seg_start"][seg], p["seg_len"][seg], p["seg_doc"][seg]
        marks = np.zeros((len(indices), self.seq_len), dtype=np.int64)
        marks[row, start] = 1                                   # a new segment starts here
        marks[:, 0] = 0
        ids = np.cumsum(marks, axis=1) + first[:, None]
        real = np.bincount(row, weights=length, minlength=len(indices)).astype(np.int64)
        ids[np.arange(self.seq_len)[None, :] >= real[:, None]] = -1
        return {"seg_ids": torch.from_numpy(ids),
                "seg_topics": torch.from_numpy(p["doc_topics"][doc].astype(np.int64)),
                "seg_bytes": torch.from_numpy(p["seg_bytes"][seg].astype(np.int64)),
                "seg_domain": torch.from_numpy(p["doc_domain"][doc].astype(np.int64))}
