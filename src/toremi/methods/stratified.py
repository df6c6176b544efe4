"""Topic-stratified / temperature sampling: p_k ∝ n_k^(1/τ), fixed for the whole run.

τ = 1 is the natural topic distribution, τ → ∞ samples every topic equally often (stratified).
"""

import math
from dataclasses import dataclass

from toremi.lazy import lazy
from toremi.methods.base import Method, register

rules = lazy("toremi.methods.rules")


@dataclass
class StratifiedOptions:
    tau: float = math.inf  # p ∝ n^(1/tau); inf = uniform over topics

    def __post_init__(self):
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")


@register("stratified", options=StratifiedOptions, interval=100)
class Stratified(Method):
    """Temperature sampling over topics, p_k ∝ n_k^(1/τ), fixed."""

    uses_sampling = True
    rebuilds_on_remap = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.probs = rules.temperature_probs(self.topic_counts, self.opts.tau)
