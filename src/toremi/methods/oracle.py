"""Oracle: a positive control for the evidence protocol (design §8), not a data-mixing method.

It gives one chosen topic (``oracle_topic``, an index into the tokens' ``topic_names``) a fixed
loss weight ``oracle_factor`` (3x by default) for the whole run; every other topic keeps 1. That
topic's held-out NLL must fall beyond its paired CI against uniform, or the budget is too small to
detect any mixing effect and cannot judge the real methods.
"""

from __future__ import annotations

from toremi.methods.base import Method


class Oracle(Method):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        k = self.cfg.oracle_topic
        if not 0 <= k < self.num_topics:
            raise ValueError(f"method.oracle_topic={k}: the data has topics 0..{self.num_topics - 1}")
        self.weights[k] = self.cfg.oracle_factor
