"""Per-topic epoch accounting and the repetition cap.

The counters are checked against a hand count of the sequences the step engine actually trained
on; the cap against the loader's draws; the refusal through the CLI (exit 2, one line, no run
dir); resume equality with the counters in weights.jsonl and run.json.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import assert_same_run, train_cfg, train_interrupted
from toremi import cli
from toremi.data.loader import BatchLoader
from toremi.data.shards import TokenDataset
from toremi.io import read_json, read_jsonl
from toremi.train import train
from toremi.train.step import StepEngine


def pieces(ds: TokenDataset, r: int) -> list[tuple[list[int], int]]:
    """(topics, target tokens) of each piece of text in row ``r``: the sequence, or the document
    pieces of a packed window."""
    if not ds.packed:
        return [([t for t in ds.topics[r].tolist() if t >= 0], int(ds.length[r]) - 1)]
    p = ds.pack
    return [([t for t in p["doc_topics"][p["seg_doc"][j]].tolist() if t >= 0], int(p["seg_len"][j]))
            for j in range(int(p["seg_ptr"][r]), int(p["seg_ptr"][r + 1]))]


def hand_tokens(ds: TokenDataset, rows: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """[K] target tokens of ``rows`` per topic, each piece's tokens split evenly over its topics."""
    out = np.zeros(ds.num_topics)
    for r in rows.tolist():  # a plain loop on purpose: an independent count
        for topics, n in pieces(ds, r):
            s = 1.0 if weights is None else float(np.mean([weights[t] for t in topics]))
            for t in topics:
                out[t] += s * n / len(topics)
    return out


@pytest.mark.parametrize("packing", ["docs", "none"])
def test_counters_match_a_hand_count(packing, tiny_tokens, tmp_path, monkeypatch):
    seen = []
    orig = StepEngine.train_step

    def recording(self, batches):
        seen.append(torch.cat([b.sample_index for b in batches]).cpu().numpy())
        return orig(self, batches)

    monkeypatch.setattr(StepEngine, "train_step", recording)
    run = train(train_cfg(tiny_tokens, tmp_path / "run", "method.name=oracle", "method.oracle.topic=1",
                    "method.oracle.factor=3", "steps=6", "eval_every=0", f"packing={packing}"))
    ds = TokenDataset(tiny_tokens, packing=packing)
    avail = hand_tokens(ds, np.arange(len(ds)))
    info = read_json(run / "run.json")
    assert info["topic_tokens_available"] == pytest.approx(avail.tolist())
    w = np.ones(ds.num_topics)
    w[1] = 3.0
    for rec in read_jsonl(run / "weights.jsonl"):  # interval 2: steps 2, 4, 6
        rows = np.concatenate(seen[:rec["step"]])
        tok = hand_tokens(ds, rows)
        assert rec["topic_tokens_seen"] == pytest.approx(tok.tolist())
        assert rec["topic_epochs"] == pytest.approx((tok / avail).tolist())
        assert rec["topic_weighted_epochs"] == pytest.approx((hand_tokens(ds, rows, w) / avail).tolist())
    rows = np.concatenate(seen)
    assert info["topic_tokens_seen"] == pytest.approx(hand_tokens(ds, rows).tolist())
    assert info["topic_weighted_epochs"][1] == pytest.approx(3 * info["topic_epochs"][1])
    assert sum(info["topic_tokens_seen"]) == pytest.approx(sum(n for r in rows for _, n in pieces(ds, r)))


def test_sampling_runs_log_no_weighted_epochs(tiny_tokens, tmp_path):
    run = train(train_cfg(tiny_tokens, tmp_path / "run", "method.name=stratified", "steps=2", "eval_every=0"))
    info = read_json(run / "run.json")
    assert "topic_weighted_epochs" not in info and len(info["topic_epochs"]) == 5


def test_cap_renormalises_over_topics_under_it(tiny_tokens):
    ds = TokenDataset(tiny_tokens)
    cap = 0.05
    loader = BatchLoader(ds, 8, seed=1, max_repetition=cap)
    loader.set_topic_probs(torch.tensor([0.9, 0.025, 0.025, 0.025, 0.025]))
    batch_tokens = 8 * ds.seq_len
    capped_at = None
    for i in range(15):  # capacity: 0.05 x all tokens ~ 20 batches
        before = loader.under_cap().copy()
        idx = loader.next_global_indices()
        topics = ds.topics[idx, 0]
        assert set(topics.tolist()) <= set(np.nonzero(before)[0].tolist()), \
            f"batch {i}: drew a topic already at the cap ({before})"
        if not before[0] and capped_at is None:
            capped_at = i
    ep = loader.epochs
    assert capped_at is not None and capped_at > 0, "topic 0 reached the cap and was left out"
    assert cap <= ep[0] <= cap + batch_tokens / loader.topic_available[0], ep  # overshoot < one batch
    assert (ep[1:] > 0).all() and ep[1:].sum() > ep[0], "the others took over topic 0's share"
    # the same draws without a cap go on repeating topic 0
    free = BatchLoader(ds, 8, seed=1)
    free.set_topic_probs(torch.tensor([0.9, 0.025, 0.025, 0.025, 0.025]))
    for _ in range(15):
        free.next_global_indices()
    assert free.epochs[0] > 2 * ep[0]


def test_cap_the_budget_cannot_hold_is_refused_up_front(tiny_tokens, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--tokens", str(tiny_tokens), "--out", str(out), "method=stratified", "steps=2000",
            "batch_size=8", "max_repetition=1", "progress=false", "device=cpu"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    names = TokenDataset(tiny_tokens).topic_names
    assert len(err.splitlines()) == 1, err
    assert "max_repetition=1" in err and "1,024,000 tokens" in err and any(f"'{n}'" in err for n in names), err
    assert not out.exists(), "a refused run leaves nothing behind"
    # shuffling methods are refused too when the budget repeats the whole split past the cap
    assert cli.main([*argv[:5], "method=uniform", *argv[6:]]) == 2
    assert "natural mix" in capsys.readouterr().err and not out.exists()
    with pytest.raises(Exception, match="max_repetition must be > 0"):
        train_cfg(tiny_tokens, out, "max_repetition=0")


def test_resume_keeps_the_counters_and_the_cap(tiny_tokens, tmp_path):
    args = ["method.name=stratified", "method.stratified.tau=0.2", "max_repetition=0.05", "eval_every=0",
            "batch_size=16"]
    ref = train(train_cfg(tiny_tokens, tmp_path / "ref", *args))
    ep = read_json(ref / "run.json")["topic_epochs"]
    assert max(ep) >= 0.05, f"the cap binds during the run: {ep}"
    train_interrupted(tiny_tokens, tmp_path / "resumed", *args, stop=3)
    assert_same_run(ref, tmp_path / "resumed", "capped stratified across resume")
    # a loss-weight method with a mid-interval checkpoint: weighted tokens of the open interval
    args = ["method.name=toremi", "method.interval=4", "eval_every=0"]
    ref = train(train_cfg(tiny_tokens, tmp_path / "ref2", *args))
    train_interrupted(tiny_tokens, tmp_path / "resumed2", *args, stop=3)
    assert_same_run(ref, tmp_path / "resumed2", "toremi weighted epochs across resume")
    keys = ("topic_tokens_seen", "topic_epochs", "topic_weighted_epochs")
    a, b = read_json(ref / "run.json"), read_json(tmp_path / "resumed2" / "run.json")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
