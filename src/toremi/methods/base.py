"""Method config and base class shared by every data-mixing method.

A method is a small stateful object. Once per update interval the trainer hands it per-topic
statistics already summed over ranks and micro-batches (``loss_sum`` [K], ``count`` [K], float64);
the method updates ``topic_weights`` (loss multipliers, [K]) and/or ``sampling_probs`` ([K] or
None). All state is float64 tensors plus plain Python numbers, saved by ``state_dict()``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import torch
from torch import Tensor

from toremi.methods import rules

METHODS = ("uniform", "stratified", "odm", "toremi", "toremi-sampling", "oracle")

# Values a preset gives to the options left unset (None). Anything set explicitly wins.
PRESETS = {
    # The paper's additive rule; Stage 2 is its mirror (the paper's own Stage-2 formula is not
    # available); switch after 7/8 of training, like the authors' 7,000 of 8,000 steps.
    "paper": dict(rule="additive", interval=100, alpha=1.0, beta=5.0, gamma=0.1, switch="fraction",
                  switch_fraction=0.875, loss_norm="weighted_mean", min_stage2_updates=10),
    # The authors' code: relative multiplicative rule, clamps [0.1, 5.0], N=100, switch at step
    # 7,000, loss = mean_i(s_i l_i) (not divided by Σ s_i). Their defects (absent topic -> loss 0,
    # unlabelled weight 0, no cross-rank sync, weights lost on resume) are NOT reproduced; the
    # first two are available as options (absent=zero, unlabelled_weight=0).
    "authors": dict(rule="multiplicative", interval=100, beta=5.0, gamma=0.1, switch="step",
                    switch_step=7000, loss_norm="mean", min_stage2_updates=10),
}
DEFAULT_INTERVAL = {"uniform": 100, "stratified": 100, "odm": 1}


@dataclass
class MethodConfig:
    """Every choice of every method is a named option; unset (None) options come from the preset.

    loss_norm: ``weighted_mean`` (default) trains on Σ s_i l_i / Σ s_i over the *global* batch, so
    the weights move emphasis between topics without changing the step size. ``mean`` (authors)
    uses Σ s_i l_i / N: the gradient scales with the mean weight, i.e. the effective learning rate
    is multiplied by mean(s) (up to 5x with the authors' clamp), which confounds reweighting with
    a learning-rate change.
    """

    name: Literal["uniform", "stratified", "odm", "toremi", "toremi-sampling", "oracle"] = "uniform"
    preset: Optional[Literal["paper", "authors"]] = None  # toremi*: defaults to "paper"
    interval: Optional[int] = None        # optimizer steps between updates (stats all-reduce)
    rule: Optional[Literal["additive", "multiplicative"]] = None
    alpha: Optional[float] = None         # additive step size
    beta: Optional[float] = None          # upper clamp
    gamma: Optional[float] = None         # lower clamp (Stage 2)
    below_mean: Literal["keep", "reset"] = "keep"  # Stage 1, topics at/below the mean loss
    switch: Optional[Literal["never", "step", "fraction", "plateau"]] = None
    switch_step: Optional[int] = None
    switch_fraction: Optional[float] = None
    plateau_delta: float = 0.01           # switch when val loss improves by < delta (relative)
    # A "step"/"fraction" switch is moved earlier if needed so that Stage 2 gets at least this many
    # updates (at most half of all updates). The authors' Stage 2 is 10 updates long (steps
    # 7,000-8,000 at N=100); a short run with the 7/8 switch would get 1-2, too few to act.
    min_stage2_updates: Optional[int] = None
    absent: Literal["keep", "zero"] = "keep"  # topic absent from an interval: keep its weight
    unlabelled_weight: float = 1.0        # weight of samples with no topic (authors: 0)
    loss_norm: Optional[Literal["weighted_mean", "mean"]] = None
    # What "a topic's loss" means for the update: mean NLL per target token (the paper), or per
    # UTF-8 byte of the targets. Per byte does not reward text that breaks into many cheap tokens
    # (e.g. character-shuffled noise, whose per-token loss is LOW), so noise stays visible.
    stat_unit: Literal["token", "byte"] = "token"
    tau: float = math.inf                 # stratified: p ∝ n^(1/tau); inf = uniform over topics
    odm_smoothing: float = 0.9            # ODM reward moving-average factor
    oracle_topic: int = 0                 # oracle (positive control): topic index to up-weight
    oracle_factor: float = 3.0            # oracle: that topic's loss weight

    def __post_init__(self):
        if self.name not in METHODS:
            raise ValueError(f"method.name={self.name!r}: choose one of {list(METHODS)}")
        if self.name.startswith("toremi"):
            self.preset = self.preset or "paper"
            for key, value in PRESETS[self.preset].items():
                if getattr(self, key) is None:
                    setattr(self, key, value)
        elif self.preset is not None:
            raise ValueError(f"method.preset={self.preset!r} only applies to toremi methods")
        fill = dict(interval=DEFAULT_INTERVAL.get(self.name, 100), rule="additive", alpha=1.0,
                    beta=5.0, gamma=0.1, switch="never", switch_step=0, switch_fraction=1.0,
                    loss_norm="weighted_mean", min_stage2_updates=0)
        for key, value in fill.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.interval < 1:
            raise ValueError(f"method.interval must be >= 1, got {self.interval}")
        if not 0 < self.gamma <= 1 <= self.beta:
            raise ValueError(f"need 0 < gamma <= 1 <= beta, got gamma={self.gamma} beta={self.beta}")
        if self.min_stage2_updates < 0 or self.oracle_factor <= 0:
            raise ValueError("method.min_stage2_updates must be >= 0 and method.oracle_factor > 0")
        if self.unlabelled_weight < 0:
            raise ValueError("method.unlabelled_weight must be >= 0")

    def options(self) -> dict:
        return asdict(self)


class Method:
    """Base: uniform weights, natural sampling; subclasses override ``_update``."""

    uses_sampling = False

    def __init__(self, cfg: MethodConfig, num_topics: int, total_steps: int,
                 topic_counts: Tensor | None = None):
        self.cfg, self.num_topics, self.total_steps = cfg, num_topics, total_steps
        counts = torch.ones(num_topics, dtype=torch.float64) if topic_counts is None else topic_counts
        self.present = torch.as_tensor(counts, dtype=torch.float64) > 0
        self.topic_counts = torch.as_tensor(counts, dtype=torch.float64)
        self.weights = torch.ones(num_topics, dtype=torch.float64)
        self.probs: Tensor | None = None
        self.stage = 1
        self.updates = 0

    @property
    def topic_weights(self) -> Tensor:
        """Loss multipliers [K] (float64); all ones for sampling-based methods."""
        return self.weights

    @property
    def sampling_probs(self) -> Tensor | None:
        return self.probs

    def update(self, step: int, loss_sum: Tensor, count: Tensor) -> dict:
        """Read one interval's statistics, update, and return the weights.jsonl record."""
        loss_sum, count = loss_sum.detach().cpu().double(), count.detach().cpu().double()
        self._update(step, loss_sum, count)
        self.updates += 1
        mean, seen = rules.topic_mean_loss(loss_sum, count)
        probs = self.sampling_probs
        return {"step": step, "stage": self.stage, "weights": self.weights.tolist(),
                "probs": None if probs is None else probs.tolist(),
                "topic_loss": [float(x) if s else None for x, s in zip(mean.tolist(), seen.tolist())],
                "topic_count": count.tolist()}

    def _update(self, step: int, loss_sum: Tensor, count: Tensor) -> None:
        pass

    def on_eval(self, step: int, val_loss: float) -> None:
        """Called after each evaluation (used by the plateau stage switch)."""

    def state_dict(self) -> dict:
        return {"weights": self.weights.clone(), "probs": None if self.probs is None else self.probs.clone(),
                "stage": self.stage, "updates": self.updates, "extra": self._extra_state()}

    def load_state_dict(self, sd: dict) -> None:
        if sd["weights"].shape != self.weights.shape:
            raise ValueError(f"method state has {sd['weights'].shape[0]} topics, the data has "
                             f"{self.num_topics}")
        self.weights = sd["weights"].clone().double()
        self.probs = None if sd["probs"] is None else sd["probs"].clone().double()
        self.stage, self.updates = int(sd["stage"]), int(sd["updates"])
        self._load_extra_state(sd.get("extra", {}))

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, extra: dict) -> None:
        pass
