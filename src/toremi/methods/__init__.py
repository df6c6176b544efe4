"""Data-mixing methods in one engine. Every module in this package registers its method(s) with
``@register`` (see ``base.py``); importing the package imports them all, so adding a method is one
new file. ``build_method(cfg, num_topics, total_steps, topic_counts)`` makes one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from toremi.methods.base import REGISTRY, Method, MethodConfig, load_methods, method_info, register

if TYPE_CHECKING:
    from torch import Tensor

load_methods()



def build_method(cfg: MethodConfig | str, num_topics: int, total_steps: int = 1,
                 topic_counts: Tensor | None = None) -> Method:
    """Make the method named by ``cfg.name``; ``topic_counts`` [K] = samples per topic in the data
    (used by stratified sampling and to leave topics with no data out of sampling)."""
    if isinstance(cfg, str):
        cfg = MethodConfig(name=cfg)
    return method_info(cfg.name).cls(cfg, num_topics, total_steps, topic_counts)


__all__ = ["REGISTRY", "Method", "MethodConfig", "build_method", "register"]
