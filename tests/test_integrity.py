"""Data you can trust: safe checkpoints, exit codes, locks, verified hashes, resume changes.

Every case builds the bad situation for real (a planted pickle, a real signal, two real processes,
a flipped byte) and checks the one-line message, the exit code, and that a correct rerun gives
bit-identical output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import SRC
from helpers import toremi_cli as toremi
from toremi.io import read_json, read_jsonl
from toremi.train import checkpoint

BASE = ["steps=4", "batch_size=4", "log_every=2", "eval_every=0", "eval_batches=1",
        "progress=false", "optim.warmup_steps=1", "method.interval=2"]


def env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": SRC, **extra}


def error_line(out) -> str:
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def train_cli(tokens, run, *extra, check_rc=None):
    return toremi("train", "--tokens", tokens, "--out", run, *BASE, *extra, check_rc=check_rc)


def same_file_tree(a: Path, b: Path, names: list[str]) -> None:
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


@pytest.fixture(scope="module")
def ref_run(tiny_tokens, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    train_cli(tiny_tokens, run, check_rc=0)
    return run


# --- 1. safe checkpoints -----------------------------------------------------------------------
class Planted:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_loads_weights_only_and_planted_pickle_never_runs(tiny_tokens, tmp_path, ref_run):
    run = tmp_path / "run"
    train_cli(tiny_tokens, run, "stop_at_step=2", check_rc=75)
    ck = checkpoint.latest(run) / "train_state.pt"
    state = torch.load(ck, weights_only=True)  # plain tensors/containers only, RNG states included
    assert isinstance(state["rng"]["numpy"][1], torch.Tensor)
    clean = ck.read_bytes()
    marker = tmp_path / "PWNED"
    torch.save({**state, "evil": Planted(marker)}, ck)
    out = train_cli(tiny_tokens, run)
    assert out.returncode == 2
    line = error_line(out)
    assert str(ck) in line and "refused" in line and "run code" in line
    assert not marker.exists()
    ck.write_bytes(clean)  # the genuine checkpoint resumes to the same result as an unbroken run
    train_cli(tiny_tokens, run, check_rc=0)
    same_file_tree(ref_run, run, ["final/model.safetensors", "weights.jsonl"])


# --- 2. exit codes -----------------------------------------------------------------------------
SLOW = ("import os, sys, time, toremi.train.trainer as t\norig = t.StepEngine.train_step\n"
        "def slow(self, b):\n    time.sleep(float(os.environ.get('SLOW_S', '0.4')))\n    return orig(self, b)\n"
        "t.StepEngine.train_step = slow\nfrom toremi.cli import main\nsys.exit(main(sys.argv[1:]))\n")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_75_with_checkpoint_and_eval_refuses_partial(sig, tiny_tokens, tiny_corpus,
                                                                   tmp_path, ref_run):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", SLOW, "train", f"--tokens={tiny_tokens}",
                             f"--out={run}", *BASE, "steps=40"], env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and not read_jsonl(run / "metrics.jsonl"):
        time.sleep(0.1)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out
    assert f"interrupted by {sig.name}" in out and checkpoint.latest(run) is not None
    ev = toremi("eval", "--run", run, "--corpus", tiny_corpus, "downstream=[]", "max_docs=2")
    assert ev.returncode == 2
    line = error_line(ev)
    assert "not finished" in line and "--allow-partial" in line and str(run) in line
    ok = toremi("eval", "--run", run, "--corpus", tiny_corpus, "downstream=[]", "max_docs=2",
                "max_tokens=64", "--allow-partial")
    assert ok.returncode == 0, ok.stderr
    assert read_json(run / "eval.json")["partial"]["status"].startswith("interrupted")


def test_divergence_exits_3(tiny_tokens, tmp_path):
    out = train_cli(tiny_tokens, tmp_path / "run", "max_bad_steps=2", "log_every=1", "optim.lr=1e30",
                    "optim.warmup_steps=0", "optim.grad_clip=0")
    assert out.returncode == 3, out.stderr[-2000:]
    assert "non-finite" in out.stdout and checkpoint.latest(tmp_path / "run") is not None


# --- 3. one writer per output dir --------------------------------------------------------------
HOLD = ("import sys, time\nfrom toremi.integrity import hold_lock\n"
        "lock = hold_lock(sys.argv[1], sys.argv[2])\nprint('locked', flush=True)\ntime.sleep(600)\n")


def test_second_prepare_refused_naming_holder_and_stale_lock_does_not_block(tiny_corpus, tmp_path):
    out = tmp_path / "tok"
    args = ["prepare", "--corpus", tiny_corpus, "--out", out, "--tokenizer", "bpe:300", "--seq-len", "32",
            "topics_from=domain", "bpe_train_mb=0.2"]
    slow = ("import sys, time, toremi.prepare.shard as p\norig = p.write_token_shard\n"
            "def slow(*a, **k):\n    time.sleep(2)\n    return orig(*a, **k)\n"
            "p.write_token_shard = slow\nfrom toremi.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    first = subprocess.Popen([sys.executable, "-c", slow, *map(str, args)], env=env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / ".toremi.lock").exists():
        time.sleep(0.02)
    second = toremi(*[("bpe:400" if a == "bpe:300" else a) for a in args])
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert second.returncode == 2
    line = error_line(second)
    assert f"{out} is being written by `toremi prepare` (PID {first.pid}" in line
    assert read_json(out / "manifest.json")["tokenizer"]["vocab_size"] == 300  # not mixed
    # A holder killed with SIGKILL leaves the lock file but no lock: the rerun proceeds.
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out), "prepare"], env=env(),
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    blocked = toremi(*args)
    assert blocked.returncode == 2 and f"PID {holder.pid}" in error_line(blocked)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    before = {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}
    again = toremi(*args, check_rc=0)
    assert {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())} == before


def test_two_trains_into_one_run_dir(tiny_tokens, tmp_path, ref_run):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-c", SLOW, "train", f"--tokens={tiny_tokens}",
                              f"--out={run}", *BASE], env=env(SLOW_S="4"), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline and not (run / ".toremi.lock").exists():
        time.sleep(0.02)
    second = train_cli(tiny_tokens, run)
    assert second.returncode == 2 and f"PID {first.pid}" in error_line(second)
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out
    same_file_tree(ref_run, run, ["final/model.safetensors", "weights.jsonl"])


# --- 4. fingerprints and verified hashes --------------------------------------------------------
def flip_byte(path: Path, offset: int = -5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_token_byte_refused_by_train_then_prepare_redoes_it(tiny_corpus, tmp_path):
    args = ["--corpus", tiny_corpus, "--tokenizer", "bpe:300", "--seq-len", "32", "topics_from=domain",
            "bpe_train_mb=0.2"]
    ref, tok = tmp_path / "ref", tmp_path / "tok"
    toremi("prepare", "--out", ref, *args, check_rc=0)
    toremi("prepare", "--out", tok, *args, check_rc=0)
    shard = tok / "shards" / "train-00001.bin"
    flip_byte(shard)
    out = train_cli(tok, tmp_path / "run")
    assert out.returncode == 2
    line = error_line(out)
    assert f"{shard}: sha256" in line and f"toremi prepare --corpus {tiny_corpus} --out {tok}" in line
    redo = toremi("prepare", "--out", tok, *args, check_rc=0)
    assert "redoing train-00001.bin: train-00001.bin changed after it was written" in redo.stderr
    for p in sorted((ref / "shards").iterdir()):
        assert p.read_bytes() == (tok / "shards" / p.name).read_bytes(), p.name
    train_cli(tok, tmp_path / "run", check_rc=0)
    verified = read_json(tmp_path / "run" / "run.json")["verified_sha256"]["files"]
    man = read_json(tok / "manifest.json")
    assert verified["shards/train-00001.bin"] == man["shards"][1]["sha256"]


def test_flipped_packed_index_byte_refused_by_train_then_prepare_rewrites_it(tiny_corpus, tmp_path):
    args = ["--corpus", tiny_corpus, "--tokenizer", "bpe:300", "--seq-len", "32", "topics_from=domain",
            "bpe_train_mb=0.2"]
    tok = tmp_path / "tok"
    toremi("prepare", "--out", tok, *args, check_rc=0)
    seg_len = tok / "packed-train" / "seg_len.npy"
    good = seg_len.read_bytes()
    flip_byte(seg_len)
    out = train_cli(tok, tmp_path / "run")
    assert out.returncode == 2
    line = error_line(out)
    assert f"{seg_len}: sha256" in line and f"toremi prepare --corpus {tiny_corpus} --out {tok}" in line
    toremi("prepare", "--out", tok, *args, check_rc=0)
    assert seg_len.read_bytes() == good
    train_cli(tok, tmp_path / "run", check_rc=0)
    verified = read_json(tmp_path / "run" / "run.json")["verified_sha256"]["files"]
    assert verified["packed-train/seg_len.npy"] == read_json(tok / "manifest.json")["packed"]["sha256"]["seg_len"]


def test_changed_tokenizer_or_seq_len_redoes_every_shard_saying_why(tiny_corpus, tmp_path):
    out, fresh = tmp_path / "tok", tmp_path / "fresh"
    base = ["--corpus", tiny_corpus, "topics_from=domain", "bpe_train_mb=0.2"]
    toremi("prepare", "--out", out, *base, "--tokenizer", "bpe:300", "--seq-len", "32", check_rc=0)
    again = toremi("prepare", "--out", out, *base, "--tokenizer", "bpe:400", "--seq-len", "48", check_rc=0)
    assert "redoing train-00000.bin: " in again.stderr and "seq_len 32 -> 48" in again.stderr
    assert "tokenizer " in again.stderr
    toremi("prepare", "--out", fresh, *base, "--tokenizer", "bpe:400", "--seq-len", "48", check_rc=0)
    for p in sorted((fresh / "shards").iterdir()):
        assert p.read_bytes() == (out / "shards" / p.name).read_bytes(), p.name
    assert (fresh / "index-train.npz").read_bytes() == (out / "index-train.npz").read_bytes()
    assert read_json(out / "manifest.json")["data_hash"] == read_json(fresh / "manifest.json")["data_hash"]
    quiet = toremi("prepare", "--out", out, *base, "--tokenizer", "bpe:400", "--seq-len", "48", check_rc=0)
    assert "redoing" not in quiet.stderr  # exact match: everything reused


def test_flipped_corpus_byte_refused_by_prepare_and_eval_then_rebuilt(tmp_path, tiny_corpus):
    import pyarrow.parquet as pq

    src = tmp_path / "in.jsonl"
    rows = pq.read_table(next((tiny_corpus / "documents" / "tech").glob("*.parquet"))).to_pylist()
    src.write_text("".join(json.dumps({"id": r["id"], "text": r["text"], "domain": "tech"}) + "\n"
                           for r in rows))
    corpus = tmp_path / "corpus"
    ingest = ["corpus", "ingest", "--input", src, "--out", corpus, "count_tokens=false"]
    toremi(*ingest, check_rc=0)
    clean = {p: p.read_bytes() for p in sorted(corpus.rglob("*.parquet"))}
    shard = corpus / "documents" / "tech" / "shard-00000.parquet"
    flip_byte(shard, 200)
    tok = tmp_path / "tok"
    prep = ["prepare", "--corpus", corpus, "--out", tok, "--tokenizer", "bpe:300", "--seq-len", "32",
            "topics_from=domain", "bpe_train_mb=0.2"]
    out = toremi(*prep)
    assert out.returncode == 2
    line = error_line(out)
    assert f"{shard}: sha256" in line and f"toremi corpus ingest --input {src} --out {corpus}" in line
    held = corpus / "eval" / "tech" / "shard-00000.parquet"
    flip_byte(held, 200)
    redo = toremi(*ingest, check_rc=0)
    assert "redoing domain 'tech'" in redo.stderr and "changed after it was written" in redo.stderr
    assert {p: p.read_bytes() for p in sorted(corpus.rglob("*.parquet"))} == clean
    toremi(*prep, check_rc=0)
    flip_byte(held, 200)
    run = tmp_path / "run"
    train_cli(tok, run, check_rc=0)
    ev = toremi("eval", "--run", run, "--corpus", corpus, "downstream=[]", "max_docs=2")
    assert ev.returncode == 2 and f"{held}: sha256" in error_line(ev)


def test_eval_refuses_a_tokenizer_with_another_fingerprint(tiny_tokens, tiny_corpus, tmp_path, ref_run):
    other = tmp_path / "tok"
    toremi("prepare", "--corpus", tiny_corpus, "--out", other, "--tokenizer", "bpe:512", "--seq-len", "64",
           "topics_from=domain", "bpe_train_mb=0.3", check_rc=0)  # same vocabulary size, other merges
    ev = toremi("eval", "--model", ref_run / "final", "--tokenizer", other / "tokenizer.json",
                "--corpus", tiny_corpus, "downstream=[]", "max_docs=2")
    assert ev.returncode == 2
    line = error_line(ev)
    assert "fingerprint" in line and "differs" in line and str(ref_run / "final") in line


# --- 5. resume with changed settings ------------------------------------------------------------
def test_resume_refuses_batch_change_and_applies_logged_lr_change(tiny_tokens, tmp_path, ref_run):
    from toremi.config import load_config
    from toremi.train.config import TrainConfig
    from toremi.train.trainer import lr_lambda

    run = tmp_path / "run"
    train_cli(tiny_tokens, run, "stop_at_step=2", check_rc=75)
    bad = train_cli(tiny_tokens, run, "batch_size=8", "model.dropout=0.1")
    assert bad.returncode == 2
    line = error_line(bad)
    assert "batch_size 4 -> 8" in line and "model.dropout 0.0 -> 0.1" in line and "new --out" in line
    train_cli(tiny_tokens, run, check_rc=0)  # the original settings resume to the unbroken result
    same_file_tree(ref_run, run, ["final/model.safetensors", "weights.jsonl"])

    run2 = tmp_path / "run2"
    train_cli(tiny_tokens, run2, "stop_at_step=2", check_rc=75)
    out = train_cli(tiny_tokens, run2, "optim.lr=0.0005", "eval_every=2", check_rc=0)
    assert "resume at step 2: applying eval_every 0 -> 2, optim.lr 0.001 -> 0.0005" in out.stdout
    info = read_json(run2 / "run.json")
    assert info["resume_changes"] == [{"step": 2, "changed": {"eval_every": [0, 2],
                                                              "optim.lr": [0.001, 0.0005]}}]
    cfg = load_config(TrainConfig, None, BASE)
    lam = lr_lambda(cfg, 4)
    lrs = {r["step"]: r["lr"] for r in read_jsonl(run2 / "metrics.jsonl") if "lr" in r}
    assert lrs[2] == pytest.approx(1e-3 * lam(2)) and lrs[4] == pytest.approx(5e-4 * lam(4))
    assert any("val_loss" in r for r in read_jsonl(run2 / "metrics.jsonl"))  # new cadence applied
    assert "lr: 0.0005" in (run2 / "config.yaml").read_text()


# --- 7. OS errors, umask, bad specs, null shards, domain collisions, documented layout ----------
def test_file_size_limit_is_one_line_and_nothing_half_written(tiny_corpus, tmp_path):
    import resource

    args = ["prepare", "--corpus", tiny_corpus, "--out", tmp_path / "tok", "--tokenizer", "bpe:300",
            "--seq-len", "32", "topics_from=domain", "bpe_train_mb=0.2"]
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))  # noqa: E731
    out = toremi(*args, preexec_fn=limit)
    assert out.returncode == 74, out.stderr
    line = error_line(out)
    assert "EFBIG (File too large)" in line and str(tmp_path / "tok") in line
    tok = tmp_path / "tok"
    assert not (tok / "manifest.json").exists() and not list(tok.rglob("*.tmp"))
    for done in tok.rglob("*.done"):  # whatever is marked finished is whole
        assert read_json(done)["sha256"] == hashlib.sha256(done.with_name(done.name[:-5]).read_bytes()).hexdigest()
    toremi(*args, check_rc=0)
    ref = tmp_path / "ref"
    toremi(*[ref if a == tok else a for a in args], check_rc=0)
    for p in sorted((ref / "shards").iterdir()):
        assert p.read_bytes() == (tok / "shards" / p.name).read_bytes(), p.name


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_outputs_honour_the_umask(mask, tiny_corpus, tmp_path):
    tok = tmp_path / "tok"
    toremi("prepare", "--corpus", tiny_corpus, "--out", tok, "--tokenizer", "bpe:300", "--seq-len", "32",
           "topics_from=domain", "bpe_train_mb=0.2", preexec_fn=lambda: os.umask(mask), check_rc=0)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tok.rglob("*") if p.is_file() and p.name != ".toremi.lock"}
    assert set(modes.values()) == {0o666 & ~mask}, modes


@pytest.mark.parametrize("spec,msg", [("bpe:abc", "must be an integer"), ("bpe:3", "at least 257 tokens")])
def test_bad_bpe_spec_is_one_clear_line(spec, msg, tiny_corpus, tmp_path):
    out = toremi("prepare", "--corpus", tiny_corpus, "--out", tmp_path / "tok", "--tokenizer", spec)
    assert out.returncode == 2
    line = error_line(out)
    assert msg in line and spec in line


def test_empty_and_null_text_shards_prepare(tiny_corpus, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    empty = corpus / "eval" / "tech" / "shard-00000.parquet"
    pq.write_table(pa.table({"id": [], "text": [], "domain": [], "label": [], "source": []}), empty)
    assert pa.types.is_null(pq.read_schema(empty).field("text").type)
    other = sorted(p.name for p in (corpus / "eval").iterdir() if p.name != "tech")[0]
    nulls = corpus / "eval" / other / "shard-00000.parquet"
    pq.write_table(pa.table({"id": [f"{other}/n1"], "text": pa.array([None], pa.string()), "domain": [other],
                             "label": [other], "source": ["n1"]}), nulls)
    args = ["prepare", "--corpus", corpus, "--tokenizer", "bpe:300", "--seq-len", "32",
            "topics_from=domain", "bpe_train_mb=0.2"]
    toremi(*args, "--out", tmp_path / "a", check_rc=0)
    toremi(*args, "--out", tmp_path / "b", check_rc=0)
    assert (tmp_path / "a" / "index-dev.npz").read_bytes() == (tmp_path / "b" / "index-dev.npz").read_bytes()


def test_colliding_domain_names_are_refused_naming_both(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": 1, "text": "one two three", "domain": ".."}) + "\n" +
                   json.dumps({"id": 2, "text": "four five six", "domain": "."}) + "\n")
    out = toremi("corpus", "ingest", "--input", src, "--out", tmp_path / "c")
    assert out.returncode == 2
    line = error_line(out)
    assert "domains '..' and '.' both become folder 'default'" in line


def documented_paths(section: str) -> list[str]:
    """Backticked relative file paths in one ``## section`` of docs/ARCHITECTURE.md."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md").read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"`([\w<>./-]+\.(?:parquet|json|jsonl|npz|bin|yaml|pt|done|safetensors|spec|lock))`", body)
    return sorted({p.replace("<domain>", "*").replace("XXXXXXX", "*").replace("<run_dir>/", "")
                   for p in found if "/" in p or not p.startswith("<")})


def test_documented_files_exist_after_a_small_run(tiny_corpus, tmp_path):
    import pyarrow.parquet as pq

    src = tmp_path / "in.jsonl"
    with open(src, "w") as f:
        for dom in ("tech", "business"):
            for r in pq.read_table(next((tiny_corpus / "documents" / dom).glob("*.parquet"))).to_pylist():
                f.write(json.dumps({"id": r["id"], "text": r["text"], "domain": dom, "source": r["id"]}) + "\n")
    corpus, tok, run = tmp_path / "corpus", tmp_path / "tok", tmp_path / "run"
    toremi("corpus", "ingest", "--input", src, "--out", corpus, "count_tokens=false", check_rc=0)
    toremi("prepare", "--corpus", corpus, "--out", tok, "--tokenizer", "bpe:300", "--seq-len", "32",
           "topics_from=domain", "bpe_train_mb=0.2", check_rc=0)
    train_cli(tok, run, "keep_checkpoints=0", "ckpt_every=2", check_rc=0)
    toremi("eval", "--run", run, "--corpus", corpus, "downstream=[]", "max_docs=2", "max_tokens=64", check_rc=0)
    checked = 0
    for section, root in (("corpus_dir", corpus), ("tokens_dir", tok), ("run_dir", run), ("evaluation", run)):
        paths = documented_paths(section)
        assert paths, section
        for p in paths:
            assert list(root.glob(p)), f"docs/ARCHITECTURE.md ({section}) names {p}, not found in {root}"
            checked += 1
    assert checked >= 20


# --- crash consistency is unchanged: SIGKILL mid-stage, rerun, bit-identical --------------------
SLOW_PREP = ("import sys, time, toremi.prepare.shard as p\norig = p.write_token_shard\n"
             "def slow(*a, **k):\n    time.sleep(0.5)\n    return orig(*a, **k)\n"
             "p.write_token_shard = slow\nfrom toremi.cli import main\nsys.exit(main(sys.argv[1:]))\n")


@pytest.mark.parametrize("sig,rc", [(signal.SIGKILL, -9), (signal.SIGTERM, 75)])
def test_prepare_killed_midway_then_rerun_is_bit_identical(sig, rc, tiny_corpus, tmp_path):
    args = ["prepare", "--corpus", tiny_corpus, "--tokenizer", "bpe:300", "--seq-len", "32",
            "topics_from=domain", "bpe_train_mb=0.2"]
    ref, tok = tmp_path / "ref", tmp_path / "tok"
    toremi(*args, "--out", ref, check_rc=0)
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PREP, *map(str, args), "--out", str(tok)], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tok / "shards").glob("*.done"))) < 2:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == rc, err
    assert not (tok / "manifest.json").exists()
    toremi(*args, "--out", tok, check_rc=0)
    names = sorted(p.name for p in (ref / "shards").iterdir())
    assert names == sorted(p.name for p in (tok / "shards").iterdir())
    for n in names + ["../index-train.npz", "../index-dev.npz", "../documents.parquet"]:
        assert (ref / "shards" / n).read_bytes() == (tok / "shards" / n).read_bytes(), n


def test_train_sigkilled_then_rerun_is_bit_identical(tiny_tokens, tmp_path, ref_run):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", SLOW, "train", f"--tokens={tiny_tokens}", f"--out={run}",
                             *BASE, "ckpt_every=1"], env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and checkpoint.latest(run) is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (run / "final").exists()
    train_cli(tiny_tokens, run, "ckpt_every=1", check_rc=0)
    same_file_tree(ref_run, run, ["final/model.safetensors", "weights.jsonl"])


def test_long_document_split_or_skipped_and_counted(tmp_path):
    from toremi.corpus.build import CorpusConfig
    from toremi.corpus.documents import read_split
    from toremi.corpus.ingest import IngestOptions, ingest

    src = tmp_path / "in.jsonl"
    import numpy as np

    words = np.random.default_rng(0).integers(0, 50_000, size=400_000)  # parts are not near duplicates
    long_text = " ".join(f"w{w}" for w in words.tolist())  # ~2.7 MB, one line
    src.write_text(json.dumps({"id": "big", "text": long_text}) + "\n" +
                   json.dumps({"id": "small", "text": "a short document"}) + "\n")
    opts = dict(count_tokens=False, min_heldout_mb=0.0, heldout_fraction=0.0, slice_heldout_fraction=0.0,
                max_doc_mb=1.0)
    m = ingest(IngestOptions(input=str(src)), CorpusConfig(out=str(tmp_path / "a"), **opts), show=False)
    assert m["ingest"]["long_documents"] == {"long_split": 1, "long_skipped": 0}
    ids = read_split(tmp_path / "a", "train")["id"].to_pylist()
    assert len([i for i in ids if i.startswith("default/big#part")]) == 3
    again = ingest(IngestOptions(input=str(src)), CorpusConfig(out=str(tmp_path / "b"), **opts), show=False)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in m["shards"]]
    m = ingest(IngestOptions(input=str(src)), CorpusConfig(out=str(tmp_path / "c"), long_docs="skip", **opts),
               show=False)
    assert m["ingest"]["long_documents"] == {"long_split": 0, "long_skipped": 1}
    assert read_split(tmp_path / "c", "train")["id"].to_pylist() == ["default/small"]


def test_mixed_format_folder_is_ingested_whole(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "in"
    (folder / "notes").mkdir(parents=True)
    (folder / "a.jsonl").write_text(json.dumps({"id": "j1", "text": "from jsonl one", "domain": "notes"}) + "\n")
    pq.write_table(pa.table({"id": ["p1"], "text": ["from parquet two"], "domain": ["notes"]}), folder / "b.parquet")
    (folder / "notes" / "t1.txt").write_text("from a text file three")
    out = toremi("corpus", "ingest", "--input", folder, "--out", tmp_path / "c", "count_tokens=false",
                 "min_heldout_mb=0", "slice_heldout_fraction=0", "heldout_fraction=0", check_rc=0)
    assert "ingesting every format" in out.stdout and "1 parquet, 1 jsonl, 1 text" in out.stdout
    m = read_json(tmp_path / "c" / "manifest.json")
    assert m["ingest"]["formats"] == {"parquet": 1, "jsonl": 1, "text": 1}
    assert m["domains"]["notes"]["train"]["documents"] == 3


def test_file_changed_after_its_hash_was_cached_is_hashed_again(tmp_path, monkeypatch):
    """The sha256 cache is keyed by (size, mtime, ctime): an edit of the same size whose mtime is
    put back (as `cp -p`, `touch -r` or a careless tool do) still changes the ctime, so the stale
    hash is not reused and the recorded hash no longer matches."""
    import hashlib
    import sqlite3

    from toremi import integrity

    cache = tmp_path / "sha256.sqlite"
    monkeypatch.setenv("TOREMI_HASH_CACHE", str(cache))
    root = tmp_path / "corpus"
    f = root / "documents" / "news" / "shard-00000.parquet"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"A" * 4096)
    old = hashlib.sha256(b"A" * 4096).hexdigest()
    assert integrity.file_sha256(f) == old
    with sqlite3.connect(cache) as db:  # it was cached under the file's current key
        st = f.stat()
        assert db.execute("SELECT size, mtime, ctime, sha FROM h").fetchall() == \
            [(4096, st.st_mtime_ns, st.st_ctime_ns, old)]
    assert integrity.file_sha256(f) == old  # unchanged: served from the cache
    time.sleep(0.05)  # the kernel's file clock is coarse (a few ms): let the edit get a later ctime
    before = f.stat()
    with open(f, "r+b") as fh:  # same size, one byte changed, mtime restored
        fh.seek(100)
        fh.write(b"B")
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = f.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    new = hashlib.sha256(b"A" * 100 + b"B" + b"A" * 3995).hexdigest()
    assert integrity.file_sha256(f) == new
    # a stage checking the file against its recorded hash (the one cached before) refuses it
    (root / "manifest.json").write_text(json.dumps({"shards": [{"path": str(f.relative_to(root)), "sha256": old}]}))
    with pytest.raises(integrity.IntegrityError, match=f"sha256 {new[:12]} differs from the recorded {old[:12]}"):
        integrity.verify_corpus_shards(root, [f])
    time.sleep(0.05)  # and a plain same-size edit (mtime moves too) as well
    f.write_bytes(b"C" * 4096)
    assert integrity.file_sha256(f) == hashlib.sha256(b"C" * 4096).hexdigest()
