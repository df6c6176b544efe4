"""``toremi report``: one self-contained HTML page (+ the PNGs beside it) from run logs and evals.

    toremi report --runs runs/a runs/b ... --out report/
    toremi report --experiment runs/quality --out report/

Reads only what runs wrote (run.json, config.yaml, metrics.jsonl, weights.jsonl, eval.json), so a
report can be rebuilt at any time, including while runs are still going. Runs are grouped by
method label; across seeds a number is shown as mean +/- the 95% t-interval half-width.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from toremi import layout, stats
from toremi.io import atomic_write_text, read_json
from toremi.report.figures import figures
from toremi.report.html import render
from toremi.report.load import load_run
from toremi.report.summary import markdown, summarize


def report(run_dirs: list[Path], out: Path, title: str = "toremi report",
           labels: dict[str, str] | None = None, noisy: str | None = None,
           baseline: str = "uniform") -> Path:
    """Load the runs, write the figures, ``report.md`` and ``report.html`` into ``out``."""
    labels = labels or {}
    runs = [load_run(d, labels.get(str(d))) for d in run_dirs if layout.run_info(d).exists()
            or layout.run_metrics(d).exists()]
    if not runs:
        raise FileNotFoundError(f"no runs (run.json / metrics.jsonl) in {[str(d) for d in run_dirs]}")
    noisy = noisy or next((r["noise"]["topic"] for r in runs if r["noise"]), None)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs, baseline)
    pair = None
    if any(r["label"] == baseline and r["eval"] for r in runs):  # else: no paired section
        pair = stats.paired(runs, baseline)
    tokens = next((r["info"].get("tokens_dir") for r in runs if r["info"].get("tokens_dir")), None)
    reg = stats.regime(runs, baseline, tokens)
    lead_md = stats.headline(pair, reg) + "\n\n" + (stats.paired_markdown(pair) if pair else "")
    figs = figures(runs, summary, out, noisy, pair, (reg.get("unigram") or {}).get("val_ce"))
    atomic_write_text(out / "report.md", f"# {title}\n\n{lead_md}\n" + markdown(summary))
    atomic_write_text(out / "report.html", render(runs, summary, figs, out, title, noisy, lead_md))
    return out / "report.html"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="toremi report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--runs", nargs="+", help="run directories")
    src.add_argument("--experiment", help="experiment dir (with results.json)")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default=None)
    p.add_argument("--noise-topic", default=None, help="topic to show in the noise panel")
    p.add_argument("--baseline", default="uniform", help="method label for 'steps to reach'")
    args = p.parse_args(argv)
    labels, title, noisy = {}, args.title or "toremi report", args.noise_topic
    if args.experiment:
        res = read_json(Path(args.experiment) / "results.json")
        dirs = [Path(r["dir"]) for r in res["runs"]]
        labels = {r["dir"]: r["label"] for r in res["runs"]}
        title = args.title or f"toremi experiment {res.get('name', '')}"
        noisy = noisy or res.get("noise_topic")
    else:
        dirs = [Path(d) for d in args.runs]
    try:
        path = report(dirs, Path(args.out), title, labels, noisy, args.baseline)
    except (FileNotFoundError, stats.EvidenceError) as exc:
        print(f"toremi report: {exc}")
        return 2
    print(f"report: {path}")
    return 0
