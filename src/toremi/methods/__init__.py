"""Data-mixing methods in one engine. Every module in this package registers its method(s) with
``@register`` (see ``base.py``); importing the package imports them all, so adding a method is one
new file. ``build_method(cfg, num_topics, total_steps, topic_counts)`` makes one."""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from toremi.methods.base import REGISTRY, Method, MethodConfig, method_info, register

if TYPE_CHECKING:
    from torch import Tensor

_NOT_METHODS = {"base", "rules"}
for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in _NOT_METHODS and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")



def build_method(cfg: MethodConfig | str, num_topics: int, total_steps: int = 1,
                 topic_counts: Tensor | None = None) -> Method:
    """Make the method named by ``cfg.name``; ``topic_counts`` [K] = samples per topic in the data
    (used by stratified sampling and to leave topics with no data out of sampling)."""
    if isinstance(cfg, str):
        cfg = MethodConfig(name=cfg)
    return method_info(cfg.name).cls(cfg, num_topics, total_steps, topic_counts)


__all__ = ["REGISTRY", "Method", "MethodConfig", "build_method", "register"]
