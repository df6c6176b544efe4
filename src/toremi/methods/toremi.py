"""ToReMi: topic weights driven by each topic's loss relative to the mean, in two stages.

Stage 1 emphasises topics whose loss is above the mean; Stage 2 treats topics still above the mean
as noisy and de-emphasises them while emphasising the rest. Which rule (paper: additive; authors:
multiplicative relative), clamps, interval and stage switch are options (``ToReMiOptions``).
``toremi-sampling`` uses the same weights as multipliers of the natural topic shares instead of
loss multipliers: p_k ∝ n_k w_k, so w = 1 (e.g. α = 0) samples the natural distribution, as uniform
does. A step/fraction switch is moved earlier when needed so that Stage 2 gets
``min_stage2_updates`` updates (``stage2_start``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, Optional

from toremi.lazy import lazy
from toremi.methods.base import Method, register

torch = lazy("torch")  # imported when a method runs (toremi.lazy)
rules = lazy("toremi.methods.rules")

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


@dataclass
class ToReMiOptions:
    """Unset (None) options come from the preset (default ``paper``)."""

    preset: Optional[Literal["paper", "authors"]] = None
    rule: Optional[Literal["additive", "multiplicative"]] = None
    alpha: Optional[float] = None         # additive step size
    beta: Optional[float] = None          # upper clamp
    gamma: Optional[float] = None         # lower clamp (Stage 2)
    below_mean: Literal["keep", "reset"] = "keep"  # Stage 1, topics at/below the mean loss
    switch: Optional[Literal["never", "step", "fraction", "plateau"]] = None
    switch_step: Optional[int] = None
    switch_fraction: Optional[float] = None
    plateau_delta: float = 0.01           # switch when val loss improves by < delta (relative)
    absent: Literal["keep", "zero"] = "keep"  # topic absent from an interval: keep its weight
    # A "step"/"fraction" switch is moved earlier if needed so that Stage 2 gets at least this many
    # updates (at most half of all updates). The authors' Stage 2 is 10 updates long (steps
    # 7,000-8,000 at N=100); a short run with the 7/8 switch would get 1-2, too few to act.
    min_stage2_updates: Optional[int] = None

    def __post_init__(self):
        self.preset = self.preset or "paper"
        fill = dict(rule="additive", alpha=1.0, beta=5.0, gamma=0.1, switch="never", switch_step=0,
                    switch_fraction=1.0, min_stage2_updates=0)
        names = {f.name for f in fields(self)}
        for key, value in {**fill, **PRESETS[self.preset]}.items():
            if key in names and getattr(self, key) is None:
                setattr(self, key, value)
        if not 0 < self.gamma <= 1 <= self.beta:
            raise ValueError(f"need 0 < gamma <= 1 <= beta, got gamma={self.gamma} beta={self.beta}")
        if self.min_stage2_updates < 0:
            raise ValueError(f"min_stage2_updates must be >= 0, got {self.min_stage2_updates}")

    def common_defaults(self) -> dict:
        """The preset's engine options (interval, loss normalisation)."""
        return {k: PRESETS[self.preset][k] for k in ("interval", "loss_norm")}


@register("toremi", options=ToReMiOptions)
class ToReMi(Method):
    """Topic weights from each topic's loss vs the mean, in two stages (Zhu et al. 2025)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.val_history: list[float] = []
        self.switched_at: int | None = None
        if self.uses_sampling:
            self.probs = self._probs()

    @property
    def topic_weights(self):
        return torch.ones_like(self.weights) if self.uses_sampling else self.weights

    def _probs(self):
        p = torch.where(self.present, self.topic_counts * self.weights, torch.zeros_like(self.weights))
        return p / p.sum()

    def stage2_start(self) -> int | None:
        """First step whose update runs in Stage 2 (None: no step/fraction switch).

        The configured switch, moved earlier if needed so that the last ``min(min_stage2_updates,
        U // 2)`` of the U = total_steps // interval updates are in Stage 2.
        """
        c = self.opts
        if c.switch == "step":
            start = c.switch_step
        elif c.switch == "fraction":
            start = round(c.switch_fraction * self.total_steps)
        else:
            return None
        interval = self.cfg.interval
        updates = self.total_steps // interval
        need = min(c.min_stage2_updates, updates // 2)
        if need > 0:
            start = min(start, (updates - need + 1) * interval)
        return start

    def _maybe_switch(self, step: int) -> None:
        start = self.stage2_start()
        if self.stage == 1 and start is not None and step >= start:
            self.stage, self.switched_at = 2, step

    def _update(self, step, loss_sum, count):
        c = self.opts
        self._maybe_switch(step)
        delta, lbar, seen = rules.loss_deviation(loss_sum, count, absent=c.absent)
        self._apply_rule(delta, lbar, seen)

    def _apply_rule(self, delta, lbar, move, stage: int | None = None) -> None:
        """One step of the configured rule (of ``stage``, default the current one) for the topics
        in ``move``; then the sampling probs."""
        c = self.opts
        stage = self.stage if stage is None else stage
        if c.rule == "additive":
            self.weights = rules.toremi_additive(self.weights, delta, move, stage, c.alpha,
                                                 c.beta, c.gamma, c.below_mean)
        else:
            self.weights = rules.toremi_multiplicative(self.weights, delta, lbar, move, stage,
                                                       lo=c.gamma, hi=c.beta, below_mean=c.below_mean)
        if self.uses_sampling:
            self.probs = self._probs()

    def on_eval(self, step, val_loss):
        """Plateau switch: Stage 2 once val loss improves by less than plateau_delta (relative)."""
        if self.opts.switch == "plateau" and self.stage == 1 and self.val_history:
            prev = self.val_history[-1]
            if (prev - val_loss) / abs(prev) < self.opts.plateau_delta:
                self.stage, self.switched_at = 2, step
        self.val_history.append(float(val_loss))

    def _extra_state(self):
        return {"val_history": list(self.val_history), "switched_at": self.switched_at}

    def _load_extra_state(self, extra):
        self.val_history = list(extra.get("val_history", []))
        self.switched_at = extra.get("switched_at")


@register("toremi-sampling", options=ToReMiOptions)
class ToReMiSampling(ToReMi):
    """ToReMi's weights, normalised, as topic sampling probabilities instead of loss multipliers."""

    uses_sampling = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.probs = self._probs()
