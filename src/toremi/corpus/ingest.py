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

from toremi.config import to_dict

from .build import CorpusConfig, finished, load_tokenizer, process_domain, summary, write_manifest


class IngestError(ValueError):
    """The input is malformed; the message names the file, the line and the fix."""


@dataclass
class IngestOptions:
    input: str
    format: Literal["auto", "jsonl", "parquet", "text", "hf"] = "auto"
    text_field: str = "text"
    domain_field: str = "domain"
    id_field: str = "id"
    label_field: str = "label"
    source_field: str = "source"
    default_domain: str = "default"
    on_error: Literal["fail", "skip"] = "fail"


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)).strip("_.") or "default"


def detect_format(path: Path) -> str:
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
        for fmt, pattern in (("parquet", "*.parquet"), ("jsonl", "*.jsonl"), ("text", "*.txt")):
            if next(path.rglob(pattern), None) is not None:
                return fmt
    raise IngestError(f"{path}: cannot tell its format; pass --format jsonl|parquet|text|hf")


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
    domain = _slug(rec.get(opt.domain_field) or opt.default_domain)
    rid = rec.get(opt.id_field)
    doc_id = default_id if rid is None or rid == "" else str(rid)
    return {"id": doc_id if doc_id.startswith(domain + "/") else f"{domain}/{doc_id}",
            "text": text or "", "domain": domain, "label": rec.get(opt.label_field),
            "source": doc_id if rec.get(opt.source_field) is None else str(rec[opt.source_field])}


def read_jsonl(path: Path, opt: IngestOptions, skipped: list[str]) -> Iterator[dict]:
    for f in _files(path, "*.jsonl", "*.json", "*.ndjson"):
        with open(f, "rb") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{f}:{lineno}"
                try:
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise IngestError(f"{where}: expected a JSON object per line, got "
                                          f"{type(rec).__name__}")
                    yield _record(rec, opt, where, f"{f.stem}/{lineno:07d}")
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
        for batch in pf.iter_batches(batch_size=2048):
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


def _content_hash(docs: list[dict]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for d in docs:
        text = d["text"] if isinstance(d["text"], bytes) else str(d["text"]).encode("utf-8", "replace")
        for part in (str(d["id"]).encode(), text, str(d.get("label")).encode(), str(d["source"]).encode()):
            h.update(len(part).to_bytes(8, "little") + part)
    return h.hexdigest()


READERS = {"jsonl": read_jsonl, "parquet": read_parquet, "text": read_text, "hf": read_hf}


def ingest(opt: IngestOptions, cfg: CorpusConfig, show: bool = True) -> dict:
    """Read ``opt.input``, then clean/dedupe/split/write each domain into ``cfg.out``."""
    path = Path(opt.input)
    if not path.exists():
        raise IngestError(f"--input {path} does not exist")
    fmt = detect_format(path) if opt.format == "auto" else opt.format
    t0 = time.time()
    skipped: list[str] = []
    by_domain: dict[str, list[dict]] = {}
    for doc in READERS[fmt](path, opt, skipped):
        by_domain.setdefault(doc.pop("domain"), []).append(doc)
    if not by_domain:
        raise IngestError(f"{path}: no documents found in {fmt} format")
    from toremi.integrity import hold_lock

    out = Path(cfg.out)
    _lock = hold_lock(out, "corpus ingest")  # one writer per corpus dir
    (out / "manifest.json").unlink(missing_ok=True)
    tokenizer = load_tokenizer(cfg)
    infos = {}
    for domain in sorted(by_domain):
        # A domain is redone only if its own documents or the settings changed.
        fp = cfg.fingerprint(domain, {"options": to_dict(opt), "format": fmt,
                                      "content": _content_hash(by_domain[domain])})
        infos[domain] = finished(out, domain, fp) or process_domain(
            out, domain, by_domain[domain], cfg, tokenizer, "label" if any(
                d.get("label") is not None for d in by_domain[domain]) else None, fp)
    config = {k: v for k, v in to_dict(cfg).items() if k != "domains"}
    manifest = write_manifest(out, infos, config, {"ingest": {
        "input": str(path), "format": fmt, "options": to_dict(opt),
        "skipped_lines": len(skipped), "skipped_examples": skipped[:20]}})
    if show:
        if skipped:
            print(f"skipped {len(skipped)} malformed line(s), e.g. {skipped[:3]}")
        summary(manifest, time.time() - t0)
    return manifest
