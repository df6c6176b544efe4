"""Bounded-memory building blocks for ingest and build: spill files, long-document splitting and a
shard writer that never holds more than one batch of documents.

A domain is processed in passes over a Parquet spill file (clean + hash, dedupe on the compact
keys and signatures, then write), so memory grows with the number of documents (a few hundred
bytes each), never with their text.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from toremi import done, layout
from toremi.io import atomic_path

BATCH_DOCS = 512
BATCH_BYTES = 4 << 20  # a batch of text in memory at once (each pass may hold a few copies)
SPILL_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("raw", pa.binary()),
                          ("label", pa.string()), ("source", pa.string())])


class Spill:
    """Append documents to a Parquet file in bounded row groups; read them back in batches."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer: pq.ParquetWriter | None = None
        self.rows: list[dict] = []
        self.bytes = 0
        self.count = 0

    def add(self, doc: dict) -> None:
        text = doc["text"]
        is_raw = isinstance(text, (bytes, bytearray))
        self.rows.append({"id": str(doc["id"]), "text": None if is_raw else text,
                          "raw": bytes(text) if is_raw else None,
                          "label": None if doc.get("label") is None else str(doc["label"]),
                          "source": str(doc["source"])})
        self.bytes += len(text)
        self.count += 1
        if len(self.rows) >= BATCH_DOCS or self.bytes >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, SPILL_SCHEMA, compression="none", use_dictionary=False,
                                           write_statistics=False)  # min/max of long texts: copies
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=SPILL_SCHEMA))
        self.rows, self.bytes = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()

    def __iter__(self) -> Iterator[dict]:
        pf = pq.ParquetFile(self.path)
        for i in range(pf.num_row_groups):
            for rec in pf.read_row_group(i).to_pylist():
                raw = rec.pop("raw")
                if raw is not None:
                    rec["text"] = raw
                yield rec


def split_long(docs: Iterable[dict], max_bytes: int, mode: str, counts: dict) -> Iterator[dict]:
    """Documents over ``max_bytes`` (UTF-8) are cut at a line or word break into parts that keep
    the source (so the held-out split keeps them together), or skipped; both are counted."""
    for doc in docs:
        text = doc["text"]
        if len(text) * 4 <= max_bytes:
            yield doc
            continue
        data = text if isinstance(text, (bytes, bytearray)) else text.encode("utf-8", "replace")
        if len(data) <= max_bytes:
            yield doc
            continue
        del text
        doc["text"] = None  # the parts below are all that stays alive
        if mode == "skip":
            counts["long_skipped"] += 1
            continue
        counts["long_split"] += 1
        start, part = 0, 0
        while start < len(data):
            end = min(start + max_bytes, len(data))
            if end < len(data):
                brk = max(data.rfind(b"\n", start + max_bytes // 2, end), data.rfind(b" ", start + max_bytes // 2, end))
                end = brk + 1 if brk > start else end
                while end < len(data) and (data[end] & 0xC0) == 0x80:  # never cut inside a character
                    end -= 1
            piece = data[start:end].decode("utf-8", "replace").strip()
            if piece:
                yield {**doc, "id": f"{doc['id']}#part{part}", "text": piece}
                part += 1
            start = end


class ShardWriter:
    """Write one split of a domain as ``shard-XXXXX.parquet`` files of ``shard_docs`` rows, each
    atomically with a done marker; rows are flushed in bounded row groups."""

    def __init__(self, out: Path, folder: Path, split: str, domain: str, schema: pa.Schema, shard_docs: int):
        self.out, self.folder, self.split, self.domain = out, folder, split, domain
        self.schema, self.shard_docs = schema, shard_docs
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("shard-*"):  # leftovers of an interrupted or older build
            stale.unlink()
        self.rows: list[dict] = []
        self.bytes = 0
        self.in_shard = 0
        self.shards: list[dict] = []
        self.stack: contextlib.ExitStack | None = None
        self.writer: pq.ParquetWriter | None = None

    def _path(self) -> Path:
        return layout.corpus_shard(self.out, self.split, self.domain, len(self.shards))

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.bytes += len(row["text"])
        self.in_shard += 1
        if self.in_shard >= self.shard_docs:
            self._finish_shard()
        elif self.bytes >= BATCH_BYTES:
            self._flush_group()

    def _flush_group(self) -> None:
        if self.writer is None:
            self.stack = contextlib.ExitStack()
            tmp = self.stack.enter_context(atomic_path(self._path()))
            self.writer = self.stack.enter_context(pq.ParquetWriter(tmp, self.schema, compression="zstd"))
        self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
        self.rows, self.bytes = [], 0

    def _finish_shard(self) -> None:
        path = self._path()
        n = self.in_shard
        if self.writer is None:  # a shard that fits one batch: one row group, as before
            with atomic_path(path) as tmp:
                pq.write_table(pa.Table.from_pylist(self.rows, schema=self.schema), tmp, compression="zstd")
        else:
            if self.rows:
                self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.stack.close()  # closes the writer, then renames the temp file onto ``path``
            self.stack = self.writer = None
        self.rows, self.bytes, self.in_shard = [], 0, 0
        sha = done.mark(path, {"rows": n})["sha256"]
        self.shards.append({"path": str(path.relative_to(self.out)), "split": self.split,
                            "domain": self.domain, "rows": n, "sha256": sha})

    def close(self) -> list[dict]:
        if self.in_shard or not self.shards:  # an empty split still gets one (empty) shard
            self._finish_shard()
        return self.shards

    def abort(self) -> None:
        if self.stack is not None:
            self.stack.__exit__(RuntimeError, RuntimeError("aborted"), None)


def return_freed_memory() -> None:
    """Let freed large buffers go back to the OS at once, so peak RSS follows live memory.

    glibc raises its mmap threshold after a large free (then keeps later megabyte buffers in a heap
    it rarely trims) and Arrow's jemalloc pool keeps freed pages for a while; with one 20 MB
    document, the line, its decoded text and its pieces then stay resident long after use
    (bench/ingest.py). Fixing the threshold at 1 MB and using the system pool for Arrow makes
    peak RSS follow live memory. Best effort: a no-op where glibc is absent."""
    from toremi.allocator import return_large_allocations_at_once

    return_large_allocations_at_once()
    pa.set_memory_pool(pa.system_memory_pool())


def scratch_dir(out: Path, name: str) -> Path:
    path = Path(out) / f".tmp-{name}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
