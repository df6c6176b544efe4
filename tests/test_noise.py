"""Noise transform on a small real corpus (BBC articles) with hand-written topic attributes."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import bbc_texts
from toremi.done import file_sha256 as sha256_file
from toremi.io import read_json
from toremi.noise import main as noise_main
from toremi.noise import shuffle_words

TOPICS = ["Business", "Sports", "Technology"]


def write_table(path: Path, cols: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)


def make_corpus(root: Path) -> Path:
    """Two domains; tech docs carry Technology, some business docs carry Business+Technology."""
    plan = {"news": [("business", 0), ("tech", 2)], "wire": [("sports", 1), ("tech", 2)]}
    for domain, parts in plan.items():
        ids, texts, labels, topic_ids = [], [], [], []
        for label, tid in parts:
            for i, text in enumerate(bbc_texts(label, 12, skip=0 if domain == "news" else 12, chars=1500)):
                ids.append(f"{domain}-{label}-{i}")
                texts.append(text)
                labels.append(label)
                topic_ids.append([tid] if not (label == "business" and i % 4 == 0) else [0, 2])
        cols = {"id": ids, "text": texts, "domain": [domain] * len(ids), "label": labels,
                "source": ids}
        # Attribute rows in another order than the documents: the join must be by id.
        write_table(root / "documents" / domain / "shard-00000.parquet", cols)
        order = np.random.default_rng(0).permutation(len(ids))
        write_table(root / "annotations" / "attributes" / "topics" / domain / "shard-00000.parquet",
                    {"id": [ids[i] for i in order], "cluster": pa.array([0] * len(ids), pa.int32()),
                     "topic_ids": pa.array([topic_ids[i] for i in order], pa.list_(pa.int32()))})
        write_table(root / "eval" / domain / "shard-00000.parquet",
                    {**{k: v[:3] for k, v in cols.items()}, "id": [f"eval-{x}" for x in ids[:3]]})
    (root / "annotations" / "topics.json").write_text(json.dumps({"topic_names": TOPICS, "clusters": {}}))
    (root / "manifest.json").write_text(json.dumps({"format": "toremi.corpus/1", "shards": [
        {"path": f"documents/{d}/shard-00000.parquet", "split": "train", "domain": d,
         "sha256": sha256_file(root / "documents" / d / "shard-00000.parquet")} for d in plan]}))
    return root


def docs(corpus: Path) -> dict[str, str]:
    out = {}
    for p in sorted((corpus / "documents").glob("*/*.parquet")):
        t = pq.read_table(p).to_pydict()
        out.update(zip(t["id"], t["text"]))
    return out


def tech_ids(corpus: Path) -> set[str]:
    ids = set()
    for p in (corpus / "annotations" / "attributes" / "topics").glob("*/*.parquet"):
        t = pq.read_table(p).to_pydict()
        ids |= {i for i, ts in zip(t["id"], t["topic_ids"]) if 2 in ts}
    return ids


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("noise") / "corpus")


def test_char_noise_permutes_topic_docs_only(corpus, tmp_path):
    out = tmp_path / "noisy"
    assert noise_main(["--corpus", str(corpus), "--out", str(out), "--topic", "Technology",
                       "--kind", "chars", "--seed", "3"]) == 0
    before, after = docs(corpus), docs(out)
    hit = tech_ids(corpus)
    assert before.keys() == after.keys() and len(hit) == 24 + 3
    for i, text in before.items():
        if i in hit:
            assert after[i] != text and Counter(after[i]) == Counter(text), i
        else:
            assert after[i] == text, i
    info = read_json(out / "noise.json")
    assert info["corrupted"] == len(hit) and info["per_domain"] == {"news": 15, "wire": 12}
    assert set((out / "noise_ids.txt").read_text().split()) == hit
    # Held-out split and topic attributes are copied byte for byte; the manifest gets new hashes.
    for rel in ["eval/news/shard-00000.parquet", "eval/wire/shard-00000.parquet",
                "annotations/topics.json",
                "annotations/attributes/topics/news/shard-00000.parquet"]:
        assert (out / rel).read_bytes() == (corpus / rel).read_bytes(), rel
    man = read_json(out / "manifest.json")
    assert man["noise"]["topic"] == "Technology"
    for s in man["shards"]:
        assert s["sha256"] == sha256_file(out / s["path"])
    # Same seed -> same output; other seed -> other permutation.
    again = tmp_path / "again"
    noise_main(["--corpus", str(corpus), "--out", str(again), "--kind", "chars", "--seed", "3"])
    assert docs(again) == after
    other = tmp_path / "other"
    noise_main(["--corpus", str(corpus), "--out", str(other), "--kind", "chars", "--seed", "4"])
    assert docs(other) != after


def test_word_noise_and_fraction(corpus, tmp_path):
    out = tmp_path / "words"
    assert noise_main(["--corpus", str(corpus), "--out", str(out), "--kind", "words",
                       "--fraction", "0.5", "--topic", "Technology"]) == 0
    before, after = docs(corpus), docs(out)
    changed = {i for i in before if before[i] != after[i]}
    assert changed <= tech_ids(corpus) and len(changed) == round(0.5 * 27)
    for i in changed:
        assert sorted(after[i].split()) == sorted(before[i].split())
        # whitespace skeleton kept: the same line structure
        assert after[i].count("\n") == before[i].count("\n")
    w = shuffle_words("a  b\nc d", np.random.default_rng(0))
    assert sorted(w.split()) == ["a", "b", "c", "d"]
    assert [w[i] for i in (1, 2, 4, 6)] == [" ", " ", "\n", " "]  # whitespace runs stay put


def test_bad_requests_fail_clearly(corpus, tmp_path, capsys):
    from toremi.config import ConfigError

    with pytest.raises(ConfigError, match="not one of the topics"):
        noise_main(["--corpus", str(corpus), "--out", str(tmp_path / "x"), "--topic", "Cooking"])
    with pytest.raises(ConfigError, match="tokens dir"):
        noise_main(["--corpus", str(corpus), "--out", str(tmp_path / "y"), "--kind", "tokens"])
    assert noise_main(["--tokens", str(tmp_path / "none"), "--out", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err  # one line naming the stage and the missing file; nothing written
    assert err.startswith("toremi noise: ") and "manifest.json" in err and err.count("\n") == 1
    assert not (tmp_path / "z").exists()
    with pytest.raises(ConfigError, match="differ"):
        noise_main(["--corpus", str(corpus), "--out", str(corpus)])


def test_token_noise_on_prepared_data(corpus, tmp_path):
    from toremi.data.shards import TokenDataset, open_shard
    from toremi.prepare import PrepareConfig, prepare

    tokens = prepare(PrepareConfig(corpus=corpus, out=tmp_path / "tokens", tokenizer="bpe:300",
                                   seq_len=64))
    out = tmp_path / "noisy-tokens"
    assert noise_main(["--tokens", str(tokens), "--out", str(out), "--kind", "tokens",
                       "--topic", "Technology", "--seed", "1"]) == 0
    clean, noisy = TokenDataset(tokens, packing="none"), TokenDataset(out, packing="none")
    assert noisy.data_hash != clean.data_hash
    eot = clean.eot_id
    flagged = (clean.topics == 2).any(1)
    assert flagged.any() and (~flagged).any()
    a = clean.gather(np.arange(len(clean)))["input_ids"].numpy()
    b = noisy.gather(np.arange(len(noisy)))["input_ids"].numpy()
    assert (a[~flagged] == b[~flagged]).all()  # other topics untouched
    assert ((a[flagged] == eot) == (b[flagged] == eot)).all()  # document ends kept
    body = a[flagged] != eot
    assert (a[flagged][body] != b[flagged][body]).mean() > 0.9  # nearly all replaced
    assert b.max() < clean.vocab_size
    # Every shard's recorded hash is its bytes; the dev split (from the same noisy pool) is
    # corrupted on the topic's sequences and untouched elsewhere.
    man = read_json(out / "manifest.json")
    for s in man["shards"]:
        assert sha256_file(out / s["path"]) == s["sha256"]
    cdev, ndev = TokenDataset(tokens, "dev"), TokenDataset(out, "dev")
    fdev = (cdev.topics == 2).any(1)
    da, db = (d.gather(np.arange(len(d)))["input_ids"].numpy() for d in (cdev, ndev))
    assert (da[~fdev] == db[~fdev]).all()
    assert fdev.any() and (da[fdev] != db[fdev]).mean() > 0.5
    assert len(open_shard(out / man["shards"][0]["path"])) > 0


def doc_tokens(ds) -> dict[str, list[int]]:
    """Document id -> its tokens, reassembled from the (overlapping by one) sequence windows."""
    ids = pq.read_table(ds.dir / "documents.parquet").column("id").to_pylist()
    x = ds.gather(np.arange(len(ds)))
    out: dict[str, list[int]] = {}
    for row in range(len(ds)):
        n = int(ds.length[row])
        toks = x["input_ids"][row, : n - 1].tolist() + [int(x["labels"][row, n - 2])]
        key = ids[int(ds.doc[row])]
        out[key] = out.get(key, [])[:-1] + toks
    return out


def test_text_noise_from_a_tokens_dir(corpus, tmp_path):
    """--tokens with kind chars: noisy corpus + prepare with the clean tokenizer file."""
    from toremi.data.shards import TokenDataset
    from toremi.prepare import PrepareConfig, prepare

    tokens = prepare(PrepareConfig(corpus=corpus, out=tmp_path / "tokens", tokenizer="bpe:300",
                                   seq_len=48))
    out = tmp_path / "noisy"
    assert noise_main(["--tokens", str(tokens), "--out", str(out), "--kind", "chars"]) == 0
    clean, noisy = TokenDataset(tokens, packing="none"), TokenDataset(out, packing="none")
    assert noisy.manifest["tokenizer"]["fingerprint"] == clean.manifest["tokenizer"]["fingerprint"]
    assert noisy.manifest["noise"]["corrupted"] == 27 and noisy.data_hash != clean.data_hash
    a, b = doc_tokens(clean), doc_tokens(noisy)
    hit = tech_ids(corpus)
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]) == (k not in hit) for k in a)
    tok = __import__("toremi.tokenizer", fromlist=["from_file"]).from_file(out / "tokenizer.json")
    text = docs(corpus)
    for k in sorted(hit & b.keys())[:5]:  # the noisy tokens decode to a permutation of the document
        assert Counter(tok.decode(b[k][:-1])) == Counter(text[k])
