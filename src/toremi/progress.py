"""Progress bars that suit where stderr goes: a live tqdm bar on a terminal, and elsewhere (a log
file, a batch job, a pipe) one plain line each time another 10% is done, instead of hundreds of
carriage-return redraws.

``bar(iterable, desc=..., unit=..., total=..., initial=..., disable=...)`` takes the tqdm arguments
the stages use; both kinds support iteration, ``update``, ``set_postfix``, ``set_postfix_str``,
``write``, ``close`` and ``n``. ``disable=True`` shows nothing; ``disable=None`` (tqdm's "only on a
terminal") is the same as ``False`` here, since off a terminal the plain lines are shown.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, TextIO


def is_tty(stream: TextIO | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed or not a real file
        return False


def bar(iterable: Iterable | None = None, *, desc: str = "", unit: str = "it", total: float | None = None,
        initial: float = 0, disable: bool | None = False, file: TextIO | None = None, **kw: Any):
    """A tqdm bar when ``file`` (default: stderr) is a terminal, else a ``PlainBar``."""
    stream = sys.stderr if file is None else file
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if not disable and is_tty(stream):
        from tqdm import tqdm

        return tqdm(iterable, desc=desc or None, unit=unit, total=total, initial=initial, file=stream, **kw)
    return PlainBar(iterable, desc=desc, unit=unit, total=total, initial=initial,
                    disable=bool(disable), file=stream)


class PlainBar:
    """One line per 10% step of ``total`` (``desc: 30% 3/10 shard 12s tokens=5``); with no total,
    one line at ``close``."""

    def __init__(self, iterable: Iterable | None = None, *, desc: str = "", unit: str = "it",
                 total: float | None = None, initial: float = 0, disable: bool = False,
                 file: TextIO | None = None):
        self.iterable, self.desc, self.unit, self.total = iterable, desc, unit, total
        self.n, self.disable, self.file = initial, disable, file
        self.postfix = ""
        self.t0 = time.monotonic()
        self.shown = self._tenths()  # a resumed bar does not report the part already done
        self.closed = False

    def _tenths(self) -> int:
        return int(10 * self.n // self.total) if self.total else 0

    def __len__(self) -> int:
        return int(self.total or 0)

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _line(self) -> None:
        if self.disable or self.file is None:
            return
        done = f"{self.n:g}/{self.total:g}" if self.total else f"{self.n:g}"
        pct = f"{100 * self.n / self.total:3.0f}% " if self.total else ""
        head = f"{self.desc}: " if self.desc else ""
        tail = f" {self.postfix}" if self.postfix else ""
        print(f"{head}{pct}{done} {self.unit} {time.monotonic() - self.t0:.0f}s{tail}", file=self.file, flush=True)

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.total and self._tenths() > self.shown:
            self.shown = self._tenths()
            self._line()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kw: Any) -> None:
        items = {**(ordered_dict or {}), **kw}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def write(self, s: str, file: TextIO | None = None, end: str = "\n") -> None:
        print(s, file=file or sys.stdout, end=end, flush=True)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.total and self.n:  # no total: no 10% steps, one line at the end
            self._line()
