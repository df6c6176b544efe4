"""Named mutations of the project's core invariants, each of which the test suite must kill.

    python scripts/mutants.py [--only SUBSTRING] [--list]        # the named mutants below
    python scripts/mutants.py --mutmut [--paths P ...] [--tests T ...]  # mutmut on a scope

Each mutation is one textual edit (file, old, new) of ``src/toremi``. It is applied to a temporary
copy of ``src/``, the tests named with it run against that copy (PYTHONPATH points there), and the
mutant is *killed* when they fail. A mutation whose ``old`` text no longer occurs exactly once is
reported as STALE (the code moved on; update the list), never as killed. Exit status 1 if any
mutant survives or is stale.

``--mutmut`` runs mutmut (every operator/constant/call mutation it knows) on ``MUTMUT_PATHS`` with
the fast tests ``MUTMUT_TESTS``, in a temporary copy of the repository (so no ``mutants/`` folder
is left behind), and prints killed / survived per file; the survivors' diffs go to
``out/mutants/survivors.txt``. ``make mutants`` runs both.
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
    Mutant("step ignores topic weights (every sample weighs 1)", "train/reweighter.py",
           "return objective.sample_weights(self.w_dev, topic_ids, self.cfg.unlabelled_weight)",
           "return torch.ones(topic_ids.shape[0], device=topic_ids.device)",
           ("tests/train/test_step.py",)),
    Mutant("packed step ignores topic weights (every token weighs 1)", "train/reweighter.py",
           "return objective.token_weights(self.w_dev, seg_topics, seg_ids, self.cfg.unlabelled_weight)",
           "return (seg_ids >= 0).float()",
           ("tests/data/test_packing.py",)),
    Mutant("per-sample loss divided by the padded length", "model.py",
           "return ce.sum(1) / n.clamp(min=1), n", "return ce.sum(1) / t, n",
           ("tests/train/test_step.py",)),
    Mutant("loss_norm forced to mean", "train/objective.py",
           'if loss_norm == "mean" and not packed:', "if not packed:",
           ("tests/train/test_step.py",)),
    Mutant("no_sync() on every micro-batch (no gradient all-reduce)", "train/step.py",
           "if self.d.enabled and i < len(batches) - 1 else nullcontext()\n            with sync:\n"
           "                if packed:", "if self.d.enabled else nullcontext()\n            with sync:\n"
           "                if packed:",
           ("tests/train/test_ddp_guards.py",)),
    Mutant("sampling methods never reach the loader", "train/trainer.py",
           "self.loader.set_topic_probs(self.method.sampling_probs)", "pass",
           ("tests/train/test_sampling.py",)),
    Mutant("RNG state not restored on resume", "train/trainer.py",
           'checkpoint.set_rng_state(st["rng"])', "pass",
           ("tests/train/test_resume.py::test_resume_is_bit_exact_with_dropout",)),
    Mutant("boolean-mask indexing l[valid] in the step", "train/objective.py",
           "(torch.where(self.valid, self.raw, 0).double() * nv).sum()",
           "(self.raw[self.valid].double() * nv[self.valid]).sum()",
           ("tests/train/test_step.py",)),
    Mutant("one extra context token scored in multiple_choice", "evaluate/downstream.py",
           "n_cont.append(min(len(k), len(windows[-1]) - 1))",
           "n_cont.append(min(len(k) + 1, len(windows[-1]) - 1))",
           ("tests/evaluate/test_eval.py::test_piqa_matches_lm_evaluation_harness",)),
    Mutant("a PNG in the report cut to 200 bytes", "report/html.py",
           "base64.b64encode((out / name).read_bytes())", "base64.b64encode((out / name).read_bytes()[:200])",
           ("tests/report/test_report.py::test_every_figure_decodes_fully",)),
    Mutant("a PNG file on disk cut to 200 bytes", "report/figures.py",
           "ax.legend(fontsize=7, loc=\"best\")\n    fig.tight_layout()\n    fig.savefig(path, dpi=90)\n",
           "ax.legend(fontsize=7, loc=\"best\")\n    fig.tight_layout()\n    fig.savefig(path, dpi=90)\n"
           "    Path(path).write_bytes(Path(path).read_bytes()[:200])\n",
           ("tests/report/test_report.py::test_every_figure_decodes_fully",)),
    # the behaviours issue 13 found untested
    Mutant("the method's new weights never reach the step", "train/reweighter.py",
           "**parts)\n        self.push_weights()", "**parts)",
           ("tests/train/test_trainer.py::test_trainer_trains_on_the_method_weights",)),
    Mutant("plateau switch never consulted (on_eval not called)", "train/callbacks.py",
           'self.rw.on_eval(record["val_loss"], record["val_topic_loss"], t.step)', "pass",
           ("tests/train/test_resume.py::test_plateau_switch_through_the_trainer_and_across_resume",)),
    Mutant("plateau state (val history) not checkpointed", "methods/toremi.py",
           'return {"val_history": list(self.val_history), "switched_at": self.switched_at}', "return {}",
           ("tests/train/test_resume.py::test_plateau_switch_through_the_trainer_and_across_resume",)),
    Mutant("stat_unit=byte ignored (packed step)", "train/reweighter.py",
           "nbytes=nbytes,\n                                       stat_unit=self.cfg.stat_unit",
           'nbytes=nbytes,\n                                       stat_unit="token"',
           ("tests/train/test_trainer.py::test_topic_statistic_unit_packed",)),
    Mutant("stat_unit=byte ignored (per-sample step)", "train/reweighter.py",
           'if self.cfg.stat_unit == "token":\n            return l', "if True:\n            return l",
           ("tests/train/test_trainer.py::test_topic_statistic_unit_end_to_end",)),
    Mutant("resume accepts another world size", "train/trainer.py",
           'if st["world_size"] != self.d.world_size:', "if False:",
           ("tests/train/test_resume.py::test_resume_refuses_another_world_size",)),
    Mutant("unlabelled_weight ignored (always 1)", "train/reweighter.py",
           "seg_topics, seg_ids, self.cfg.unlabelled_weight)", "seg_topics, seg_ids, 1.0)",
           ("tests/train/test_trainer.py::test_unlabelled_weight_in_a_real_run",)),
    Mutant("absent=zero ignored", "methods/toremi.py",
           "absent=c.absent", 'absent="keep"',
           ("tests/train/test_trainer.py::test_absent_topic_in_a_real_run",)),
    Mutant("LR warmup off by one step", "train/trainer.py",
           "return (step + 1) / o.warmup_steps", "return step / o.warmup_steps",
           ("tests/train/test_trainer.py::test_lr_schedule_in_a_real_run",)),
    Mutant("cosine decays over half a period", "train/trainer.py",
           "0.5 * (1 + math.cos(math.pi * frac))", "0.5 * (1 + math.cos(math.pi * frac / 2))",
           ("tests/train/test_trainer.py::test_lr_schedule_in_a_real_run",)),
    Mutant("keep_checkpoints ignored", "train/trainer.py",
           "self.state(), self.cfg.keep_checkpoints)", "self.state(), 0)",
           ("tests/train/test_resume.py::test_keep_checkpoints",)),
    # the training loop's seams (issue 20)
    Mutant("checkpoint taken before the user's callbacks saw the step", "train/trainer.py",
           "StopPolicy(), *(callbacks or []), Checkpoint()]", "StopPolicy(), Checkpoint(), *(callbacks or [])]",
           ("tests/train/test_callbacks.py::test_user_callback_sees_hooks_in_order_and_resumes",)),
    Mutant("a method's declared statistic counts invalid units", "train/reweighter.py",
           "valid = obs.unit_valid()", "valid = None",
           ("tests/train/test_callbacks.py::test_declared_statistic_unpacked_matches_hand_sum",)),
]


MUTMUT_PATHS = ["src/toremi/methods/", "src/toremi/train/step.py", "src/toremi/train/reweighter.py",
                "src/toremi/train/objective.py", "src/toremi/data/loader.py",
                "src/toremi/evaluate/scoring.py", "src/toremi/evaluate/model_io.py", "src/toremi/evaluate/downstream.py"]
MUTMUT_TESTS = ["tests/methods/test_methods.py", "tests/methods/test_method_guards.py", "tests/train/test_step.py", "tests/data/test_data.py",
                "tests/evaluate/test_eval.py"]


def test_env(src: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    piqa = ROOT / ".." / "shared" / "data" / "piqa"
    if "TOREMI_PIQA" not in env and piqa.exists():
        env["TOREMI_PIQA"] = str(piqa.resolve())
    return env


def run_mutmut(paths: list[str], tests: list[str], children: int, budget: int | None = None) -> int:
    """mutmut 3 in a temporary copy of src/ + tests/; killed / survived per file."""
    import json

    work = Path(tempfile.mkdtemp(prefix="toremi-mutmut-"))
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    cfg = (ROOT / "pyproject.toml").read_text()
    # source_paths: the whole package is copied (and importable); only_mutate: what gets mutated
    globs = [p.rstrip("/") + "/*" if (ROOT / p).is_dir() else p for p in paths]
    cfg += ("\n[tool.mutmut]\n" 'source_paths = ["src"]\n' f"only_mutate = {json.dumps(globs)}\n"
            f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
            'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:randomly"]\n')
    (work / "pyproject.toml").write_text(cfg)
    env = test_env(work / "mutants" / "src")
    # mutmut puts mutants/src first on sys.path itself once it exists; a PYTHONPATH entry naming it
    # before it exists is cached as "no such dir" and would import the unmutated package instead
    env.pop("PYTHONPATH")
    mutmut = [sys.executable, "-m", "mutmut"]
    print(f"mutmut in {work}: mutating {paths}\n  with {tests}", flush=True)
    t0 = time.time()
    try:  # a time budget stops the run; mutants not reached are reported as "not checked"
        subprocess.run([*mutmut, "run", "--max-children", str(children)], cwd=work, env=env,
                       timeout=budget)
    except subprocess.TimeoutExpired:
        print(f"\nmutmut stopped after the {budget}s budget", flush=True)
    res = subprocess.run([*mutmut, "results", "--all", "true"], cwd=work, env=env,
                         capture_output=True, text=True).stdout
    counts: dict[str, dict[str, int]] = {}
    survivors = []
    for name, status in re.findall(r"^\s*(\S+__mutmut_\d+): (.+)$", res, re.M):
        module = name.rsplit(".", 1)[0]
        counts.setdefault(module, {}).setdefault(status.strip(), 0)
        counts[module][status.strip()] += 1
        if status.strip() != "killed":
            survivors.append(name)
    print(f"\nmutmut, per file ({time.time() - t0:.0f}s):")
    for module, c in sorted(counts.items()):
        rest = ", ".join(f"{v} {k}" for k, v in sorted(c.items()) if k not in ("killed", "survived"))
        print(f"  {module:34s} {c.get('killed', 0):4d} killed {c.get('survived', 0):4d} survived"
              + (f"  ({rest})" if rest else ""))
    out = ROOT / "out" / "mutants"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "survivors.txt", "w") as f:
        for name in survivors:
            f.write(subprocess.run([*mutmut, "show", name], cwd=work, env=env, capture_output=True,
                                   text=True).stdout + "\n")
    (out / "mutmut-results.txt").write_text(res)
    print(f"survivors' diffs: {out / 'survivors.txt'} (work dir {work}, remove when done)")
    return 0


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
        env = test_env(src)
        t0 = time.time()
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                   "-rfEs", "--tb=line", *mut.tests], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "KILLED", f"timeout after {timeout}s", time.time() - t0
        dt = time.time() - t0
        if proc.returncode == 0:
            if not re.search(r"\d+ passed", proc.stdout):  # e.g. PIQA or lm-eval missing
                return "NOT RUN", "the tests were skipped: " + proc.stdout.strip().splitlines()[-1], dt
            return "SURVIVED", "all tests passed", dt
        if proc.returncode in (1,):  # tests failed: killed
            return "KILLED", failure_line(proc.stdout), dt
        return "ERROR", f"pytest exit {proc.returncode}: {failure_line(proc.stdout + proc.stderr)}", dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="run the mutants whose name contains this text")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--mutmut", action="store_true", help="run mutmut on --paths with --tests")
    ap.add_argument("--paths", nargs="+", default=MUTMUT_PATHS)
    ap.add_argument("--tests", nargs="+", default=MUTMUT_TESTS)
    ap.add_argument("--children", type=int, default=2)
    ap.add_argument("--budget", type=int, default=None, help="mutmut: stop after this many seconds")
    args = ap.parse_args(argv)
    if args.mutmut:
        return run_mutmut(args.paths, args.tests, args.children, args.budget)
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
