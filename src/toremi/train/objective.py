"""The topic-weighted loss and the per-topic statistics, in one place for every training path.

The toremi step (packed and unpacked), the ``Reweighter`` of your own loop and the HF ``Trainer``
all build the loss and count statistics here, so a change to either is one edit:

- weights: ``sample_weights`` (s_i per sample) / ``token_weights`` (s_t per target token, packed);
- loss: ``weighted_sum(s, l, inv_norm(...))`` = Σ s·l / Σ s (``loss_norm=mean``: / the number of
  samples, or of target tokens when packed);
- statistics: an ``Observation`` (one step's per-unit losses; a unit is a sample, or a document
  piece of a packed window) is added to named per-topic accumulators (``TopicStats``) with one
  ``index_add_`` per accumulator: no host sync, no Python loop over samples.

Accumulators are named (``TopicStats`` slots, ``Slots`` scalars), never indexed by position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from toremi.methods import rules
from toremi.train import epochs, segments


# ---------------------------------------------------------------------------- the loss
def sample_weights(w: Tensor, topic_ids: Tensor, unlabelled_weight: float) -> Tensor:
    """s_i [B]: mean weight of sample i's topics (no topic: ``unlabelled_weight``)."""
    return rules.sample_weights(w, topic_ids, unlabelled_weight)


def token_weights(w: Tensor, seg_topics: Tensor, seg_ids: Tensor, unlabelled_weight: float) -> Tensor:
    """s_t [B, T] of packed windows: each target token carries its document's s (0: no target)."""
    return segments.token_weights(w, seg_topics, seg_ids, unlabelled_weight)


def weighted_sum(s: Tensor, l: Tensor, inv_norm: Tensor | float) -> Tensor:
    """Σ s·l x inv_norm: the training loss of every path (``inv_norm`` from ``inv_norm``)."""
    return (s * l).sum() * inv_norm


def inv_norm(s_all: list[Tensor], loss_norm: str, seg_ids: list[Tensor] | None = None,
             d=None) -> Tensor | float:
    """1 / the loss normaliser over the micro-batches ``s_all`` (summed over ranks when ``d`` is a
    DDP ``Dist``, times world size since DDP averages the ranks' gradients).

    weighted_mean: Σ s. mean: unpacked, the local number of samples (a Python float, so the
    compiled step sees a constant); packed (``seg_ids`` given), the global number of target tokens.
    """
    packed = seg_ids is not None
    if loss_norm == "mean" and not packed:
        return 1.0 / sum(len(s) for s in s_all)
    if loss_norm == "mean":
        norm = torch.stack([(ids >= 0).sum() for ids in seg_ids]).sum().double()
    else:
        norm = torch.stack([s.sum() for s in s_all]).sum()
    world = 1
    if d is not None:
        from toremi.train.distributed import all_reduce_sum

        world, norm = d.world_size, all_reduce_sum(norm, d)
    inv = world / norm.clamp(min=1e-12)
    return inv.float() if packed else inv


# ---------------------------------------------------------------------------- observations
@dataclass
class Observation:
    """One step's losses per unit, ready to be added to per-topic accumulators.

    Unpacked (``packed=False``): a unit is a sample; ``loss`` [B] is the statistic the method sees
    (mean per target token, or per byte), ``raw`` [B] the per-token mean (for the logged loss),
    ``valid`` [B] masks samples that must not count. Packed: a unit is a document piece; ``loss``
    [S] is its loss SUM, ``nbytes`` its target bytes, ``valid`` the step's 0-d ok flag;
    ``stat_unit``/``stat_per`` say how ``segments.accumulate`` turns sums into statistics.
    """

    loss: Tensor
    tokens: Tensor
    topics: Tensor
    valid: Tensor
    packed: bool = False
    raw: Tensor | None = None
    nbytes: Tensor | None = None
    stat_unit: str = "token"
    stat_per: str = "segment"

    def unit_valid(self) -> Tensor:
        """[U] units that count (packed: pieces with targets and a finite loss, on an ok step)."""
        if not self.packed:
            return self.valid
        return (self.tokens > 0) & torch.isfinite(self.loss) & self.valid

    def unit_loss(self) -> Tensor:
        """[U] each unit's statistic as the method sees it (packed: the piece's mean loss)."""
        if not self.packed:
            return self.loss
        den = self.nbytes.double() if self.stat_unit == "byte" else self.tokens
        return self.loss / den.clamp(min=1)

    def token_sums(self) -> tuple[Tensor, Tensor]:
        """(Σ loss over target tokens, Σ target tokens) of the valid units: the logged loss."""
        if self.packed:
            v = torch.isfinite(self.loss) & self.valid
            return torch.where(v, self.loss, 0).sum(), torch.where(v, self.tokens, 0).sum()
        nv = self.tokens.double() * self.valid
        return (torch.where(self.valid, self.raw, 0).double() * nv).sum(), nv.sum()


# A per-topic statistic a method asks for (``Method.statistics``): per-unit values [U] from one
# step's Observation, summed per topic over the valid units, handed to ``Method.update``.
Statistic = Callable[[Observation], Tensor]


class TopicStats:
    """Named per-topic float64 accumulators, [K+1] each (slot K collects padding / no topic)."""

    def __init__(self, num_topics: int, names: tuple[str, ...], device: torch.device | str = "cpu"):
        self.K, self.names = num_topics, tuple(names)
        self.t = {n: torch.zeros(num_topics + 1, dtype=torch.float64, device=device) for n in self.names}

    def __getitem__(self, name: str) -> Tensor:
        return self.t[name]

    def __contains__(self, name: str) -> bool:
        return name in self.t

    def add(self, obs: Observation, loss: str = "loss", count: str | None = "count") -> None:
        """The unit statistic to ``loss`` and the unit count (or tokens/bytes) to ``count`` (None:
        not counted; the packed path's ``segments.accumulate`` still needs a scratch count)."""
        cnt = self.t[count] if count else torch.zeros_like(self.t[loss])
        if obs.packed:
            segments.accumulate(self.t[loss], cnt, obs.loss, obs.tokens, obs.topics, obs.nbytes,
                                obs.stat_unit, obs.stat_per, obs.valid)
        else:
            rules.accumulate_topic_stats(self.t[loss], cnt, obs.loss, obs.topics, obs.valid)

    def add_values(self, name: str, values: Tensor, topics: Tensor, valid: Tensor | None = None) -> None:
        """Per-unit ``values`` [U] summed into ``name`` for each unit's topics (valid units only)."""
        rules.accumulate_topic_stats(self.t[name], None, values, topics, valid)

    def credit(self, name: str, values: Tensor, topics: Tensor) -> None:
        """Per-unit ``values`` split evenly over each unit's topics (epoch accounting)."""
        epochs.credit(self.t[name], values, topics)

    def flat(self, names: tuple[str, ...] | None = None, topics_only: bool = False) -> Tensor:
        """The named slots concatenated (one collective / one host read for all of them)."""
        k = self.K if topics_only else self.K + 1
        return torch.cat([self.t[n][:k] for n in (names or self.names)])

    def zero_(self) -> None:
        for v in self.t.values():
            v.zero_()

    def to(self, device) -> "TopicStats":
        self.t = {k: v.to(device) for k, v in self.t.items()}
        return self


class Slots:
    """Named float64 scalars held in one device tensor, so they update in place without a host
    sync and travel as one tensor (all-reduce, checkpoint). ``FIELDS`` names the slots."""

    FIELDS: tuple[str, ...] = ()

    def __init__(self, device: torch.device | str = "cpu"):
        object.__setattr__(self, "tensor", torch.zeros(len(self.FIELDS), dtype=torch.float64, device=device))

    def __getattr__(self, name: str) -> Tensor:
        fields = type(self).FIELDS
        if name in fields:
            return self.tensor[fields.index(name)]
        raise AttributeError(f"{type(self).__name__} has no slot {name!r}; slots: {fields}")

    def __setattr__(self, name: str, value) -> None:
        fields = type(self).FIELDS
        if name not in fields:
            raise AttributeError(f"{type(self).__name__} has no slot {name!r}; slots: {fields}")
        i = fields.index(name)
        if isinstance(value, Tensor) and value.data_ptr() == self.tensor[i].data_ptr():
            return  # `slots.x += v` already wrote in place
        self.tensor[i] = value


class WindowSums(Slots):
    """Log-window scalars of the logged loss: token-weighted loss, its tokens, the weighted
    (training) loss summed over ok steps, and the number of ok steps."""
    FIELDS = ("token_loss", "tokens", "weighted_loss", "steps")


class BadSteps(Slots):
    """Non-finite (skipped) steps: in total, in the current run of them, longest run this window."""
    FIELDS = ("skipped", "run", "max_run")
