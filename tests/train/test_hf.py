"""TopicReweighter in a plain loop and inside a Hugging Face Trainer, on real prepared tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toremi.data.shards import TokenDataset
from toremi.io import read_jsonl
from toremi.methods import rules
from toremi.model import GPT, GPTConfig, per_sample_loss
from toremi.train.hf import TopicReweighter

from helpers import hf_tiny_train


def test_weighted_loss_matches_formula_and_updates(tiny_tokens, tmp_path):
    ds = TokenDataset(tiny_tokens)
    b = ds.gather(np.linspace(0, len(ds) - 1, 8).astype(np.int64))
    torch.manual_seed(0)
    model = GPT(GPTConfig.named("tiny", ds.vocab_size, ds.seq_len))
    rw = TopicReweighter(ds.num_topics, "toremi", total_steps=10, interval=2, alpha=5.0,
                         log_path=tmp_path / "w.jsonl")
    rw.method.weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    rw.push_weights()
    logits = model(b["input_ids"])
    loss = rw.weighted_loss(logits, b["topic_ids"], labels=b["labels"])
    l, _ = per_sample_loss(logits, b["labels"])
    s = rules.sample_weights(rw.w_dev, b["topic_ids"])
    assert loss.item() == pytest.approx(((s * l).sum() / s.sum()).item(), rel=1e-6)
    assert rw.step() is None  # interval 2
    rw.weighted_loss(l.detach(), b["topic_ids"])  # per-sample losses work too
    rec = rw.step()
    assert rec is not None and rec["step"] == 2 and read_jsonl(tmp_path / "w.jsonl") == [rec]
    seen = [k for k, c in enumerate(rec["topic_count"]) if c > 0]
    assert seen and sum(rec["topic_count"]) == 16
    sd = rw.state_dict()
    rw2 = TopicReweighter(ds.num_topics, "toremi", total_steps=10, interval=2, alpha=5.0)
    rw2.load_state_dict(sd)
    assert torch.equal(rw2.topic_weights, rw.topic_weights) and rw2.steps == 2


def test_hf_trainer_integration(tiny_tokens, tmp_path):
    pytest.importorskip("accelerate")
    ds = TokenDataset(tiny_tokens)
    rows = ds.gather(np.linspace(0, len(ds) - 1, 32).astype(np.int64))  # all five topics
    items = [{"input_ids": rows["input_ids"][i], "labels": rows["input_ids"][i],
              "topic_ids": rows["topic_ids"][i]} for i in range(32)]
    trainer, rw, out = hf_tiny_train(items, ds.vocab_size, ds.seq_len, ds.num_topics, tmp_path / "hf")
    assert np.isfinite(out.training_loss)
    assert len(rw.records) == 3 and rw.steps == 6
    assert any(w != 1.0 for w in rw.topic_weights.tolist()), [(r["topic_loss"], r["topic_count"]) for r in rw.records]
    assert any("topic_weights" in h for h in trainer.state.log_history)
