"""Per-topic epoch accounting and the up-front check of a repetition cap.

Why: a mixture that up-weights a small topic repeats its data; past a few epochs repetition stops
helping (and can hurt), so a comparison of mixtures has to say how often each topic was seen.

- tokens seen: counted by the loader on the host from the indices it draws (exact over ranks, in
  the loader state; ``BatchLoader.topic_tokens``);
- weight-scaled tokens (loss-weight methods): Σ over drawn target tokens of their loss weight s,
  accumulated on the device by ``credit`` (one ``index_add_``, no host read) into the Reweighter's
  interval statistics, all-reduced with them at the update, so no extra collective;
- epochs = tokens seen / the topic's target tokens in the training split (weight-scaled epochs
  the same with the weighted sum). A piece of text with m topics credits each 1/m of its tokens.

``check_cap`` refuses, before anything is written, a budget the cap cannot hold: the budget in
token slots (steps x global batch x seq_len, an upper bound on target tokens drawn) against
cap x the tokens of the topics the run can draw.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def credit(acc: Tensor, value: Tensor, topic_ids: Tensor) -> None:
    """In place: ``acc`` [K+1] += each sample's ``value`` [B] split evenly over its topics
    (``topic_ids`` [B, M], -1 padding); samples without a topic go to slot K. Vectorised."""
    k = acc.shape[0] - 1
    valid = topic_ids >= 0
    m = valid.sum(1, keepdim=True)
    idx = torch.where(valid, topic_ids, k)
    per = value.detach().to(acc.dtype)[:, None] / m.clamp(min=1).to(acc.dtype)
    share = torch.where(valid, per, torch.zeros_like(per))
    share[:, :1] += torch.where(m == 0, per, torch.zeros_like(per))  # unlabelled: all to slot K
    acc.index_add_(0, idx.reshape(-1), share.reshape(-1))


def ratio(num, den) -> list[float]:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.where(den > 0, num / np.maximum(den, 1e-300), 0.0).tolist()


def summary(seen, available, weighted=None) -> dict:
    """The per-topic fields of weights.jsonl records and run.json (lists over the K topics)."""
    out = {"topic_tokens_seen": [float(x) for x in seen], "topic_epochs": ratio(seen, available)}
    if weighted is not None:
        out["topic_weighted_epochs"] = ratio(weighted, available)
    return out


def check_cap(cap: float | None, budget: int, available: np.ndarray, names: list[str],
              probs: Tensor | None, unlabelled_share: float, method: str) -> None:
    """Raise ValueError (one line) when ``cap`` cannot hold ``budget`` tokens.

    Sampling (``probs`` [K]): topics with p_k > 0 hold cap x tokens_k; the labelled part of the
    budget, budget x (1 - unlabelled share), must fit in their sum (the sampler renormalises over
    the topics still under the cap, so any mixture works when the sum suffices). The topic named
    is the one the mixture would repeat most. Shuffling (``probs`` None): every topic is repeated
    budget / all tokens times, which must not exceed the cap.
    """
    if cap is None:
        return
    k = len(names)
    avail = np.asarray(available[:k], dtype=np.float64)
    total = float(np.asarray(available, dtype=np.float64).sum())
    if probs is None:
        reps = budget / max(total, 1e-300)
        if reps > cap and k:
            i = int(np.argmax(avail))
            raise ValueError(
                f"max_repetition={cap:g} cannot be met: method {method} trains on the natural mix, so "
                f"every topic, e.g. {names[i]!r} ({avail[i]:,.0f} tokens), is repeated {reps:.2f} times "
                f"in the budget of {budget:,} tokens (steps x batch x seq_len; the split holds "
                f"{total:,.0f}); raise max_repetition, lower steps/tokens or add data")
        return
    p = probs.detach().cpu().double().numpy()
    drawn = (p > 0) & (avail > 0)
    need = budget * (1.0 - unlabelled_share)
    room = cap * float(avail[drawn].sum())
    if need <= room:
        return
    demand = np.where(drawn, p / p[drawn].sum() * need / np.maximum(avail, 1e-300), 0.0)
    i = int(np.argmax(demand))
    raise ValueError(
        f"max_repetition={cap:g} cannot be met: topic {names[i]!r} ({avail[i]:,.0f} tokens, p={p[i]:.3g}) "
        f"would be repeated {demand[i]:.2f} times in the budget of {budget:,} tokens (steps x batch x "
        f"seq_len), and the {int(drawn.sum())} topics method {method} draws hold only "
        f"{avail[drawn].sum():,.0f} tokens x cap {cap:g} = {room:,.0f}; raise max_repetition, lower "
        f"steps/tokens or add data")
