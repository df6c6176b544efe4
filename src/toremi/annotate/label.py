"""Step 4: name each cluster with 1-3 topics from a fixed topic set.

``Labeller.label(clusters) -> {cid: {"topic_ids", "labels", "evidence"}}`` where ``clusters`` maps
a cluster id to ``{"keywords": [...], "centroid": unit vector or None, "size": int}``. Every
cluster gets at least one label: a labeller that cannot decide must fall back, not skip.

The offline default, :class:`SimilarityLabeller`, scores each topic by the cosine similarity
between its "name: one-line description" embedding and (a) the cluster centroid, (b) the
embedding of the cluster's first keywords, both from the same embedder that embedded the
documents. The centroid alone is the default (``centroid_weight=1``): on BBC and Brown it was as
good as or better than any mix; keyword similarity is used when a cluster has no centroid and is
recorded as evidence. Scores are centred per topic over the topic set's mean vector, which removes the
direction every text shares (static embeddings are all alike along it) and lets the margin rule
compare topics fairly. Labels: the best topic, plus any runner-up (up to ``max_labels``) whose
score is within ``margin`` of the best or at least ``ratio`` times it (near-ties across related
categories such as Technology/Internet or Business/Economy keep both, as an LLM would).
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

import numpy as np


@dataclasses.dataclass
class SimilarityConfig:
    centroid_weight: float = 1.0     # score = w * centroid sim + (1 - w) * keyword sim
    n_keywords: int = 50             # first keywords embedded (as the LLM sees them)
    margin: float = 0.02             # runner-up kept if within this of the best score ...
    ratio: float = 0.75              # ... or if at least this fraction of the best score
    max_labels: int = 3
    corpus_center: bool = True       # centroid offset from the corpus mean (else the topics' mean)

    def __post_init__(self):
        if not 0.0 <= self.centroid_weight <= 1.0 or not 1 <= self.max_labels <= 3 or self.margin < 0 \
                or not 0.0 < self.ratio <= 1.0:
            raise ValueError("label.similarity: centroid_weight in [0,1], max_labels in 1..3, margin >= 0, "
                             "ratio in (0,1]")


@dataclasses.dataclass
class TopicSet:
    names: list[str]
    descriptions: list[str]

    @classmethod
    def load(cls, path: str | Path | None = None) -> "TopicSet":
        """One topic per line, optionally ``Name: description``; ``#`` lines are comments.
        No path: the 41 Wikipedia top-level categories shipped with toremi."""
        if path:
            path = Path(path)
            if not path.exists():
                raise FileNotFoundError(f"topic file {path} does not exist (one topic per line)")
            text = path.read_text()
        else:
            text = resources.files("toremi").joinpath("resources/wikipedia_categories.txt").read_text()
        names, descs = [], []
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, desc = line.partition(":")
            name = name.strip()
            if name in names:
                raise ValueError(f"{path or 'wikipedia_categories.txt'}:{lineno}: duplicate topic {name!r}")
            names.append(name)
            descs.append(desc.strip())
        if not names:
            raise ValueError(f"topic file {path} holds no topics")
        return cls(names, descs)

    def texts(self) -> list[str]:
        return [f"{n.replace('_', ' ')}: {d}" if d else n.replace("_", " ")
                for n, d in zip(self.names, self.descriptions)]


class Labeller:
    """Interface: clusters -> {cid: {"topic_ids": [...], "labels": [...], "evidence": {...}}}."""

    name = "labeller"

    def label(self, clusters: dict[int, dict]) -> dict[int, dict]:  # pragma: no cover
        raise NotImplementedError


def margin_pick(scores: np.ndarray, margin: float, max_labels: int, ratio: float = 1.0) -> np.ndarray:
    """Indices of the best score and of runners-up within ``margin`` of it or at least ``ratio``
    times it (at most ``max_labels``)."""
    order = np.argsort(-scores, kind="stable")[:max_labels]
    top = scores[order[0]]
    keep = (scores[order] >= top - margin) | ((top > 0) & (scores[order] >= ratio * top))
    return order[keep]


class SimilarityLabeller(Labeller):
    name = "similarity"

    def __init__(self, embedder, topics: TopicSet, cfg: SimilarityConfig | None = None,
                 doc_center: np.ndarray | None = None):
        self.embedder, self.topics, self.cfg = embedder, topics, cfg or SimilarityConfig()
        t = embedder.encode(topics.texts())
        self.mean = t.mean(0)
        self.topic_vecs = _unit(t - self.mean)
        # Centroids are compared by their offset from the corpus mean when it is known
        self.doc_center = self.mean if doc_center is None else np.asarray(doc_center, np.float32).reshape(-1)

    def scores(self, clusters: dict[int, dict]) -> tuple[list[int], np.ndarray, np.ndarray]:
        """(cluster ids, centroid scores [C, T], keyword scores [C, T]); NaN where absent."""
        cids = sorted(clusters)
        dim = self.topic_vecs.shape[1]
        vecs = [clusters[c].get("centroid") for c in cids]
        cent = np.array([np.zeros(dim) if v is None else v for v in vecs], np.float32).reshape(len(cids), dim)
        kw_texts = [" ".join(clusters[c].get("keywords", [])[:self.cfg.n_keywords]) for c in cids]
        kw = self.embedder.encode(kw_texts) if cids else np.zeros((0, dim), np.float32)
        s_cent = _unit(cent - self.doc_center * np.any(cent != 0, 1, keepdims=True)) @ self.topic_vecs.T
        s_kw = _unit(kw - self.mean * np.any(kw != 0, 1, keepdims=True)) @ self.topic_vecs.T
        s_cent[~np.any(cent != 0, 1)] = np.nan
        s_kw[~np.any(kw != 0, 1)] = np.nan
        return cids, s_cent, s_kw

    def label(self, clusters: dict[int, dict]) -> dict[int, dict]:
        cids, s_cent, s_kw = self.scores(clusters)
        w = self.cfg.centroid_weight
        out = {}
        for i, cid in enumerate(cids):
            parts = [(w, s_cent[i]), (1 - w, s_kw[i])]
            parts = [(wt, s) for wt, s in parts if not np.isnan(s).any() and wt > 0] or \
                    [(1.0, s) for _, s in parts if not np.isnan(s).any()]
            if parts:
                score = sum(wt * s for wt, s in parts) / sum(wt for wt, _ in parts)
                note = None
            else:  # no centroid and no keywords: nothing to compare; say so rather than skip
                score, note = np.zeros(len(self.topics.names)), "no centroid and no keywords"
            pick = margin_pick(score, self.cfg.margin, self.cfg.max_labels, self.cfg.ratio)
            top = np.argsort(-score, kind="stable")[:5]
            ev = {"method": "similarity", "scores": {self.topics.names[j]: round(float(score[j]), 4) for j in top},
                  "keywords": clusters[cid].get("keywords", [])[:10], "size": clusters[cid].get("size")}
            if not np.isnan(s_kw[i]).any():
                ev["keywords_best"] = self.topics.names[int(np.argmax(s_kw[i]))]
            if note:
                ev["note"] = note
            out[cid] = {"topic_ids": [int(j) for j in pick],
                        "labels": [self.topics.names[j] for j in pick], "evidence": ev}
        return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 1e-12)
