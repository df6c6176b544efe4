"""Data you can trust: one writer per output dir, verified hashes, fingerprints at stage boundaries.

- ``hold_lock(dir, stage)``: an advisory ``fcntl.flock`` on ``dir/.toremi.lock``. A second writer is
  refused at once, naming the holder's PID; the kernel drops the lock when its holder dies, so a
  lock left by a killed process never blocks a rerun.
- ``verify_tokens`` / ``verify_corpus``: compare every file a stage reads with the hash recorded
  when it was written; a mismatch is refused with the file named and the command that rebuilds it.
- ``token_shard_inputs``: everything a prepared token shard depends on (its input fingerprint).
Hashes (``file_sha256``, cached) and the done check (``why_redo``, ``stale_reason``) live in
``toremi.done``.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

from toremi import done, layout
from toremi.done import file_sha256, hash_cache
from toremi.io import read_json

LOCK_NAME = ".toremi.lock"


class LockHeld(RuntimeError):
    """Another process is writing the same output directory."""


class IntegrityError(ValueError):
    """A file differs from the hash recorded when it was written."""


# --- one writer per directory ---------------------------------------------------------------
class DirLock:
    """Holds ``fcntl.flock`` on ``<dir>/.toremi.lock`` until released or the process exits.

    Re-entrant within a process: a stage entry locks its output dir and the library function it
    calls (``prepare``, ``build``) locks it again; the inner lock shares the outer one's hold (two
    flocks of one file from one process would refuse each other)."""

    _held: dict[str, list] = {}  # realpath -> [fd, holders] (this process)

    def __init__(self, directory: Path, stage: str):
        self.dir, self.stage = Path(directory), stage
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / LOCK_NAME
        self.key = os.path.realpath(self.path)
        if self.key in DirLock._held:
            DirLock._held[self.key][1] += 1
            self.fd = DirLock._held[self.key][0]
            return
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 4096, 0).decode("utf-8", "replace")
            os.close(self.fd)
            self.fd = None
            try:
                h = json.loads(holder)
                who = f"`toremi {h.get('stage')}` (PID {h.get('pid')} on {h.get('host')}, since {h.get('since')})"
            except ValueError:
                who = "another process"
            raise LockHeld(f"{self.dir} is being written by {who}; wait for it to finish, or "
                           f"use another --out") from None
        info = json.dumps({"pid": os.getpid(), "stage": stage, "host": socket.gethostname(),
                           "since": time.strftime("%Y-%m-%dT%H:%M:%S")})
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, info.encode(), 0)
        DirLock._held[self.key] = [self.fd, 1]

    def release(self) -> None:
        if self.fd is None:
            return
        self.fd = None
        held = DirLock._held.get(self.key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del DirLock._held[self.key]
            fcntl.flock(held[0], fcntl.LOCK_UN)
            os.close(held[0])

    def __enter__(self) -> "DirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:
            pass


def hold_lock(directory: Path, stage: str) -> DirLock:
    """Lock ``directory`` for this process (kept while the returned object lives)."""
    return DirLock(directory, stage)


def locked(stage: str, out_of: Callable[..., Any]):
    """Decorator: hold the lock of the output dir ``out_of(*args, **kwargs)`` during the call, and
    release it however the call ends (an exception kept alive by a caller must not keep it)."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with DirLock(out_of(*args, **kwargs), stage):
                return fn(*args, **kwargs)
        return inner
    return wrap


# --- hashes checked against their records ---------------------------------------------------
def _check(root: Path, rel: str, want: str | None, rebuild: str, db, seen: dict) -> None:
    path = root / rel
    if not path.exists():
        raise IntegrityError(f"{path}: missing (recorded in {root / 'manifest.json'}); rebuild "
                             f"with `{rebuild}`")
    got = file_sha256(path, db)
    if want and got != want:
        raise IntegrityError(f"{path}: sha256 {got[:12]} differs from the recorded {want[:12]}: the "
                             f"file changed after it was written; rebuild with `{rebuild}`")
    seen[rel] = got


def prepare_command(tokens_dir: Path, manifest: dict) -> str:
    c = manifest.get("config", {})
    return (f"toremi prepare --corpus {c.get('corpus', 'CORPUS')} --out {tokens_dir} --tokenizer "
            f"{c.get('tokenizer', 'gpt2')} --seq-len {manifest.get('seq_len')}")


def verify_tokens(tokens_dir: Path) -> dict:
    """Hash every token shard and index (the packed index too) of a tokens dir against its manifest.

    Returns ``{"files": {relpath: sha256}, "seconds": s}`` for run.json."""
    t0 = time.perf_counter()
    tokens_dir = Path(tokens_dir)
    mpath = layout.tokens_manifest(tokens_dir)
    if not mpath.exists():
        raise FileNotFoundError(f"{tokens_dir}: no manifest.json; run `toremi prepare` first")
    m = read_json(mpath)
    rebuild = prepare_command(tokens_dir, m)
    seen: dict[str, str] = {}
    db = hash_cache()
    try:
        for s in m.get("shards", []):
            _check(tokens_dir, s["path"], s.get("sha256"), rebuild, db, seen)
        for split, sha in m.get("index_sha256", {}).items():
            _check(tokens_dir, layout.tokens_index(tokens_dir, split).name, sha, rebuild, db, seen)
        for key, sha in (m.get("packed") or {}).get("sha256", {}).items():  # packing=docs
            _check(tokens_dir, f"{layout.tokens_packed(tokens_dir).name}/{key}.npy", sha, rebuild, db, seen)
    finally:
        if db is not None:
            db.close()
    return {"files": seen, "seconds": round(time.perf_counter() - t0, 4)}


def corpus_command(corpus: Path) -> str:
    mpath = layout.corpus_manifest(corpus)
    m = read_json(mpath) if mpath.exists() else {}
    if "ingest" in m:
        return f"toremi corpus ingest --input {m['ingest']['input']} --out {corpus}"
    return f"toremi corpus build --out {corpus}"


def recorded_corpus_hashes(corpus: Path) -> dict[str, str]:
    """relpath -> sha256 as recorded by the corpus manifest, else by each shard's done marker."""
    corpus = Path(corpus)
    mpath = layout.corpus_manifest(corpus)
    if mpath.exists():
        return {s["path"]: s["sha256"] for s in read_json(mpath).get("shards", []) if s.get("sha256")}
    out = {}
    for marker in corpus.glob("*/*/shard-*.parquet.done"):
        shard = marker.with_name(marker.name[: -len(".done")])
        sha = (done.read(shard) or {}).get("sha256")
        if sha:
            out[str(shard.relative_to(corpus))] = sha
    return out


def verify_corpus_shards(corpus: Path, shards: list[Path]) -> dict[str, str]:
    """Verify the given document shards of ``corpus`` against their recorded hashes (a shard with
    no record, e.g. a hand-made corpus, is hashed and reported but cannot be checked)."""
    corpus = Path(corpus)
    want = recorded_corpus_hashes(corpus)
    rebuild = corpus_command(corpus)
    seen: dict[str, str] = {}
    db = hash_cache()
    try:
        for shard in shards:
            rel = str(Path(shard).relative_to(corpus))
            _check(corpus, rel, want.get(rel), rebuild, db, seen)
    finally:
        if db is not None:
            db.close()
    return seen


# --- fingerprints at stage boundaries -------------------------------------------------------
def model_tokenizer_fingerprint(model_dir: Path) -> str | None:
    """The fingerprint of the tokenizer a model folder was trained with, if it can be known: the
    run.json of its run (``final/`` or ``checkpoints/step-*/model``), else its own tokenizer.json."""
    model_dir = Path(model_dir).resolve()
    for run in (model_dir.parent, model_dir.parent.parent.parent):
        rj = layout.run_info(run)
        if rj.exists():
            tok = read_json(rj).get("tokenizer")
            if isinstance(tok, dict) and tok.get("fingerprint"):
                return tok["fingerprint"]
    if (model_dir / "tokenizer.json").exists():
        from toremi.tokenizer import from_file

        return from_file(model_dir / "tokenizer.json").fingerprint
    return None


def token_shard_inputs(cfg, tok, jobs: list, topics, domains: list[str], index_version: int) -> list[dict]:
    """Per prepare job ``(split, split_dir, shard)``: everything its token shard depends on.

    The source shards are verified against the corpus's recorded hashes first (refused on a
    mismatch, naming the command that rebuilds the corpus)."""
    from toremi.io import sha256_json

    corpus = Path(cfg.corpus)
    source_sha = verify_corpus_shards(corpus, [shard for _, _, shard in jobs])
    db = hash_cache()
    try:
        topics_json = None
        if topics.attr_dir is not None:
            topics_json = file_sha256(topics.topics_json, db)
        common = {"tokenizer": tok.fingerprint, "seq_len": cfg.seq_len, "topics_from": cfg.topics_from,
                  "max_topics": cfg.max_topics, "index_version": index_version,
                  "domains": sha256_json(domains), "topic_names": sha256_json(topics.names),
                  "topics_json": topics_json}
        out = []
        dev = {"fraction": getattr(cfg, "dev_fraction", 0.0), "seed": getattr(cfg, "dev_seed", 0)}
        for split, split_dir, shard in jobs:
            rel = str(Path(shard).relative_to(corpus))
            attr = None
            if topics.attr_dir is not None and split_dir == "documents":
                attr_path = Path(topics.attr_dir) / Path(shard).parent.name / Path(shard).name
                attr = file_sha256(attr_path, db) if attr_path.exists() else "missing"
            out.append({**common, "source": rel, "source_sha256": source_sha[rel], "annotation": attr,
                        "split": split, "dev": dev})
        return out
    finally:
        if db is not None:
            db.close()
