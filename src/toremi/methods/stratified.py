"""Topic-stratified / temperature sampling: p_k ∝ n_k^(1/τ), fixed for the whole run.

τ = 1 is the natural topic distribution, τ → ∞ samples every topic equally often (stratified).
"""

from toremi.methods import rules
from toremi.methods.base import Method


class Stratified(Method):
    uses_sampling = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.probs = rules.temperature_probs(self.topic_counts, self.cfg.tau)
