"""Per-token weights and per-segment topic statistics for packed batches (docs/packing.md).

A packed window holds pieces (segments) of several documents. ``seg_ids`` [B, T] names the segment
of each target token (numbered over the batch, -1 = no target); ``seg_topics`` [S, M] holds each
segment's document topics. Everything is a gather or an ``index_add_`` over the flattened segment
id: no host sync and no Python loop over segments, so it runs the same under ``torch.compile``.

- weight: each target token carries s of its document (mean weight of its topics, or the
  unlabelled weight); the loss is Σ_t s_t ce_t / Σ_t s_t, the ordinary token mean when all s = 1.
- statistics (``stat_per``): ``segment`` (default) - the mean loss of each document piece counts
  once for each of its document's topics, so a topic's loss keeps the meaning "mean loss of the
  samples of topic k" from unpacked training; ``token`` - Σ loss / Σ tokens of the topic's tokens
  (long documents weigh more). ``stat_unit=byte`` divides by target bytes instead of tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from toremi.methods import rules


def token_weights(topic_weights: torch.Tensor, seg_topics: torch.Tensor, seg_ids: torch.Tensor,
                  unlabelled_weight: float = 1.0) -> torch.Tensor:
    """s per target token [B, T] (0 where there is no target)."""
    s_seg = rules.sample_weights(topic_weights, seg_topics, unlabelled_weight)
    return torch.where(seg_ids >= 0, s_seg[seg_ids.clamp(min=0)], s_seg.new_zeros(()))


def token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per position [B, T] in float32, 0 where labels == -100."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.reshape(-1), ignore_index=-100,
                           reduction="none").view(labels.shape)


def segment_sums(values: torch.Tensor, seg_ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Σ of ``values`` [B, T] per segment -> [S] float64 (positions with id -1 are dropped)."""
    idx = torch.where(seg_ids >= 0, seg_ids, num_segments).reshape(-1)
    out = torch.zeros(num_segments + 1, dtype=torch.float64, device=values.device)
    return out.index_add_(0, idx, values.detach().reshape(-1).double())[:num_segments]


def segment_stats(ce: torch.Tensor, seg_ids: torch.Tensor, num_segments: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss sum, target tokens) per segment, float64 [S]."""
    return segment_sums(ce, seg_ids, num_segments), segment_sums((seg_ids >= 0).double(), seg_ids, num_segments)


def accumulate(loss_sum: torch.Tensor, count: torch.Tensor, seg_loss: torch.Tensor, seg_n: torch.Tensor,
               seg_topics: torch.Tensor, seg_bytes: torch.Tensor | None = None, stat_unit: str = "token",
               stat_per: str = "segment", valid: torch.Tensor | bool = True) -> None:
    """In place into the [K+1] accumulators (last slot = padding): per-topic statistics of segments.

    segment: loss_sum[k] += mean loss of the piece (per token or per byte), count[k] += 1;
    token:   loss_sum[k] += Σ loss of the piece, count[k] += its tokens (or bytes).
    """
    if stat_unit == "byte" and seg_bytes is None:
        raise ValueError("method.stat_unit=byte needs seg_bytes in packed batches (re-run prepare)")
    if stat_per not in ("segment", "token"):
        raise ValueError(f"stat_per={stat_per!r}: choose segment or token")
    den = seg_bytes.double() if stat_unit == "byte" else seg_n
    ok = (seg_n > 0) & torch.isfinite(seg_loss) & valid
    if stat_per == "segment":
        num, cnt = seg_loss / den.clamp(min=1), torch.ones_like(seg_loss)
    else:
        num, cnt = seg_loss, den
    num, cnt = torch.where(ok, num, 0), torch.where(ok, cnt, 0)
    k = loss_sum.shape[0] - 1
    topics = seg_topics >= 0
    idx = torch.where(topics, seg_topics, k).reshape(-1)
    loss_sum.index_add_(0, idx, (num[:, None] * topics).reshape(-1).to(loss_sum.dtype))
    count.index_add_(0, idx, (cnt[:, None] * topics).reshape(-1).to(count.dtype))
