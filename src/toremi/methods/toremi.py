"""ToReMi: topic weights driven by each topic's loss relative to the mean, in two stages.

Stage 1 emphasises topics whose loss is above the mean; Stage 2 treats topics still above the mean
as noisy and de-emphasises them while emphasising the rest. Which rule (paper: additive; authors:
multiplicative relative), clamps, interval and stage switch are options (see MethodConfig).
``toremi-sampling`` uses the same weights as multipliers of the natural topic shares instead of
loss multipliers: p_k ∝ n_k w_k, so w = 1 (e.g. α = 0) samples the natural distribution, as uniform
does. A step/fraction switch is moved earlier when needed so that Stage 2 gets
``min_stage2_updates`` updates (``stage2_start``).
"""

from __future__ import annotations

import torch

from toremi.methods import rules
from toremi.methods.base import Method


class ToReMi(Method):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.val_history: list[float] = []
        self.switched_at: int | None = None
        self.uses_sampling = self.cfg.name == "toremi-sampling"
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
        c = self.cfg
        if c.switch == "step":
            start = c.switch_step
        elif c.switch == "fraction":
            start = round(c.switch_fraction * self.total_steps)
        else:
            return None
        updates = self.total_steps // c.interval
        need = min(c.min_stage2_updates, updates // 2)
        if need > 0:
            start = min(start, (updates - need + 1) * c.interval)
        return start

    def _maybe_switch(self, step: int) -> None:
        start = self.stage2_start()
        if self.stage == 1 and start is not None and step >= start:
            self.stage, self.switched_at = 2, step

    def _update(self, step, loss_sum, count):
        c = self.cfg
        self._maybe_switch(step)
        delta, lbar, seen = rules.loss_deviation(loss_sum, count, absent=c.absent)
        if c.rule == "additive":
            self.weights = rules.toremi_additive(self.weights, delta, seen, self.stage, c.alpha,
                                                 c.beta, c.gamma, c.below_mean)
        else:
            self.weights = rules.toremi_multiplicative(self.weights, delta, lbar, seen, self.stage,
                                                       lo=c.gamma, hi=c.beta, below_mean=c.below_mean)
        if self.uses_sampling:
            self.probs = self._probs()

    def on_eval(self, step, val_loss):
        """Plateau switch: Stage 2 once val loss improves by less than plateau_delta (relative)."""
        if self.cfg.switch == "plateau" and self.stage == 1 and self.val_history:
            prev = self.val_history[-1]
            if (prev - val_loss) / abs(prev) < self.cfg.plateau_delta:
                self.stage, self.switched_at = 2, step
        self.val_history.append(float(val_loss))

    def _extra_state(self):
        return {"val_history": list(self.val_history), "switched_at": self.switched_at}

    def _load_extra_state(self, extra):
        self.val_history = list(extra.get("val_history", []))
        self.switched_at = extra.get("switched_at")
