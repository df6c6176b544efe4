"""``toremi prepare``: documents (+ topic attributes) -> memory-mapped token shards and an index.

``driver.py`` is the stage (its docstring is ``toremi prepare --help``): it plans the jobs, maps
the per-shard function of ``shard.py`` over an engine (local threads or Ray tasks) and merges by
streaming (``merge.py``); ``config.py`` holds ``PrepareConfig``.
"""

from toremi.prepare.config import INDEX_VERSION, PrepareConfig
from toremi.prepare.driver import corpus_domains, document_shards, main, prepare, split_jobs
from toremi.prepare.shard import TopicLookup, cut_windows, dev_mask

__all__ = ["INDEX_VERSION", "PrepareConfig", "TopicLookup", "corpus_domains", "cut_windows", "dev_mask",
           "document_shards", "main", "prepare", "split_jobs"]
