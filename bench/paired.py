"""Paired Δ macro NLL (nats/token, mean over held-out domains) of every method vs a baseline, by
seed, with a 95% t-interval: ``python bench/paired.py EXPERIMENT_OUT [--baseline uniform]``.
Reads ``<out>/runs/<label>-s<seed>/eval.json``; a negative Δ means lower NLL than the baseline."""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def macro_nll(run: Path) -> float | None:
    ev = run / "eval.json"
    if not ev.exists():
        return None
    doms = json.loads(ev.read_text())["domains"]
    return statistics.fmean(d["nll"] for d in doms.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--baseline", default="uniform")
    a = ap.parse_args(argv)
    runs: dict[str, dict[int, float]] = {}
    for d in sorted((Path(a.out) / "runs").iterdir()):
        m = re.match(r"(.+)-s(\d+)$", d.name)
        v = macro_nll(d) if m else None
        if v is not None:
            runs.setdefault(m.group(1), {})[int(m.group(2))] = v
    base = runs.get(a.baseline, {})
    print(f"{'method':>14} {'macro NLL':>10} {'Δ vs ' + a.baseline:>16} {'95% CI':>20} improved")
    for label, by_seed in runs.items():
        seeds = sorted(set(by_seed) & set(base))
        diffs = [by_seed[s] - base[s] for s in seeds]
        mean_abs = statistics.fmean(by_seed.values())
        if label == a.baseline or not diffs:
            print(f"{label:>14} {mean_abs:10.4f}")
            continue
        mu = statistics.fmean(diffs)
        half = T95.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs)) \
            if len(diffs) > 1 else math.nan
        print(f"{label:>14} {mean_abs:10.4f} {mu:+16.4f} [{mu - half:+.4f}, {mu + half:+.4f}] "
              f"{sum(x < 0 for x in diffs)}/{len(diffs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
