"""toremi: topic-aware, dynamic reweighting of language-model pre-training data."""

__version__ = "0.1.0"
