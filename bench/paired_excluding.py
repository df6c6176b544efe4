"""Paired Δ macro NLL vs a baseline with some domains left out (e.g. ``legal``, whose held-out
slice is a few long licences and swings by nats between seeds): a sensitivity check of the
experiment's headline, from the runs' eval.json. ``python bench/paired_excluding.py RUNS_DIR
[RUNS_DIR ...] --exclude legal [--baseline uniform]`` (RUNS_DIR holds ``<method>-s<seed>/``)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from toremi.stats import t_interval


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--exclude", nargs="*", default=["legal"])
    ap.add_argument("--baseline", default="uniform")
    a = ap.parse_args(argv)
    macro: dict[str, dict[int, float]] = {}
    for d in (p for r in a.runs for p in sorted(Path(r).iterdir())):
        m = re.fullmatch(r"(.+)-s(\d+)", d.name)
        if not m or not (d / "eval.json").exists():
            continue
        doms = json.loads((d / "eval.json").read_text())["domains"]
        kept = [v["nll"] for k, v in doms.items() if k not in a.exclude]
        macro.setdefault(m.group(1), {})[int(m.group(2))] = sum(kept) / len(kept)
    base = macro.pop(a.baseline)
    print(f"macro NLL over domains without {a.exclude}; Δ vs {a.baseline}, paired by seed")
    for name, seeds in sorted(macro.items()):
        diffs = [seeds[s] - base[s] for s in sorted(seeds) if s in base]
        t = t_interval(diffs)
        ci = "n/a" if t["ci"] is None else f"{t['ci']:.3f}"
        verdict = "" if t["ci"] is None or abs(t["mean"]) <= t["ci"] else ("  better" if t["mean"] < 0 else "  worse")
        print(f"  {name:22s} {t['mean']:+.3f} ± {ci} ({t['improved']}/{t['n']} better){verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
