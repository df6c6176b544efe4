"""Topic annotation: embed documents, cluster them, extract keywords, label clusters with topics.

See :mod:`toremi.annotate.pipeline` for the stage and ``toremi annotate --help`` for the CLI.
"""

from toremi.annotate.label import Labeller, SimilarityLabeller, TopicSet

__all__ = ["Labeller", "SimilarityLabeller", "TopicSet"]
