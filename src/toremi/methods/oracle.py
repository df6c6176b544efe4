"""Oracle: a positive control for the evidence protocol (docs/eval.md), not a data-mixing method.

It gives one chosen topic (``oracle.topic``, an index into the tokens' ``topic_names``) a fixed
loss weight ``oracle.factor`` (3x by default) for the whole run; every other topic keeps 1. That
topic's held-out NLL must fall beyond its paired CI against uniform, or the budget is too small to
detect any mixing effect and cannot judge the real methods.
"""

from __future__ import annotations

from dataclasses import dataclass

from toremi.methods.base import Method, register


@dataclass
class OracleOptions:
    topic: int = 0        # topic index to up-weight
    factor: float = 3.0   # its loss weight

    def __post_init__(self):
        if self.factor <= 0:
            raise ValueError(f"method.oracle.factor must be > 0, got {self.factor}")


@register("oracle", options=OracleOptions, interval=100)
class Oracle(Method):
    """Positive control: one chosen topic at a fixed loss weight for the whole run."""

    rebuilds_on_remap = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        k = self.opts.topic
        if not 0 <= k < self.num_topics:
            raise ValueError(f"method.oracle.topic={k}: the data has topics 0..{self.num_topics - 1}")
        self.weights[k] = self.opts.factor
