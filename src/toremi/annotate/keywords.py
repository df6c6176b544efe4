"""Step 3: cluster keywords by class-based TF-IDF (c-TF-IDF, as in BERTopic).

Counting is a per-shard map (a CountVectorizer over the shard's documents, summed per cluster
with one sparse matmul), and the reduction merges the shards' vocabularies, so the corpus is never
held in memory and the map runs unchanged on Ray. Scoring treats each cluster as one document:
``w(t, c) = tf(t, c) / |c| * log(1 + A / f(t))`` with A the mean number of words per cluster and
f(t) the frequency of t over all clusters; words frequent everywhere sink, a cluster's own rise.
"""

from __future__ import annotations

import dataclasses
from importlib import resources

import numpy as np
import scipy.sparse as sp


@dataclasses.dataclass
class KeywordsConfig:
    top_n: int = 150                 # keywords kept per cluster (keywords.json)
    min_df: int = 2                  # a term must occur in this many documents (drops typos)
    max_doc_chars: int = 20_000      # characters of each document counted
    stop_words: str = ""             # file, one word per line ("" = shipped English list)
    token_pattern: str = r"(?u)\b[^\W\d_][^\W\d_]+\b"

    def __post_init__(self):
        if self.top_n < 1 or self.min_df < 1:
            raise ValueError("keywords: top_n and min_df must be >= 1")


def load_stop_words(path: str = "") -> frozenset[str]:
    text = (open(path).read() if path else
            resources.files("toremi").joinpath("resources/stopwords_en.txt").read_text())
    return frozenset(w.strip().lower() for w in text.splitlines()
                     if w.strip() and not w.startswith("#"))


def count_shard(texts: list[str], labels: np.ndarray, k: int, cfg: KeywordsConfig,
                stop_words: frozenset[str]) -> dict:
    """Map: per-cluster term counts and document frequencies of one shard (local vocabulary)."""
    from sklearn.feature_extraction.text import CountVectorizer

    keep = np.flatnonzero(labels >= 0)
    docs = [(texts[i] or "")[:cfg.max_doc_chars] for i in keep]
    if not docs:
        return {"terms": [], "counts": sp.csr_matrix((k, 0), dtype=np.int64), "df": np.zeros(0, np.int64)}
    vec = CountVectorizer(token_pattern=cfg.token_pattern, stop_words=list(stop_words),
                          lowercase=True, dtype=np.int64)
    try:
        x = vec.fit_transform(docs)
    except ValueError:  # only stop words / no tokens in this shard
        return {"terms": [], "counts": sp.csr_matrix((k, 0), dtype=np.int64), "df": np.zeros(0, np.int64)}
    member = sp.csr_matrix((np.ones(len(keep), np.int64), (labels[keep], np.arange(len(keep)))),
                           shape=(k, len(keep)))
    return {"terms": vec.get_feature_names_out().tolist(), "counts": (member @ x).tocsr(),
            "df": np.asarray((x > 0).sum(0)).ravel().astype(np.int64)}


def merge_counts(parts: list[dict], k: int) -> tuple[list[str], sp.csr_matrix, np.ndarray]:
    """Reduce: one global vocabulary, per-cluster counts [k, V] and document frequencies [V]."""
    vocab: dict[str, int] = {}
    rows, cols, vals, df_idx, df_val = [], [], [], [], []
    for p in parts:
        gidx = np.array([vocab.setdefault(t, len(vocab)) for t in p["terms"]], np.int64)
        c = p["counts"].tocoo()
        rows.append(c.row), cols.append(gidx[c.col] if len(gidx) else c.col), vals.append(c.data)
        df_idx.append(gidx), df_val.append(p["df"])
    V = len(vocab)
    counts = sp.csr_matrix((np.concatenate(vals) if vals else [], (np.concatenate(rows) if rows else [],
                            np.concatenate(cols) if cols else [])), shape=(k, V), dtype=np.int64)
    counts.sum_duplicates()
    df = np.zeros(V, np.int64)
    if V:
        np.add.at(df, np.concatenate(df_idx), np.concatenate(df_val))
    terms = [""] * V
    for t, i in vocab.items():
        terms[i] = t
    return terms, counts, df


def ctfidf_top(terms: list[str], counts: sp.csr_matrix, df: np.ndarray, cfg: KeywordsConfig
               ) -> dict[int, list[str]]:
    """Top ``cfg.top_n`` terms per cluster by c-TF-IDF; ties broken by term order (deterministic)."""
    k = counts.shape[0]
    keep = np.flatnonzero(df >= cfg.min_df)
    c = counts[:, keep].astype(np.float64).tocsr()
    names = np.asarray(terms, dtype=object)[keep] if len(keep) else np.array([], dtype=object)
    words_per_cluster = np.asarray(c.sum(1)).ravel()
    freq = np.asarray(c.sum(0)).ravel()
    avg = words_per_cluster[words_per_cluster > 0].mean() if (words_per_cluster > 0).any() else 1.0
    idf = np.log1p(avg / np.maximum(freq, 1))
    tf = sp.diags(1.0 / np.maximum(words_per_cluster, 1)) @ c
    score = (tf @ sp.diags(idf)).tocsr()
    out: dict[int, list[str]] = {}
    order_names = np.argsort(names, kind="stable") if len(names) else np.array([], np.int64)
    rank_of = np.empty(len(names), np.int64)
    rank_of[order_names] = np.arange(len(names))
    for cid in range(k):
        row = score.getrow(cid)
        if row.nnz == 0:
            out[cid] = []
            continue
        top = np.lexsort((rank_of[row.indices], -row.data))[:cfg.top_n]
        out[cid] = names[row.indices[top]].tolist()
    return out
