"""Uniform: the natural data distribution, every sample weighs 1 (per-topic loss still logged)."""

from toremi.methods.base import Method


class Uniform(Method):
    pass
