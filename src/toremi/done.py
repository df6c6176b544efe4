"""Is this output done, and still valid? One answer for every stage that writes files.

A stage writes an output atomically, then its done marker ``<output>.done`` (``mark``): a small
JSON record with the output's sha256 and whatever the stage needs back on a rerun (row count, the
fingerprint of its inputs, the settings it was made with). Since the marker is written last, its
presence means the output is whole. ``why_redo`` is the one check: ``None`` when the output can be
reused as it is, else the reason to redo it (missing, other rows, other settings, changed inputs,
bytes changed since the marker), so a resume redoes exactly what changed and can say why.

``file_sha256`` is the one file hash: the full sha256, cached by (path, size, mtime_ns, ctime_ns)
in a small SQLite file (``$TOREMI_HASH_CACHE``, default ``~/.cache/toremi/sha256.sqlite``), so
checking a dataset that did not change costs one ``stat`` per file. The ctime is set by the kernel
on every write, so restoring an mtime after an edit does not hide it.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Any

from toremi.io import atomic_write_json, read_json


# --- the one file hash ----------------------------------------------------------------------
def _cache_path() -> Path:
    env = os.environ.get("TOREMI_HASH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "toremi" / "sha256.sqlite"


def hash_cache() -> sqlite3.Connection | None:
    """The cache, opened once for a batch of ``file_sha256`` calls (None: hash every time)."""
    try:
        p = _cache_path()
        p.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(p, timeout=10)
        db.execute("CREATE TABLE IF NOT EXISTS h (path TEXT PRIMARY KEY, size INT, mtime INT, "
                   "ctime INT, sha TEXT)")
        return db
    except (OSError, sqlite3.Error):
        return None


def _read_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path, db: sqlite3.Connection | None = None) -> str:
    """Full sha256 of ``path``, reused while its size, mtime and ctime are unchanged."""
    path = Path(path).resolve()
    st = path.stat()
    key = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    own = db is None
    db = hash_cache() if own else db
    try:
        if db is not None:
            try:
                row = db.execute("SELECT size, mtime, ctime, sha FROM h WHERE path=?", (str(path),)).fetchone()
            except sqlite3.Error:  # the cache only saves time: never let it fail a stage
                row = None
            if row and tuple(row[:3]) == key:
                return row[3]
        sha = _read_sha256(path)
        if db is not None:
            try:
                db.execute("INSERT OR REPLACE INTO h VALUES (?,?,?,?,?)", (str(path), *key, sha))
                db.commit()
            except sqlite3.Error:
                pass
        return sha
    finally:
        if own and db is not None:
            db.close()


# --- markers --------------------------------------------------------------------------------
def marker(path: Path) -> Path:
    """``<path>.done``: written after ``path``, so its presence means ``path`` is whole."""
    path = Path(path)
    return path.with_name(path.name + ".done")


def mark(path: Path, info: dict | None = None) -> dict:
    """Write ``path``'s done marker: ``info`` plus the file's sha256 (a directory gets none)."""
    path, info = Path(path), dict(info or {})
    if path.is_file() and "sha256" not in info:
        info["sha256"] = file_sha256(path)
    atomic_write_json(marker(path), info)
    return info


def read(path: Path) -> dict | None:
    """The record in ``path``'s done marker; None when ``path`` or its marker is missing or unreadable."""
    path = Path(path)
    try:
        return read_json(marker(path)) if path.exists() else None
    except (OSError, ValueError):
        return None


def is_done(path: Path) -> bool:
    """Marked done (no check of contents: use ``why_redo`` before reusing an output)."""
    return read(path) is not None


# --- the one check --------------------------------------------------------------------------
def stale_reason(recorded: dict | None, now: dict) -> str | None:
    """None when ``recorded`` equals ``now``; else which inputs changed, for the resume log."""
    if not recorded:
        return "no input fingerprint recorded (written by an older toremi)"
    changed = [k for k in sorted(set(now) | set(recorded)) if recorded.get(k) != now.get(k)]
    if not changed:
        return None

    def short(v: Any) -> str:
        s = str(v)
        return s[:12] if len(s) == 64 else s
    return ", ".join(f"{k} {short(recorded.get(k))} -> {short(now.get(k))}" for k in changed) + " changed"


def changed(path: Path, sha256: str | None, db=None) -> str | None:
    """Why ``path`` no longer has the recorded ``sha256`` (None when it has it)."""
    path = Path(path)
    if not path.exists():
        return f"{path.name} is missing"
    if not sha256:
        return f"{path.name} has no recorded sha256"
    if file_sha256(path, db) != sha256:
        return f"{path.name} changed after it was written (sha256 differs from its done marker)"
    return None


def why_redo(path: Path, rows: int | None = None, expect: dict | None = None, inputs: dict | None = None,
             record: dict | None = None) -> str | None:
    """None when ``path`` is done and can be reused as it is; else why it must be (re)done.

    ``rows``: the row count the marker must record; ``expect``: marker keys that must hold these
    values (settings, model); ``inputs``: the fingerprint of everything the output depends on,
    compared key by key with the one recorded (``stale_reason``). ``record``: a stage that keeps
    these facts beside the output instead of in its marker (prepare's ``.meta.json``) passes them
    here; the marker still vouches for the bytes."""
    mark_info = read(path)
    if mark_info is None:
        return "not finished"
    rec = mark_info if record is None else {**mark_info, **record}
    if rows is not None and rec.get("rows") != rows:
        return f"{Path(path).name} has {rec.get('rows')} rows, expected {rows}"
    why = stale_reason({k: rec.get(k) for k in expect or {}}, expect or {}) if expect else None
    if why:
        return why
    if inputs is not None:
        why = stale_reason(rec.get("inputs"), inputs)
        if why:
            return why
    return changed(path, mark_info.get("sha256"))


def valid(path: Path, rows: int | None = None, expect: dict | None = None, inputs: dict | None = None) -> bool:
    return why_redo(path, rows, expect, inputs) is None
