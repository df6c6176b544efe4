"""Per-domain perplexity and bits per byte on the held-out split.

Perplexity is exp of the token-weighted mean NLL over every scored token of the domain (not the
mean of per-batch perplexities, which over-weights short batches and is biased upward by Jensen).
Each document is prefixed with ``<|endoftext|>`` (the separator the model saw before every
document in training) so its first token is scored too. Documents longer than the context are
scored in strided windows: every token is scored exactly once, with at least
``max_len - stride`` tokens of context after the first window.

``max_doc_tokens`` scores only the first N tokens of each document, so that a domain's sample
spreads over many documents: without it, three long documents (one legal licence in Japanese) can
fill a domain's token budget and its NLL then measures those three documents, not the domain.

``script_filter`` drops held-out documents whose letters are mostly outside a script the training
data is written in (default ``latin``: every shipped domain trains on Latin-script text): a Japanese
licence scored at 11 nats/token measures the initialisation, not the mixture, and alone set legal's
spread. Skipped documents are counted in the result. Every scored document's NLL is returned
(``documents``) so that any aggregate can be recomputed from eval.json.
"""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path

import numpy as np

from toremi import layout
from toremi.evaluate.model_io import LoadedModel
from toremi.evaluate.scoring import score


def read_heldout(corpus_dir: Path, domain: str, max_docs: int | None = None,
                 seed: int = 0, columns=("id", "text", "label")) -> dict[str, list]:
    """Held-out documents of one domain; a fixed-seed subset when ``max_docs`` is set (shards
    may be ordered by source or label, so the first N would be a biased sample)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = layout.corpus_documents(corpus_dir, "heldout", domain)
    paths = sorted(folder.glob("*.parquet"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no held-out shards")
    tables = []
    for p in paths:
        names = pq.read_schema(p).names
        tables.append(pq.read_table(p, columns=[c for c in columns if c in names]))
    table = pa.concat_tables(tables, promote_options="default")
    if max_docs is not None and table.num_rows > max_docs:
        keep = np.sort(np.random.default_rng(seed).permutation(table.num_rows)[:max_docs])
        table = table.take(keep)
    return table.to_pydict()


SCRIPT_PREFIXES = {"latin": ("LATIN",)}


def script_share(text: str, script: str, max_chars: int = 20000) -> float:
    """Share of the letters among the first ``max_chars`` characters that belong to ``script``
    (Unicode character names; 1.0 for a text with no letters)."""
    prefixes = SCRIPT_PREFIXES[script]
    letters = [c for c in text[:max_chars] if c.isalpha()]
    if not letters:
        return 1.0
    return sum(unicodedata.name(c, "").startswith(prefixes) for c in letters) / len(letters)


def filter_script(ids: list, texts: list[str], script: str | None, min_share: float):
    """(kept ids, kept texts, skipped ids) under the script filter (``None`` keeps everything)."""
    if script is None or script == "none":
        return list(ids), list(texts), []
    if script not in SCRIPT_PREFIXES:
        raise ValueError(f"script_filter={script!r}: choose none or one of {sorted(SCRIPT_PREFIXES)}")
    keep = [script_share(t, script) >= min_share for t in texts]
    return ([i for i, k in zip(ids, keep) if k], [t for t, k in zip(texts, keep) if k],
            [i for i, k in zip(ids, keep) if not k])


class NoDocuments(ValueError):
    """A domain with nothing to score (no documents, or only empty ones)."""


def heldout_domains(corpus_dir: Path) -> list[str]:
    root = layout.corpus_documents(corpus_dir, "heldout")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.parquet"))) \
        if root.exists() else []


def make_windows(ids: np.ndarray, max_len: int, stride: int) -> tuple[list[np.ndarray], list[int]]:
    """Strided windows over ``ids`` (which starts with the EOT prefix) scoring each target once.

    Window k covers ids[s : e + 1] (inputs ids[s:e], targets ids[s+1:e+1]) with s = k * stride and
    e = min(s + max_len, L); it scores only targets after the previous window's end.
    """
    L = len(ids) - 1  # number of targets
    windows, scored, prev_end, s = [], [], 0, 0
    while prev_end < L:
        e = min(s + max_len, L)
        windows.append(ids[s:e + 1])
        scored.append(e - prev_end)
        prev_end, s = e, s + stride
    return windows, scored


def domain_perplexity(lm: LoadedModel, texts: list[str], stride: int | None = None,
                      batch_size: int = 8, max_tokens: int | None = None,
                      desc: str | None = None, max_doc_tokens: int | None = None,
                      ids: list | None = None) -> dict:
    """NLL (nats/token), perplexity and bits per byte of ``texts`` as one token-weighted pool,
    and per scored document (``documents``: id, tokens, bytes, nll_sum in nats)."""
    ids_of = list(ids) if ids is not None else list(range(len(texts)))
    stride = stride or max(1, lm.max_len // 2)
    if not 0 < stride <= lm.max_len:
        raise ValueError(f"stride {stride} must be in 1..{lm.max_len}")
    if max_doc_tokens is not None and max_doc_tokens < 1:
        raise ValueError(f"max_doc_tokens must be >= 1, got {max_doc_tokens}")
    encoded = lm.tokenizer.encode_batch(list(texts))
    byte_lengths = lm.tokenizer.token_byte_lengths() if max_doc_tokens else None
    windows, scored, n_bytes, n_docs, n_tokens = [], [], 0, 0, 0
    docs: list[dict] = []
    for doc_id, text, ids in zip(ids_of, texts, encoded):
        if not ids:
            continue
        doc_bytes = len(text.encode("utf-8"))
        if max_doc_tokens is not None and len(ids) > max_doc_tokens:
            ids = ids[:max_doc_tokens]  # bits/byte then counts the bytes of the scored prefix
            doc_bytes = int(byte_lengths[ids].sum())
        w, k = make_windows(np.asarray([lm.tokenizer.eot_id] + ids, dtype=np.int64),
                            lm.max_len, stride)
        windows += w
        scored += k
        docs.append({"id": doc_id, "tokens": len(ids), "bytes": doc_bytes, "windows": len(w)})
        n_bytes += doc_bytes
        n_tokens += len(ids)
        n_docs += 1
        if max_tokens is not None and n_tokens >= max_tokens:
            break
    if not windows:
        raise NoDocuments("no non-empty documents to evaluate")
    ll, _ = score(lm, windows, np.array(scored), batch_size=batch_size, progress=desc)
    assert sum(scored) == n_tokens
    nll_sum = float(-ll.sum())
    nll = nll_sum / n_tokens
    ends = np.cumsum([d.pop("windows") for d in docs])
    for d, per_doc in zip(docs, np.add.reduceat(-ll, np.r_[0, ends[:-1]])):
        d["nll_sum"] = float(per_doc)
    return {"nll": nll, "ppl": math.exp(nll), "bpb": nll_sum / math.log(2) / n_bytes,
            "tokens": n_tokens, "bytes": n_bytes, "docs": n_docs, "windows": len(windows),
            "max_doc_tokens": max_doc_tokens, "documents": docs}
