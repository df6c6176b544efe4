"""One document shard -> one token shard: the per-shard function both engines map.

``shard_map(item)`` reads the documents of one split of one training shard, tokenizes them, cuts
windows, and writes the token shard (``.bin``), its index (``.idx.npz``), with ``packing=docs``
its packed index (``.pack.npz``), then its ``.meta.json`` and done marker (``record_shard``), so a
rerun resumes from the markers whoever did the shard (the driver's thread or a Ray task).
``reusable`` is the other side of that contract: which finished shards a rerun keeps.
Items and results are small JSON-able dicts; nothing here depends on the engine.
"""

from __future__ import annotations

import itertools
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from toremi import done, layout
from toremi.config import from_dict
from toremi.data import packing as packmod
from toremi.data.shards import token_dtype, write_shard
from toremi.io import atomic_path, atomic_write_json, read_json
from toremi.prepare.config import INDEX_VERSION, PrepareConfig
from toremi.tokenizer import Tokenizer


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

    def __init__(self, cfg: PrepareConfig, domains: list[str], label_names: list[str] | None = None):
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
        for label in label_names or []:  # a label vocabulary fixed by the driver
            self._labels[label] = len(self.names)
            self.names.append(label)

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


def read_and_encode(shard: Path, tok: Tokenizer, batch_docs: int, split: str = "train",
                    dev_fraction: float = 0.0, dev_seed: int = 0):
    """Read the documents of ``split`` (train or dev) from a training shard and tokenize them."""
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


def write_token_shard(encoded, shard: Path, split: str, tok: Tokenizer, cfg: PrepareConfig,
                      topics: TopicLookup, domain_ids: dict[str, int], out_bin: Path,
                      token_bytes: np.ndarray) -> dict:
    """Token shard, index (and packed index) of one encoded shard; returns its summary."""
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


def record_shard(cfg, info: dict, split: str, shard: Path, out_bin: Path, inputs: dict) -> dict:
    """Complete a finished shard's summary, write its ``.meta.json``, then its done marker."""
    info.update(split=split, source=str(Path(shard).relative_to(cfg.corpus)), index_version=INDEX_VERSION,
                domain=Path(shard).parent.name, path=str(out_bin.relative_to(cfg.out)), inputs=inputs,
                idx_sha256=done.file_sha256(out_bin.with_suffix(".idx.npz")))
    atomic_write_json(out_bin.with_suffix(".meta.json"), info)
    done.mark(out_bin, {"tokens": info["tokens"]})
    return info


def reusable(cfg, jobs: list, out_bins: list[Path], inputs: list[dict]) -> dict[int, dict]:
    """Job number -> summary of each token shard a rerun keeps as it is: done, the same inputs (exact
    fingerprint, integrity.token_shard_inputs), its bytes and index unchanged. The others are
    redone, with the reason printed when an older shard is replaced."""
    finished = {}
    for k, (split, _, _) in enumerate(jobs):
        meta_path = out_bins[k].with_suffix(".meta.json")
        meta = read_json(meta_path) if done.is_done(out_bins[k]) and meta_path.exists() else {}
        why = done.why_redo(out_bins[k], inputs=inputs[k], record=meta) if meta else "not finished"
        if why is None and meta.get("idx_sha256"):
            why = done.changed(out_bins[k].with_suffix(".idx.npz"), meta["idx_sha256"])
        if why is None and not (cfg.packing == "none" or split != "train"
                                or out_bins[k].with_suffix(".pack.npz").exists()):
            why = "its packed index is missing"
        if why is None:  # its counts; the document ids stay in the meta file for the merge
            finished[k] = {key: v for key, v in meta.items() if key != "doc_ids"}
        elif meta:
            print(f"toremi prepare: redoing {out_bins[k].name}: {why}", file=sys.stderr)
    return finished


# ---------------------------------------------------------------- the map
_TOK: dict = {}


def tokenizer(out: Path, spec: str) -> tuple[Tokenizer, np.ndarray]:
    """The driver's tokenizer (from the ``tokenizer.json`` it saved) and its token byte lengths,
    loaded once per process (Ray reuses worker processes)."""
    key = (str(out), spec)
    if key not in _TOK:
        from toremi.tokenizer import from_file

        tok = from_file(layout.tokens_tokenizer(out), name=spec.replace(":", ""))
        _TOK[key] = tok, tok.token_byte_lengths()
    return _TOK[key]


def remember_tokenizer(cfg: PrepareConfig, tok: Tokenizer) -> None:
    """Let this process's maps use the driver's own tokenizer object (the in-process engine)."""
    _TOK[(str(cfg.out), cfg.tokenizer)] = tok, tok.token_byte_lengths()


def shard_map(item: dict) -> dict:
    """One job ``{cfg, shard, out_bin, split, inputs, domains, label_names}`` -> its token shard,
    index, meta and marker; returns the shard's summary (counts, no document ids: those stay in
    the meta file for the merge)."""
    cfg = from_dict(PrepareConfig, item["cfg"])
    tok, token_bytes = tokenizer(cfg.out, cfg.tokenizer)
    topics = TopicLookup(cfg, item["domains"], item["label_names"])
    shard, out_bin = Path(item["shard"]), Path(item["out_bin"])
    encoded = read_and_encode(shard, tok, cfg.batch_docs, item["split"], cfg.dev_fraction, cfg.dev_seed)
    info = write_token_shard(encoded, shard, item["split"], tok, cfg, topics,
                             {d: i for i, d in enumerate(item["domains"])}, out_bin, token_bytes)
    record_shard(cfg, info, item["split"], shard, out_bin, item["inputs"])
    info.pop("doc_ids")
    return info
