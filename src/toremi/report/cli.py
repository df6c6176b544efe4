"""``toremi report``: one self-contained HTML page (+ the PNGs beside it) from run logs and evals.

    toremi report --runs runs/a runs/b ... --out report/
    toremi report --experiment runs/quality --out report/
    toremi report --recompute docs/results/quality_cpu [--exclude legal] [--check]
    toremi report --export runs/quality --out docs/results/quality_cpu

Reads only what runs wrote (run.json, config.yaml, metrics.jsonl, weights.jsonl, eval.json), so a
report can be rebuilt at any time, including while runs are still going. Runs are grouped by
method label; across seeds a number is shown as mean +/- the 95% t-interval half-width.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from toremi import layout, stats
from toremi.config import ConfigError
from toremi.io import atomic_write_text, read_json
from toremi.report.figures import figures
from toremi.report.html import render
from toremi.runs import load_run
from toremi.report.summary import epochs_markdown, markdown, summarize
from toremi.stage import Stage


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
    atomic_write_text(layout.report_file(out, "report.md"), f"# {title}\n\n{lead_md}\n" + markdown(summary) + "\n" + epochs_markdown(runs))
    atomic_write_text(layout.report_file(out, "report.html"), render(runs, summary, figs, out, title, noisy, lead_md))
    return layout.report_file(out, "report.html")


@dataclass
class ReportConfig:
    """What to report on (exactly one of runs, experiment, recompute, export) and where."""

    runs: list[str] = field(default_factory=list)  # run directories
    experiment: Optional[str] = None  # experiment dir (with results.json)
    recompute: Optional[str] = None   # rebuild DIR's results.json/.md from its per-run files (DIR/runs/<label>-s<seed>/)
    export: Optional[str] = None      # copy a finished experiment's per-run files (no checkpoints) into --out
    out: Optional[str] = None         # report dir (--runs/--experiment), or the export's destination
    title: Optional[str] = None       # page title (default: "toremi report", or the experiment's name)
    noise_topic: Optional[str] = None  # topic to show in the noise panel
    baseline: Optional[str] = None    # baseline method label (default: the grid's, else uniform)
    exclude: list[str] = field(default_factory=list)  # domains left out of the macro (--recompute)
    check: bool = False  # with --recompute: compare with the committed results, write nothing, exit 1 on a difference

    def __post_init__(self):
        given = [k for k in ("runs", "experiment", "recompute", "export") if getattr(self, k)]
        if len(given) != 1:
            raise ConfigError("give one of --runs DIR... / --experiment DIR (with --out), --recompute DIR, "
                              f"or --export EXPERIMENT --out DEST (got {given or 'none'})")
        if not self.recompute and not self.out:
            raise ConfigError(f"--{given[0]} needs --out DIR")
        if self.check and not self.recompute:
            raise ConfigError("--check goes with --recompute DIR")


def output_dir(cfg: ReportConfig) -> Optional[str]:
    """The dir this report writes (locked): --out, or the recomputed grid; --check writes nothing."""
    if cfg.recompute:
        return None if cfg.check else cfg.recompute
    return cfg.out


STAGE = Stage("report", ReportConfig, lock=output_dir, doc=__doc__)


def main(argv: list[str] | None = None) -> int:
    return STAGE.run(argv, _report)


def _report(args: ReportConfig) -> int:
    try:
        if args.recompute:
            return _recompute(args)
        if args.export:
            from toremi.report.recompute import export

            print(f"report: exported to {export(Path(args.export), Path(args.out))}")
            return 0
        labels, title, noisy = {}, args.title or "toremi report", args.noise_topic
        if args.experiment:
            exp = Path(args.experiment)
            res = read_json(layout.experiment_file(exp, "results.json"))
            dirs = [Path(r["dir"]) if Path(r["dir"]).exists() else exp / r["dir"] for r in res["runs"]]
            labels = {str(d): r["label"] for d, r in zip(dirs, res["runs"])}
            title = args.title or f"toremi experiment {res.get('name', '')}"
            noisy = noisy or res.get("noise_topic")
        else:
            dirs = [Path(d) for d in args.runs]
        path = report(dirs, Path(args.out), title, labels, noisy, args.baseline or "uniform")
    except (FileNotFoundError, stats.EvidenceError) as exc:
        print(f"toremi report: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


def _recompute(args) -> int:
    from toremi.report.recompute import check, recompute

    grid = Path(args.recompute)
    if args.check:
        diff = check(grid, args.exclude)
        if diff:
            print(f"toremi report: {grid}: recomputed results differ from the committed ones at "
                  f"{', '.join(diff[:8])}{' ...' if len(diff) > 8 else ''}", file=sys.stderr)
            return 1
        print(f"report: {grid}: recomputed from {len(list(layout.experiment_runs(grid).glob('*-s*')))} runs; matches the "
              f"committed results")
        return 0
    result, md = recompute(grid, args.exclude, args.baseline)
    print(md)
    return 0
