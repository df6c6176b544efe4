"""Data-mixing methods in one engine: uniform, stratified, ODM, ToReMi (paper/authors presets) and
ToReMi-as-sampling. ``build_method(cfg, num_topics, total_steps, topic_counts)`` makes one."""

from __future__ import annotations

from torch import Tensor

from toremi.methods.base import METHODS, PRESETS, Method, MethodConfig
from toremi.methods.odm import ODM
from toremi.methods.oracle import Oracle
from toremi.methods.stratified import Stratified
from toremi.methods.toremi import ToReMi
from toremi.methods.uniform import Uniform

_CLASSES = {"uniform": Uniform, "stratified": Stratified, "odm": ODM, "toremi": ToReMi,
            "toremi-sampling": ToReMi, "oracle": Oracle}


def build_method(cfg: MethodConfig | str, num_topics: int, total_steps: int = 1,
                 topic_counts: Tensor | None = None) -> Method:
    """Make the method named by ``cfg.name``; ``topic_counts`` [K] = samples per topic in the data
    (used by stratified sampling and to leave topics with no data out of sampling)."""
    if isinstance(cfg, str):
        cfg = MethodConfig(name=cfg)
    return _CLASSES[cfg.name](cfg, num_topics, total_steps, topic_counts)


__all__ = ["METHODS", "PRESETS", "Method", "MethodConfig", "build_method"]
