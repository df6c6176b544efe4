"""``toremi noise``: a copy of the training data in which one topic's samples are corrupted.

The ToReMi authors test robustness by shuffling all characters of the Technology samples; a good
reweighter should notice that topic's loss stays high and, in Stage 2, turn its weight down.

Two levels, chosen by the input:

- ``--corpus DIR`` (kinds ``chars``, ``words``): writes a whole corpus dir whose training documents
  carrying the topic are corrupted (a character permutation, or a permutation of the words with
  the whitespace kept in place); everything else is copied byte for byte: other documents, the
  held-out ``eval/`` split (evaluation stays clean) and the topic attributes (document ids do not
  change, so the labels still apply). Run ``toremi prepare`` on the result, exactly as on the clean
  corpus: tokenization, sequence index and hashes then come from the one code path that makes them.
- ``--tokens DIR`` (kind ``tokens``): copies a prepared tokens dir and replaces every token of the
  topic's train and dev sequences (both come from the training pool) (except ``<|endoftext|>``) by a uniformly random token id; the index
  is unchanged, so no re-tokenization is needed. The manifest's shard hashes and ``data_hash`` are
  updated (by ``prepare.merge.write_derived_manifest``: prepare owns that format) so that runs on
  noisy data never pass for runs on clean data.
- ``--tokens DIR`` with kinds ``chars``/``words``: the corpus route on the corpus the tokens were
  prepared from (into ``<out>/corpus``), then ``prepare`` with the same settings and the same
  tokenizer file into ``<out>``.

``--fraction`` corrupts that share of the topic's documents (chosen with ``--seed``). Each
document's corruption is seeded by (seed, document id), so the output does not depend on the
order shards are processed in. ``noise.json`` in the output records what was done.
"""

from __future__ import annotations

import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toremi import integrity, layout
from toremi.config import ConfigError, from_dict, to_dict
from toremi.done import file_sha256
from toremi.io import atomic_path, atomic_write_json, read_json
from toremi.stage import Stage


@dataclass
class NoiseConfig:
    out: str  # output corpus dir (--corpus) or tokens dir (--tokens); never the input
    topic: str  # topic name (or integer topic id)
    corpus: str | None = None  # corpus dir (kinds chars, words)
    annotations: str | None = None  # default <corpus>/annotations
    tokens: str | None = None  # prepared tokens dir (kind tokens)
    kind: str = "chars"  # chars | words (a permutation per document) | tokens (random token ids)
    fraction: float = 1.0  # share of the topic's documents corrupted
    seed: int = 0  # which documents, and each one's permutation (with its id)

    def __post_init__(self):
        if (self.corpus is None) == (self.tokens is None):
            raise ConfigError("give exactly one of --corpus CORPUS_DIR or --tokens TOKENS_DIR")
        if self.kind not in ("chars", "words", "tokens"):
            raise ConfigError(f"kind must be chars, words or tokens, got {self.kind!r}")
        if self.corpus is not None and self.kind == "tokens":
            raise ConfigError("kind tokens works on a prepared tokens dir: use --tokens DIR")
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")


def doc_rng(seed: int, doc_id: str | int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(str(doc_id).encode())])


def shuffle_chars(text: str, rng: np.random.Generator) -> str:
    chars = np.array(list(text), dtype=object)
    return "".join(chars[rng.permutation(len(chars))])


def shuffle_words(text: str, rng: np.random.Generator) -> str:
    parts = re.split(r"(\s+)", text)  # words at even positions, whitespace runs at odd ones
    words = parts[0::2]
    order = rng.permutation(len(words))
    parts[0::2] = [words[i] for i in order]
    return "".join(parts)


CORRUPT = {"chars": shuffle_chars, "words": shuffle_words}


def topic_id(names: list[str], topic: str) -> int:
    if topic in names:
        return names.index(topic)
    if topic.isdigit() and int(topic) < len(names):
        return int(topic)
    raise ConfigError(f"topic {topic!r} is not one of the topics {names}")


def select(candidates: list, fraction: float, seed: int) -> set:
    """A fixed-seed ``fraction`` of ``candidates`` (all of them when fraction is 1)."""
    if fraction >= 1.0:
        return set(candidates)
    n = int(round(fraction * len(candidates)))
    order = np.random.default_rng(seed).permutation(len(candidates))[:n]
    return {candidates[i] for i in order}


def noisy_corpus(cfg: NoiseConfig, log=print, candidates: list[str] | None = None,
                 tid: int | None = None) -> dict:
    """Corrupt the topic's training documents; ``candidates`` (ids) overrides the attributes."""
    tid_given = candidates is not None
    import pyarrow as pa
    import pyarrow.parquet as pq

    from toremi.corpus.build import write_derived_manifest as write_corpus_manifest
    from toremi.progress import bar

    src, out = Path(cfg.corpus), Path(cfg.out)
    ann = layout.annotation_dir(src, cfg.annotations)
    if out.resolve() == src.resolve():
        raise ConfigError("--out must differ from --corpus (a stage never rewrites its input)")
    doc_shards = sorted(layout.corpus_documents(src).glob("*/*.parquet"))
    if not doc_shards:
        raise FileNotFoundError(f"{layout.corpus_documents(src)} has no shards: build the corpus first")
    if candidates is None:
        if not layout.topics_json(ann).exists():
            raise FileNotFoundError(f"{layout.topics_json(ann)} missing: run `toremi annotate` on {src} first")
        tid = topic_id(read_json(layout.topics_json(ann))["topic_names"], cfg.topic)
        # Documents carrying the topic, from the attributes (joined by id, not by row order).
        candidates = []
        for p in sorted(layout.topic_attributes(ann).glob("*/*.parquet")):
            t = pq.read_table(p, columns=["id", "topic_ids"]).to_pydict()
            candidates += [i for i, ts in zip(t["id"], t["topic_ids"]) if ts and tid in ts]
    chosen = select(sorted(candidates), cfg.fraction, cfg.seed)
    # Copy everything except the training documents and the (text-derived) embeddings.
    skip = {layout.corpus_documents(src).resolve(), layout.embeddings_dir(ann).resolve(), out.resolve()}
    for p in sorted(src.rglob("*")):
        if p.is_file() and not any(q in p.resolve().parents for q in skip):
            dest = out / p.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest)
    if ann.exists() and not str(ann.resolve()).startswith(str(src.resolve())):
        shutil.copytree(ann, layout.annotation_dir(out), dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("embeddings"))
    corrupt = CORRUPT[cfg.kind]
    counts, hashes = {}, {}
    for p in bar(doc_shards, desc=f"noise {cfg.kind}", unit="shard", disable=len(doc_shards) < 4):
        table = pq.read_table(p)
        ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
        hit = [i for i, d in enumerate(ids) if d in chosen]
        for i in hit:
            texts[i] = corrupt(texts[i], doc_rng(cfg.seed, ids[i]))
        table = table.set_column(table.schema.get_field_index("text"), "text",
                                 pa.array(texts, type=table.schema.field("text").type))
        dest = out / p.relative_to(src)
        with atomic_path(dest) as tmp:
            pq.write_table(table, tmp)
        hashes[str(p.relative_to(src))] = file_sha256(dest)
        counts[p.parent.name] = counts.get(p.parent.name, 0) + len(hit)
    info = {"level": "corpus", **to_dict(cfg), "topic_id": tid, "candidates": len(candidates),
            "corrupted": sum(counts.values()), "per_domain": counts}
    write_corpus_manifest(src, out, hashes, {"noise": info})  # shard markers too
    layout.noise_ids(out).write_text("".join(f"{d}\n" for d in sorted(chosen)))
    atomic_write_json(layout.noise_record(out), info)
    log(f"noise: corrupted {info['corrupted']} of {len(candidates)} {cfg.topic} documents "
        f"({cfg.kind}) -> {out}" + ("" if tid_given else "; next: `toremi prepare` on it"))
    return info


def noisy_tokens(cfg: NoiseConfig, log=print) -> dict:
    from toremi.data.shards import open_shard, write_shard
    from toremi.prepare.merge import write_derived_manifest

    src, out = Path(cfg.tokens), Path(cfg.out)
    if out.resolve() == src.resolve():
        raise ConfigError("--out must differ from --tokens (a stage never rewrites its input)")
    manifest = read_json(layout.tokens_manifest(src))
    tid = topic_id(manifest["topic_names"], cfg.topic)
    vocab, eot = manifest["tokenizer"]["vocab_size"], manifest["tokenizer"]["eot_id"]
    shutil.copytree(src, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(integrity.LOCK_NAME))
    layout.tokens_manifest(out).unlink()  # until the shards are rewritten, out is not a complete tokens dir
    # The dev split is carved from the same (now noisy) pool, so its documents of the topic are
    # corrupted too: a validation signal from clean text of a noisy topic would be an oracle.
    parts = []
    for split in ("train", "dev"):
        if layout.tokens_index(src, split).exists():
            with np.load(layout.tokens_index(src, split)) as z:
                parts.append([z[k] for k in ("shard", "offset", "length", "doc", "topics")])
    shard, offset, length, doc, topics = (np.concatenate(col) for col in zip(*parts))
    flagged = (topics == tid).any(1)
    chosen = select(sorted(set(doc[flagged].tolist())), cfg.fraction, cfg.seed)
    rows = np.nonzero(flagged & np.isin(doc, np.fromiter(chosen, np.int64, len(chosen))))[0]
    rng = np.random.default_rng(cfg.seed)
    for s in np.unique(shard[rows]):
        path = src / manifest["shards"][s]["path"]
        tokens = np.array(open_shard(path))
        r = rows[shard[rows] == s]
        # All positions of the chosen sequences, vectorised: offsets + arange(length) per row.
        pos = np.repeat(offset[r], length[r]) + (np.arange(length[r].sum()) -
                                                 np.repeat(np.cumsum(length[r]) - length[r], length[r]))
        pos = pos[tokens[pos] != eot]
        draw = rng.integers(0, vocab - 1, size=len(pos))
        tokens[pos] = (draw + (draw >= eot)).astype(tokens.dtype)  # never the EOT id
        write_shard(out / manifest["shards"][s]["path"], tokens)
    info = {"level": "tokens", **to_dict(cfg), "topic_id": tid, "candidates": int(flagged.sum()),
            "corrupted_docs": len(chosen), "corrupted_sequences": int(len(rows))}
    write_derived_manifest(manifest, out, info, rewritten=[int(s) for s in np.unique(shard[rows])])
    atomic_write_json(layout.noise_record(out), info)
    log(f"noise: randomised {len(rows)} sequences of {len(chosen)} {cfg.topic} documents -> {out}")
    return info


def noisy_tokens_via_corpus(cfg: NoiseConfig, log=print) -> dict:
    """Text noise for a prepared tokens dir: corrupt its source corpus into ``<out>/corpus``, then
    prepare that with the same settings and the *same* tokenizer file (so clean and noisy runs
    share a vocabulary and a retrained BPE cannot absorb the noise) into ``<out>``."""
    from dataclasses import replace

    from toremi.prepare import PrepareConfig, prepare
    from toremi.prepare.merge import write_derived_manifest

    src, out = Path(cfg.tokens), Path(cfg.out)
    if out.resolve() == src.resolve():
        raise ConfigError("--out must differ from --tokens (a stage never rewrites its input)")
    import pyarrow.parquet as pq

    if not layout.tokens_manifest(src).exists():
        raise FileNotFoundError(f"{layout.tokens_manifest(src)} missing: run `toremi prepare` first")
    manifest = read_json(layout.tokens_manifest(src))
    pcfg = from_dict(PrepareConfig, manifest["config"])
    # The topic's documents as the tokens dir labels them (annotations, domains or labels).
    tid = topic_id(manifest["topic_names"], cfg.topic)
    docs = []  # train and dev: both are the training pool
    for split in ("train", "dev"):
        if layout.tokens_index(src, split).exists():
            with np.load(layout.tokens_index(src, split)) as z:
                docs.append(z["doc"][(z["topics"] == tid).any(1)])
    docs = np.unique(np.concatenate(docs))
    ids = pq.read_table(layout.tokens_documents(src)).column("id").to_pylist()
    ncfg = replace(cfg, tokens=None, corpus=str(pcfg.corpus), out=str(layout.noise_corpus(out)),
                   annotations=str(pcfg.annotations) if pcfg.annotations else None)
    info = noisy_corpus(ncfg, log, candidates=[ids[d] for d in docs], tid=tid)
    prepare(replace(pcfg, corpus=layout.noise_corpus(out), out=out, annotations=None,
                    tokenizer=str(layout.tokens_tokenizer(src))))
    info = {**info, "level": "corpus+prepare", "tokens": str(src)}
    write_derived_manifest(read_json(layout.tokens_manifest(out)), out, info)
    atomic_write_json(layout.noise_record(out), info)
    return info


@integrity.locked("noise", lambda cfg, log=print: cfg.out)  # also when `toremi experiment` calls it
def make_noise(cfg: NoiseConfig, log=print) -> dict:
    if cfg.tokens:
        return noisy_tokens(cfg, log) if cfg.kind == "tokens" else noisy_tokens_via_corpus(cfg, log)
    return noisy_corpus(cfg, log)


STAGE = Stage("noise", NoiseConfig, lock=lambda cfg: cfg.out, doc=__doc__, defaults={"topic": "Technology"},
              refuse=(FileNotFoundError,))


def main(argv: list[str] | None = None) -> int:
    return STAGE.run(argv, _noise)


def _noise(cfg: NoiseConfig) -> int:
    make_noise(cfg)
    return 0
