"""Update rules against numbers computed by hand (see the comments), and method behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import t
from toremi.config import ConfigError, load_config
from toremi.methods import MethodConfig, build_method, rules

D = torch.float64


# Interval stats: topic 2 absent. L = [2, 3, -, 3]; L̄ = 8/3; ΔL = [-2/3, 1/3, 0, 1/3].
LOSS, COUNT = t(4, 3, 0, 9), t(2, 1, 0, 3)


def test_loss_deviation_ignores_absent_topic():
    delta, lbar, seen = rules.loss_deviation(LOSS, COUNT)
    assert seen.tolist() == [True, True, False, True]
    assert lbar.item() == pytest.approx(8 / 3)
    assert delta.tolist() == pytest.approx([-2 / 3, 1 / 3, 0, 1 / 3])


def test_additive_stage1_keep_and_reset_and_cap():
    delta, _, seen = rules.loss_deviation(LOSS, COUNT)
    w = t(1.5, 1, 2, 4.9)
    # above mean: 1 + 0.5/3 = 1.1667; 4.9 + 0.1667 capped at 5; absent topic keeps 2
    keep = rules.toremi_additive(w, delta, seen, 1, alpha=0.5, beta=5, gamma=0.1, below_mean="keep")
    assert keep.tolist() == pytest.approx([1.5, 7 / 6, 2, 5])
    reset = rules.toremi_additive(w, delta, seen, 1, alpha=0.5, beta=5, gamma=0.1, below_mean="reset")
    assert reset.tolist() == pytest.approx([1.0, 7 / 6, 2, 5])


def test_additive_stage2_mirror_with_floor():
    delta, _, seen = rules.loss_deviation(LOSS, COUNT)
    w = t(1.5, 1, 2, 0.15)
    # below: 1.5 + 0.5*2/3 = 1.8333; above: 1 - 1/6 = 0.8333; 0.15 - 1/6 floored at 0.1
    new = rules.toremi_additive(w, delta, seen, 2, alpha=0.5, beta=5, gamma=0.1)
    assert new.tolist() == pytest.approx([11 / 6, 5 / 6, 2, 0.1])


def test_multiplicative_authors_rule_both_stages():
    delta, lbar, seen = rules.loss_deviation(LOSS, COUNT)  # r = ΔL/L̄ = [-1/4, 1/8, 0, 1/8]
    s1 = rules.toremi_multiplicative(t(1.5, 1, 2, 4.8), delta, lbar, seen, 1, lo=0.1, hi=5.0)
    assert s1.tolist() == pytest.approx([1.5, 1.125, 2, 5.0])  # 4.8*1.125 = 5.4 -> 5
    s2 = rules.toremi_multiplicative(t(1.5, 1, 2, 0.105), delta, lbar, seen, 2, lo=0.1, hi=5.0)
    assert s2.tolist() == pytest.approx([1.875, 0.875, 2, 0.1])  # 0.105*0.875 -> floor 0.1


def test_absent_zero_reproduces_authors_defect():
    # absent topic counted with loss 0: L = [2,3,0,3], L̄ = 2, r = [0, .5, -1, .5]; Stage 2 doubles it
    delta, lbar, seen = rules.loss_deviation(LOSS, COUNT, absent="zero")
    w = rules.toremi_multiplicative(torch.ones(4, dtype=D), delta, lbar, seen, 2)
    assert w.tolist() == pytest.approx([1.0, 0.5, 2.0, 0.5])
    delta, lbar, seen = rules.loss_deviation(LOSS, COUNT)  # default: absent keeps its weight
    assert rules.toremi_multiplicative(torch.ones(4, dtype=D), delta, lbar, seen, 2)[2] == 1.0


def test_no_topic_seen_changes_nothing():
    delta, lbar, seen = rules.loss_deviation(t(0, 0), t(0, 0))
    w = t(1.2, 0.7)
    assert torch.equal(rules.toremi_additive(w, delta, seen, 2, 1.0, 5.0, 0.1), w)


def test_sample_weights_mean_of_topics_and_unlabelled():
    w = t(1, 2, 4)
    ids = torch.tensor([[0, 1, -1], [2, -1, -1], [-1, -1, -1], [0, 1, 2]])
    assert rules.sample_weights(w, ids).tolist() == pytest.approx([1.5, 4, 1.0, 7 / 3])
    assert rules.sample_weights(w, ids, unlabelled_weight=0.0)[2] == 0.0
    assert rules.sample_weights(torch.zeros(0, dtype=D), torch.full((2, 1), -1)).tolist() == [1.0, 1.0]


def test_accumulate_topic_stats_masks_and_multi_topic():
    ls, cnt = torch.zeros(4, dtype=D), torch.zeros(4, dtype=D)  # K=3 + padding slot
    ids = torch.tensor([[0, 1, -1], [2, -1, -1], [-1, -1, -1], [0, 1, 2]])
    rules.accumulate_topic_stats(ls, cnt, t(1, 2, 3, 4), ids, torch.tensor([1, 1, 1, 0]).bool())
    assert ls[:3].tolist() == [1, 1, 2] and cnt[:3].tolist() == [1, 1, 1]
    rules.accumulate_topic_stats(ls, cnt, t(1, 2, 3, 4), ids)
    assert ls[:3].tolist() == [6, 6, 8] and cnt[:3].tolist() == [3, 3, 3]


def test_temperature_probs():
    c = t(1, 4, 0, 9)
    assert rules.temperature_probs(c, 1.0).tolist() == pytest.approx([1 / 14, 4 / 14, 0, 9 / 14])
    assert rules.temperature_probs(c, 2.0).tolist() == pytest.approx([1 / 6, 2 / 6, 0, 3 / 6])
    assert rules.temperature_probs(c, math.inf).tolist() == pytest.approx([1 / 3, 1 / 3, 0, 1 / 3])


def test_exp3_update_by_hand():
    # K=4, t=10: eps_9 = sqrt(ln4/36), eps_10 = sqrt(ln4/40) (both < 1/4)
    r0, p0 = t(1, 0, 0, 0), t(0.25, 0.25, 0.25, 0.25)
    r, p = rules.exp3_update(r0, p0, t(8, 3, 0, 0), t(2, 1, 0, 0), t=10, smoothing=0.9)
    # seen: r = .9 r + .1 L/π: topic0 .9 + .1*4/.25 = 2.5; topic1 .1*3/.25 = 1.2; others unchanged
    assert r.tolist() == pytest.approx([2.5, 1.2, 0, 0])
    e9, e10 = math.sqrt(math.log(4) / 36), math.sqrt(math.log(4) / 40)
    ex = [math.exp(e9 * x) for x in (2.5, 1.2, 0, 0)]
    expect = [(1 - 4 * e10) * x / sum(ex) + e10 for x in ex]
    assert p.tolist() == pytest.approx(expect)
    assert p.sum().item() == pytest.approx(1.0)


def test_presets_and_explicit_override():
    a = MethodConfig(name="toremi", preset="authors")
    o = a.opts
    assert (o.rule, a.interval, o.beta, o.gamma, o.switch, o.switch_step, a.loss_norm) == \
        ("multiplicative", 100, 5.0, 0.1, "step", 7000, "mean")
    p = MethodConfig(name="toremi")
    assert (p.opts.preset, p.opts.rule, p.loss_norm, p.opts.switch) == ("paper", "additive", "weighted_mean", "fraction")
    assert MethodConfig(name="toremi", preset="authors", interval=7).interval == 7
    with pytest.raises(ValueError):
        MethodConfig(name="uniform", preset="authors")
    with pytest.raises(ValueError):
        MethodConfig(name="bogus")


def test_method_config_from_yaml_overrides(tmp_path):
    cfg = load_config(MethodConfig, None, ["name=toremi", "preset=authors", "below_mean=reset"])
    assert cfg.opts.below_mean == "reset" and cfg.opts.rule == "multiplicative"
    with pytest.raises(ConfigError):
        load_config(MethodConfig, None, ["name=toremi", "below_mean=sometimes"])


def test_toremi_stage_switch_fraction_and_state_roundtrip():
    cfg = MethodConfig(name="toremi", interval=1, switch="fraction", switch_fraction=0.5, alpha=1.0)
    m = build_method(cfg, 2, total_steps=10)
    m.update(4, t(3, 1), t(1, 1))          # stage 1: ΔL = [1, -1] -> w = [2, 1]
    assert m.stage == 1 and m.topic_weights.tolist() == [2.0, 1.0]
    m.update(5, t(3, 1), t(1, 1))          # step 5 >= 0.5*10 -> stage 2: w = [1, 2]
    assert m.stage == 2 and m.topic_weights.tolist() == [1.0, 2.0]
    m2 = build_method(cfg, 2, total_steps=10)
    m2.load_state_dict(m.state_dict())
    assert m2.stage == 2 and torch.equal(m2.topic_weights, m.topic_weights)
    with pytest.raises(ValueError):
        build_method(cfg, 3, total_steps=10).load_state_dict(m.state_dict())


def test_toremi_plateau_switch():
    m = build_method(MethodConfig(name="toremi", switch="plateau", plateau_delta=0.01), 2, 100)
    m.on_eval(10, 5.0)
    m.on_eval(20, 4.0)  # improved 20%: stay in stage 1
    assert m.stage == 1
    m.on_eval(30, 3.99)  # improved 0.25% < 1%: switch
    assert m.stage == 2


def test_sampling_methods_expose_probs_and_unit_weights():
    counts = t(10, 30, 0)
    ts = build_method(MethodConfig(name="toremi-sampling", interval=1), 3, 10, counts)
    ts.update(1, t(3, 1, 0), t(1, 1, 0))   # additive α=1: w = [2, 1, 1]; topic 2 has no data
    assert ts.topic_weights.tolist() == [1, 1, 1]
    assert ts.sampling_probs.tolist() == pytest.approx([0.4, 0.6, 0])  # p ∝ n_k w_k = [20, 30, 0]
    st = build_method(MethodConfig(name="stratified", tau=1.0), 3, 10, counts)
    assert st.sampling_probs.tolist() == pytest.approx([0.25, 0.75, 0])
    odm = build_method(MethodConfig(name="odm"), 3, 10, counts)
    assert odm.sampling_probs.tolist() == pytest.approx([0.5, 0.5, 0])
    odm.update(1, t(9, 1, 0), t(1, 1, 0))  # with K=2, ε_1 = 1/K: still uniform
    odm.update(2, t(9, 1, 0), t(1, 1, 0))
    p = odm.sampling_probs
    assert p[0] > p[1] > 0 and p[2] == 0 and p.sum().item() == pytest.approx(1)
    rec = odm.update(3, t(0, 0, 0), t(0, 0, 0))
    assert rec["topic_loss"] == [None, None, None]


def test_per_byte_statistic_divides_total_nll_by_target_bytes():
    from toremi.train.reweighter import Reweighter

    l = torch.tensor([2.0, 3.0])  # mean NLL per token
    n = torch.tensor([4, 10])     # target tokens
    nbytes = torch.tensor([16, 20])
    rw = Reweighter(2, MethodConfig(name="toremi", stat_unit="byte"))
    assert torch.allclose(rw.statistic(l, n, nbytes), torch.tensor([0.5, 1.5]))
    assert torch.equal(Reweighter(2, "toremi").statistic(l, n, nbytes), l)
