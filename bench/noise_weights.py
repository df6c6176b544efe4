"""The corrupted topic's weight relative to the mean topic weight, from each run's weights.jsonl:
peak during Stage 1 and final (issue 9 goals: <= 1.0x and <= 0.5x), plus the noise-aware
diagnosis of every topic. ``python bench/noise_weights.py RUN_DIR... --topic news``"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--topic", required=True)
    a = ap.parse_args(argv)
    for run in map(Path, a.runs):
        recs = [json.loads(x) for x in (run / "weights.jsonl").read_text().splitlines()]
        names = json.loads((run / "run.json").read_text())["topic_names"]
        k = names.index(a.topic)
        rel = lambda r: r["weights"][k] / (sum(r["weights"]) / len(r["weights"]))
        s1 = [rel(r) for r in recs if r["stage"] == 1]
        print(f"{run.name}: {a.topic} Stage-1 peak {max(s1):.2f}x mean, final {rel(recs[-1]):.2f}x mean "
              f"({len(recs)} updates)")
        if "diagnosis" in recs[-1]:
            noisy_at = {n: next((r["step"] for r in recs if r["diagnosis"][i] == "noisy"), None)
                        for i, n in enumerate(names)}
            print("  " + ", ".join(f"{n}={d}" + (f"@{noisy_at[n]}" if noisy_at[n] else "")
                                   for n, d in zip(names, recs[-1]["diagnosis"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
