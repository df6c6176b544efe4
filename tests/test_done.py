"""toremi.done: the one "is this output done and still valid?" check, on real files."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from toremi import done


@pytest.fixture(autouse=True)
def own_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOREMI_HASH_CACHE", str(tmp_path / "sha.sqlite"))


def test_a_marked_output_is_reused_until_anything_it_records_changes(tmp_path):
    out = tmp_path / "shard.npy"
    out.write_bytes(b"x" * 1000)
    inputs = {"source_sha256": "a" * 64, "seq_len": 64}
    info = done.mark(out, {"rows": 10, "model": "m", "inputs": inputs})
    assert info["sha256"] == hashlib.sha256(b"x" * 1000).hexdigest()
    assert json.loads(done.marker(out).read_text()) == info  # <out>.done, sha256 last
    assert list(info)[-1] == "sha256" and done.marker(out).name == "shard.npy.done"
    assert done.why_redo(out, rows=10, expect={"model": "m"}, inputs=inputs) is None
    assert done.valid(out, 10, {"model": "m"}, inputs)
    assert done.why_redo(out, rows=11) == "shard.npy has 10 rows, expected 11"
    assert done.why_redo(out, expect={"model": "n"}) == "model m -> n changed"
    assert done.why_redo(out, inputs={**inputs, "seq_len": 32}) == "seq_len 64 -> 32 changed"
    assert done.why_redo(out, inputs={**inputs, "source_sha256": "b" * 64}) == \
        "source_sha256 aaaaaaaaaaaa -> bbbbbbbbbbbb changed"
    assert done.why_redo(tmp_path / "other.npy") == "not finished"


def test_bytes_changed_under_a_cached_hash_are_seen(tmp_path):
    """The hash of ``out`` is in the cache (written by ``mark``); an edit of the same size with
    its mtime put back still changes the ctime, so the cached hash is not served."""
    out = tmp_path / "shard.bin"
    out.write_bytes(b"A" * 4096)
    done.mark(out, {"rows": 1})
    st = out.stat()
    out.write_bytes(b"B" * 4096)
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert done.why_redo(out, rows=1) == "shard.bin changed after it was written (sha256 differs from its done marker)"
    out.unlink()
    assert done.why_redo(out) == "not finished"


def test_a_marker_without_a_record_or_a_hash_is_not_trusted(tmp_path):
    out = tmp_path / "a.parquet"
    out.write_bytes(b"data")
    done.marker(out).write_text("{not json")
    assert done.read(out) is None and done.why_redo(out) == "not finished"
    done.marker(out).write_text(json.dumps({"rows": 1}))
    assert done.why_redo(out, rows=1) == "a.parquet has no recorded sha256"
    assert done.why_redo(out, rows=1, inputs={"x": 1}) == "no input fingerprint recorded (written by an older toremi)"


def test_record_kept_beside_the_output_and_a_marked_directory(tmp_path):
    """prepare keeps a shard's inputs in its .meta.json: ``record`` supplies them, the marker
    still vouches for the bytes. A directory (a corpus domain) is marked without a hash."""
    out = tmp_path / "train-00000.bin"
    out.write_bytes(b"tokens")
    done.mark(out, {"tokens": 3})
    assert done.why_redo(out, inputs={"k": 1}, record={"inputs": {"k": 1}}) is None
    assert done.why_redo(out, inputs={"k": 2}, record={"inputs": {"k": 1}}) == "k 1 -> 2 changed"
    folder = tmp_path / "documents" / "tech"
    folder.mkdir(parents=True)
    assert "sha256" not in done.mark(folder, {"fingerprint": "f"}) and done.is_done(folder)
