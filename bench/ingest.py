"""Peak memory and wall time of `toremi corpus ingest`: this checkout (AFTER) against a baseline
checkout (BEFORE, e.g. main before streaming ingest), same inputs, same machine, same run.

Inputs (generated in a temp dir, deleted at the end):
- a JSONL of ``--gb`` GB of unique ~4 KB documents over three domains (goal AFTER: peak RSS
  <= 1.5 GB for 2 GB);
- one JSONL line holding a single ``--doc-mb`` MB document (goal AFTER: peak RSS <= 10x its size).
Each ingest runs as its own `nice` subprocess; peak RSS is GNU time's %M for it. A run
whose RSS passes ``--cap-gb`` is stopped and reported as "> cap" (so a baseline that would need
the whole machine does not take it). Token counting is off (``count_tokens=false``) in both, so
the figures are about reading, dedupe and writing.

Usage: python bench/ingest.py [--gb 2] [--doc-mb 20] [--before-src /work/main/src] [--cap-gb 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

AFTER_SRC = str(Path(__file__).resolve().parents[1] / "src")


def make_jsonl(path: Path, gb: float, seed: int = 0) -> int:
    """Unique documents of ~4 KB: random words of 4-12 letters from a 50k-word vocabulary."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = np.array(["".join(rng.choice(letters, size=int(n))) for n in rng.integers(4, 13, 50_000)])
    target, written, n = int(gb * 1e9), 0, 0
    with open(path, "w") as f:
        while written < target:
            idx = rng.integers(0, len(vocab), size=(256, 480))
            lines = "".join(json.dumps({"id": n + i, "text": " ".join(vocab[row]), "domain": f"d{(n + i) % 3}",
                                        "source": f"s{(n + i) // 5}"}) + "\n" for i, row in enumerate(idx))
            f.write(lines)
            written += len(lines)
            n += len(idx)
    return n


def make_long_doc(path: Path, mb: float, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    words = np.array(["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa"])
    text = " ".join(words[rng.integers(0, len(words), size=int(mb * 1e6 / 6))])
    path.write_text(json.dumps({"id": "long", "text": text, "domain": "one"}) + "\n")


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += int(Path(f"/proc/{p}/status").read_text().split("VmRSS:")[1].split()[0]) * 1024
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (OSError, IndexError, ValueError):
            pass
    return total


def ingest(src: str, inp: Path, out: Path, cap_bytes: float) -> dict:
    """Run one ingest under GNU time (its %M is the ingest's own peak RSS, not this process's,
    which a fork would otherwise pass on); stopped past the cap."""
    env = {**os.environ, "PYTHONPATH": src, "TOREMI_HASH_CACHE": str(out) + ".hash.sqlite"}
    rss_file = Path(str(out) + ".rss")
    cmd = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), "nice", "-n", "10", sys.executable, "-m",
           "toremi.cli", "corpus", "ingest", "--input", str(inp), "--out", str(out), "count_tokens=false"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stopped, seen = False, 0
    while proc.poll() is None:
        rss = _tree_rss(proc.pid)
        seen = max(seen, rss)
        if rss > cap_bytes and not stopped:
            for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                os.kill(int(c), 9)
            stopped = True
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode()[-500:]
    shutil.rmtree(out, ignore_errors=True)
    try:
        peak = int(rss_file.read_text().split()[-1]) / 1024
    except (OSError, ValueError, IndexError):
        peak = seen / 2**20
    return {"peak_rss_mb": peak, "wall_s": wall, "rc": proc.returncode, "stopped_at_cap": stopped,
            "error": err if proc.returncode and not stopped else ""}


def show(name: str, r: dict, cap_gb: float) -> str:
    rss = f"> {cap_gb * 1024:.0f} MB (stopped at the cap)" if r["stopped_at_cap"] else f"{r['peak_rss_mb']:.0f} MB"
    wall = f"{r['wall_s']:.1f} s" + (" (until stopped)" if r["stopped_at_cap"] else "")
    return f"  {name:<7} peak RSS {rss:<32} wall {wall}" + (f"  rc={r['rc']} {r['error']}" if r["error"] else "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--doc-mb", type=float, default=20.0)
    ap.add_argument("--before-src", default="/work/main/src", help="src/ of the baseline checkout")
    ap.add_argument("--cap-gb", type=float, default=5.0)
    ap.add_argument("--tmp", default=None, help="where to generate the inputs (default: system temp)")
    ap.add_argument("--only", choices=["big", "long"], default=None)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=a.tmp))
    cap = a.cap_gb * 2**30
    print(f"uptime: {os.getloadavg()}")
    try:
        if a.only != "big":
            doc = tmp / "long.jsonl"
            make_long_doc(doc, a.doc_mb)
            print(f"one {a.doc_mb:.0f} MB single-line document ({doc.stat().st_size / 1e6:.1f} MB file):")
            res = {}
            for name, src in (("before", a.before_src), ("after", AFTER_SRC)):
                res[name] = ingest(src, doc, tmp / f"out-{name}", cap)
                print(show(name, res[name], a.cap_gb), flush=True)
            print(f"  after: {res['after']['peak_rss_mb'] * 2**20 / (a.doc_mb * 1e6):.1f}x the document "
                  f"(goal <= 10x)")
        if a.only != "long":
            big = tmp / "big.jsonl"
            t0 = time.perf_counter()
            n = make_jsonl(big, a.gb)
            print(f"{big.stat().st_size / 1e9:.2f} GB JSONL, {n:,} documents (generated in "
                  f"{time.perf_counter() - t0:.0f} s):")
            for name, src in (("before", a.before_src), ("after", AFTER_SRC)):
                print(show(name, ingest(src, big, tmp / f"out-{name}", cap), a.cap_gb), flush=True)
            print("  goal after: <= 1536 MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"uptime: {os.getloadavg()}")


if __name__ == "__main__":
    main()
