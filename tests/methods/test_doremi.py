"""DoReMi over topics: the Group-DRO update by hand, the three-run chain on real tokens, errors."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from helpers import train_cfg
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


_cfg = partial(train_cfg, base=["steps=8", "batch_size=4", "log_every=2", "eval_every=0", "eval_batches=1",
                                "progress=false", "optim.warmup_steps=2"])


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


@pytest.fixture(scope="module")
def ref_run(tiny_tokens, tmp_path_factory):
    """A finished (tiny, 3-step) uniform run: the DoReMi reference model."""
    return train(_cfg(tiny_tokens, tmp_path_factory.mktemp("doremi-ref") / "ref", "method.name=uniform", "steps=3"))


# per-token excess (proxy - reference) by topic: topic 0 below the reference everywhere (its
# clipped excess is 0, unclipped it would be negative), topic 1 mixed, the others above it
def _delta(topic: int, i: int) -> float:
    return -0.5 if topic == 0 else ((0.3 if i % 2 else -0.4) if topic == 1 else 0.25)


def test_excess_loss_is_clipped_at_zero_per_sample(tiny_tokens, ref_run):
    """Unpacked batches: λ_k sums max(l_i - l_ref_i, 0) over topic k's samples, so a sample the
    proxy already predicts better than the reference adds nothing (not a negative amount)."""
    import numpy as np

    from toremi.data.shards import TokenDataset
    from toremi.model import per_sample_loss
    from toremi.train.reweighter import Reweighter

    ds = TokenDataset(tiny_tokens, packing="none")
    b = ds.gather(np.linspace(0, len(ds) - 1, 12).astype(np.int64))
    x, y = b["input_ids"], b["labels"]
    rw = Reweighter(ds.num_topics, MethodConfig(name="doremi", reference=str(ref_run), interval=1))
    with torch.no_grad():
        r, n = per_sample_loss(rw.ref_model(x), y)
    topics = torch.arange(12) % 3  # one topic per sample: 0, 1, 2, 0, 1, 2, ...
    delta = torch.tensor([_delta(int(t), i) for i, t in enumerate(topics)])
    l = r.float() + delta  # the proxy's per-sample loss: reference +- delta
    rw.observe(l, n, torch.ones(12, dtype=torch.bool), topics[:, None], input_ids=x, labels=y)
    want = [sum(max(_delta(k, i), 0.0) for i, t in enumerate(topics) if t == k) for k in range(3)]
    assert want == pytest.approx([0.0, 0.6, 1.0])
    assert rw.stats["excess"][:3].tolist() == pytest.approx(want, abs=1e-4)
    assert (rw.stats["excess"] >= 0).all()
    rec = rw.step()
    assert rec["excess"][:3] == pytest.approx([w / 4 for w in want], abs=1e-4)  # mean over 4 samples each
    assert rec["doremi_alpha"][0] < rec["doremi_alpha"][1] < rec["doremi_alpha"][2]


def test_excess_loss_is_clipped_at_zero_per_packed_segment(tiny_tokens, ref_run):
    """Packed windows: the clip is per document piece, max(seg_loss - ref_seg_loss, 0), before the
    per-topic statistic (stat_per=segment: one mean per piece; token: the piece's sum)."""
    import numpy as np

    from toremi.data.loader import Batch
    from toremi.data.shards import TokenDataset
    from toremi.train import segments
    from toremi.train.reweighter import Reweighter

    ds = TokenDataset(tiny_tokens)
    assert ds.packed
    b = Batch(**ds.gather(np.linspace(0, len(ds) - 1, 6).astype(np.int64)))
    S = b.seg_topics.shape[0]
    seg_topic = b.seg_topics[:, 0]  # topics_from=label: one topic per document
    assert (seg_topic >= 0).all() and {0, 1}.issubset(set(seg_topic.tolist()))
    for stat_per in ("segment", "token"):
        rw = Reweighter(ds.num_topics, MethodConfig(name="doremi", reference=str(ref_run), interval=1),
                        stat_per=stat_per)
        with torch.no_grad():
            ref_ce = segments.token_ce(rw.ref_model(b.input_ids), b.labels)
        d = torch.tensor([_delta(int(t), j) for j, t in enumerate(seg_topic)])  # per token of piece j
        ce = torch.where(b.seg_ids >= 0, ref_ce + d[b.seg_ids.clamp(min=0)], 0.0)
        seg_n = rw.observe_packed([ce], [b], torch.ones(S, dtype=torch.bool), stat_per).tokens
        want = torch.zeros(ds.num_topics, dtype=torch.float64)
        for j in range(S):
            if seg_n[j] > 0:
                want[seg_topic[j]] += max(float(d[j]), 0.0) * (1 if stat_per == "segment" else float(seg_n[j]))
        assert want[0] == 0 and want[1] > 0
        assert rw.stats["excess"][:ds.num_topics].tolist() == pytest.approx(want.tolist(), abs=1e-3), stat_per
        rec = rw.step()
        assert rec["excess"][0] == pytest.approx(0.0, abs=1e-6) and min(rec["excess"]) >= 0
