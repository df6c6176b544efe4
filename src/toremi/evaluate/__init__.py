"""Evaluation: per-domain perplexity / bits-per-byte and zero-shot downstream accuracy.

``model_io`` loads a checkpoint and its tokenizer (checked against each other), ``scoring`` holds
``score``, the log-likelihood primitive that ``perplexity`` and ``downstream`` share, and ``cli`` is
``toremi eval``. The names other modules use are re-exported here.
"""

from toremi.evaluate.model_io import (CheckpointMismatch, LoadedModel, check_compatible, load_model,
                                      resolve_run)
from toremi.evaluate.scoring import score

__all__ = ["CheckpointMismatch", "LoadedModel", "check_compatible", "load_model", "resolve_run", "score"]
