"""DoReMi over topics: the Group-DRO update by hand, the three-run chain on real tokens, errors."""

from __future__ import annotations

import math

import pytest
import torch

from toremi.config import ConfigError, load_config
from toremi.io import read_jsonl
from toremi.methods import MethodConfig, build_method
from toremi.methods.doremi import doremi_update
from toremi.train import TrainConfig, train

D = torch.float64


def test_group_dro_update_by_hand():
    # α = 1/3 each, λ = [0.5, 0, 1.0], η = 1, c = 0.1:
    # α' ∝ [e^.5, 1, e^1]/3 -> normalised; then 0.9 α' + 0.1/3
    alpha = torch.full((3,), 1 / 3, dtype=D)
    lam = torch.tensor([0.5, 0.0, 1.0], dtype=D)
    e = [math.exp(0.5), 1.0, math.exp(1.0)]
    expect = [0.9 * x / sum(e) + 0.1 / 3 for x in e]  # = [0.30981, 0.20102, 0.48917]
    got = doremi_update(alpha, lam, eta=1.0, smoothing=0.1, present=torch.ones(3, dtype=torch.bool))
    assert got.tolist() == pytest.approx(expect, rel=1e-12)
    assert got.tolist() == pytest.approx([0.30981, 0.20102, 0.48917], abs=1e-5)
    # a topic with no data stays at 0 and the uniform part spreads over the present ones only
    got = doremi_update(torch.tensor([0.5, 0.5, 0.0], dtype=D), lam, 1.0, 0.1, torch.tensor([True, True, False]))
    e2 = [math.exp(0.5), 1.0]
    assert got.tolist() == pytest.approx([0.9 * e2[0] / sum(e2) + 0.05, 0.9 * e2[1] / sum(e2) + 0.05, 0.0])


def test_doremi_without_a_run_says_what_is_missing(tmp_path):
    with pytest.raises(ConfigError, match=r"method.doremi.reference=REF_RUN .*toremi train .*method=uniform"):
        load_config(TrainConfig, None, ["method.name=doremi"])
    cfg = MethodConfig(name="doremi", reference=str(tmp_path / "ref"))
    with pytest.raises(ValueError) as e:
        build_method(cfg, 3)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "ref") in msg and "toremi train" in msg and "method=uniform" in msg
    with pytest.raises(ValueError, match="no DoReMi averages"):
        build_method(MethodConfig(name="doremi", weights_from=str(tmp_path)), 3)


def _cfg(tokens, out, *overrides):
    base = [f"tokens_dir={tokens}", f"out={out}", "steps=8", "batch_size=4", "log_every=2",
            "eval_every=0", "eval_batches=1", "progress=false", "optim.warmup_steps=2"]
    return load_config(TrainConfig, None, base + list(overrides))


def test_reference_proxy_main_chain(tiny_tokens, tmp_path):
    ref = train(_cfg(tiny_tokens, tmp_path / "ref", "method.name=uniform"))
    proxy = train(_cfg(tiny_tokens, tmp_path / "proxy", "method.name=doremi", f"method.doremi.reference={ref}",
                       "method.interval=2", "method.doremi.eta=5"))
    recs = read_jsonl(proxy / "weights.jsonl")
    assert [r["step"] for r in recs] == [2, 4, 6, 8]
    for r in recs:
        assert sum(r["doremi_alpha"]) == pytest.approx(1) and sum(r["doremi_avg"]) == pytest.approx(1)
        assert all(x >= 0 for x in r["excess"])
        assert r["weights"] == pytest.approx([a * 5 for a in r["doremi_alpha"]])
    # the reference model is not the proxy: some excess loss appears, and the weights move
    assert any(x > 0 for r in recs for x in r["excess"])
    assert max(recs[-1]["doremi_alpha"]) > 0.2 + 1e-3
    avg = torch.tensor([r["doremi_alpha"] for r in recs], dtype=D).mean(0)
    assert recs[-1]["doremi_avg"] == pytest.approx(avg.tolist())
    main = train(_cfg(tiny_tokens, tmp_path / "main", "method.name=doremi", f"method.doremi.weights_from={proxy}",
                      "method.interval=2"))
    m = read_jsonl(main / "weights.jsonl")
    assert m[-1]["probs"] == pytest.approx(recs[-1]["doremi_avg"])
    assert m[-1]["weights"] == [1.0] * 5  # the main run samples, it does not reweight the loss


def test_plain_loop_feeds_reference_losses(tiny_tokens, tmp_path):
    """The Reweighter's reference hook in a plain loop (HF-style shifted labels)."""
    import numpy as np

    from toremi.data.shards import TokenDataset
    from toremi.model import GPT, GPTConfig
    from toremi.train.reweighter import Reweighter

    ref = train(_cfg(tiny_tokens, tmp_path / "ref", "method.name=uniform", "steps=3"))
    ds = TokenDataset(tiny_tokens)
    b = ds.gather(np.linspace(0, len(ds) - 1, 8).astype(np.int64))
    torch.manual_seed(0)
    model = GPT(GPTConfig.named("tiny", ds.vocab_size, ds.seq_len))
    rw = Reweighter(ds.num_topics, MethodConfig(name="doremi", reference=str(ref), interval=1))
    x = b["input_ids"]
    rw.weighted_loss(model(x), b["topic_ids"], labels=x, shift=True).backward()
    seen = rw.count[:5] > 0
    assert seen.any() and (rw.stats["ref_loss"][:5][seen] > 0).all() and (rw.stats["excess"] >= 0).all()
    rec = rw.step()
    assert rec["excess"] == pytest.approx((rw.method.stats["excess"] / rw.method.stats["excess"].new_tensor(
        rec["topic_count"]).clamp(min=1)).tolist())
