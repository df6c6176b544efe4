"""Bring your own corpus: JSONL, Parquet, folders of .txt, or an HF dataset saved to disk.

The documents go through the same cleaning, deduplication, held-out split and writer as the
shipped corpus (``build.process_domain``), so every later stage reads a user corpus exactly like
the built-in one. Documents are grouped by a domain field (or the sub-folder of a .txt file);
a bad JSONL line stops the run with ``file:line`` and the fix, or is skipped and counted with
``on_error="skip"``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from toremi import layout
from toremi.config import to_dict
from toremi.integrity import locked

from .build import CorpusConfig, finished, load_tokenizer, process_domain, summary, write_manifest


class IngestError(ValueError):
    """The input is malformed; the message names the file, the line and the fix."""


@dataclass
class IngestOptions:
    input: str                                     # a file or folder (JSONL, Parquet, text files, or an HF dataset)
    format: Literal["auto", "jsonl", "parquet", "text", "hf", "mixed"] = "auto"  # auto: from the suffixes
    text_field: str = "text"                       # record field holding the document text
    domain_field: str = "domain"                   # record field naming the domain
    id_field: str = "id"                           # record field with the document id (absent: one is made from the position)
    label_field: str = "label"                     # record field with a class label (optional)
    source_field: str = "source"                   # field naming the unit kept whole by the held-out split (default: each doc)
    default_domain: str = "default"                # domain of records without one
    on_error: Literal["fail", "skip"] = "fail"     # a malformed record: stop, or skip and count it


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)).strip("_.") or "default"


FORMAT_PATTERNS = {"parquet": ("*.parquet",), "jsonl": ("*.jsonl", "*.json", "*.ndjson"), "text": ("*.txt",)}


def detect_format(path: Path) -> str:
    """The format of a file, or of every file in a folder (``mixed`` when several are present)."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json", ".ndjson"):
            return "jsonl"
        if suffix == ".parquet":
            return "parquet"
        if suffix == ".txt":
            return "text"
    elif path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return "hf"
        found = folder_formats(path)
        if len(found) == 1:
            return next(iter(found))
        if found:
            return "mixed"
    raise IngestError(f"{path}: cannot tell its format; pass --format jsonl|parquet|text|hf")


def folder_formats(path: Path) -> dict[str, int]:
    """Files per format in a folder."""
    found = {fmt: sum(1 for p in pats for _ in path.rglob(p)) for fmt, pats in FORMAT_PATTERNS.items()}
    return {fmt: n for fmt, n in found.items() if n}


def _files(path: Path, *patterns: str) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(f for p in patterns for f in path.rglob(p))


def _record(rec: dict, opt: IngestOptions, where: str, default_id: str) -> dict:
    if opt.text_field not in rec:
        raise IngestError(f"{where}: no {opt.text_field!r} field (fields: {sorted(rec)[:10]}); "
                          f"pass --text-field NAME")
    text = rec[opt.text_field]
    if not isinstance(text, (str, bytes)) and text is not None:
        raise IngestError(f"{where}: field {opt.text_field!r} is {type(text).__name__}, not text")
    original = str(rec.get(opt.domain_field) or opt.default_domain)
    domain = _slug(original)
    rid = rec.get(opt.id_field)
    doc_id = default_id if rid is None or rid == "" else str(rid)
    return {"id": doc_id if doc_id.startswith(domain + "/") else f"{domain}/{doc_id}",
            "text": text or "", "domain": domain, "original_domain": original,
            "label": rec.get(opt.label_field),
            "source": doc_id if rec.get(opt.source_field) is None else str(rec[opt.source_field])}


LONG_LINE = 1 << 20


def read_jsonl(path: Path, opt: IngestOptions, skipped: list[str]) -> Iterator[dict]:
    for f in _files(path, "*.jsonl", "*.json", "*.ndjson"):
        with open(f, "rb") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.isspace():
                    continue
                where = f"{f}:{lineno}"
                try:
                    if len(line) > LONG_LINE:  # decode first, then drop the bytes: 2 copies, not 3
                        line = line.decode(json.detect_encoding(line), "surrogatepass")
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise IngestError(f"{where}: expected a JSON object per line, got "
                                          f"{type(rec).__name__}")
                    doc = _record(rec, opt, where, f"{f.stem}/{lineno:07d}")
                    del rec, line  # a long line is not kept alive while its document is processed
                    yield doc
                except (json.JSONDecodeError, UnicodeDecodeError, IngestError) as exc:
                    if opt.on_error == "skip":
                        skipped.append(where)
                        continue
                    msg = str(exc) if isinstance(exc, IngestError) else f"{where}: invalid JSON ({exc})"
                    raise IngestError(f"{msg}; fix or delete that line, or pass --on-error skip "
                                      f"to skip and count bad lines") from None


def read_parquet(path: Path, opt: IngestOptions, skipped: list[str]) -> Iterator[dict]:
    import pyarrow.parquet as pq

    for f in _files(path, "*.parquet"):
        pf = pq.ParquetFile(f)
        row = 0
        for batch in pf.iter_batches(batch_size=64):  # bounded: a row may hold megabytes
            for rec in batch.to_pylist():
                row += 1
                yield _record(rec, opt, f"{f}: row {row}", f"{f.stem}/{row:07d}")


def read_text(path: Path, opt: IngestOptions, skipped: list[str]) -> Iterator[dict]:
    root = path if path.is_dir() else path.parent
    for f in _files(path, "*.txt"):
        rel = f.relative_to(root)
        domain = _slug(rel.parts[0]) if len(rel.parts) > 1 else _slug(opt.default_domain)
        name = str(rel.with_suffix(""))
        yield {"id": f"{domain}/{name}", "text": f.read_bytes(), "domain": domain,
               "original_domain": rel.parts[0] if len(rel.parts) > 1 else opt.default_domain,
               "label": None, "source": name}


def read_hf(path: Path, opt: IngestOptions, skipped: list[str]) -> Iterator[dict]:
    try:
        from datasets import Dataset, load_from_disk
    except ImportError:
        raise IngestError("reading an HF dataset needs the `datasets` package: "
                          "pip install 'toremi[hf]'") from None
    ds = load_from_disk(str(path))
    parts = [("", ds)] if isinstance(ds, Dataset) else list(ds.items())
    for split, part in parts:
        for row, rec in enumerate(part, 1):
            yield _record(rec, opt, f"{path} {split} row {row}", f"{split or 'row'}/{row:07d}")


class _ContentHash:
    """Incremental form of the per-domain content hash (the domain's resume fingerprint)."""

    def __init__(self):
        self.h = hashlib.blake2b(digest_size=16)

    def _part(self, part: bytes) -> None:
        self.h.update(len(part).to_bytes(8, "little") + part)

    def update(self, d: dict) -> None:
        self._part(str(d["id"]).encode())
        text, step = d["text"], 1 << 20
        if isinstance(text, bytes) or len(text) <= step:
            self._part(text if isinstance(text, bytes) else str(text).encode("utf-8", "replace"))
        else:  # encoded a megabyte at a time: a long document is never copied whole
            chunks = lambda: (text[i:i + step].encode("utf-8", "replace") for i in range(0, len(text), step))
            self.h.update(sum(map(len, chunks())).to_bytes(8, "little"))
            for c in chunks():
                self.h.update(c)
        self._part(str(d.get("label")).encode())
        self._part(str(d["source"]).encode())

    def hexdigest(self) -> str:
        return self.h.hexdigest()


def read_mixed(path: Path, opt: IngestOptions, skipped: list[str]) -> Iterator[dict]:
    """Every file of a folder holding several formats: parquet, then jsonl, then text."""
    for fmt in folder_formats(path):
        yield from READERS[fmt](path, opt, skipped)


READERS = {"jsonl": read_jsonl, "parquet": read_parquet, "text": read_text, "hf": read_hf,
           "mixed": read_mixed}


@locked("corpus ingest", lambda opt, cfg, show=True: cfg.out)  # one writer per corpus dir
def ingest(opt: IngestOptions, cfg: CorpusConfig, show: bool = True) -> dict:
    """Read ``opt.input``, then clean/dedupe/split/write each domain into ``cfg.out``.

    Streams: records are spilled per domain to Parquet in bounded batches as they are read, then
    each domain is processed from its spill file (``build.process_domain``)."""
    from . import stream

    path = Path(opt.input)
    if not path.exists():
        raise IngestError(f"--input {path} does not exist")
    fmt = detect_format(path) if opt.format == "auto" else opt.format
    formats = folder_formats(path) if path.is_dir() and fmt != "hf" else {fmt: 1}
    if fmt == "mixed" and show:
        print(f"ingesting every format in {path}: " + ", ".join(f"{n} {f}" for f, n in formats.items()))
    out = Path(cfg.out)
    layout.corpus_manifest(out).unlink(missing_ok=True)
    t0 = time.time()
    skipped: list[str] = []
    tmp = stream.scratch_dir(out, "ingest")
    spills: dict[str, stream.Spill] = {}
    hashes: dict[str, _ContentHash] = {}
    originals: dict[str, str] = {}
    labelled: set[str] = set()
    counts = {"long_split": 0, "long_skipped": 0}
    docs = stream.split_long(READERS[fmt](path, opt, skipped), int(cfg.max_doc_mb * 1e6), cfg.long_docs, counts)
    for doc in docs:
        domain, original = doc.pop("domain"), doc.pop("original_domain", None)
        if original is not None and originals.setdefault(domain, original) != original:
            raise IngestError(f"domains {originals[domain]!r} and {original!r} both become folder "
                              f"{domain!r}; rename one of them in the {opt.domain_field!r} field")
        if domain not in spills:
            spills[domain] = stream.Spill(tmp / f"{len(spills):05d}.parquet")
            hashes[domain] = _ContentHash()
        spills[domain].add(doc)
        hashes[domain].update(doc)
        if doc.get("label") is not None:
            labelled.add(domain)
    if not spills:
        raise IngestError(f"{path}: no documents found in {fmt} format")
    tokenizer = load_tokenizer(cfg)
    infos = {}
    for domain in sorted(spills):
        spills[domain].close()
        # A domain is redone only if its own documents or the settings changed.
        fp = cfg.fingerprint(domain, {"options": to_dict(opt), "format": fmt,
                                      "content": hashes[domain].hexdigest()})
        infos[domain] = finished(out, domain, fp) or process_domain(
            out, domain, spills[domain], cfg, tokenizer, "label" if domain in labelled else None, fp)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    config = {k: v for k, v in to_dict(cfg).items() if k != "domains"}
    manifest = write_manifest(out, infos, config, {"ingest": {
        "input": str(path), "format": fmt, "formats": formats, "options": to_dict(opt),
        "long_documents": counts,
        "skipped_lines": len(skipped), "skipped_examples": skipped[:20]}})
    if show:
        if counts["long_split"] or counts["long_skipped"]:
            print(f"documents over max_doc_mb={cfg.max_doc_mb}: {counts['long_split']} split, "
                  f"{counts['long_skipped']} skipped")
        if skipped:
            print(f"skipped {len(skipped)} malformed line(s), e.g. {skipped[:3]}")
        summary(manifest, time.time() - t0)
    return manifest
