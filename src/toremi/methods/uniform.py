"""Uniform: the natural data distribution, every sample weighs 1 (per-topic loss still logged)."""

from toremi.methods.base import Method, register


@register("uniform", interval=100)
class Uniform(Method):
    """The natural data distribution; every sample weighs 1."""

    rebuilds_on_remap = True
