"""Method objects (not only their pure rules): options reach the rule, and state round-trips.

Written after mutmut showed that ODM's ``odm_smoothing`` option and its step counter could be
changed without any test noticing, and that no fast test restored a method's extra state.
"""

from __future__ import annotations

import math

import pytest
import torch

from toremi.methods import MethodConfig, build_method


def exp3_by_hand(reward, probs, mean, seen, t, s, K):
    """Albalak et al. (2023), EXP3 as ODM uses it, written out for K present topics."""
    eps = lambda u: min(1 / K, math.sqrt(math.log(K) / (K * u))) if u > 0 else 1 / K
    r = [s * r_k + (1 - s) * m / p if ok else r_k for r_k, p, m, ok in zip(reward, probs, mean, seen)]
    z = [math.exp(eps(t - 1) * x) for x in r]
    p = [(1 - K * eps(t)) * zk / sum(z) + eps(t) for zk in z]
    return r, [x / sum(p) for x in p]


def test_odm_object_uses_its_options_and_counts_updates():
    """Through ``build_method``: ε_t = min(1/K, sqrt(ln K / (K t))) keeps the probabilities exactly
    uniform while 1/K is the smaller term (t <= K ln K), so run past that, to t = 12."""
    K, s = 4, 0.5
    m = build_method(MethodConfig(name="odm", smoothing=s), K, 100)
    reward, probs = [0.0] * K, [1 / K] * K
    g = torch.Generator().manual_seed(1)
    for t in range(1, 13):
        count = torch.randint(0, 3, (K,), generator=g).double()
        loss_sum = torch.rand(K, generator=g, dtype=torch.float64) * 4 * count
        m.update(t, loss_sum, count)
        mean = [l / c if c else 0.0 for l, c in zip(loss_sum.tolist(), count.tolist())]
        reward, probs = exp3_by_hand(reward, probs, mean, [c > 0 for c in count.tolist()], t, s, K)
        assert m.sampling_probs.tolist() == pytest.approx(probs, rel=1e-12), f"update {t}"
    assert max(probs) - min(probs) > 1e-3, "the probabilities moved away from uniform"
    assert m.sampling_probs.dtype == torch.float64


METHODS = [dict(name="odm"), dict(name="stratified", tau=2.0), dict(name="toremi", switch="step", switch_step=2),
           dict(name="toremi-sampling", switch="plateau"), dict(name="toremi", preset="authors", switch_step=2)]


@pytest.mark.parametrize("opts", METHODS, ids=lambda o: "-".join(map(str, o.values())))
def test_state_round_trip_continues_identically(opts):
    """A method rebuilt from ``state_dict()`` makes exactly the updates the original makes."""
    K = 5
    counts = torch.tensor([10.0, 3.0, 0.0, 7.0, 1.0])
    g = torch.Generator().manual_seed(0)

    def stats():
        c = torch.randint(0, 4, (K,), generator=g).double()
        return torch.rand(K, generator=g, dtype=torch.float64) * 3 * c, c

    a = build_method(MethodConfig(**opts), K, 10, counts)
    for step in (1, 2, 3):
        a.update(step, *stats())
        a.on_eval(step, 4.0 - 0.001 * step)
    b = build_method(MethodConfig(**opts), K, 10, counts)
    b.load_state_dict(a.state_dict())
    for step in (4, 5, 6):
        ls, c = stats()
        ra, rb = a.update(step, ls, c), b.update(step, ls.clone(), c.clone())
        assert ra == rb, f"{opts}: update {step} differs after a state round trip"
        a.on_eval(step, 3.9)
        b.on_eval(step, 3.9)
    assert torch.equal(a.topic_weights, b.topic_weights)
