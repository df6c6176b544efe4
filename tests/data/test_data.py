"""Tokenizer, prepare and loader: real text, real files, exact resume."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from toremi.data.loader import BatchLoader
from toremi.data.shards import TokenDataset, open_shard
from toremi.prepare import PrepareConfig, cut_windows, prepare
from toremi.tokenizer import from_file, gpt2


def test_gpt2_tokenizer_is_the_real_one():
    tok = gpt2()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.vocab_size == 50257 and tok.eot_id == 50256
    assert tok.encode("a<|endoftext|>b")[1] == 50256  # special token is never split


def test_cut_windows_cover_every_target_once():
    lengths = np.array([1, 2, 5, 9, 10])
    doc, start, length = cut_windows(lengths, seq_len=4)
    for d, n in enumerate(lengths):
        rows = doc == d
        targets = np.concatenate([np.arange(s + 1, s + l) for s, l in zip(start[rows], length[rows])]) \
            if rows.any() else np.array([], dtype=int)
        assert sorted(targets.tolist()) == list(range(1, n)) if n >= 2 else len(targets) == 0
    assert length.max() <= 5


def test_prepared_windows_reproduce_documents(tiny_corpus, tiny_tokens):
    ds = TokenDataset(tiny_tokens, packing="none")
    tok = from_file(tiny_tokens / "tokenizer.json")
    docs = pq.read_table(tiny_tokens / "documents.parquet").column("id").to_pylist()
    table = pq.read_table(tiny_corpus / "documents" / "tech" / "shard-00000.parquet")
    text_by_id = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
    first = [i for i in range(len(ds)) if docs[ds.doc[i]] in text_by_id][:40]
    doc_of = ds.doc[first[0]]
    rows = [i for i in range(len(ds)) if ds.doc[i] == doc_of]
    batch = ds.gather(np.array(rows))
    pieces = [batch["input_ids"][0, :1]] + [
        batch["labels"][r][batch["labels"][r] != -100] for r in range(len(rows))]
    ids = torch.cat(pieces).tolist()
    assert ids == tok.encode(text_by_id[docs[doc_of]]) + [tok.eot_id]
    assert ds.topic_names[batch["topic_ids"][0, 0]] == "tech"
    assert (batch["topic_ids"][:, 1:] == -1).all()


def _take(loader, n):
    return [loader.next_batch() for _ in range(n)]


def _same(a, b):
    return all(torch.equal(getattr(x, f), getattr(y, f)) for x, y in zip(a, b)
               for f in ("input_ids", "labels", "topic_ids", "domain_ids", "sample_index", "seg_ids",
                         "seg_topics", "seg_bytes") if getattr(x, f) is not None or getattr(y, f) is not None)


@pytest.mark.parametrize("packing", ["none", "docs"])
def test_loader_interrupt_and_resume_matches_uninterrupted(tiny_tokens, tmp_path, packing):
    ds = TokenDataset(tiny_tokens, packing=packing)
    probs = torch.tensor([0.5, 0.1, 0.1, 0.1, 0.2])

    def run(interrupt_at=None):
        loader = BatchLoader(ds, batch_size=8, seed=3)
        out = []
        for step in range(1200):  # > 2 epochs of shuffling, then topic sampling
            if step == 900:
                loader.set_topic_probs(probs)
            if step == interrupt_at:
                torch.save(loader.state_dict(), tmp_path / "loader.pt")
                loader = BatchLoader(TokenDataset(tiny_tokens, packing=packing), batch_size=8, seed=99)
                loader.load_state_dict(torch.load(tmp_path / "loader.pt", weights_only=False))
            out.append(loader.next_batch())
        return out

    full = run()
    assert all((b.seg_ids is not None) == (packing == "docs") for b in full)
    for k in (5, 407, 950):
        assert _same(full, run(interrupt_at=k)), f"resume at step {k} diverged"
    assert not _same(full[:5], _take(BatchLoader(ds, batch_size=8, seed=4), 5))


def test_loader_topic_sampling_follows_probabilities(tiny_tokens):
    ds = TokenDataset(tiny_tokens, packing="none")
    loader = BatchLoader(ds, batch_size=256, seed=0)
    loader.set_topic_probs(torch.tensor([0.7, 0.0, 0.1, 0.0, 0.2]))
    topics = torch.cat([loader.next_batch().topic_ids[:, 0] for _ in range(20)])
    share = torch.bincount(topics, minlength=5).double() / len(topics)
    assert share[1] == 0 and share[3] == 0
    assert abs(share[0] - 0.7) < 0.03 and abs(share[4] - 0.2) < 0.03
    with pytest.raises(ValueError, match="5 topics"):
        loader.set_topic_probs(torch.ones(3))


def test_ranks_take_disjoint_slices_of_one_global_batch(tiny_tokens):
    ds = TokenDataset(tiny_tokens)
    single = BatchLoader(ds, batch_size=8, seed=1)
    ranks = [BatchLoader(ds, batch_size=4, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(10):
        whole = single.next_batch().sample_index
        parts = torch.cat([r.next_batch().sample_index for r in ranks])
        assert torch.equal(whole, parts)


def test_prepare_resumes_from_completed_shards(tiny_corpus, tmp_path):
    cfg = PrepareConfig(corpus=tiny_corpus, out=tmp_path / "tok", tokenizer="bpe:300", seq_len=32,
                        topics_from="domain")
    prepare(cfg)
    data_hash = TokenDataset(tmp_path / "tok").data_hash
    shards = sorted((tmp_path / "tok" / "shards").glob("*.bin"))
    mtimes = {p: p.stat().st_mtime_ns for p in shards}
    victim = shards[2]
    victim.with_name(victim.name + ".done").unlink()  # as if killed while writing this shard
    victim.write_bytes(victim.read_bytes()[:100])
    prepare(cfg)
    redone = [p for p in shards if p.stat().st_mtime_ns != mtimes[p]]
    assert redone == [victim]
    assert TokenDataset(tmp_path / "tok").data_hash == data_hash


def test_truncated_shard_is_refused_with_a_fix(tiny_tokens, tmp_path):
    copy = tmp_path / "tok"
    shutil.copytree(tiny_tokens, copy)
    shard = sorted((copy / "shards").glob("train-*.bin"))[0]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        open_shard(shard)


def test_missing_annotations_warn_and_leave_samples_unlabelled(tiny_corpus, tmp_path, capsys):
    out = prepare(PrepareConfig(corpus=tiny_corpus, out=tmp_path / "tok", tokenizer="bpe:300",
                                seq_len=32))
    assert "no topic annotations" in capsys.readouterr().err
    ds = TokenDataset(out)
    assert ds.num_topics == 0 and (ds.topics == -1).all()


def test_target_bytes_add_up_to_each_document(tiny_corpus, tiny_tokens):
    ds = TokenDataset(tiny_tokens, packing="none")
    docs = pq.read_table(tiny_tokens / "documents.parquet").column("id").to_pylist()
    table = pq.read_table(tiny_corpus / "documents" / "sports" / "shard-00000.parquet")
    text_by_id = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
    checked = 0
    for doc in np.unique(ds.doc)[:200]:
        if docs[doc] not in text_by_id:
            continue
        rows = np.nonzero(ds.doc == doc)[0]
        batch = ds.gather(rows)
        first_token_bytes = len(from_file(tiny_tokens / "tokenizer.json").decode(
            batch["input_ids"][0, :1].tolist()).encode())
        assert int(batch["target_bytes"].sum()) + first_token_bytes == len(
            text_by_id[docs[doc]].encode("utf-8"))
        checked += 1
    assert checked >= 10


def test_gpt2_token_byte_lengths():
    tok = gpt2()
    lengths = tok.token_byte_lengths()
    assert lengths[tok.eot_id] == 0
    for text in ("Hello world", "naïve café — ok", "日本"):
        assert lengths[tok.encode(text)].sum() == len(text.encode("utf-8"))


def test_documents_parquet_is_streamed_in_pyarrow_row_groups(tmp_path, monkeypatch):
    """The one streamed merge writes documents.parquet shard by shard, yet the same bytes as one
    ``pq.write_table`` of every id (full row groups of ``ROW_GROUP`` rows, the rest last), so the
    file does not depend on how the ids were split into shards or which engine made them."""
    import pyarrow as pa

    from toremi.io import atomic_write_json
    from toremi.prepare import merge

    monkeypatch.setattr(merge, "ROW_GROUP", 4)
    sizes = [3, 0, 6, 1, 2]
    ids = [f"doc-{i}" for i in range(sum(sizes))]
    stats, start = [], 0
    for k, n in enumerate(sizes):
        path = f"shards/train-{k:05d}.bin"
        atomic_write_json((tmp_path / path).with_suffix(".meta.json"), {"doc_ids": ids[start:start + n]})
        stats.append({"path": path})
        start += n
    cfg = PrepareConfig(corpus=tmp_path, out=tmp_path)
    merge.write_documents(cfg, stats)
    pq.write_table(pa.table({"id": ids}), tmp_path / "whole.parquet", row_group_size=4)
    assert (tmp_path / "documents.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    assert pq.ParquetFile(tmp_path / "documents.parquet").metadata.num_row_groups == 3
