"""Corpus stage: ingest errors, cleaning counts, dedupe, split by source, determinism, resume,
manifest integrity, source parsers, and a small real build from the shipped sources."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from toremi.corpus import dedupe
from toremi.corpus.build import CorpusConfig, build
from toremi.corpus.cli import main as corpus_main
from toremi.corpus.documents import iter_shards, load_manifest, read_split
from toremi.corpus.ingest import IngestError, IngestOptions, ingest
from toremi.corpus.sources import SourceMissing, bible_chapters, brown_text, email_body
from toremi.done import file_sha256 as sha256_file

VOCAB = [f"w{i}{c}" for i in range(400) for c in "abcde"]


def words(rng: np.random.Generator, n: int = 200) -> str:
    return " ".join(rng.choice(VOCAB, size=n))


def write_jsonl(path, records, bad_line: int | None = None):
    lines = [json.dumps(r) for r in records]
    if bad_line is not None:
        lines.insert(bad_line - 1, '{"text": "unterminated')
    path.write_text("\n".join(lines) + "\n")
    return path


def corpus_records(seed: int = 0, per_domain: int = 30) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"{d}-{i}", "text": words(rng), "domain": d, "source": f"{d}-src{i // 3}",
             "label": f"L{i % 2}"} for d in ("alpha", "beta") for i in range(per_domain)]


def cfg(out, **kw) -> CorpusConfig:
    base = dict(out=str(out), heldout_fraction=0.25, min_heldout_mb=0.0, shard_docs=7)
    base.update(kw)
    return CorpusConfig(**base)


def test_jsonl_malformed_line_fails_with_file_and_line_or_is_skipped(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", corpus_records(per_domain=5), bad_line=4)
    with pytest.raises(IngestError) as err:
        ingest(IngestOptions(input=str(src)), cfg(tmp_path / "c1"), show=False)
    assert f"{src}:4" in str(err.value) and "--on-error skip" in str(err.value)
    rc = corpus_main(["ingest", "--input", str(src), "--out", str(tmp_path / "c2")])
    assert rc == 2  # bad input (README: exit codes)
    m = ingest(IngestOptions(input=str(src), on_error="skip"), cfg(tmp_path / "c3"), show=False)
    assert m["ingest"]["skipped_lines"] == 1 and m["ingest"]["skipped_examples"] == [f"{src}:4"]
    assert sum(d["train"]["documents"] + d["heldout"]["documents"] for d in m["domains"].values()) == 10


def test_missing_text_field_names_the_option(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"body": "hello"}])
    with pytest.raises(IngestError, match=r"in\.jsonl:1: no 'text' field.*--text-field"):
        ingest(IngestOptions(input=str(src)), cfg(tmp_path / "c"), show=False)
    m = ingest(IngestOptions(input=str(src), text_field="body"), cfg(tmp_path / "c"), show=False)
    assert m["counts"]["total"]["kept"] == 1


def test_text_folder_invalid_utf8_counted_and_empty_dropped(tmp_path):
    rng = np.random.default_rng(1)
    for dom in ("poems", "notes"):
        (tmp_path / "in" / dom).mkdir(parents=True)
        for i in range(4):
            (tmp_path / "in" / dom / f"{i}.txt").write_text(words(rng))
    (tmp_path / "in" / "poems" / "bad.txt").write_bytes(b"caf\xe9 " + words(rng).encode())
    (tmp_path / "in" / "notes" / "empty.txt").write_text("  \n\t\n")
    m = ingest(IngestOptions(input=str(tmp_path / "in")), cfg(tmp_path / "c"), show=False)
    assert set(m["domains"]) == {"poems", "notes"}
    assert m["counts"]["domains"]["poems"]["invalid_utf8"] == 1
    assert m["counts"]["domains"]["notes"]["empty"] == 1
    assert m["counts"]["total"]["kept"] == 9
    texts = read_split(tmp_path / "c", "train")["text"].to_pylist() + \
        read_split(tmp_path / "c", "heldout")["text"].to_pylist()
    assert sum("caf\ufffd " in t for t in texts) == 1


def test_exact_and_near_duplicates_removed(tmp_path):
    rng = np.random.default_rng(2)
    base = [words(rng, 300) for _ in range(20)]
    recs = [{"id": f"d{i}", "text": t, "source": f"s{i}"} for i, t in enumerate(base)]
    recs.append({"id": "exact", "text": "  " + base[3].upper().replace(" ", "\n  "), "source": "x"})
    near = base[5].split()
    near[10], near[150], near[290] = "CHANGED", "ALSO", "THIRD"
    recs.append({"id": "near", "text": " ".join(near), "source": "y"})
    recs.append({"id": "far", "text": " ".join(base[7].split()[:120]) + " " + words(rng, 180), "source": "z"})
    src = write_jsonl(tmp_path / "in.jsonl", recs)
    m = ingest(IngestOptions(input=str(src)), cfg(tmp_path / "c"), show=False)
    c = m["counts"]["domains"]["default"]
    assert (c["exact_dup"], c["near_dup"], c["kept"]) == (1, 1, 21)
    ids = set(read_split(tmp_path / "c", "train")["id"].to_pylist()) | \
        set(read_split(tmp_path / "c", "heldout")["id"].to_pylist())
    assert "default/exact" not in ids and "default/near" not in ids and "default/far" in ids
    assert dedupe.jaccard(base[5], " ".join(near)) > 0.9


def test_minhash_estimates_jaccard():
    rng = np.random.default_rng(3)
    a = words(rng, 400).split()
    b = a[:300] + words(rng, 100).split()
    exact = dedupe.jaccard(" ".join(a), " ".join(b))
    sig = dedupe.minhash_signatures([" ".join(a), " ".join(b)], num_perm=256)
    est = (sig[0] == sig[1]).mean()
    assert abs(est - exact) < 0.1 and 0.3 < exact < 0.8


def test_split_by_source_no_leak_and_deterministic(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", corpus_records(per_domain=60))
    m1 = ingest(IngestOptions(input=str(src)), cfg(tmp_path / "a"), show=False)
    m2 = ingest(IngestOptions(input=str(src)), cfg(tmp_path / "b"), show=False)
    m3 = ingest(IngestOptions(input=str(src)), cfg(tmp_path / "s", seed=7), show=False)
    for dom in ("alpha", "beta"):
        tr = pq.read_table(iter_shards(tmp_path / "a", "train", dom)[0]).to_pydict()
        he = [pq.read_table(p).to_pydict() for p in iter_shards(tmp_path / "a", "heldout", dom)]
        held_sources = {s for t in he for s in t["source"]}
        train_sources = {s for p in iter_shards(tmp_path / "a", "train", dom)
                         for s in pq.read_table(p)["source"].to_pylist()}
        assert held_sources and train_sources and not held_sources & train_sources
        assert tr["domain"][0] == dom
        share = m1["domains"][dom]["heldout"]["bytes"] / (
            m1["domains"][dom]["heldout"]["bytes"] + m1["domains"][dom]["train"]["bytes"])
        assert 0.2 <= share <= 0.35
    assert [s["sha256"] for s in m1["shards"]] == [s["sha256"] for s in m2["shards"]]
    held = lambda d: sorted(read_split(d, "heldout")["id"].to_pylist())  # noqa: E731
    assert held(tmp_path / "a") == held(tmp_path / "b") != held(tmp_path / "s")


def test_resume_after_interruption_redoes_only_unfinished_domain(tmp_path):
    recs = corpus_records(per_domain=20)
    broken = [dict(r, id="same") if r["domain"] == "beta" else r for r in recs]
    src = write_jsonl(tmp_path / "in.jsonl", broken)
    out = tmp_path / "c"
    with pytest.raises(ValueError, match="beta.*not unique"):  # fails after alpha is finished
        ingest(IngestOptions(input=str(src)), cfg(out), show=False)
    assert (out / "documents" / "alpha.done").exists() and not (out / "manifest.json").exists()
    alpha_files = sorted((out / "documents" / "alpha").glob("shard-*.parquet"))
    stamps = {p: os.stat(p).st_mtime_ns for p in alpha_files}
    write_jsonl(src, recs)  # fix the input and rerun: only beta is built
    m = ingest(IngestOptions(input=str(src)), cfg(out), show=False)
    assert {p: os.stat(p).st_mtime_ns for p in alpha_files} == stamps
    assert m["domains"]["beta"]["train"]["documents"] > 0
    # simulate a kill during beta's next rebuild: its marker is gone, a partial shard is left
    (out / "documents" / "beta.done").unlink()
    (out / "documents" / "beta" / "shard-00099.parquet").write_bytes(b"partial")
    beta_before = os.stat(out / "documents" / "beta" / "shard-00000.parquet").st_mtime_ns
    m2 = ingest(IngestOptions(input=str(src)), cfg(out), show=False)
    assert {p: os.stat(p).st_mtime_ns for p in alpha_files} == stamps
    assert os.stat(out / "documents" / "beta" / "shard-00000.parquet").st_mtime_ns != beta_before
    assert not (out / "documents" / "beta" / "shard-00099.parquet").exists()
    assert [s["sha256"] for s in m2["shards"]] == [s["sha256"] for s in m["shards"]]


def test_manifest_hashes_and_counts_match_files(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", corpus_records(per_domain=25))
    ingest(IngestOptions(input=str(src)), cfg(tmp_path / "c"), show=False)
    m = load_manifest(tmp_path / "c")
    assert m["format"] == "toremi.corpus/1"
    listed = sorted(s["path"] for s in m["shards"])
    on_disk = sorted(str(p.relative_to(tmp_path / "c")) for sp in ("train", "heldout")
                     for p in iter_shards(tmp_path / "c", sp))
    assert listed == on_disk and len(listed) > 2
    for s in m["shards"]:
        path = tmp_path / "c" / s["path"]
        assert sha256_file(path) == s["sha256"]
        assert pq.read_metadata(path).num_rows == s["rows"]
    for dom, info in m["domains"].items():
        rows = sum(s["rows"] for s in m["shards"] if s["domain"] == dom and s["split"] == "train")
        assert rows == info["train"]["documents"] and info["train"]["tokens"] > info["train"]["documents"]


def test_source_parsers_on_real_formats():
    assert brown_text("\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ./.\n\n\tIt/pps "
                      "wasn't/bedz* ,/, he/pps said/vbd ./.\n") == 'The jury said "no".\n\nIt wasn\'t, he said.'
    raw = "\nGenesis 1\n\n  1 In the beginning God created the heaven and the\nearth.\n  2 And the earth.\n\n1 Samuel 2\n\n  1 And Hannah prayed.\n"
    assert list(bible_chapters(raw)) == [
        ("Genesis", 1, "In the beginning God created the heaven and the earth.\nAnd the earth."),
        ("1 Samuel", 2, "And Hannah prayed.")]
    mail = (b"From a@b.c  Thu Aug 22 2002\nReceived: from x\n\tby y\nList-Id: <ilug.linux.ie>\n"
            b"Subject: hi\n\nBody line one.\nSecond line.\n")
    assert email_body(mail) == ("Body line one.\nSecond line.\n", "ilug")


def test_small_real_build_and_cli(tmp_path, capsys):
    domains = ["news", "quotes", "religion", "legal"]
    try:
        m = build(CorpusConfig(out=str(tmp_path / "c"), domains=domains, max_mb_per_domain=0.2),
                  show=False)
    except SourceMissing as exc:
        pytest.skip(f"shipped sources not fetched ({exc}); run `make sources`")
    assert list(m["domains"]) == domains
    for dom in domains:
        info = m["domains"][dom]
        assert 0.1e6 < info["train"]["bytes"] + info["heldout"]["bytes"] < 0.3e6
        assert info["heldout"]["documents"] > 0 and info["train"]["tokens"] > 10_000
        tr = pq.read_table(iter_shards(tmp_path / "c", "train", dom)[0]).to_pydict()
        he = read_split(tmp_path / "c", "heldout").to_pydict()
        assert not set(tr["source"]) & {s for s, d in zip(he["source"], he["domain"]) if d == dom}
        assert len(set(tr["label"])) > 2 and all(i.startswith(dom + "/") for i in tr["id"])
    all_ids = read_split(tmp_path / "c", "train")["id"].to_pylist()
    assert len(all_ids) == len(set(all_ids))
    # rerunning through the CLI resumes: every domain is already done, nothing is rewritten
    shard = iter_shards(tmp_path / "c", "train", "news")[0]
    before = os.stat(shard).st_mtime_ns
    assert corpus_main(["build", "--out", str(tmp_path / "c"), "--max-mb-per-domain", "0.2",
                        "--domains", ",".join(domains)]) == 0
    assert os.stat(shard).st_mtime_ns == before
    assert "TOTAL" in capsys.readouterr().out


def test_ingest_parquet_and_hf_dataset_give_the_same_corpus(tmp_path):
    import pyarrow as pa

    recs = corpus_records(per_domain=12)
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "in.parquet")
    m_pq = ingest(IngestOptions(input=str(tmp_path / "in.parquet")), cfg(tmp_path / "p"), show=False)
    assert m_pq["ingest"]["format"] == "parquet" and set(m_pq["domains"]) == {"alpha", "beta"}
    datasets = pytest.importorskip("datasets", reason="HF ingest needs the `hf` extra")
    datasets.Dataset.from_list(recs).save_to_disk(str(tmp_path / "hfds"))
    m_hf = ingest(IngestOptions(input=str(tmp_path / "hfds")), cfg(tmp_path / "h"), show=False)
    assert m_hf["ingest"]["format"] == "hf"
    assert [s["sha256"] for s in m_hf["shards"]] == [s["sha256"] for s in m_pq["shards"]]


def test_rebuild_with_fewer_domains_prunes_the_others(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", corpus_records(per_domain=10))
    ingest(IngestOptions(input=str(src)), cfg(tmp_path / "c"), show=False)
    write_jsonl(src, [r for r in corpus_records(per_domain=10) if r["domain"] == "beta"])
    m = ingest(IngestOptions(input=str(src)), cfg(tmp_path / "c"), show=False)
    assert list(m["domains"]) == ["beta"]
    assert {p.parent.name for sp in ("train", "heldout") for p in iter_shards(tmp_path / "c", sp)} == {"beta"}
    assert not (tmp_path / "c" / "documents" / "alpha.done").exists()


def test_normalise_key_streams_yet_equals_the_joined_formula():
    """The exact-dedupe key is fed in word batches (bounded memory for long documents); it must
    equal the hash of " ".join(text.lower().split()) for any whitespace and casing, final sigma,
    dotted I and separators included, whatever the batch size."""
    import hashlib
    import random

    from toremi.corpus.dedupe import normalise_key

    chars = ["a", "B", "Σ", "ς", "İ", "\u00a0", "\x1c", "\x1f", " ", "\n", "\t", "\u2028", "\u3000",
             "Ω", "ß", "\u200b", "é"]
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(chars) for _ in range(rng.randint(0, 30)))
        want = hashlib.blake2b(" ".join(text.lower().split()).encode(), digest_size=16).digest()
        assert all(normalise_key(text, b) == want for b in (1, 2, 3, 65_536)), repr(text)
