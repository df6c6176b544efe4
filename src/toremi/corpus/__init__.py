"""The corpus stage: 13 real text domains or your own documents -> a corpus directory.

See docs/ARCHITECTURE.md ("corpus_dir") for the layout; read it with
``toremi.corpus.documents.iter_shards`` / ``read_documents``.
"""

from .build import CorpusConfig, build
from .documents import iter_shards, load_manifest, read_documents, read_split
from .sources import DOMAINS, SourceMissing

__all__ = ["CorpusConfig", "build", "iter_shards", "read_documents", "read_split", "load_manifest",
           "DOMAINS", "SourceMissing"]
