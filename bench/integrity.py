"""Cost of hash verification as a fraction of a demo-sized `train` run and of `eval`.

Builds the demo's data (corpus slice of 0.4 MB per domain, `bpe:4096`, seq_len 128; topics by
domain, so no annotation step), trains the demo's tiny GPT-2 (240 steps x 16 sequences) and
evaluates it with the demo's eval limits, each as a real CLI subprocess with an empty hash cache
(so every file is fully hashed: the worst case). The verification time is the one the stages
record themselves (`run.json` / `eval.json` -> `verified_sha256.seconds`); the fractions divide it
by the stage's wall time, measured in the same run.

Usage: python bench/integrity.py [--work DIR] [--steps 240]
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

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run(args: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "toremi.cli", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=None)
    ap.add_argument("--steps", type=int, default=240)
    ap.add_argument("--trials", type=int, default=1)
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="bench-integrity-"))
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    corpus, tokens = work / "corpus", work / "tokens"
    print(f"uptime: {os.getloadavg()}")
    if not (corpus / "manifest.json").exists():
        run(["corpus", "build", "--out", str(corpus), "--max-mb-per-domain", "0.4"], env)
    if not (tokens / "manifest.json").exists():
        run(["prepare", "--corpus", str(corpus), "--out", str(tokens), "--tokenizer", "bpe:4096",
             "--seq-len", "128", "topics_from=domain"], env)
    rows = []
    for trial in range(a.trials):
        env["TOREMI_HASH_CACHE"] = str(work / f"cache-{trial}.sqlite")  # empty: full hashes
        run_dir = work / f"run-{trial}"
        shutil.rmtree(run_dir, ignore_errors=True)
        t_train = run(["train", "--tokens", str(tokens), "--out", str(run_dir), f"steps={a.steps}",
                       "batch_size=16", "eval_every=60", "eval_batches=8", "log_every=10", "model=tiny",
                       "optim.lr=0.003", "optim.warmup_steps=20", "progress=false"], env)
        v_train = json.loads((run_dir / "run.json").read_text())["verified_sha256"]
        t_eval = run(["eval", "--run", str(run_dir), "--corpus", str(corpus), "max_docs=40", "max_tokens=8000",
                      "max_items=300", "batch_size=32"], env)
        v_eval = json.loads((run_dir / "eval.json").read_text())["verified_sha256"]
        mb_t = sum((tokens / p).stat().st_size for p in v_train["files"]) / 1e6
        mb_e = sum((corpus / p).stat().st_size for p in v_eval["files"]) / 1e6
        rows.append((t_train, v_train["seconds"], mb_t, t_eval, v_eval["seconds"], mb_e))
        print(f"trial {trial}: train {t_train:.1f} s, verify {v_train['seconds']:.3f} s over "
              f"{len(v_train['files'])} files / {mb_t:.1f} MB = {100 * v_train['seconds'] / t_train:.3f}% ; "
              f"eval {t_eval:.1f} s, verify {v_eval['seconds']:.3f} s over {len(v_eval['files'])} files / "
              f"{mb_e:.1f} MB = {100 * v_eval['seconds'] / t_eval:.3f}%", flush=True)
    worst_t = max(r[1] / r[0] for r in rows)
    worst_e = max(r[4] / r[3] for r in rows)
    print(f"hash verification (cold cache, worst of {len(rows)}): {100 * worst_t:.3f}% of a demo train "
          f"run, {100 * worst_e:.3f}% of eval (goal < 2%)")
    print(f"uptime: {os.getloadavg()}")


if __name__ == "__main__":
    main()
