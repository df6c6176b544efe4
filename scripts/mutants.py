"""Named mutations of the project's core invariants, each of which the test suite must kill.

    python scripts/mutants.py [--only SUBSTRING] [--list]

Each mutation is one textual edit (file, old, new) of ``src/toremi``. It is applied to a temporary
copy of ``src/``, the tests named with it run against that copy (PYTHONPATH points there), and the
mutant is *killed* when they fail. A mutation whose ``old`` text no longer occurs exactly once is
reported as STALE (the code moved on; update the list), never as killed. Exit status 1 if any
mutant survives or is stale. ``make mutants`` runs this, then mutmut (see ``scripts/mutmut.sh``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Mutant:
    name: str
    file: str       # relative to src/toremi
    old: str
    new: str
    tests: tuple    # pytest node ids, relative to the repo root


MUTANTS = [
    Mutant("step ignores topic weights (every sample weighs 1)", "train/step.py",
           "rules.sample_weights(self.w_dev, b.topic_ids, unl)",
           "torch.ones(b.topic_ids.shape[0], device=self.dev)",
           ("tests/test_guards_step.py",)),
    Mutant("per-sample loss divided by the padded length", "model.py",
           "return ce.sum(1) / n.clamp(min=1), n", "return ce.sum(1) / t, n",
           ("tests/test_guards_step.py",)),
    Mutant("loss_norm forced to mean", "train/step.py",
           'if self.mcfg.loss_norm == "mean":', "if True:",
           ("tests/test_guards_step.py",)),
    Mutant("no_sync() on every micro-batch (no gradient all-reduce)", "train/step.py",
           "if self.d.enabled and i < len(batches) - 1 else", "if self.d.enabled else",
           ("tests/test_guards_ddp.py",)),
    Mutant("sampling methods never reach the loader", "train/trainer.py",
           "self.loader.set_topic_probs(self.method.sampling_probs)", "pass",
           ("tests/test_guards_sampling.py",)),
    Mutant("RNG state not restored on resume", "train/trainer.py",
           'checkpoint.set_rng_state(st["rng"])', "pass",
           ("tests/test_guards_resume.py::test_resume_is_bit_exact_with_dropout",)),
    Mutant("boolean-mask indexing l[valid] in the step", "train/step.py",
           "(torch.where(valid, l, 0).double() * nv).sum()", "(l[valid].double() * nv[valid]).sum()",
           ("tests/test_guards_step.py",)),
    Mutant("one extra context token scored in multiple_choice", "evaluate/downstream.py",
           "n_cont.append(min(len(k), len(windows[-1]) - 1))",
           "n_cont.append(min(len(k) + 1, len(windows[-1]) - 1))",
           ("tests/test_guards_eval.py",)),
    Mutant("a PNG in the report cut to 200 bytes", "report.py",
           "base64.b64encode((out / name).read_bytes())", "base64.b64encode((out / name).read_bytes()[:200])",
           ("tests/test_report.py::test_every_figure_decodes_fully",)),
    Mutant("a PNG file on disk cut to 200 bytes", "report.py",
           "fig.savefig(path, dpi=90)\n",
           "fig.savefig(path, dpi=90)\n    Path(path).write_bytes(Path(path).read_bytes()[:200])\n",
           ("tests/test_report.py::test_every_figure_decodes_fully",)),
]


def failure_line(output: str) -> str:
    """The first failing test and its assertion message, for the summary."""
    node = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
    msg = re.search(r"^E\s+(.*)$", output, re.M)
    if not node:
        return output.strip().splitlines()[-1] if output.strip() else "(no output)"
    return f"{node.group(1)}: {msg.group(1).strip()[:400] if msg else ''}"


def run_one(mut: Mutant, timeout: int) -> tuple[str, str, float]:
    with tempfile.TemporaryDirectory(prefix="toremi-mutant-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        path = src / "toremi" / mut.file
        text = path.read_text()
        if text.count(mut.old) != 1:
            return "STALE", f"{mut.file}: the text to mutate occurs {text.count(mut.old)} times", 0.0
        path.write_text(text.replace(mut.old, mut.new))
        env = {**os.environ, "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1"}
        t0 = time.time()
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                   "-rfE", "--tb=line", *mut.tests], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "KILLED", f"timeout after {timeout}s", time.time() - t0
        dt = time.time() - t0
        if proc.returncode == 0:
            return "SURVIVED", "all tests passed", dt
        if proc.returncode in (1,):  # tests failed: killed
            return "KILLED", failure_line(proc.stdout), dt
        return "ERROR", f"pytest exit {proc.returncode}: {failure_line(proc.stdout + proc.stderr)}", dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="run the mutants whose name contains this text")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--timeout", type=int, default=900)
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or args.only.lower() in m.name.lower()]
    if args.list:
        for m in chosen:
            print(f"{m.file:26s} {m.name}  <- {' '.join(m.tests)}")
        return 0
    results = []
    for m in chosen:
        status, why, dt = run_one(m, args.timeout)
        results.append((m, status))
        print(f"{status:8s} {dt:6.1f}s  {m.file:24s} {m.name}\n         {why}", flush=True)
    per_file: dict[str, list[int]] = {}
    for m, status in results:
        per_file.setdefault(m.file, [0, 0])[0 if status == "KILLED" else 1] += 1
    print("\nnamed mutants, per file (killed / not killed):")
    for f, (k, s) in sorted(per_file.items()):
        print(f"  {f:28s} {k} killed, {s} survived")
    bad = [m.name for m, s in results if s != "KILLED"]
    print(f"total: {len(results) - len(bad)} killed, {len(bad)} not killed" + (f": {bad}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
