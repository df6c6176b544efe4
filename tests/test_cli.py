"""The `toremi` command as a user runs it: real subprocesses, real exit codes."""

import subprocess
import sys

from helpers import toremi_cli as toremi


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


def test_stdout_closed_early_exits_quietly():
    """`toremi ... | head -1`: the reader is gone before the output is written. Every kind of
    output (the dispatcher's, a stage's print, a stage's argparse help) ends without a traceback
    or an 'Exception ignored' line, with 141 (128 + SIGPIPE) or 0 (argparse ignores the error)."""
    for args in (["--help"], ["--version"], ["corpus", "--help"], ["corpus", "list"], ["prepare", "--help"]):
        p = subprocess.Popen([sys.executable, "-m", "toremi", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        p.stdout.close()  # before the child can have written anything: the import alone takes longer
        err = p.stderr.read().decode()
        assert p.wait(timeout=120) in (0, 141), (args, p.returncode, err)
        assert err == "", (args, err)
