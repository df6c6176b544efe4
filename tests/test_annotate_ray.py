"""Ray Data engine gives the same annotation as the in-process engine (same seed, small corpus)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray.data")

from toremi.annotate.corpora import bbc_records, write_corpus  # noqa: E402
from toremi.annotate.pipeline import AnnotateConfig, Annotator  # noqa: E402
from toremi.config import load_config  # noqa: E402


def test_ray_engine_equals_local(tmp_path):
    recs = bbc_records(8) + [{"id": "blank", "text": "", "domain": "misc", "label": None, "source": "z"}]
    corpus = write_corpus(tmp_path / "c", recs, shard_rows=15)
    over = ["cluster.k=4", "cluster.seed=7", "progress=false"]
    local = Annotator(corpus, tmp_path / "local", load_config(AnnotateConfig, None, over))
    local.run()
    ray_ann = Annotator(corpus, tmp_path / "ray", load_config(AnnotateConfig, None, over + ["engine=ray"]))
    try:
        ray_ann.run()
    finally:
        ray_ann.engine.shutdown()
    assert len(local.shards) == 4 and ray_ann.engine.name == "ray" and local.engine.name == "local"
    for s in local.shards:
        for kind, ext in (("embeddings", ".npy"), ("clusters", ".npy")):
            a = np.load(local._p(kind, s, ext))
            b = np.load(ray_ann._p(kind, s, ext))
            np.testing.assert_array_equal(a, b)
        ta = pq.read_table(local._p("attributes/topics", s, ".parquet")).to_pylist()
        tb = pq.read_table(ray_ann._p("attributes/topics", s, ".parquet")).to_pylist()
        assert ta == tb
    for name in ("keywords.json", "topics.json"):
        assert json.loads((tmp_path / "local" / name).read_text()) == json.loads((tmp_path / "ray" / name).read_text())
    np.testing.assert_array_equal(np.load(tmp_path / "local/clusters/member_means.npy"),
                                  np.load(tmp_path / "ray/clusters/member_means.npy"))
    man = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert man["config"]["engine"] == "ray"
