"""Packed training: CSR segment bookkeeping, bit-identical packing=none, per-token weights,
per-segment statistics, document attention, sync-free step (also compiled), refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from toremi.data.loader import Batch, BatchLoader
from toremi.data import packing as packmod
from toremi.data.packing import pack_shard
from toremi.data.shards import TokenDataset
from toremi.methods import MethodConfig, rules
from toremi.model import GPT, GPTConfig
from toremi.prepare import PrepareConfig, prepare
from toremi.train import segments
from toremi.train.distributed import Dist
from toremi.train.step import StepEngine

from helpers import count_host_syncs, hf_tiny_train



def _check_pack(lengths, seq_len):
    lengths = np.asarray(lengths)
    n = int(lengths.sum())
    p = pack_shard(lengths, seq_len, np.arange(n + 1))  # 1 byte per token
    # every input position with a target (0 .. n-2) is in exactly one segment, in order
    win = np.repeat(np.arange(len(p["offset"])), np.diff(p["seg_ptr"]))
    flat = np.concatenate([np.arange(s, s + l) + p["offset"][w]
                           for w, s, l in zip(win, p["seg_start"], p["seg_len"])] + [np.zeros(0, int)])
    assert flat.tolist() == list(range(n - 1))
    assert (p["length"][:-1] == seq_len + 1).all() and (p["length"][-1:] <= seq_len + 1).all()
    assert (p["seg_start"] + p["seg_len"] <= seq_len).all() and (p["seg_len"] > 0).all()
    # the target of input position q is token q+1: it must lie inside the segment's document
    doc_start = np.cumsum(lengths) - lengths
    owner = np.searchsorted(doc_start, flat + 1, side="right") - 1
    assert (owner == np.repeat(p["seg_doc"], p["seg_len"])).all()
    assert (p["seg_bytes"] == p["seg_len"]).all() and p["bytes"].sum() == n - 1
    return p


def test_pack_shard_bookkeeping_with_a_50k_token_document():
    lengths = [3, 1, 50_000, 7, 1, 1, 130, 2]  # empty documents (EOT only) included
    p = _check_pack(lengths, seq_len=64)
    big = p["seg_doc"] == 2
    win = np.repeat(np.arange(len(p["offset"])), np.diff(p["seg_ptr"]))[big]
    assert p["seg_len"][big].sum() == 50_000 and (np.diff(win) == 1).all()  # one piece per window
    assert (p["seg_len"][big][1:-1] == 64).all() and p["seg_start"][big][0] == 3  # after docs 0, 1
    assert np.bincount(p["seg_doc"], weights=p["seg_len"], minlength=8).tolist() == \
        [2, 1, 50_000, 7, 1, 1, 130, 2]  # the first document's first token is never a target
    for lengths in ([1], [2], [65], [64, 64, 1], list(range(1, 40))):
        _check_pack(lengths, seq_len=16)



def test_pack_shard_of_an_empty_shard_is_empty():
    """A shard with no documents (or only EOT-only documents adding up to one token) has no target:
    no windows, no segments, an empty CSR map, and the downstream helpers accept it."""
    for lengths in ([], [1]):
        p = pack_shard(np.asarray(lengths, dtype=np.int64), 16, np.zeros(sum(lengths) + 1, dtype=np.int64))
        assert set(p) == {"offset", "length", "bytes", "seg_ptr", "seg_start", "seg_len", "seg_doc", "seg_bytes"}
        assert p["seg_ptr"].tolist() == [0]
        assert all(len(v) == 0 for k, v in p.items() if k != "seg_ptr"), {k: len(v) for k, v in p.items()}
        doc_topics = np.zeros((len(lengths), 2), dtype=np.int32)
        assert packmod.window_topics(p["seg_ptr"], p["seg_doc"], doc_topics).shape == (0, 1)
        win, bucket, share = packmod.topic_shares(p["seg_ptr"], p["seg_len"], p["seg_doc"], doc_topics, 3)
        assert len(win) == len(bucket) == len(share) == 0


def test_an_empty_training_shard_prepares_packed_and_trains(tiny_corpus, tmp_path):
    """``toremi prepare`` (default packing=docs) with one domain's training shard empty: the other
    domains' documents are all packed, and a batch is drawn from the packed index."""
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    empty = corpus / "documents" / "tech" / "shard-00000.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string()),
                             "domain": pa.array([], pa.string()), "label": pa.array([], pa.string()),
                             "source": pa.array([], pa.string())}), empty)
    out = prepare(PrepareConfig(corpus=corpus, out=tmp_path / "tok", tokenizer="bpe:300", seq_len=32,
                                topics_from="domain", bpe_train_mb=0.2))
    ds = TokenDataset(out)
    assert ds.packed and len(ds) > 0
    m = ds.manifest
    assert m["packing"] == "docs" and m["packed"]["windows"] == len(ds)
    b = BatchLoader(ds, batch_size=4).next_batch()
    assert (b.labels != -100).any()


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name not in ("manifest.json", "prepare.yaml", ".toremi.lock")
            and not p.name.endswith(".meta.json")}  # per-shard meta gained input fingerprints


def test_packing_none_matches_packing_docs_but_for_the_packed_index(tiny_corpus, tmp_path):
    """One tokens dir serves both modes: ``packing=docs`` writes exactly what ``packing=none`` writes
    (shards, indexes, documents) plus the packed index. (The byte-identity with the pre-packing
    layout ended when the dev split replaced the eval-derived ``val`` split.)"""
    args = dict(tokenizer="bpe:300", seq_len=32, topics_from="label", bpe_train_mb=0.3)
    none = prepare(PrepareConfig(corpus=tiny_corpus, out=tmp_path / "none", packing="none", **args))
    docs = prepare(PrepareConfig(corpus=tiny_corpus, out=tmp_path / "docs", packing="docs", **args))
    a, b = _files(none), _files(docs)
    b = {k: v for k, v in b.items() if not (k.startswith("packed-train") or k.endswith(".pack.npz"))}
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), [k for k in a if a.get(k) != b.get(k)]
    assert not (none / "packed-train").exists() and (docs / "packed-train").exists()


def test_packed_segments_reproduce_every_document(tiny_corpus, tiny_tokens):
    ds = TokenDataset(tiny_tokens)
    assert ds.packed and ds.fill > 0.99 > TokenDataset(tiny_tokens, packing="none").fill
    m = ds.manifest
    assert m["fill"]["docs"]["overall"] == round(ds.fill, 4)
    batch = ds.gather(np.arange(len(ds)))
    ids = batch["seg_ids"]
    assert torch.equal(ids >= 0, batch["labels"] != -100)  # every real target has a segment
    p = ds.pack
    seg_doc = torch.from_numpy(np.array(p["seg_doc"]))
    tok_doc = torch.where(ids >= 0, seg_doc[ids.clamp(min=0)], -1)
    docs = pq.read_table(tiny_tokens / "documents.parquet").column("id").to_pylist()
    text = {}
    for f in sorted((tiny_corpus / "documents").rglob("*.parquet")):
        t = pq.read_table(f)
        text.update(zip(t.column("id").to_pylist(), t.column("text").to_pylist()))
    from toremi.tokenizer import from_file

    tok = from_file(tiny_tokens / "tokenizer.json")
    labels = batch["labels"]
    nbytes = np.bincount(np.asarray(p["seg_doc"]), weights=np.asarray(p["seg_bytes"]))
    for d in np.unique(np.asarray(p["seg_doc"]))[::37]:  # the targets of each document, in order
        got = labels[tok_doc == int(d)].tolist()
        want = tok.encode(text[docs[d]]) + [tok.eot_id]
        first_bytes = len(tok.decode(want[:1]).encode())
        if got == want:  # per-segment bytes add up to the document's UTF-8 bytes (EOT has none)
            assert nbytes[d] == len(text[docs[d]].encode())
        else:  # a shard's first document: its first token is no target
            assert got == want[1:] and nbytes[d] == len(text[docs[d]].encode()) - first_bytes


def test_refusals_name_the_mode(tiny_corpus, tiny_tokens, tmp_path):
    flat = prepare(PrepareConfig(corpus=tiny_corpus, out=tmp_path / "flat", tokenizer="bpe:300",
                                 seq_len=32, topics_from="label", packing="none", bpe_train_mb=0.3))
    with pytest.raises(ValueError, match="prepared with packing=none.*packing=docs"):
        TokenDataset(flat, packing="docs")
    assert not TokenDataset(tiny_tokens, packing="none").packed  # the reverse: per-document index
    packed = BatchLoader(TokenDataset(tiny_tokens), batch_size=4)
    packed.next_batch()
    with pytest.raises(ValueError, match="packing=docs.*packing=none"):
        BatchLoader(TokenDataset(tiny_tokens, packing="none"), batch_size=4).load_state_dict(packed.state_dict())


def _engine(ds, method="toremi", attention="causal", compile=False, stat_per="segment", **opts):
    torch.manual_seed(0)
    model = GPT(GPTConfig.named("tiny", ds.vocab_size, ds.seq_len))
    opt = model.configure_optimizer(1e-3, 0.1)
    return StepEngine(model, opt, None, MethodConfig(name=method, **opts), 1.0, ds.num_topics, Dist(),
                      compile=compile, attention=attention, stat_per=stat_per)


def test_per_token_weighted_loss_and_segment_statistics(tiny_tokens):
    ds = TokenDataset(tiny_tokens)
    b = Batch(**ds.gather(np.arange(0, len(ds), max(1, len(ds) // 6))[:6]))
    e = _engine(ds)
    # all weights 1: the ordinary token mean, as F.cross_entropy computes it
    s1 = segments.token_weights(torch.ones(ds.num_topics), b.seg_topics, b.seg_ids)
    loss, ce = e._fwd_packed(b.input_ids, b.labels, s1, 1.0 / s1.sum(), None)
    logits = e.model(b.input_ids)
    ref = F.cross_entropy(logits.flatten(0, 1), b.labels.flatten(), ignore_index=-100)
    assert torch.allclose(loss, ref, rtol=1e-5)
    # weights: each token carries its document's mean topic weight; unlabelled -> unlabelled weight
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    topics = b.seg_topics.clone()
    topics[0] = -1  # a segment with no topics
    s = segments.token_weights(w, topics, b.seg_ids, unlabelled_weight=0.25)
    for r in range(b.seg_ids.shape[0]):
        for t in range(b.seg_ids.shape[1]):
            j = int(b.seg_ids[r, t])
            tt = [int(x) for x in topics[j] if x >= 0] if j >= 0 else None
            want = 0.0 if j < 0 else (sum(w[x] for x in tt) / len(tt) if tt else 0.25)
            assert float(s[r, t]) == pytest.approx(float(want))
    # per-segment statistics: mean loss of each piece, counted once per topic (hand loop)
    S, K = b.seg_topics.shape[0], ds.num_topics
    seg_loss, seg_n = segments.segment_stats(ce.detach(), b.seg_ids, S)
    ls, cnt = torch.zeros(K + 1, dtype=torch.float64), torch.zeros(K + 1, dtype=torch.float64)
    segments.accumulate(ls, cnt, seg_loss, seg_n, b.seg_topics)
    want_l, want_c = torch.zeros(K, dtype=torch.float64), torch.zeros(K, dtype=torch.float64)
    tls, tcs = torch.zeros(K, dtype=torch.float64), torch.zeros(K, dtype=torch.float64)
    bls, bcs = torch.zeros(K, dtype=torch.float64), torch.zeros(K, dtype=torch.float64)
    for j in range(S):
        m = b.seg_ids == j
        piece = ce.detach()[m].double()
        for k in [int(x) for x in b.seg_topics[j] if x >= 0]:
            want_l[k] += piece.mean()
            want_c[k] += 1
            tls[k] += piece.sum()
            tcs[k] += len(piece)
            bls[k] += piece.sum() / b.seg_bytes[j]
            bcs[k] += 1
    assert torch.allclose(ls[:K], want_l) and torch.equal(cnt[:K], want_c)
    ls.zero_(), cnt.zero_()
    segments.accumulate(ls, cnt, seg_loss, seg_n, b.seg_topics, stat_per="token")
    assert torch.allclose(ls[:K], tls) and torch.equal(cnt[:K], tcs)
    ls.zero_(), cnt.zero_()
    segments.accumulate(ls, cnt, seg_loss, seg_n, b.seg_topics, b.seg_bytes, stat_unit="byte")
    assert torch.allclose(ls[:K], bls) and torch.equal(cnt[:K], bcs)


def test_doc_attention_equals_each_document_alone(tiny_tokens):
    ds = TokenDataset(tiny_tokens)
    several = np.nonzero(np.diff(np.asarray(ds.pack["seg_ptr"])) >= 2)[0][:3]  # several document pieces
    b = Batch(**ds.gather(several))
    assert len(several) == 3
    torch.manual_seed(0)
    model = GPT(GPTConfig.named("tiny", ds.vocab_size, ds.seq_len)).eval()
    with torch.no_grad():
        full = model(b.input_ids, b.seg_ids)
        causal = model(b.input_ids)
        model.doc_attn_impl = "flex"  # the GPU path (FlexAttention block mask), eager on CPU
        flex = model(b.input_ids, b.seg_ids)
        model.doc_attn_impl = "auto"
        for j in b.seg_ids.unique().tolist():
            r, cols = (b.seg_ids == j).nonzero(as_tuple=True)
            alone = model(b.input_ids[r[0], cols][None])[0]
            assert torch.allclose(full[r[0], cols], alone, atol=1e-5), j
            assert torch.allclose(flex[r[0], cols], alone, atol=1e-4), j
    first = b.seg_ids[0] == b.seg_ids[0, 0]
    assert torch.allclose(full[0, first], causal[0, first], atol=1e-5)  # first piece: same as causal
    assert not torch.allclose(full[0, ~first], causal[0, ~first], atol=1e-3)


@pytest.mark.parametrize("compile,attention", [(False, "causal"), (False, "doc"), (True, "doc")])
def test_packed_step_is_sync_free(tiny_tokens, monkeypatch, compile, attention):
    ds = TokenDataset(tiny_tokens)
    loader = BatchLoader(ds, batch_size=4, seed=0)
    e = _engine(ds, attention=attention, stat_unit="byte")
    if compile:  # one graph, no breaks (a break is where a host sync would hide); aot_eager: quick on CPU
        e.fwd_packed = torch.compile(e._fwd_packed, backend="aot_eager", fullgraph=True)
    e.set_weights(torch.linspace(0.5, 2.0, ds.num_topics, dtype=torch.float64))
    batches = [[loader.next_batch(), loader.next_batch()] for _ in range(3)]
    e.train_step(batches[0])  # warm-up (compilation)
    before = e.rw.count.clone()
    assert count_host_syncs(monkeypatch, lambda: [e.train_step(b) for b in batches[1:]]) == []
    assert e.rw.count[:ds.num_topics].sum() > before[:ds.num_topics].sum()
    assert torch.isfinite(e.window.sums.tensor).all() and int(e.bad.skipped) == 0


def test_own_loop_accepts_segment_maps_and_per_token_topics(tiny_tokens):
    from toremi.train.hf import TopicReweighter

    ds = TokenDataset(tiny_tokens)
    b = BatchLoader(ds, batch_size=6, seed=2).next_batch()
    torch.manual_seed(0)
    logits = GPT(GPTConfig.named("tiny", ds.vocab_size, ds.seq_len))(b.input_ids).detach()
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    rws = [TopicReweighter(ds.num_topics, "toremi", total_steps=4, interval=2) for _ in range(3)]
    for rw in rws:
        rw.method.weights = w.clone()
        rw.push_weights()
    loss_map = rws[0].weighted_loss(logits, b.seg_topics, labels=b.labels, seg_ids=b.seg_ids)
    s = segments.token_weights(w.float(), b.seg_topics, b.seg_ids)
    ce = segments.token_ce(logits, b.labels)
    assert torch.allclose(loss_map, (s * ce).sum() / s.sum(), rtol=1e-6)
    ls, cnt = torch.zeros(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    segments.accumulate(ls, cnt, *segments.segment_stats(ce, b.seg_ids, len(b.seg_topics)), b.seg_topics)
    assert torch.allclose(rws[0].loss_sum, ls) and torch.equal(rws[0].count, cnt)
    # per-token topic ids: same loss, token-weighted statistics
    per_token = torch.where(b.seg_ids[..., None] >= 0, b.seg_topics[b.seg_ids.clamp(min=0)], -1)
    assert torch.allclose(rws[1].weighted_loss(logits, per_token, labels=b.labels), loss_map, rtol=1e-6)
    assert rws[1].count[:5].sum() == ((b.seg_topics[b.seg_ids[b.seg_ids >= 0]] >= 0).sum())
    # HF-style rows: labels = the window's tokens (shifted inside), row-local segment ids aligned
    # with the labels, topics per row [B, S_max, M]
    first = b.seg_ids[:, :1]
    local = torch.where(b.seg_ids >= 0, b.seg_ids - first, -1)
    pad = torch.full_like(first, -1)
    smax = int(local.max()) + 1
    rows = torch.full((6, smax, b.seg_topics.shape[1]), -1)
    for r in range(6):
        n = int(local[r].max()) + 1
        rows[r, :n] = b.seg_topics[int(first[r, 0]):int(first[r, 0]) + n]
    full = torch.cat([b.input_ids, b.labels[:, -1:].clamp(min=0)], 1)
    hf_labels = torch.cat([pad - 99, b.labels], 1)
    hf_logits = GPT(GPTConfig.named("tiny", ds.vocab_size, ds.seq_len + 1))(full).detach()
    ref = TopicReweighter(ds.num_topics, "toremi", total_steps=4, interval=2)
    for rw in (ref, rws[2]):
        rw.method.weights = w.clone()
        rw.push_weights()
    loss_hf = rws[2].weighted_loss(hf_logits, rows, labels=hf_labels, shift=True,
                                   seg_ids=torch.cat([pad, local], 1))
    want = ref.weighted_loss(hf_logits[:, :-1], b.seg_topics, labels=b.labels, seg_ids=b.seg_ids)
    assert torch.allclose(loss_hf, want, rtol=1e-6) and torch.equal(rws[2].count, ref.count)
    assert torch.allclose(rws[2].loss_sum, ref.loss_sum)


def test_hf_trainer_accepts_packed_rows(tiny_tokens, tmp_path):
    pytest.importorskip("accelerate")
    ds = TokenDataset(tiny_tokens)
    b = ds.gather(np.nonzero(np.diff(np.asarray(ds.pack["seg_ptr"])) >= 2)[0][::4][:32])  # 2+ pieces
    first = b["seg_ids"][:, :1]
    local = torch.where(b["seg_ids"] >= 0, b["seg_ids"] - first, -1)
    smax = int(local.max()) + 1
    items = []
    for r in range(32):
        n = int(local[r].max()) + 1
        topics = torch.full((smax, b["seg_topics"].shape[1]), -1)
        topics[:n] = b["seg_topics"][int(first[r, 0]):int(first[r, 0]) + n]
        items.append({"input_ids": b["input_ids"][r], "labels": b["input_ids"][r], "topic_ids": topics,
                      "seg_ids": torch.cat([torch.tensor([-1]), local[r, :-1]])})  # aligned with labels
    _, rw, out = hf_tiny_train(items, ds.vocab_size, ds.seq_len, ds.num_topics, tmp_path / "hf")
    assert np.isfinite(out.training_loss) and len(rw.records) == 3
    assert any(w != 1.0 for w in rw.topic_weights.tolist())
    pieces = sum(sum(r["topic_count"]) for r in rw.records)
    assert pieces > 40, [r["topic_count"] for r in rw.records]  # ~2 pieces in each of 24 rows, not 24
