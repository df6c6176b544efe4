"""``toremi prepare``: documents (+ topic attributes) -> memory-mapped token shards and an index.

One token shard per document shard and split, each with a done marker, so an interrupted run
resumes at the first unfinished shard. Documents are cut into windows of at most ``seq_len + 1``
tokens (inputs ``[:-1]``, targets ``[1:]``); a window never spans two documents.

Splits: ``train`` and ``dev``. The ``dev`` split is carved from the corpus's *training* documents by
whole source unit (the ``source`` column; the document id where there is none), about
``dev_fraction`` of each domain's bytes per shard, chosen in a seeded order (``dev_mask``): every
shard decides alone, so the choice does not depend on shard order or engine. Every in-training
signal (validation loss, the plateau switch, validation hooks, DoReMi's reference) reads ``dev``;
the held-out ``corpus/eval`` documents are never tokenized here and are read only by ``toremi
eval``, so nothing a method adapts to has seen the documents it is scored on.

``packing=docs`` (default) also writes ``packed-train/``: full windows over the documents back to
back with a CSR segment map (toremi.data.packing). The shards and the per-document index are the
same in both modes (``packing=none`` output is bit-identical to before packing existed), so one
tokens dir serves both modes; the dev split stays per document so that validation losses compare
across modes.

One driver for both engines (``engine.name=local|ray``):
1. Plan (driver): save the settings, train or load the tokenizer (saved into the tokens dir, so
   every worker loads the same one), list the domains, fix the label vocabulary, fingerprint each
   job's inputs; a shard whose marker records the same inputs and unchanged bytes is kept.
2. Map: the per-shard function (shard.py) over the other jobs, on ``local`` threads (one shard
   tokenizes while another is written) or one Ray task per job; only counts come back.
3. Merge (driver, streamed, merge.py): split indexes, ``documents.parquet``, the packed index,
   ``manifest.json`` last. The engine changes where step 2 runs, never a byte of the output, and
   the driver's memory does not grow with the corpus.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import pyarrow.parquet as pq

from toremi import done, integrity, layout, progress
from toremi.config import save_config, to_dict
from toremi.corpus.documents import iter_shards
from toremi.io import read_json
from toremi.prepare import merge
from toremi.prepare.config import INDEX_VERSION, PrepareConfig
from toremi.prepare.shard import TopicLookup, remember_tokenizer, reusable, shard_map
from toremi.stage import Stage
from toremi.tokenizer import Tokenizer, from_file, load_tokenizer


def document_shards(corpus: Path, split: str) -> list[Path]:
    """Document shards of ``train`` or ``eval`` (a corpus without held-out documents has none)."""
    try:
        shards = iter_shards(corpus, split)
    except FileNotFoundError:
        shards = []
    if split == "train" and not shards:
        raise FileNotFoundError(f"{corpus / 'documents'}: no document shards; run `toremi corpus build` first")
    return shards


def corpus_domains(corpus: Path, train_shards: list[Path]) -> list[str]:
    """Every domain of the corpus (a domain with held-out documents only still gets its id, so
    domain ids agree with the eval split's)."""
    return sorted({p.parent.name for p in train_shards + document_shards(corpus, "eval")})


def split_jobs(cfg: PrepareConfig, train_shards: list[Path]) -> list[tuple[str, str, Path]]:
    """``(split, split_dir, shard)`` per token shard: each training shard gives a train and (with
    ``dev_fraction > 0``) a dev token shard. The held-out eval split is not among them."""
    jobs = [("train", "documents", s) for s in train_shards]
    if cfg.dev_fraction > 0:
        jobs += [("dev", "documents", s) for s in train_shards]
    return jobs


def _resolve_tokenizer(cfg: PrepareConfig) -> Tokenizer:
    saved = layout.tokens_tokenizer(cfg.out)
    spec_file = layout.tokens_tokenizer_spec(cfg.out)
    if saved.exists() and spec_file.exists() and spec_file.read_text() == cfg.tokenizer:
        return from_file(saved, name=cfg.tokenizer.replace(":", ""))
    texts = None
    if cfg.tokenizer.startswith("bpe:"):
        texts = list(_sample_texts(document_shards(cfg.corpus, "train"), cfg.bpe_train_mb))
    tok = load_tokenizer(cfg.tokenizer, texts)
    tok.save(saved)
    spec_file.write_text(cfg.tokenizer)
    return tok


def _sample_texts(shards: list[Path], mb: float):
    """Up to ``mb`` MB spread evenly over shards (every domain contributes)."""
    budget = mb * 1e6 / max(1, len(shards))
    for shard in shards:
        used = 0
        for text in pq.read_table(shard, columns=["text"]).column("text").to_pylist():
            if not text:  # null or empty (a null-typed column of an empty shard)
                continue
            yield text
            used += len(text)
            if used >= budget:
                break


def map_jobs(cfg: PrepareConfig, fn: Callable[[dict], dict], items: list[dict]) -> Iterator[tuple[int, dict]]:
    """``(i, fn(items[i]))`` as jobs finish, on ``cfg.engine``."""
    if cfg.engine.name == "ray":
        from toremi.ray_cluster import connect, map_items, stream_small

        yield from stream_small(map_items(connect(cfg.engine), fn, items, "prepare"))
        return
    with ThreadPoolExecutor(max_workers=2) as pool:  # the tokenizer frees the GIL
        jobs = iter(enumerate(items))
        running = deque((i, pool.submit(fn, item)) for i, item in itertools.islice(jobs, 2))
        try:
            while running:  # two jobs in flight; a failure or an interrupt starts no other
                i, job = running.popleft()
                result = job.result()
                for j, item in itertools.islice(jobs, 1):
                    running.append((j, pool.submit(fn, item)))
                yield i, result
        finally:
            for _, job in running:
                job.cancel()


@integrity.locked("prepare", lambda cfg: cfg.out)  # one writer per tokens dir
def prepare(cfg: PrepareConfig) -> Path:
    t0 = time.time()
    cfg.out.mkdir(parents=True, exist_ok=True)
    train_shards = document_shards(cfg.corpus, "train")
    integrity.verify_corpus_shards(cfg.corpus, train_shards)  # before any text is read
    if cfg.engine.name == "ray":  # an engine that does not answer fails before any work
        from toremi.ray_cluster import connect

        connect(cfg.engine)
    save_config(cfg, layout.tokens_config(cfg.out))
    tok = _resolve_tokenizer(cfg)
    domains = corpus_domains(cfg.corpus, train_shards)
    topics = TopicLookup(cfg, domains)
    if topics.warning:
        print(f"toremi prepare: warning: {topics.warning}", file=sys.stderr)
    if cfg.topics_from == "label":  # the label vocabulary is fixed before shards are cut
        for shard in train_shards:
            topics.for_shard("documents", shard, pq.read_table(shard, columns=["label", "domain"]))
    jobs = split_jobs(cfg, train_shards)
    out_bins = [layout.tokens_shard(cfg.out, split, k) for k, (split, _, _) in enumerate(jobs)]
    inputs = integrity.token_shard_inputs(cfg, tok, jobs, topics, domains, INDEX_VERSION)
    finished = reusable(cfg, jobs, out_bins, inputs)
    stats: list[dict | None] = [finished.get(k) for k in range(len(jobs))]
    todo = [k for k in range(len(jobs)) if k not in finished]
    items = [{"cfg": to_dict(cfg), "shard": str(jobs[k][2]), "out_bin": str(out_bins[k]), "split": jobs[k][0],
              "inputs": inputs[k], "domains": domains,
              "label_names": topics.names if cfg.topics_from == "label" else []} for k in todo]
    remember_tokenizer(cfg, tok)  # the local engine's threads encode with this very object
    bar = progress.bar(total=len(jobs), initial=len(finished), desc="prepare", unit="shard")
    for i, info in map_jobs(cfg, shard_map, items):
        stats[todo[i]] = info
        bar.set_postfix(tokens=sum(s["tokens"] for s in stats if s))
        bar.update(1)
    bar.close()
    merge_all(cfg, tok, stats, domains, topics, time.time() - t0)
    return cfg.out


def merge_all(cfg: PrepareConfig, tok: Tokenizer, stats: list[dict], domains: list[str], topics,
              seconds: float) -> None:
    """The one merge, streamed (merge.py): split indexes, document ids, packed index, manifest."""
    sequences = {split: merge.merge_split_streamed(cfg, stats, split) for split in ("train", "dev")}
    merge.write_documents(cfg, stats)
    shas = [done.read(cfg.out / s["path"])["sha256"] for s in stats]  # checked or written just now
    merge.write_manifest(cfg, tok, stats, shas, domains, topics, sequences, seconds)


STAGE = Stage("prepare", PrepareConfig, lock=lambda cfg: cfg.out, doc=__doc__)


def main(argv: list[str] | None = None) -> int:
    return STAGE.run(argv, _prepare)


def _prepare(cfg: PrepareConfig) -> int:
    out = prepare(cfg)
    m = read_json(layout.tokens_manifest(out))
    print(json.dumps({"out": str(out), "tokenizer": m["tokenizer"], "sequences": m["sequences"],
                      "tokens": m["tokens"], "topics": len(m["topic_names"]),
                      "packing": m["packing"], "fill": {k: v["overall"] for k, v in m["fill"].items()},
                      "seconds": m["seconds"]}, indent=2))
    return 0
