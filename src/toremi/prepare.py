"""``toremi prepare``: documents (+ topic attributes) -> memory-mapped token shards and an index.

One token shard per document shard, each with a completion marker, so an interrupted run resumes
at the first unfinished shard. Documents are cut into windows of at most ``seq_len + 1`` tokens
(inputs ``[:-1]``, targets ``[1:]``); a window never spans two documents.

Splits: ``train`` and ``dev``. The ``dev`` split is carved from the corpus's *training* documents by
whole source unit (the ``source`` column; the document id where there is none), about
``dev_fraction`` of each domain's bytes per shard, chosen in a seeded order (``dev_mask``): every
shard decides alone, so the choice does not depend on shard order or engine. Every in-training signal (validation loss, the
plateau switch, validation hooks, DoReMi's reference) reads ``dev``; the held-out ``corpus/eval``
documents are never tokenized here and are read only by ``toremi eval``, so nothing a method adapts
to has seen the documents it is scored on.

``packing=docs`` (default) also writes ``packed-train/``: full windows over the documents back to
back with a CSR segment map (toremi.data.packing). The shards and the per-document index are the
same in both modes (``packing=none`` output is bit-identical to before packing existed), so one
tokens dir serves both modes; the dev split stays per document so that validation losses compare
across modes.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from toremi import integrity, layout, progress
from toremi import prepare_merge as merge
from toremi.corpus.documents import iter_shards
from toremi.config import save_config
from toremi.data import packing as packmod
from toremi.data.shards import token_dtype, write_shard
from toremi.io import atomic_path, read_json, sha256_file
from toremi.ray_cluster import EngineConfig, as_engine
from toremi.stage import Stage
from toremi.tokenizer import Tokenizer, check_spec, from_file, load_tokenizer


INDEX_VERSION = 4  # bump when the per-shard index gains fields: older shards are redone on resume


@dataclass
class PrepareConfig:
    corpus: Path = Path("out/corpus")
    out: Path = Path("out/tokens")
    tokenizer: str = "gpt2"            # gpt2 | bpe:<vocab> (trained on the train split) | path
    seq_len: int = 1024
    annotations: Path | None = None    # default: <corpus>/annotations
    topics_from: Literal["annotations", "domain", "label", "none"] = "annotations"
    max_topics: int = 3
    batch_docs: int = 8192         # documents per encode_batch call (Rust-parallel)
    dev_fraction: float = 0.05         # share of each domain's bytes (whole source units) carved out as dev
    dev_seed: int = 0
    dev_sequences_per_domain: int = 256  # dev windows kept per domain (evenly drawn)
    bpe_train_mb: float = 20.0         # text used to train a bpe:<vocab> tokenizer
    packing: Literal["none", "docs"] = "docs"  # docs: also write packed-train/ (full windows)
    engine: EngineConfig | str = "local"  # engine.name=ray: per-shard work on Ray (prepare_ray.py)

    def __post_init__(self):
        self.engine = as_engine(self.engine)
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {self.seq_len}")
        if self.max_topics < 1:
            raise ValueError(f"max_topics must be >= 1, got {self.max_topics}")
        check_spec(self.tokenizer)
        if self.packing not in ("none", "docs"):
            raise ValueError(f"packing={self.packing!r}: choose none or docs")
        if not 0.0 <= self.dev_fraction < 1.0:
            raise ValueError(f"dev_fraction must be in [0, 1), got {self.dev_fraction}")


def document_shards(corpus: Path, split: str) -> list[Path]:
    """Document shards of ``train`` or ``eval`` (a corpus without held-out documents has none)."""
    try:
        shards = iter_shards(corpus, split)
    except FileNotFoundError:
        shards = []
    if split == "train" and not shards:
        raise FileNotFoundError(f"{corpus / 'documents'}: no document shards; run `toremi corpus build` first")
    return shards


def cut_windows(lengths: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per document of ``lengths`` tokens (EOT included): window doc, offset-in-doc, length.

    Windows start every ``seq_len`` tokens and hold up to ``seq_len + 1`` tokens, so consecutive
    windows share one token and every token after the first is a target exactly once.
    """
    n_windows = np.maximum(1, -(-(lengths - 1) // seq_len))
    n_windows[lengths < 2] = 0
    doc = np.repeat(np.arange(len(lengths)), n_windows)
    first = np.cumsum(n_windows) - n_windows
    j = np.arange(len(doc)) - np.repeat(first, n_windows)
    start = j * seq_len
    length = np.minimum(seq_len + 1, lengths[doc] - start)
    return doc, start, length


class TopicLookup:
    """Topic ids per document from annotation attributes, domains, or ground-truth labels."""

    def __init__(self, cfg: PrepareConfig, domains: list[str]):
        self.cfg = cfg
        self.names: list[str] = []
        self.attr_dir: Path | None = None
        self.topics_json: Path | None = None
        self.warning = ""
        if cfg.topics_from == "annotations":
            ann = layout.annotation_dir(cfg.corpus, cfg.annotations)
            topics_json = layout.topics_json(ann)
            if topics_json.exists():
                self.names = read_json(topics_json)["topic_names"]
                self.attr_dir, self.topics_json = layout.topic_attributes(ann), topics_json
            else:
                self.warning = (f"no topic annotations at {ann} (run `toremi annotate`); every "
                                f"sequence is unlabelled and trains at weight 1")
        elif cfg.topics_from == "domain":
            self.names = list(domains)
        self._labels: dict[str, int] = {}

    def for_shard(self, split_dir: str, shard: Path, table) -> np.ndarray:
        out = np.full((table.num_rows, self.cfg.max_topics), -1, dtype=np.int32)
        if self.cfg.topics_from == "domain":
            out[:, 0] = [self.names.index(d) for d in table.column("domain").to_pylist()]
        elif self.cfg.topics_from == "label":
            for i, label in enumerate(table.column("label").to_pylist()):
                if label is not None:
                    if label not in self._labels:
                        self._labels[label] = len(self._labels)
                        self.names.append(label)
                    out[i, 0] = self._labels[label]
        elif self.attr_dir is not None and split_dir == "documents":
            attr_path = self.attr_dir / shard.parent.name / shard.name
            if not attr_path.exists():
                raise FileNotFoundError(f"{attr_path}: topic attributes missing for {shard}; "
                                        f"re-run `toremi annotate` on this corpus")
            attrs = pq.read_table(attr_path, columns=["id", "topic_ids"]).to_pydict()
            by_id = dict(zip(attrs["id"], attrs["topic_ids"]))
            for i, doc_id in enumerate(table.column("id").to_pylist()):
                ids = (by_id.get(doc_id) or [])[: self.cfg.max_topics]
                out[i, : len(ids)] = ids
        return out


def dev_mask(table: pa.Table, fraction: float, seed: int) -> np.ndarray:
    """True for the documents of the dev split: whole source units of each domain (the corpus's
    held-out rule, ``split_by_source``), drawn in a seeded order until ``fraction`` of the
    domain's bytes in this shard, skipping a unit that alone would pass twice that. Decided per
    shard, so no global pass and the same answer on every engine."""
    from toremi.corpus.build import split_by_source

    mask = np.zeros(table.num_rows, dtype=bool)
    if fraction <= 0 or table.num_rows == 0:
        return mask
    units = np.asarray(table.column("source" if "source" in table.column_names else "id").to_pylist(), dtype=object)
    domains = np.asarray(table.column("domain").to_pylist(), dtype=object)
    sizes = pc.fill_null(pc.binary_length(table.column("text")), 0).to_numpy(zero_copy_only=False).astype(np.float64)
    for d in np.unique(domains):
        rows = np.flatnonzero(domains == d)
        mask[rows] = split_by_source(units[rows].tolist(), sizes[rows], fraction * sizes[rows].sum(),
                                     2 * fraction, zlib.crc32(f"{seed}\0{d}".encode()))
    return mask


def _read_and_encode(shard: Path, tok: Tokenizer, batch_docs: int, split: str = "train",
                     dev_fraction: float = 0.0, dev_seed: int = 0):
    """Read the documents of ``split`` (train or dev) from a training shard and tokenize them
    (runs in a worker thread: the encoder frees the GIL)."""
    names = pq.ParquetFile(shard).schema_arrow.names
    table = pq.read_table(shard, columns=[c for c in ("id", "text", "domain", "label", "source") if c in names])
    dev = dev_mask(table, dev_fraction, dev_seed)
    table = table.filter(pa.array(dev if split == "dev" else ~dev)).select(["id", "text", "domain", "label"])
    if not pa.types.is_string(table.schema.field("text").type):  # an empty or all-null shard
        table = table.set_column(1, "text", table.column("text").cast(pa.string()))
    texts = [t or "" for t in table.column("text").to_pylist()]
    ids: list[list[int]] = []
    for start in range(0, len(texts), batch_docs):
        ids.extend(tok.encode_batch(texts[start:start + batch_docs]))
    return table, ids


def _prepare_shard(encoded, shard: Path, split: str, tok: Tokenizer, cfg: PrepareConfig,
                   topics: TopicLookup, domain_ids: dict[str, int], out_bin: Path,
                   token_bytes: np.ndarray) -> dict:
    table, ids = encoded
    doc_topics = topics.for_shard("documents", shard, table)
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
    eot = [tok.eot_id]
    flat = np.fromiter(itertools.chain.from_iterable(itertools.chain(x, eot) for x in ids),
                       dtype=token_dtype(tok.vocab_size), count=int(lengths.sum()))
    write_shard(out_bin, flat)
    doc, start, length = cut_windows(lengths, cfg.seq_len)
    byte_cumsum = np.concatenate([[0], np.cumsum(token_bytes[flat], dtype=np.int64)])
    doc_offset = np.cumsum(lengths) - lengths
    domain = np.array([domain_ids[d] for d in table.column("domain").to_pylist()], dtype=np.int16)
    offset = doc_offset[doc] + start
    index = {"offset": offset, "length": length.astype(np.int32),
             "bytes": (byte_cumsum[offset + length] - byte_cumsum[offset + 1]).astype(np.int32),
             "doc_row": doc, "domain": domain[doc], "topics": doc_topics[doc]}
    with atomic_path(out_bin.with_suffix(".idx.npz")) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **index)
    if cfg.packing == "docs" and split == "train":  # packed windows (toremi.data.packing)
        packed = packmod.pack_shard(lengths, cfg.seq_len, byte_cumsum)
        with atomic_path(out_bin.with_suffix(".pack.npz")) as tmp, open(tmp, "wb") as f:
            np.savez(f, **packed, doc_topics=doc_topics, doc_domain=domain)
    return {"documents": table.num_rows, "tokens": int(lengths.sum()), "sequences": len(doc),
            "doc_ids": table.column("id").to_pylist(),
            "bytes": int(pc.sum(pc.binary_length(table.column("text"))).as_py() or 0)}


def _resolve_tokenizer(cfg: PrepareConfig) -> Tokenizer:
    saved = layout.tokens_tokenizer(cfg.out)
    spec_file = layout.tokens_tokenizer_spec(cfg.out)
    if saved.exists() and spec_file.exists() and spec_file.read_text() == cfg.tokenizer:
        tok = from_file(saved, name=cfg.tokenizer.replace(":", ""))
        return tok
    texts = None
    if cfg.tokenizer.startswith("bpe:"):
        texts = list(_sample_texts(document_shards(cfg.corpus, "train"), cfg.bpe_train_mb))
    tok = load_tokenizer(cfg.tokenizer, texts)
    tok.save(saved)
    spec_file.write_text(cfg.tokenizer)
    return tok


def _sample_texts(shards: list[Path], mb: float):
    """Up to ``mb`` MB spread evenly over shards (every domain contributes)."""
    budget = mb * 1e6 / max(1, len(shards))
    for shard in shards:
        used = 0
        for text in pq.read_table(shard, columns=["text"]).column("text").to_pylist():
            if not text:  # null or empty (a null-typed column of an empty shard)
                continue
            yield text
            used += len(text)
            if used >= budget:
                break


def corpus_domains(corpus: Path, train_shards: list[Path]) -> list[str]:
    """Every domain of the corpus (a domain with held-out documents only still gets its id, so
    domain ids agree with the eval split's)."""
    return sorted({p.parent.name for p in train_shards + document_shards(corpus, "eval")})


def split_jobs(cfg: PrepareConfig, train_shards: list[Path]) -> list[tuple[str, str, Path]]:
    """``(split, split_dir, shard)`` per token shard: each training shard gives a train and (with
    ``dev_fraction > 0``) a dev token shard. The held-out eval split is not among them."""
    jobs = [("train", "documents", s) for s in train_shards]
    if cfg.dev_fraction > 0:
        jobs += [("dev", "documents", s) for s in train_shards]
    return jobs


@integrity.locked("prepare", lambda cfg: cfg.out)  # one writer per tokens dir
def prepare(cfg: PrepareConfig) -> Path:
    t0 = time.time()
    cfg.out.mkdir(parents=True, exist_ok=True)
    integrity.verify_corpus_shards(cfg.corpus, document_shards(cfg.corpus, "train"))  # before any text is read
    if cfg.engine.name == "ray":
        from toremi.prepare_ray import prepare_ray

        return prepare_ray(cfg)
    save_config(cfg, layout.tokens_config(cfg.out))
    tok = _resolve_tokenizer(cfg)
    train_shards = document_shards(cfg.corpus, "train")
    domains = corpus_domains(cfg.corpus, train_shards)
    domain_ids = {d: i for i, d in enumerate(domains)}
    topics = TopicLookup(cfg, domains)
    if topics.warning:
        print(f"toremi prepare: warning: {topics.warning}", file=sys.stderr)
    if cfg.topics_from == "label":  # label vocabulary must be fixed before shards are cut
        for shard in train_shards:
            topics.for_shard("documents", shard, pq.read_table(shard, columns=["label", "domain"]))
    token_bytes = tok.token_byte_lengths()
    jobs = split_jobs(cfg, train_shards)
    stats: list[dict] = []
    out_bins = [layout.tokens_shard(cfg.out, split, k) for k, (split, _, _) in enumerate(jobs)]
    inputs = integrity.token_shard_inputs(cfg, tok, jobs, topics, domains, INDEX_VERSION)
    finished = merge.plan(cfg, jobs, out_bins, inputs)
    todo = [k for k in range(len(jobs)) if k not in finished]
    # Tokenize the next shard in a thread while this one is cut, indexed and written.
    pool = ThreadPoolExecutor(max_workers=1)
    encode = lambda k: pool.submit(_read_and_encode, jobs[k][2], tok, cfg.batch_docs, jobs[k][0],  # noqa: E731
                                   cfg.dev_fraction, cfg.dev_seed)
    pending = {k: encode(k) for k in todo[:1]}
    bar = progress.bar(jobs, desc="prepare", unit="shard")
    for k, (split, _, shard) in enumerate(bar):
        out_bin = out_bins[k]
        if k in finished:
            info = finished[k]
        else:
            nxt = todo.index(k) + 1
            if nxt < len(todo):
                pending[todo[nxt]] = encode(todo[nxt])
            info = _prepare_shard(pending.pop(k).result(), shard, split, tok, cfg, topics,
                                  domain_ids, out_bin, token_bytes)
            merge.record_shard(cfg, info, split, shard, out_bin, inputs[k], INDEX_VERSION)
        stats.append(info)
        bar.set_postfix(tokens=sum(s["tokens"] for s in stats))
    pool.shutdown()
    return _finalize(cfg, tok, stats, domains, topics, time.time() - t0)


def _finalize(cfg, tok, stats, domains, topics, seconds) -> Path:
    """Merge per-shard indexes into one per split, assign global doc ids, write the manifest."""
    doc_ids: list[str] = []
    parts: dict[str, list[dict]] = {"train": [], "dev": []}
    rng = np.random.default_rng(0)
    for shard_no, info in enumerate(stats):
        with np.load(cfg.out / Path(info["path"]).with_suffix(".idx.npz")) as z:
            part = {k: z[k] for k in z.files}
        part["shard"] = np.full(len(part["offset"]), shard_no, dtype=np.int32)
        part["doc"] = part.pop("doc_row") + len(doc_ids)
        doc_ids.extend(info["doc_ids"])
        parts[info["split"]].append(part)
    for split, items in parts.items():
        merged = {k: np.concatenate([p[k] for p in items]) if items else np.zeros(
            (0, cfg.max_topics) if k == "topics" else 0, dtype=np.int32)
            for k in ("shard", "offset", "length", "bytes", "doc", "domain", "topics")}
        if split == "dev" and len(merged["offset"]):  # cap per domain, spread over documents
            keep = np.concatenate([
                rng.permutation(np.nonzero(merged["domain"] == d)[0])[: cfg.dev_sequences_per_domain]
                for d in np.unique(merged["domain"])])
            merged = {k: v[np.sort(keep)] for k, v in merged.items()}
        with atomic_path(layout.tokens_index(cfg.out, split)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **merged)
    import pyarrow as pa

    with atomic_path(layout.tokens_documents(cfg.out)) as tmp:
        pq.write_table(pa.table({"id": doc_ids}), tmp)
    sequences = {split: int(sum(len(p["offset"]) for p in items)) for split, items in parts.items()}
    merge.write_manifest(cfg, tok, stats, [sha256_file(cfg.out / s["path"]) for s in stats], domains, topics,
                         sequences, seconds)
    return cfg.out


STAGE = Stage("prepare", PrepareConfig, lock=lambda cfg: cfg.out, doc=__doc__)


def main(argv: list[str] | None = None) -> int:
    return STAGE.run(argv, _prepare)


def _prepare(cfg: PrepareConfig) -> int:
    out = prepare(cfg)
    m = read_json(layout.tokens_manifest(out))
    print(json.dumps({"out": str(out), "tokenizer": m["tokenizer"], "sequences": m["sequences"],
                      "tokens": m["tokens"], "topics": len(m["topic_names"]),
                      "packing": m["packing"], "fill": {k: v["overall"] for k, v in m["fill"].items()},
                      "seconds": m["seconds"]}, indent=2))
    return 0
