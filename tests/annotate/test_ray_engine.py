"""Ray engines (annotate and prepare) on a small corpus: same outputs as in-process, a Ray worker
killed mid-pipeline, a driver killed and the run resumed, an address that does not answer.

One local Ray (2 CPUs) is shared by the whole module: starting Ray costs many seconds on 2 cores.
Workers are killed for real (SIGKILL from this process) at a fault point where they wait
(``toremi.ray_cluster.fault_point``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray.data")

from toremi.annotate.corpora import bbc_records, write_corpus  # noqa: E402
from toremi.annotate.pipeline import AnnotateConfig, Annotator  # noqa: E402
from toremi.config import load_config  # noqa: E402
from toremi.prepare import PrepareConfig, prepare  # noqa: E402
from toremi.ray_cluster import EngineConfig, EngineError, connect  # noqa: E402

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """One local Ray for the module; workers inherit TOREMI_FAULT_DIR (fault points armed by file)."""
    faults = tmp_path_factory.mktemp("faults")
    os.environ["TOREMI_FAULT_DIR"] = str(faults)
    ray = connect(EngineConfig(name="ray", num_cpus=2))
    yield ray, faults
    ray.shutdown()
    os.environ.pop("TOREMI_FAULT_DIR", None)


def kill_when_paused(faults: Path, tag: str, timeout: float = 240) -> dict:
    """Arm fault point ``tag``; in a thread, SIGKILL the worker that reaches it."""
    (faults / f"pause-{tag}").touch()
    got: dict = {}

    def run():
        pid_file, end = faults / f"paused-{tag}.pid", time.time() + timeout
        while time.time() < end and not pid_file.exists():
            time.sleep(0.05)
        if pid_file.exists():
            time.sleep(0.1)
            got["pid"] = int(pid_file.read_text())
            os.kill(got["pid"], signal.SIGKILL)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    got["thread"] = t
    return got


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    recs = bbc_records(8) + [{"id": "blank", "text": "", "domain": "misc", "label": None, "source": "z"}]
    return write_corpus(tmp_path_factory.mktemp("corpus"), recs, shard_rows=15)


def test_ray_annotate_equals_local_with_a_worker_killed(ray_local, small_corpus, tmp_path):
    ray, faults = ray_local
    over = ["cluster.k=4", "cluster.seed=7", "progress=false"]
    local = Annotator(small_corpus, tmp_path / "local", load_config(AnnotateConfig, None, over))
    local.run()
    ray_ann = Annotator(small_corpus, tmp_path / "ray", load_config(AnnotateConfig, None, over + ["engine=ray"]))
    victim = local.shards[1]
    kill = kill_when_paused(faults, f"embed-{victim.parent.name}-{victim.stem}")
    ray_ann.run()
    kill["thread"].join(5)
    assert "pid" in kill and not pid_alive(kill["pid"]), "the embedding actor was not killed mid-pipeline"
    assert len(local.shards) == 4 and ray_ann.engine.name == "ray" and local.engine.name == "local"
    for s in local.shards:
        for kind, ext in (("embeddings", ".npy"), ("clusters", ".npy")):
            np.testing.assert_array_equal(np.load(local._p(kind, s, ext)), np.load(ray_ann._p(kind, s, ext)))
        ta = pq.read_table(local._p("attributes/topics", s, ".parquet")).to_pylist()
        tb = pq.read_table(ray_ann._p("attributes/topics", s, ".parquet")).to_pylist()
        assert ta == tb
    for name in ("keywords.json", "topics.json", "clusters/stats.json"):
        assert json.loads((tmp_path / "local" / name).read_text()) == json.loads((tmp_path / "ray" / name).read_text())
    for name in ("member_means.npy", "centroids.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "local/clusters" / name),
                                      np.load(tmp_path / "ray/clusters" / name))
    assert not (tmp_path / "ray/embeddings/.parts").exists()  # parts assembled and removed
    man = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert man["config"]["engine"]["name"] == "ray" and man["steps"]["cluster"]["sample_coverage"] == 1.0
    again = ray_ann.embed()  # every shard complete: nothing recomputed
    assert again["recomputed"] == 0 and again["rows"] == 41


# Run-dependent parts of a tokens dir: the zip timestamps inside every ``.npz`` (so the hashes of
# the files that hold them), where the output sits, the engine, and the clock.
_VOLATILE = {"manifest.json": ("seconds", "index_sha256", "data_hash", "config.out", "config.engine",
                               "packed.data_hash"),
             "prepare.yaml": ("out", "engine"), ".meta.json": ("idx_sha256",)}


def _drop(d: dict, keys) -> None:
    for k in keys:
        *up, last = k.split(".")
        inner = d
        for u in up:
            inner = inner.get(u) or {}
        inner.pop(last, None)


def diff_tokens(a: Path, b: Path) -> list[str]:
    """Every difference between two tokens dirs: the same files, byte for byte, except the zip
    timestamps of ``.npz`` files (their members' bytes are compared) and ``_VOLATILE``."""
    import yaml
    import zipfile

    files = {d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and p.name != ".toremi.lock")
             for d in (a, b)}
    out = [f"only in {d}: {f}" for d, other in ((a, b), (b, a)) for f in sorted(set(files[d]) - set(files[other]))]
    for rel in sorted(set(files[a]) & set(files[b])):
        fa, fb = a / rel, b / rel
        if rel.endswith(".npz"):
            with zipfile.ZipFile(fa) as za, zipfile.ZipFile(fb) as zb:
                same = za.namelist() == zb.namelist() and all(za.read(n) == zb.read(n) for n in za.namelist())
        elif rel == "prepare.yaml" or rel == "manifest.json" or rel.endswith(".meta.json"):
            load = yaml.safe_load if rel.endswith(".yaml") else json.loads
            va, vb = load(fa.read_text()), load(fb.read_text())
            for v in (va, vb):
                _drop(v, _VOLATILE[".meta.json" if rel.endswith(".meta.json") else rel])
            same = va == vb
        else:
            same = fa.read_bytes() == fb.read_bytes()
        if not same:
            out.append(f"differs: {rel}")
    return out


def assert_same_tokens(a: Path, b: Path) -> None:
    """Local and Ray tokens dirs are the same bytes (``diff_tokens``), with a packed index."""
    assert diff_tokens(a, b) == []
    m = json.loads((a / "manifest.json").read_text())
    assert m["packing"] == "docs" and m["packed"]["windows"] > 0  # the packed index is written by both engines
    assert len(m["shards"]) > 1 and (a / "packed-train" / "seg_len.npy").exists()


def test_diff_tokens_sees_one_changed_byte(tmp_path):
    """The comparison itself: a flipped byte in a shard or in an index member, an extra file and a
    changed manifest key are each reported; the npz zip timestamps and the paths are not."""
    import zipfile

    a, b = tmp_path / "a", tmp_path / "b"
    for d, when in ((a, (2020, 1, 1, 0, 0, 0)), (b, (2021, 2, 2, 2, 2, 2))):
        (d / "shards").mkdir(parents=True)
        (d / "shards" / "train-00000.bin").write_bytes(bytes(range(64)))
        with zipfile.ZipFile(d / "index-train.npz", "w") as z:
            z.writestr(zipfile.ZipInfo("offset.npy", when), b"\x01\x02")
        (d / "manifest.json").write_text(json.dumps({"seconds": when[0], "config": {"out": str(d)}, "tokens": 5}))
    assert diff_tokens(a, b) == []
    (b / "shards" / "train-00000.bin").write_bytes(bytes(range(63)) + b"\xff")
    with zipfile.ZipFile(b / "index-train.npz", "w") as z:
        z.writestr("offset.npy", b"\x01\x03")
    (b / "manifest.json").write_text(json.dumps({"seconds": 1, "config": {"out": "x"}, "tokens": 6}))
    (b / "documents.parquet").write_bytes(b"x")
    assert diff_tokens(a, b) == [f"only in {b}: documents.parquet", "differs: index-train.npz",
                                 "differs: manifest.json", "differs: shards/train-00000.bin"]


@pytest.fixture(scope="module")
def bbc_corpus(tmp_path_factory):
    from helpers import write_bbc_corpus

    return write_bbc_corpus(tmp_path_factory.mktemp("bbc"), train_per_topic=12, eval_per_topic=6)


def prep_cfg(corpus, out, *extra) -> PrepareConfig:
    over = [f"corpus={corpus}", f"out={out}", "tokenizer=bpe:512", "seq_len=64", "topics_from=label",
            "bpe_train_mb=0.2", "dev_sequences_per_domain=5", *extra]
    return load_config(PrepareConfig, None, over)


def test_ray_prepare_equals_local_with_a_worker_killed(ray_local, bbc_corpus, tmp_path):
    ray, faults = ray_local
    prepare(prep_cfg(bbc_corpus, tmp_path / "local"))
    kill = kill_when_paused(faults, "prepare-3")
    prepare(prep_cfg(bbc_corpus, tmp_path / "ray", "engine.name=ray"))
    kill["thread"].join(5)
    assert "pid" in kill and not pid_alive(kill["pid"]), "the prepare task was not killed mid-pipeline"
    assert_same_tokens(tmp_path / "local", tmp_path / "ray")


def test_ray_prepare_resumes_after_the_driver_is_killed(ray_local, bbc_corpus, tmp_path):
    """A driver (its own process, on the module's Ray) dies; the rerun redoes only unfinished shards."""
    ray, faults = ray_local
    out = tmp_path / "ray"
    prepare(prep_cfg(bbc_corpus, tmp_path / "local"))
    (faults / "pause-prepare-4").touch()  # shard 4 of 10 waits; the others finish
    address = ray.get_runtime_context().gcs_address
    code = ("import sys; from toremi.prepare import prepare; sys.path.insert(0, 'tests'); sys.path.insert(0, 'tests/annotate');"
            "from test_ray_engine import prep_cfg;"
            f"prepare(prep_cfg({str(bbc_corpus)!r}, {str(out)!r}, 'engine.name=ray', 'engine.address={address}'))")
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    driver = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=Path(SRC).parent,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    markers = lambda: sorted((out / "shards").glob("*.bin.done")) if (out / "shards").exists() else []  # noqa: E731
    end = time.time() + 240
    while time.time() < end and (len(markers()) < 9 or not (faults / "paused-prepare-4.pid").exists()):
        assert driver.poll() is None, "the driver finished before it could be killed"
        time.sleep(0.2)
    assert len(markers()) == 9, "9 of 10 shards should be done while shard 4 waits"
    driver.send_signal(signal.SIGKILL)
    driver.wait(30)
    paused = int((faults / "paused-prepare-4.pid").read_text())
    if pid_alive(paused):  # normally Ray ends a dead driver's tasks itself
        os.kill(paused, signal.SIGKILL)
    assert not (out / "manifest.json").exists()
    before = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in markers()}
    prepare(prep_cfg(bbc_corpus, out, "engine.name=ray"))
    after = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in markers()}
    assert len(after) == 10 and all(after[k] == v for k, v in before.items())  # finished shards not redone
    assert_same_tokens(tmp_path / "local", out)


@pytest.mark.parametrize("kind", ["silent", "ray-client", "refused"])
def test_address_that_does_not_answer_is_one_line(tmp_path, small_corpus, kind):
    """A port that accepts and never speaks (GCS and ray:// forms), and a refused port: one line,
    exit 2, within about ``engine.timeout_s`` rather than Ray's minutes of retries."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # the kernel completes connections; nobody ever answers
    port = sock.getsockname()[1]
    address = {"silent": f"127.0.0.1:{port}", "ray-client": f"ray://127.0.0.1:{port}", "refused": "127.0.0.1:1"}[kind]
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "toremi.cli", "annotate", "embed", "--corpus", str(small_corpus),
                        "--out", str(tmp_path / "a"), "engine.name=ray", f"engine.address={address}",
                        "engine.timeout_s=3"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": SRC})
    sock.close()
    lines = [x for x in (r.stdout + r.stderr).splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stdout + r.stderr
    assert f"engine.address={address}" in lines[0] and "ray start --head" in lines[0]
    assert ("within 3s" in lines[0]) and not (tmp_path / "a" / "embeddings").exists()
    assert time.time() - t0 < 90  # bounded by the timeout (plus imports on a loaded machine)


def test_ray_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(EngineError, match=r"pip install 'toremi\[ray\]'"):
        connect(EngineConfig(name="ray"))
