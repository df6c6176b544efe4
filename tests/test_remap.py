"""``toremi remap``: weights carried from one topic set to another, on real prepared tokens dirs.

Two annotation dirs label the same BBC corpus differently (the old one with the BBC categories,
some documents with two topics and some unlabelled; the new one with three coarser topics), each
is prepared into a tokens dir, and the mapped weights are checked against a plain per-document
computation written out by hand.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from toremi.cli import main as cli_main
from toremi.remap import COVERAGE_THRESHOLD, CoverageError, remap_weights, run_weights

OLD_NAMES = ["business", "entertainment", "politics", "sports", "tech"]
NEW_NAMES = ["money", "people", "games", "nobody"]  # "nobody": a topic no document carries
OLD_W = [1.5, 0.5, 2.0, 1.0, 0.25]


def old_topics(domain: str, i: int) -> list[str]:
    if domain == "politics" and i % 3 == 0:
        return ["politics", "business"]   # two topics: weight = mean of the two
    if domain == "entertainment" and i % 4 == 0:
        return []                          # unlabelled: weight 1
    return [domain]


def new_topics(domain: str, i: int) -> list[str]:
    return {"business": ["money"], "politics": ["money", "people"], "entertainment": ["people"],
            "sports": ["games"], "tech": ["games", "money"] if i % 2 == 0 else []}[domain]


def annotate_by_hand(corpus: Path, out: Path, names: list[str], rule) -> Path:
    """An annotation dir (topics.json + attributes/topics/) with topics chosen by ``rule``."""
    for shard in sorted((corpus / "documents").glob("*/*.parquet")):
        ids = pq.read_table(shard, columns=["id"]).column("id").to_pylist()
        topic_ids = [[names.index(t) for t in rule(shard.parent.name, i)] for i in range(len(ids))]
        dest = out / "attributes" / "topics" / shard.parent.name / shard.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": ids, "topic_ids": pa.array(topic_ids, pa.list_(pa.int32()))}), dest)
    (out / "topics.json").write_text(json.dumps({"topic_names": names}))
    return out


def prepare_with(corpus: Path, ann: Path, out: Path, tokenizer: Path) -> Path:
    from toremi.prepare import PrepareConfig, prepare

    return prepare(PrepareConfig(corpus=corpus, out=out, tokenizer=str(tokenizer), seq_len=64,
                                 topics_from="annotations", annotations=ann, packing="none"))


@pytest.fixture(scope="module")
def sides(tiny_corpus, tiny_tokens, tmp_path_factory):
    root = tmp_path_factory.mktemp("remap")
    tok = tiny_tokens / "tokenizer.json"  # reuse the trained BPE: no second tokenizer training
    old_ann = annotate_by_hand(tiny_corpus, root / "ann-old", OLD_NAMES, old_topics)
    new_ann = annotate_by_hand(tiny_corpus, root / "ann-new", NEW_NAMES, new_topics)
    # the old side without the tech documents: the new topic set's coverage drops to 160/180
    partial = root / "corpus-no-tech"
    shutil.copytree(tiny_corpus, partial, ignore=shutil.ignore_patterns("tech"))
    return {"old": prepare_with(tiny_corpus, old_ann, root / "tok-old", tok),
            "new": prepare_with(tiny_corpus, new_ann, root / "tok-new", tok),
            "old_partial": prepare_with(partial, old_ann, root / "tok-old-partial", tok),
            "old_ann": old_ann, "new_ann": new_ann, "corpus": tiny_corpus, "partial": partial}


def hand_mapping(corpus: Path, old_domains=None) -> list[float]:
    """Per new topic: the plain mean of its shared documents' old weights (loops, no arrays)."""
    sums, counts = {t: 0.0 for t in NEW_NAMES}, {t: 0 for t in NEW_NAMES}
    for shard in sorted((corpus / "documents").glob("*/*.parquet")):
        domain = shard.parent.name
        for i in range(pq.read_metadata(shard).num_rows):
            if old_domains is not None and domain not in old_domains:
                continue  # not on the old side
            ts = old_topics(domain, i)
            w = sum(OLD_W[OLD_NAMES.index(t)] for t in ts) / len(ts) if ts else 1.0
            for t in new_topics(domain, i):
                sums[t] += w
                counts[t] += 1
    return [sums[t] / counts[t] if counts[t] else 1.0 for t in NEW_NAMES]


def test_mapped_weights_match_a_hand_computation(sides):
    res = remap_weights(sides["old"], sides["new"], OLD_W)
    assert res.topic_names == NEW_NAMES
    np.testing.assert_allclose(res.weights, hand_mapping(sides["corpus"]), rtol=1e-12)
    # written out for two topics (40 documents per domain, i = 0..39):
    #   games = 40 sports (1.0) + 20 even tech (0.25)                                   -> 45/60
    #   people = 40 politics (14 with business: 1.75, 26 alone: 2.0)
    #            + 40 entertainment (10 unlabelled: 1.0, 30 alone: 0.5)                -> 101.5/80
    assert res.weights[2] == pytest.approx((40 * 1.0 + 20 * 0.25) / 60)
    assert res.weights[1] == pytest.approx((14 * 1.75 + 26 * 2.0 + 10 * 1.0 + 30 * 0.5) / 80)
    assert res.weights[3] == 1.0 and res.per_topic[3]["shared_documents"] == 0  # no documents: neutral
    assert res.coverage["documents"] == 1.0 and res.coverage["tokens"] == 1.0
    assert res.coverage["new_labelled_documents"] == 180  # 20 odd tech documents are unlabelled
    # the matrix explains each weight: new = M @ [old weights, 1]
    m = res.matrix
    np.testing.assert_allclose(m @ np.append(OLD_W, 1.0), res.weights[:3] + [0.0])
    np.testing.assert_allclose(m[:3].sum(1), 1.0)
    assert m[1, -1] == pytest.approx(10 / 80)  # people: 10 documents the old side left unlabelled
    assert res.per_topic[2]["from"] == {"sports": pytest.approx(40 / 60), "tech": pytest.approx(20 / 60)}


def test_annotation_dirs_give_the_same_mapping(sides):
    a = remap_weights(sides["old_ann"], sides["new_ann"], OLD_W)
    b = remap_weights(sides["old"], sides["new"], OLD_W)
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-12)
    assert a.coverage["tokens"] is None and a.coverage["documents"] == 1.0
    with pytest.raises(ValueError, match="weight_by=tokens needs a tokens dir"):
        remap_weights(sides["old_ann"], sides["new_ann"], OLD_W, weight_by="tokens")


def test_token_weighting_and_wrong_length(sides):
    res = remap_weights(sides["old"], sides["new"], OLD_W, weight_by="tokens")
    docs = remap_weights(sides["old"], sides["new"], OLD_W)
    assert res.weights[0] != pytest.approx(docs.weights[0])  # documents differ in length
    assert min(OLD_W) <= min(res.weights[:3]) and max(res.weights[:3]) <= max(OLD_W)
    with pytest.raises(ValueError, match="4 weights for 5 topics"):
        remap_weights(sides["old"], sides["new"], OLD_W[:4])


def test_low_coverage_is_refused(sides):
    with pytest.raises(CoverageError, match="coverage too low") as exc:
        remap_weights(sides["old_partial"], sides["new"], OLD_W)
    res = exc.value.result
    assert res.coverage["documents"] == pytest.approx(160 / 180, abs=1e-6)
    assert res.coverage["documents"] < COVERAGE_THRESHOLD
    # a lower threshold accepts it, and the tech documents then simply do not count
    ok = remap_weights(sides["old_partial"], sides["new"], OLD_W, min_coverage=0.8)
    domains = [d for d in OLD_NAMES if d != "tech"]
    np.testing.assert_allclose(ok.weights, hand_mapping(sides["corpus"], domains), rtol=1e-12)
    assert ok.weights[2] == 1.0  # games: only sports is shared, weight 1.0


def write_run(run: Path, records: list[list[float]], topic_names=OLD_NAMES) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "weights.jsonl").write_text("".join(
        json.dumps({"step": 100 * (i + 1), "stage": 1, "weights": w}) + "\n" for i, w in enumerate(records)))
    (run / "run.json").write_text(json.dumps({"topic_names": topic_names}))
    return run


def test_cli_last_average_and_refusal(sides, tmp_path, capsys):
    first = [1.0] * 5
    run = write_run(tmp_path / "run", [first, OLD_W])
    assert run_weights(run, "last")[0] == OLD_W
    assert run_weights(run, "average")[0] == pytest.approx([(a + b) / 2 for a, b in zip(first, OLD_W)])

    out = tmp_path / "remap.json"
    rc = cli_main(["remap", "--old", str(sides["old"]), "--new", str(sides["new"]), "--run", str(run),
                   "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["topic_names"] == NEW_NAMES and doc["source"]["mode"] == "last" and doc["source"]["steps"] == 200
    np.testing.assert_allclose(doc["weights"], hand_mapping(sides["corpus"]), rtol=1e-7)
    assert doc["coverage"]["documents"] == 1.0 and doc["no_shared_documents"] == ["nobody"]
    assert doc["mapping"]["columns"] == OLD_NAMES + ["(unlabelled)"] and len(doc["mapping"]["matrix"]) == 4

    rc = cli_main(["remap", "--old", str(sides["old"]), "--new", str(sides["new"]), "--run", str(run),
                   "--mode", "average", "--out", str(tmp_path / "avg.json")])
    assert rc == 0
    avg = json.loads((tmp_path / "avg.json").read_text())
    assert avg["weights"][2] == pytest.approx((40 * 1.0 + 20 * (1.0 + 0.25) / 2) / 60)

    capsys.readouterr()
    refused = tmp_path / "refused.json"
    rc = cli_main(["remap", "--old", str(sides["old_partial"]), "--new", str(sides["new"]), "--run", str(run),
                   "--out", str(refused)])
    err = capsys.readouterr().err
    assert rc == 2 and not refused.exists()
    assert len(err.strip().splitlines()) == 1 and "coverage too low" in err and "88.9%" in err

    # a run trained on other topics is refused before anything is read further
    other = write_run(tmp_path / "other", [OLD_W], topic_names=["a", "b", "c", "d", "e"])
    rc = cli_main(["remap", "--old", str(sides["old"]), "--new", str(sides["new"]), "--run", str(other),
                   "--out", str(refused)])
    assert rc == 2 and not refused.exists() and "other topics" in capsys.readouterr().err
