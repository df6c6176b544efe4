"""A grid's tables from its per-run files alone: ``toremi report --recompute DIR``.

An experiment dir (or its committed copy under ``docs/results/<grid>/``) holds
``experiment.yaml``, ``unigram.json`` (the regime's reference, a property of the data) and
``runs/<label>-s<seed>/`` with each run's ``run.json``, ``config.yaml``, ``metrics.jsonl``,
``weights.jsonl`` and ``eval.json`` (per-document NLL included). ``tabulate`` is the one function
that turns those runs into ``results.json`` and ``results.md``: ``toremi experiment`` calls it when
a grid finishes, ``recompute`` calls it on the files, so the committed tables can be rebuilt, and
``--check`` says whether they still match. ``export`` copies a finished experiment's per-run files
(not the checkpoints) into such a dir.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from toremi import dynamics, layout, stats
from toremi.io import atomic_write_json, atomic_write_text, read_json
from toremi.report.summary import markdown, summarize
from toremi.runs import load_run

F = layout.experiment_file
RUN_FILES = ("run.json", "config.yaml", "metrics.jsonl", "weights.jsonl", "eval.json")
VOLATILE = ("tokens", "corpus", "config")  # where a grid ran, not what it found


def declared_keys(exp: dict) -> dict[str, list[str]]:
    """label -> the settings its experiment entry sets (a declared difference is allowed)."""
    from toremi.config import flatten

    return {m["name"]: sorted(flatten(m.get("train") or {})) for m in exp.get("methods", [])}


def tabulate(runs: list, name: str, baseline: str, tokens=None, unigram: dict | None = None,
             exclude=(), declared=None, noise_topic: str | None = None) -> tuple[dict, str]:
    summary = summarize(runs, baseline)
    evaluated = any(r["eval"] for r in runs)
    pair = stats.paired(runs, baseline, exclude, declared) if evaluated else None
    if not evaluated:
        stats.check_comparable(runs, declared)
    reg = stats.regime(runs, baseline, tokens, unigram)
    speed = dynamics.speed(runs, baseline)
    dist = dynamics.distance(runs, baseline, pair["domains"] if pair else None)
    result = {"name": name, "noise_topic": noise_topic, "excluded": sorted(exclude),
              "runs": [{"label": r["label"], "seed": r["seed"], "dir": f"runs/{Path(r['dir']).name}"} for r in runs],
              "headline": stats.headline(pair, reg), "regime": reg, "paired": pair, "summary": summary,
              "speed": speed, "distance": dist}
    head = f"{result['headline']}\n\n" + (stats.paired_markdown(pair) if pair else "")
    md = f"# {name}\n\n{head}\n{dynamics.markdown(speed, dist)}\n{markdown(summary)}"
    return result, md


def grid_runs(grid: Path) -> list:
    exp = yaml.safe_load(F(grid, "experiment.yaml").read_text()) if F(grid, "experiment.yaml").exists() else {}
    order = [(m["name"], s) for s in exp.get("seeds", []) for m in exp.get("methods", [])]
    dirs = {p.name: p for p in sorted(layout.experiment_runs(grid).glob("*-s*")) if p.is_dir()}
    if not dirs:
        raise FileNotFoundError(f"{layout.experiment_runs(grid)}: no per-run folders (<label>-s<seed>/); this grid cannot be "
                                f"recomputed")
    named = [f"{lab}-s{s}" for lab, s in order] or sorted(dirs)
    missing = [f"{n}/{f}" for n in named for f in RUN_FILES
               if f != "weights.jsonl" and not (layout.experiment_runs(grid) / n / f).exists()]
    if missing:
        raise FileNotFoundError(f"{grid}: cannot recompute, missing per-run files: {', '.join(missing[:6])}"
                                f"{' ...' if len(missing) > 6 else ''}")
    labels = {f"{lab}-s{s}": lab for lab, s in order}
    return [load_run(layout.experiment_runs(grid) / n, labels.get(n)) for n in named], exp


def recompute(grid: Path, exclude=(), baseline: str | None = None, write: bool = True) -> tuple[dict, str]:
    grid = Path(grid)
    runs, exp = grid_runs(grid)
    uni = read_json(F(grid, "unigram.json")) if F(grid, "unigram.json").exists() else None
    result, md = tabulate(runs, exp.get("name", grid.name), baseline or exp.get("baseline", "uniform"),
                          None, uni, exclude, declared_keys(exp), exp.get("noise_topic"))
    if write:
        suffix = "" if not exclude else "-without-" + "-".join(sorted(exclude))
        atomic_write_json(F(grid, f"results{suffix}.json"), result)
        atomic_write_text(F(grid, f"results{suffix}.md"), md)
    return result, md


def differences(a, b, path: str = "") -> list[str]:
    """Paths where two JSON values differ (floats to 1e-9 relative)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) if not (path == "" and k in VOLATILE)
                for d in differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b)) else [path]
    return [] if a == b else [path]


def check(grid: Path, exclude=()) -> list[str]:
    """Recompute in memory and compare with the committed results(-without-…).json."""
    suffix = "" if not exclude else "-without-" + "-".join(sorted(exclude))
    committed = read_json(F(grid, f"results{suffix}.json"))
    fresh, _ = recompute(grid, exclude, write=False)
    return differences(json.loads(json.dumps(fresh)), committed)


def export(exp_dir: Path, dest: Path) -> Path:
    """Copy a finished experiment's per-run files (no checkpoints), experiment.yaml, unigram.json
    and results into ``dest`` (e.g. docs/results/<grid>)."""
    exp_dir, dest = Path(exp_dir), Path(dest)
    res = read_json(F(exp_dir, "results.json"))
    for f in ("experiment.yaml", "unigram.json", "results.json", "results.md"):
        if F(exp_dir, f).exists():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(F(exp_dir, f), F(dest, f))
    for r in res["runs"]:
        src = layout.experiment_runs(exp_dir) / Path(r["dir"]).name  # wherever it ran from
        out = layout.experiment_runs(dest) / src.name
        out.mkdir(parents=True, exist_ok=True)
        for f in RUN_FILES:
            if (src / f).exists():
                shutil.copy2(src / f, out / f)
        digest = stats.weights_digest(src)
        if digest:
            layout.run_final_digest(out).write_text(digest + "\n")
    if layout.experiment_report(exp_dir).exists():
        for png in layout.experiment_report(exp_dir).glob("*.png"):
            shutil.copy2(png, dest / png.name)
    return dest


def write_unigram(exp_dir: Path, tokens) -> dict | None:
    """The regime's reference (unigram cross-entropy of the dev tokens), saved beside the grid."""
    if tokens is None or not layout.tokens_manifest(tokens).exists():
        return None
    uni = stats.unigram_cross_entropy(tokens)
    atomic_write_json(F(exp_dir, "unigram.json"), uni)
    return uni
