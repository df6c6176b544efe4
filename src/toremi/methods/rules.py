"""Pure update rules: tensors in, tensors out, no state, no I/O.

Everything a method decides lives here so that it can be checked against hand-computed numbers
(tests/methods/test_methods.py). Weights and statistics are float64 so that every rank, given the same
all-reduced statistics, computes bit-identical weights.

Conventions: ``loss_sum[k]`` is the sum of per-sample losses of the samples that carry topic k in
one update interval (summed over ranks and micro-batches), ``count[k]`` the number of such samples.
A topic with ``count == 0`` was *absent* from the interval.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def topic_mean_loss(loss_sum: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """L_k = loss_sum/count for the topics seen (count > 0); NaN for absent topics."""
    seen = count > 0
    mean = torch.where(seen, loss_sum / count.clamp(min=1), torch.full_like(loss_sum, math.nan))
    return mean, seen


def loss_deviation(loss_sum: Tensor, count: Tensor, absent: str = "keep") -> tuple[Tensor, Tensor, Tensor]:
    """(ΔL, L̄, seen): ΔL_k = L_k − L̄ with L̄ the mean of L over the *seen* topics.

    ``absent="zero"`` reproduces the authors' defect (an absent topic enters with loss 0, drags L̄
    down and, being far below the mean, is then up-weighted in Stage 2); the default ``"keep"``
    leaves absent topics out of L̄ and marks them unseen so their weight is kept.
    """
    mean, seen = topic_mean_loss(loss_sum, count)
    if absent == "zero":
        mean = torch.where(seen, mean, torch.zeros_like(mean))
        seen = torch.ones_like(seen)
    elif absent != "keep":
        raise ValueError(f"absent must be 'keep' or 'zero', got {absent!r}")
    n_seen = seen.sum()
    lbar = torch.where(seen, mean, torch.zeros_like(mean)).sum() / n_seen.clamp(min=1)
    delta = torch.where(seen, mean - lbar, torch.zeros_like(mean))
    return delta, lbar, seen


def toremi_additive(w: Tensor, delta: Tensor, seen: Tensor, stage: int, alpha: float, beta: float,
                    gamma: float, below_mean: str = "keep") -> Tensor:
    """The paper's additive rule.

    Stage 1: ΔL > 0 → min(w + αΔL, β); ΔL <= 0 → 1 (``below_mean="reset"``) or unchanged ("keep").
    Stage 2 (mirror): ΔL > 0 → max(w − αΔL, γ); ΔL <= 0 → min(w + α|ΔL|, β).
    Unseen topics keep their weight in both stages.
    """
    above = delta > 0
    if stage == 1:
        below = torch.ones_like(w) if below_mean == "reset" else w
        new = torch.where(above, torch.clamp(w + alpha * delta, max=beta), below)
    elif stage == 2:
        new = torch.where(above, torch.clamp(w - alpha * delta, min=gamma),
                          torch.clamp(w + alpha * delta.abs(), max=beta))
    else:
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    return torch.where(seen, new, w)


def toremi_multiplicative(w: Tensor, delta: Tensor, lbar: Tensor, seen: Tensor, stage: int,
                          lo: float = 0.1, hi: float = 5.0, below_mean: str = "keep") -> Tensor:
    """The authors' relative rule (r = ΔL / L̄).

    Stage 1: ΔL > 0 → min(w(1 + r), hi); otherwise unchanged (or 1 with ``below_mean="reset"``).
    Stage 2: ΔL > 0 → max(w(1 − r), lo); otherwise min(w(1 + |r|), hi).
    """
    r = delta / lbar.clamp(min=1e-12)
    above = delta > 0
    if stage == 1:
        below = torch.ones_like(w) if below_mean == "reset" else w
        new = torch.where(above, torch.clamp(w * (1 + r), max=hi), below)
    elif stage == 2:
        new = torch.where(above, torch.clamp(w * (1 - r), min=lo), torch.clamp(w * (1 + r.abs()), max=hi))
    else:
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    return torch.where(seen, new, w)


def sample_weights(topic_weights: Tensor, topic_ids: Tensor, unlabelled_weight: float = 1.0) -> Tensor:
    """s_i = mean weight of sample i's topics; ``unlabelled_weight`` for samples without topics.

    ``topic_ids`` is [B, M] padded with -1. Pads index an extra zero slot, so there is no boolean
    indexing (which would force a host sync) and no Python loop over samples.
    """
    k = topic_weights.shape[0]
    valid = topic_ids >= 0
    idx = torch.where(valid, topic_ids, torch.full_like(topic_ids, k))
    ext = torch.cat([topic_weights, topic_weights.new_zeros(1)])
    n = valid.sum(1)
    mean = ext[idx].sum(1) / n.clamp(min=1).to(ext.dtype)
    return torch.where(n > 0, mean, torch.full_like(mean, unlabelled_weight))


def accumulate_topic_stats(loss_sum: Tensor, count: Tensor | None, sample_loss: Tensor, topic_ids: Tensor,
                           valid_sample: Tensor | None = None) -> None:
    """In place: loss_sum[k] += Σ loss of samples carrying k; count[k] += their number (``count``
    None: only the sums).

    ``loss_sum``/``count`` have K+1 slots; the last one collects padding (-1) and is ignored.
    ``valid_sample`` [B] (bool or 0/1) masks samples that must not count (no tokens, non-finite).
    """
    k = loss_sum.shape[0] - 1
    idx = torch.where(topic_ids >= 0, topic_ids, torch.full_like(topic_ids, k)).reshape(-1)
    ones = torch.ones(topic_ids.shape, dtype=loss_sum.dtype, device=loss_sum.device)
    l = sample_loss.detach().to(loss_sum.dtype)
    if valid_sample is not None:
        v = valid_sample.to(loss_sum.dtype)
        ones = ones * v[:, None]
        l = torch.where(v > 0, l, torch.zeros_like(l))
    loss_sum.index_add_(0, idx, (l[:, None] * ones).reshape(-1))
    if count is not None:
        count.index_add_(0, idx, ones.reshape(-1))


def temperature_probs(counts: Tensor, tau: float) -> Tensor:
    """p_k ∝ n_k^(1/τ): τ=1 natural distribution, τ→∞ uniform over the topics present."""
    counts = counts.to(torch.float64)
    present = counts > 0
    if math.isinf(tau):
        p = present.to(torch.float64)
    else:
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        p = torch.where(present, counts.clamp(min=1) ** (1.0 / tau), torch.zeros_like(counts))
    return p / p.sum().clamp(min=1e-300)


def exp3_epsilon(t: int, k: int) -> float:
    """ODM's exploration rate ε_t = min(1/K, sqrt(ln K / (K t)))."""
    return min(1.0 / k, math.sqrt(math.log(k) / (k * max(t, 1)))) if k > 1 else 0.0


def exp3_update(reward_est: Tensor, probs: Tensor, loss_sum: Tensor, count: Tensor, t: int,
                smoothing: float = 0.9, present: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One ODM (Albalak et al. 2023) step: returns (new reward estimates, new sampling probs).

    Reward of topic k = its mean training loss in the interval, importance-weighted by the
    probability it was sampled with: R̂_k ← s R̂_k + (1 − s) L_k / π_k for the topics seen,
    unchanged otherwise. Then π_k = (1 − Kε_t) softmax(ε_{t−1} R̂)_k + ε_t over present topics.
    """
    present = torch.ones_like(count, dtype=torch.bool) if present is None else present
    k = int(present.sum())
    mean, seen = topic_mean_loss(loss_sum, count)
    r = torch.where(seen, smoothing * reward_est + (1 - smoothing) * mean / probs.clamp(min=1e-12),
                    reward_est)
    eps_prev, eps = exp3_epsilon(t - 1, k), exp3_epsilon(t, k)
    logits = torch.where(present, eps_prev * r, torch.full_like(r, -math.inf))
    p = (1 - k * eps) * torch.softmax(logits, 0) + eps * present.to(r.dtype)
    return r, p / p.sum()
