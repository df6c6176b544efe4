"""The `toremi` command as a user runs it: real subprocesses, real exit codes."""

import subprocess
import sys


def toremi(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "toremi.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_usage_and_unknown_stage():
    out = toremi()
    assert out.returncode == 0 and "prepare" in out.stdout and "demo" in out.stdout
    bad = toremi("trian")
    assert bad.returncode == 2 and "unknown stage 'trian'" in bad.stderr


def test_missing_input_is_one_clear_line(tmp_path):
    out = toremi("prepare", "--corpus", str(tmp_path / "nope"), "--out", str(tmp_path / "tok"))
    assert out.returncode == 2
    assert "no document shards; run `toremi corpus build` first" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_override_names_the_key(tiny_tokens, tmp_path):
    out = toremi("train", "--tokens", str(tiny_tokens), "--out", str(tmp_path / "run"), "method.nam=x")
    assert out.returncode == 2 and "method.nam" in out.stderr and "method.name" in out.stderr
