"""toremi.progress: a tqdm bar on a terminal (a real pty), plain 10% lines elsewhere."""

from __future__ import annotations

import io
import os
import re

from tqdm import tqdm

from toremi.progress import PlainBar, bar


def test_off_a_terminal_one_plain_line_per_tenth():
    out = io.StringIO()
    b = bar(range(100), desc="prepare", unit="shard", file=out)
    assert isinstance(b, PlainBar)
    for i in b:
        b.set_postfix(tokens=i)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert [int(re.search(r"(\d+)%", x).group(1)) for x in lines] == list(range(10, 101, 10))
    assert lines[0].startswith("prepare:  10% 10/100 shard") and lines[0].endswith("tokens=9")
    assert lines[-1].startswith("prepare: 100% 100/100 shard")

    out = io.StringIO()  # fewer items than steps: one line per item that crosses a tenth
    assert list(bar(["a", "b", "c"], desc="x", file=out)) == ["a", "b", "c"]
    assert len(out.getvalue().splitlines()) == 3

    out = io.StringIO()  # a resumed bar (train): update() with a total and an initial count
    b = bar(total=1000, initial=450, unit="step", file=out)
    for step in range(451, 1001):
        b.update(step - b.n)
    b.close()
    assert [int(re.search(r"(\d+)%", x).group(1)) for x in out.getvalue().splitlines()] == [50, 60, 70, 80, 90, 100]

    out = io.StringIO()  # no total: one line at the end
    b = bar(iter(range(7)), desc="gen", file=out)
    assert list(b) == list(range(7))
    assert re.fullmatch(r"gen: 7 it \d+s\n", out.getvalue()), out.getvalue()

    out = io.StringIO()
    assert list(bar(range(50), disable=True, file=out)) == list(range(50)) and out.getvalue() == ""


def test_on_a_terminal_a_tqdm_bar():
    leader, follower = os.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as tty:
            b = bar(range(5), desc="corpus", unit="domain", file=tty)
            assert isinstance(b, tqdm) and not b.disable
            assert list(b) == list(range(5))
            quiet = bar(range(5), disable=True, file=tty)
            assert not isinstance(quiet, tqdm) and list(quiet) == list(range(5))
        assert b"corpus" in os.read(leader, 4096)
    finally:
        os.close(leader)
        os.close(follower)


def test_no_stage_draws_its_own_bar():
    """Every progress bar goes through toremi.progress (tqdm only on a terminal): a module that
    imports tqdm itself would fill a log file with carriage-return redraws again."""
    import pathlib

    src = pathlib.Path(__file__).resolve().parents[1] / "src" / "toremi"
    direct = [str(p.relative_to(src)) for p in src.rglob("*.py") if p.name != "progress.py"
              and re.search(r"^\s*(from tqdm|import tqdm)", p.read_text(), re.M)]
    assert direct == []
