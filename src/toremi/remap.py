"""``toremi remap``: carry per-topic weights from one topic set to another through shared documents.

A run learns one weight per topic of the topic set its tokens were prepared with. After the corpus
is re-annotated (another labeller, another topic list, another grouping), those weights can be
carried over through the documents both annotations label:

* a document's old weight is the mean of its old topics' weights, as ToReMi weights a sample
  (``toremi.methods.rules.sample_weights``); a document without old topics weighs 1;
* a new topic's weight is the mean, over the new topic's documents that the old side also has, of
  those documents' old weights; each document counts once (``weight_by=documents``, the default)
  or by its training tokens (``weight_by=tokens``, tokens dirs only).

So ``new = M @ [old_weights, 1]`` with ``M[t, k]`` the share of new topic ``t``'s documents that old
topic ``k`` accounts for (a document with ``n`` old topics gives ``1/n`` to each; the last column is
the share of documents the old side left unlabelled). The output records ``M`` so that every
mapped weight can be traced back. A new topic with no shared document gets weight 1 (neutral,
ToReMi's starting weight) and is listed under ``no_shared_documents``.

Inputs are two prepared tokens dirs (the ``train`` split: ``index-train.npz`` gives each sequence's
``doc`` row of ``documents.parquet`` and its ``topics``), or two annotation dirs (``topics.json`` and
``attributes/topics/``), matched by document id; and the weights of a run prepared on the old side
(``weights.jsonl``: its last record, ``--mode last``, or the mean of all records, ``--mode average``).

Coverage is the fraction of the new topic set's labelled documents, and of their tokens, that the
old side has. Below ``--min-coverage`` (default 0.9, ``COVERAGE_THRESHOLD``; the smaller of the two
fractions counts; annotation dirs have documents only) the mapping would rest on too few shared
documents: ``toremi remap`` refuses with one line, exit status 2, and writes nothing.

    toremi remap --old TOKENS_A --new TOKENS_B --run RUN [--mode last|average] --out FILE
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from toremi import layout
from toremi.io import atomic_write_json, read_json, read_jsonl
from toremi.stage import Stage

COVERAGE_THRESHOLD = 0.9   # default --min-coverage
UNLABELLED = "(unlabelled)"  # the mapping matrix's last column: documents the old side left unlabelled


class CoverageError(ValueError):
    """Too few of the new topic set's documents exist on the old side; ``result`` has the numbers."""

    def __init__(self, message: str, result: "RemapResult"):
        super().__init__(message)
        self.result = result


@dataclasses.dataclass
class Labelled:
    """Documents of one side: ids, topic ids [D, M] padded with -1, tokens (None: unknown)."""

    path: str
    kind: str                    # "tokens" | "annotations"
    topic_names: list[str]
    ids: pa.Array
    topics: np.ndarray
    tokens: np.ndarray | None
    data_hash: str | None = None
    duplicates: int = 0          # repeated ids dropped (the first occurrence kept)


@dataclasses.dataclass
class RemapResult:
    topic_names: list[str]       # the new topic set
    weights: list[float]         # one per new topic
    old_topic_names: list[str]
    old_weights: list[float]
    matrix: np.ndarray           # [K_new, K_old + 1]: last column = old-unlabelled share
    coverage: dict               # documents, tokens (None for annotation dirs), counts
    per_topic: list[dict]        # per new topic: documents, shared, coverage, top old topics
    weight_by: str
    old: Labelled
    new: Labelled

    @property
    def min_coverage_value(self) -> float:
        vals = [v for v in (self.coverage["documents"], self.coverage["tokens"]) if v is not None]
        return min(vals) if vals else 0.0

    def to_json(self) -> dict:
        cols = self.old_topic_names + [UNLABELLED]
        no_shared = [r["topic"] for r in self.per_topic if r["shared_documents"] == 0]
        return {
            "format": "toremi.remap/1",
            "topic_names": self.topic_names,
            "weights": [round(w, 8) for w in self.weights],
            "weight_by": self.weight_by,
            "coverage": self.coverage,
            "no_shared_documents": no_shared,
            "old": {"path": self.old.path, "kind": self.old.kind, "data_hash": self.old.data_hash,
                    "topic_names": self.old_topic_names, "weights": self.old_weights,
                    "duplicate_ids": self.old.duplicates},
            "new": {"path": self.new.path, "kind": self.new.kind, "data_hash": self.new.data_hash,
                    "duplicate_ids": self.new.duplicates},
            "mapping": {"rows": self.topic_names, "columns": cols,
                        "matrix": [[round(float(x), 6) for x in row] for row in self.matrix],
                        "per_topic": self.per_topic},
        }


# --- reading one side ---------------------------------------------------------------------------
def _first_per_id(ids: pa.Array, topics: np.ndarray, tokens: np.ndarray | None):
    """Drop repeated ids (keep the first): a document is matched once."""
    if pc.count_distinct(ids).as_py() == len(ids):
        return ids, topics, tokens, 0
    _, first = np.unique(ids.to_numpy(zero_copy_only=False), return_index=True)
    first.sort()
    return (ids.take(pa.array(first)), topics[first], None if tokens is None else tokens[first],
            len(ids) - len(first))


def read_tokens_dir(path: Path) -> Labelled:
    man_path = layout.tokens_manifest(path)
    if not man_path.exists():
        raise FileNotFoundError(f"{path}: not a finished tokens dir (no {man_path.name}; run `toremi prepare`)")
    man = read_json(man_path)
    parts = []  # train and dev: both are the annotated training documents
    for split in ("train", "dev"):
        if layout.tokens_index(path, split).exists():
            with np.load(layout.tokens_index(path, split)) as z:
                parts.append((z["doc"].astype(np.int64), z["topics"], z["length"].astype(np.int64)))
    doc, topics, length = (np.concatenate(c) for c in zip(*parts))
    all_ids = pq.read_table(layout.tokens_documents(path), columns=["id"]).column("id").combine_chunks()
    rows, first = np.unique(doc, return_index=True)  # documents with train sequences, in row order
    tokens = np.bincount(doc, weights=np.maximum(length - 1, 0), minlength=len(all_ids))[rows]
    ids = all_ids.cast(pa.string()).take(pa.array(rows))
    ids, doc_topics, tokens, dups = _first_per_id(ids, topics[first].astype(np.int64), tokens)
    return Labelled(str(path), "tokens", list(man["topic_names"]), ids, doc_topics, tokens,
                    man.get("data_hash"), dups)


def read_annotation_dir(path: Path) -> Labelled:
    names = read_json(layout.topics_json(path))["topic_names"]
    files = sorted(layout.topic_attributes(path).glob("*/*.parquet"))
    if not files:
        raise FileNotFoundError(f"{layout.topic_attributes(path)}: no topic attributes (run `toremi annotate`)")
    tables = [pq.read_table(f, columns=["id", "topic_ids"]) for f in files]
    table = pa.concat_tables(tables)
    lists = table.column("topic_ids").to_pylist()
    width = max([len(x or []) for x in lists] + [1])
    topics = np.full((len(lists), width), -1, dtype=np.int64)
    for i, x in enumerate(lists):
        if x:
            topics[i, :len(x)] = x
    ids = table.column("id").combine_chunks().cast(pa.string())
    ids, topics, _, dups = _first_per_id(ids, topics, None)
    return Labelled(str(path), "annotations", list(names), ids, topics, None, None, dups)


def read_side(path: str | Path | Labelled) -> Labelled:
    """A tokens dir (``manifest.json`` + ``index-train.npz``) or an annotation dir (``topics.json``)."""
    if isinstance(path, Labelled):
        return path
    path = Path(path)
    if layout.tokens_manifest(path).exists() and layout.tokens_index(path, "train").exists():
        return read_tokens_dir(path)
    if layout.topics_json(path).exists():
        return read_annotation_dir(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such directory")
    raise ValueError(f"{path}: neither a prepared tokens dir (manifest.json, index-train.npz) nor an "
                     f"annotation dir (topics.json)")


# --- weights of a run ---------------------------------------------------------------------------
def run_weights(run: str | Path, mode: str = "last") -> tuple[list[float], dict]:
    """The run's per-topic weights (``last`` record or ``average`` of all) and where they came from."""
    if mode not in ("last", "average"):
        raise ValueError(f"mode={mode!r}: use last or average")
    path = layout.run_weights(run)
    recs = [r for r in read_jsonl(path) if r.get("weights") is not None]
    if not recs:
        raise FileNotFoundError(f"{path}: no weight records (is {run} a run dir of a reweighting method?)")
    if mode == "last":
        w = np.asarray(recs[-1]["weights"], dtype=np.float64)
    else:
        w = np.mean(np.asarray([r["weights"] for r in recs], dtype=np.float64), axis=0)
    info_path = layout.run_info(run)
    info = read_json(info_path) if info_path.exists() else {}
    source = {"run": str(run), "mode": mode, "records": len(recs),
              "steps": [recs[0].get("step"), recs[-1].get("step")] if mode == "average" else recs[-1].get("step"),
              "topic_names": info.get("topic_names"), "data_hash": info.get("data_hash")}
    return w.tolist(), source


# --- the mapping ----------------------------------------------------------------------------------
def _doc_old_weight(topics: np.ndarray, w: np.ndarray, unlabelled: float = 1.0) -> np.ndarray:
    """Mean of each document's topic weights; ``unlabelled`` for documents without topics."""
    valid = topics >= 0
    ext = np.append(w, 0.0)
    n = valid.sum(1)
    s = ext[np.where(valid, topics, len(w))].sum(1)
    return np.where(n > 0, s / np.maximum(n, 1), unlabelled)


def remap_weights(old_tokens: str | Path | Labelled, new_tokens: str | Path | Labelled, old_weights, *,
                  min_coverage: float = COVERAGE_THRESHOLD, weight_by: str = "documents") -> RemapResult:
    """Map ``old_weights`` (one per topic of ``old_tokens``) onto the topics of ``new_tokens``.

    Both sides are tokens dirs or annotation dirs (``read_side``). Raises CoverageError (a
    ValueError, with the computed ``result``) when coverage is below ``min_coverage`` (0 disables).
    """
    if weight_by not in ("documents", "tokens"):
        raise ValueError(f"weight_by={weight_by!r}: use documents or tokens")
    old, new = read_side(old_tokens), read_side(new_tokens)
    w = np.asarray(old_weights, dtype=np.float64).reshape(-1)
    k_old, k_new = len(old.topic_names), len(new.topic_names)
    if len(w) != k_old:
        raise ValueError(f"{len(w)} weights for {k_old} topics of {old.path}")
    if not np.all(np.isfinite(w)):
        raise ValueError("old weights must be finite")
    if weight_by == "tokens" and new.tokens is None:
        raise ValueError(f"weight_by=tokens needs a tokens dir as --new ({new.path} is an annotation dir)")

    # each new document's row on the old side (-1: the old side does not have it)
    pos = pc.fill_null(pc.index_in(new.ids, value_set=old.ids), -1).to_numpy().astype(np.int64)
    shared = pos >= 0
    new_valid = new.topics >= 0
    labelled = new_valid.any(1)
    doc_mass = np.ones(len(pos)) if weight_by == "documents" else new.tokens.astype(np.float64)

    # coverage over the new topic set's (labelled) documents and their tokens
    n_lab, n_cov = int(labelled.sum()), int((labelled & shared).sum())
    cov_docs = n_cov / n_lab if n_lab else 0.0
    cov_tokens = None
    if new.tokens is not None:
        t_lab = float(new.tokens[labelled].sum())
        cov_tokens = float(new.tokens[labelled & shared].sum()) / t_lab if t_lab else 0.0

    # per shared new document: old topics (-1 padded) and old weight
    old_topics = np.full((len(pos), old.topics.shape[1]), -1, dtype=np.int64)
    old_topics[shared] = old.topics[pos[shared]]
    old_w = _doc_old_weight(old_topics, w)
    old_valid = old_topics >= 0
    n_old = old_valid.sum(1)

    # mass of new topic t over its shared documents, and M[t, k] accumulated pair by pair
    rows = np.nonzero(shared)[0]
    mass = np.zeros(k_new)
    acc = np.zeros((k_new, k_old + 1))
    for j in range(new.topics.shape[1]):
        sel = rows[new_valid[rows, j]]
        t = new.topics[sel, j]
        np.add.at(mass, t, doc_mass[sel])
        none = sel[n_old[sel] == 0]
        np.add.at(acc, (new.topics[none, j], np.full(len(none), k_old)), doc_mass[none])
        for i in range(old_topics.shape[1]):
            s2 = sel[old_valid[sel, i]]
            np.add.at(acc, (new.topics[s2, j], old_topics[s2, i]), doc_mass[s2] / n_old[s2])
    matrix = np.divide(acc, mass[:, None], out=np.zeros_like(acc), where=mass[:, None] > 0)
    mapped = matrix @ np.append(w, 1.0)
    mapped = np.where(mass > 0, mapped, 1.0)

    # per new topic: how many documents, how many shared, which old topics carry it
    docs_t = np.zeros(k_new, dtype=np.int64)
    shared_t = np.zeros(k_new, dtype=np.int64)
    for j in range(new.topics.shape[1]):
        np.add.at(docs_t, new.topics[new_valid[:, j], j], 1)
        np.add.at(shared_t, new.topics[new_valid[:, j] & shared, j], 1)
    cols = old.topic_names + [UNLABELLED]
    per_topic = []
    for t, name in enumerate(new.topic_names):
        top = np.argsort(-matrix[t], kind="stable")[:3]
        per_topic.append({"topic": name, "weight": round(float(mapped[t]), 8), "documents": int(docs_t[t]),
                          "shared_documents": int(shared_t[t]),
                          "coverage": round(float(shared_t[t] / docs_t[t]), 6) if docs_t[t] else None,
                          "from": {cols[k]: round(float(matrix[t, k]), 6) for k in top if matrix[t, k] > 0}})
    coverage = {"documents": round(cov_docs, 6), "tokens": None if cov_tokens is None else round(cov_tokens, 6),
                "threshold": min_coverage, "new_labelled_documents": n_lab, "shared_documents": n_cov,
                "shared_documents_old_labelled": int((labelled & shared & (n_old > 0)).sum())}
    result = RemapResult(list(new.topic_names), mapped.tolist(), list(old.topic_names), w.tolist(), matrix,
                         coverage, per_topic, weight_by, old, new)
    if result.min_coverage_value < min_coverage:
        tok = "" if cov_tokens is None else f" and {cov_tokens:.1%} of their tokens"
        raise CoverageError(
            f"coverage too low: {cov_docs:.1%} of the new topic set's documents ({n_cov}/{n_lab}){tok} "
            f"are in the old annotation ({old.path}), below --min-coverage {min_coverage:g}; nothing written",
            result)
    return result


def run_hashes(manifest: dict) -> set:
    """The data hashes a run on this tokens dir may record (TokenDataset.data_hash: the manifest's,
    or combined with the packed index's when it trained on packed windows)."""
    h = manifest.get("data_hash")
    out = {h}
    if h and manifest.get("packed"):
        from toremi.io import sha256_json

        out.add(sha256_json([h, manifest["packed"]["data_hash"]]))
    return out


# --- using a written mapping (train resume, replay) ------------------------------------------------
def load_mapping(path: str | Path) -> dict:
    """A ``toremi remap`` output, checked for the fields a resume or a replay reads."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such remap file (write one with `toremi remap ... --out {path}`)")
    doc = read_json(path)
    if doc.get("format") != "toremi.remap/1" or "mapping" not in doc:
        raise ValueError(f"{path}: not a `toremi remap` output (format {doc.get('format')!r})")
    doc["path"] = str(path)
    return doc


def map_vector(mapping: dict, values, unlabelled: float = 1.0) -> np.ndarray:
    """Per-topic ``values`` of the old topic set -> the new one through the recorded matrix:
    ``M @ [values, unlabelled]`` (the document-weighted mean, as ``remap_weights``); a new topic
    with no shared document gets ``unlabelled`` (weights: 1, neutral). The matrix is stored at 6
    decimals, so a mapped value matches ``remap_weights`` to about 1e-6."""
    m = np.asarray(mapping["mapping"]["matrix"], dtype=np.float64)
    v = np.append(np.asarray(values, dtype=np.float64).reshape(-1), unlabelled)
    if m.shape[1] != len(v):
        raise ValueError(f"{mapping.get('path', 'remap')}: maps {m.shape[1] - 1} old topics, got {len(v) - 1} values")
    out = m @ v
    return np.where(m.sum(1) > 0, out, unlabelled)


@dataclasses.dataclass
class RemapConfig:
    old: str  # tokens dir (or annotation dir) the run was trained on
    new: str  # tokens dir (or annotation dir) with the new topic set
    run: str  # run dir whose weights.jsonl holds the old weights
    out: str  # output JSON file
    mode: Literal["last", "average"] = "last"  # last weights.jsonl record, or the mean of all records
    weight_by: Literal["documents", "tokens"] = "documents"  # each shared document counts once, or by its training tokens
    min_coverage: float = COVERAGE_THRESHOLD  # refuse (exit 2, nothing written) below this coverage

    def __post_init__(self):
        if not 0.0 <= self.min_coverage <= 1.0:
            raise ValueError(f"--min-coverage {self.min_coverage}: use a fraction in [0, 1]")


# The output is one file: the lock is on the folder it goes to.
STAGE = Stage("remap", RemapConfig, lock=lambda cfg: Path(cfg.out).parent, doc=__doc__)


def main(argv: list[str] | None = None) -> int:
    return STAGE.run(argv, _remap)


def _remap(args: RemapConfig) -> int:
    weights, source = run_weights(args.run, args.mode)
    old = read_side(args.old)
    old_names = old.topic_names
    if source["topic_names"] is not None and list(source["topic_names"]) != list(old_names):
        raise ValueError(f"{args.run} was trained on other topics than {args.old} "
                         f"({len(source['topic_names'])} vs {len(old_names)} topics, or renamed)")
    result = remap_weights(old, args.new, weights, min_coverage=args.min_coverage,
                           weight_by=args.weight_by)
    doc = {**result.to_json(), "source": source}
    old_hashes = run_hashes(read_json(layout.tokens_manifest(args.old))) if result.old.kind == "tokens" else set()
    if source["data_hash"] and result.old.data_hash and source["data_hash"] not in old_hashes:
        print(f"toremi remap: warning: {args.run} trained on data {source['data_hash'][:12]}, "
              f"{args.old} is {result.old.data_hash[:12]} (same topics, other data)", file=sys.stderr)
    atomic_write_json(Path(args.out), doc)
    print(json.dumps({"out": args.out, "topics": len(result.topic_names),
                      "coverage": {k: result.coverage[k] for k in ("documents", "tokens")},
                      "weights": dict(zip(result.topic_names, [round(x, 4) for x in result.weights]))}, indent=2))
    return 0
