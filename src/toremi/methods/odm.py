"""ODM (Albalak et al. 2023, "Efficient Online Data Mixing"): an EXP3 bandit over topics whose
reward is the training loss, so topics the model still finds hard are sampled more."""

from __future__ import annotations

from dataclasses import dataclass

from toremi.lazy import lazy
from toremi.methods.base import Method, register

torch = lazy("torch")  # imported when a method runs (toremi.lazy)
rules = lazy("toremi.methods.rules")


@dataclass
class ODMOptions:
    smoothing: float = 0.9  # reward moving-average factor

    def __post_init__(self):
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")


@register("odm", options=ODMOptions, interval=1)
class ODM(Method):
    """EXP3 bandit over topics, reward = training loss (Albalak et al. 2023)."""

    uses_sampling = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        k = int(self.present.sum())
        self.probs = self.present.double() / max(k, 1)
        self.reward = torch.zeros(self.num_topics, dtype=torch.float64)

    def _update(self, step, loss_sum, count):
        self.reward, self.probs = rules.exp3_update(
            self.reward, self.probs, loss_sum, count, t=self.updates + 1,
            smoothing=self.opts.smoothing, present=self.present)

    def _extra_state(self):
        return {"reward": self.reward.clone()}

    def _load_extra_state(self, extra):
        self.reward = extra["reward"].clone().double()
