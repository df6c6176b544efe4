"""``toremi transfer --config X.yaml``: does a ranking of methods found at one scale hold at another?

A mixture is usually chosen on a cheap proxy and used on the model one cares about (DataDecide's
question). This runs, or reads, the same methods x seeds on the same data at two scales (model
size and token budget) and compares the methods' paired macro Δ NLL vs the baseline
(``toremi.stats``: each run paired with the baseline run of its seed):

- Kendall τ (tau-b) between the two scales' Δs, the baseline included at Δ = 0, so "better than the
  baseline" is part of the ranking;
- the fraction of pairwise decisions (method i better than j, or tied) that agree across scales;
- 95% bootstrap CIs of both: seeds resampled with replacement (``resamples``, fixed ``rng_seed``),
  one draw of seeds shared by every method and both scales, so the pairing is kept.

The config names two scales, each an experiment YAML (run with ``toremi experiment``, resumable)
or a finished experiment dir (read only)::

    name: transfer-cpu
    out: runs/transfer-cpu
    scales:
      - {name: tiny, experiment: configs/transfer-tiny.yaml}   # or {name: tiny, dir: runs/transfer-tiny}
      - {name: medium, experiment: configs/transfer-medium.yaml}

Refused with one line, exit status 2, nothing written: two scales whose data differ (tokens dir
or data hash), whose methods or seeds differ, or whose experiment configs differ in anything but
the model, the budget, the optimiser and logging. Writes ``transfer.json`` and ``transfer.md``.
"""

from __future__ import annotations

import itertools
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from toremi import layout, stats
from toremi.config import ConfigError, flatten, load_config, to_dict
from toremi.io import atomic_write_json, atomic_write_text
from toremi.stage import Stage

# experiment `train` keys two scales may differ in (anything else would change what is compared)
SCALE_KEYS = ("model.", "steps", "tokens", "batch_size", "accum", "optim.", "eval_every", "eval_batches",
              "log_every", "ckpt_every", "keep_checkpoints", "progress", "compile", "dtype")


@dataclass
class ScaleSpec:
    name: str  # the scale's label in the tables
    experiment: Optional[str] = None  # experiment YAML: run with toremi experiment (resumable)
    dir: Optional[str] = None         # a finished experiment dir: read only

    def __post_init__(self):
        if (self.experiment is None) == (self.dir is None):
            raise ConfigError(f"scales[{self.name}]: give exactly one of experiment (a YAML to run) or dir")


@dataclass
class TransferConfig:
    name: str = "transfer"
    out: str = "runs/transfer"  # writes transfer.json and transfer.md here
    scales: list[ScaleSpec] = field(default_factory=list)
    baseline: Optional[str] = None    # default: the grids' baseline
    exclude_methods: list[str] = field(default_factory=list)  # e.g. controls
    resamples: int = 2000  # bootstrap resamples of the seeds (at least 1000)
    rng_seed: int = 0      # seed of the bootstrap

    def __post_init__(self):
        if len(self.scales) != 2:
            raise ConfigError(f"scales: give exactly two (got {len(self.scales)})")
        if self.resamples < 1000:
            raise ConfigError(f"resamples={self.resamples}: use at least 1000")


# --- checks before anything runs -------------------------------------------------------------------
def _data_of(exp) -> dict:
    p = exp.pipeline
    return {"tokens": exp.tokens, "corpus": exp.corpus, "pipeline.corpus": p.corpus, "pipeline.annotate": p.annotate,
            "pipeline.prepare": p.prepare, "pipeline.noise": p.noise}


def check_experiments(a, b, names=("A", "B")) -> None:
    """Two experiment configs must differ only in model size, budget, optimiser and logging."""
    da, db = _data_of(a), _data_of(b)
    for k in da:
        if da[k] != db[k]:
            raise ConfigError(f"the two scales use different data: {k} is {da[k]!r} at {names[0]}, "
                              f"{db[k]!r} at {names[1]}")
    if Path(a.out).resolve() == Path(b.out).resolve():
        raise ConfigError(f"the two scales write to one experiment dir ({a.out}); give each its own out")
    if list(a.seeds) != list(b.seeds):
        raise ConfigError(f"the two scales have different seeds: {a.seeds} at {names[0]}, {b.seeds} at {names[1]}")
    ma, mb = ({m.name: to_dict(m) for m in e.methods} for e in (a, b))
    if ma != mb:
        diff = sorted(set(ma) ^ set(mb)) or [k for k in ma if ma[k] != mb.get(k)]
        raise ConfigError(f"the two scales have different methods ({', '.join(diff)}): "
                          f"{sorted(ma)} at {names[0]}, {sorted(mb)} at {names[1]}")
    ta, tb = flatten(a.train), flatten(b.train)
    bad = [k for k in sorted(set(ta) | set(tb)) if ta.get(k) != tb.get(k) and not k.startswith(SCALE_KEYS)]
    if bad or a.eval != b.eval or a.baseline != b.baseline:
        k = bad[0] if bad else ("eval" if a.eval != b.eval else "baseline")
        va, vb = (ta.get(k), tb.get(k)) if bad else ((a.eval, b.eval) if k == "eval" else (a.baseline, b.baseline))
        raise ConfigError(f"the two scales differ in {k}: {va!r} at {names[0]}, {vb!r} at {names[1]}; only "
                          f"the model, budget, optimiser and logging may differ")


def read_scale(grid: Path, exclude=()) -> tuple[list, dict]:
    """A finished grid's runs (``report.recompute.grid_runs``) without the excluded labels."""
    from toremi.report.recompute import grid_runs

    runs, exp = grid_runs(Path(grid))
    return [r for r in runs if r["label"] not in set(exclude)], exp


def check_scales(ra: list, rb: list, names=("A", "B")) -> None:
    """Same data hash, same methods, same seeds per method at both scales (one line otherwise)."""
    def one(runs, what):
        vals = {str(r["info"].get("data_hash")) for r in runs}
        if len(vals) != 1:
            raise stats.EvidenceError(f"scale {what} mixes data hashes {sorted(v[:12] for v in vals)}")
        return vals.pop()
    ha, hb = one(ra, names[0]), one(rb, names[1])
    if ha != hb:
        raise stats.EvidenceError(f"the two scales trained on different data: data hash {ha[:12]} at {names[0]}, "
                                  f"{hb[:12]} at {names[1]}")
    sa, sb = ({(r["label"], r["seed"]) for r in rs} for rs in (ra, rb))
    if {x for x, _ in sa} != {x for x, _ in sb}:
        raise stats.EvidenceError(f"the two scales have different methods: {sorted({x for x, _ in sa})} at "
                                  f"{names[0]}, {sorted({x for x, _ in sb})} at {names[1]}")
    if sa != sb:
        odd = sorted(sa ^ sb)[0]
        raise stats.EvidenceError(f"the two scales have different seeds: {odd[0]} seed {odd[1]} is only at "
                                  f"{names[0] if odd in sa else names[1]}")


# --- the statistics -------------------------------------------------------------------------------
def kendall_tau(x, y) -> float:
    """Kendall tau-b (ties in either ranking corrected); scipy's when installed, else exact here."""
    try:
        from scipy.stats import kendalltau
    except ImportError:
        return _tau_b(x, y)
    t = kendalltau(x, y).statistic
    return float("nan") if t is None else float(t)


def _tau_b(x, y) -> float:
    conc = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        a, b = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        conc += a * b
        tx, ty = tx + (a != 0), ty + (b != 0)
    return float(conc / math.sqrt(tx * ty)) if tx and ty else float("nan")


def pair_agreement(x, y) -> float:
    """Fraction of method pairs whose decision (i better, j better, or tie) is the same at both scales."""
    pairs = list(itertools.combinations(range(len(x)), 2))
    same = [np.sign(x[i] - x[j]) == np.sign(y[i] - y[j]) for i, j in pairs]
    return float(np.mean(same)) if pairs else float("nan")


def ci(values, level: float = 0.95) -> list[float] | None:
    v = np.asarray([x for x in values if math.isfinite(x)])
    if not len(v):
        return None
    return [float(np.quantile(v, (1 - level) / 2)), float(np.quantile(v, (1 + level) / 2))]


def compare(da: dict, db: dict, baseline: str, resamples: int = 2000, rng_seed: int = 0) -> dict:
    """``da``/``db``: {label: {seed: Δ macro}} at each scale (``stats.macro_deltas``)."""
    methods = sorted(da)
    seeds = sorted(set().union(*(d.keys() for d in da.values())))
    for m in methods:
        for d, what in ((da, "A"), (db, "B")):
            if sorted(d.get(m, {})) != seeds:
                raise stats.EvidenceError(f"{m} has seeds {sorted(d.get(m, {}))} at scale {what}, the grid {seeds}; "
                                          f"the bootstrap pairs every method on the same seeds")
    A = np.array([[da[m][s] for s in seeds] for m in methods] + [[0.0] * len(seeds)])  # baseline: Δ 0
    B = np.array([[db[m][s] for s in seeds] for m in methods] + [[0.0] * len(seeds)])
    ma, mb = A.mean(1), B.mean(1)
    rng = np.random.default_rng(rng_seed)
    taus, agree = [], []
    for _ in range(resamples):
        idx = rng.integers(0, len(seeds), len(seeds))  # one draw for every method and both scales
        x, y = A[:, idx].mean(1), B[:, idx].mean(1)
        taus.append(kendall_tau(x, y))
        agree.append(pair_agreement(x, y))
    finite = [t for t in taus if math.isfinite(t)]
    values, counts = np.unique(np.round(finite, 6), return_counts=True)
    return {"methods": methods + [baseline], "seeds": seeds,
            "delta_a": ma.tolist(), "delta_b": mb.tolist(),
            "kendall_tau": kendall_tau(ma, mb), "kendall_tau_ci": ci(taus),
            "kendall_tau_bootstrap": {f"{v:g}": int(c) for v, c in zip(values, counts)},
            "kendall_tau_undefined": len(taus) - len(finite),
            "pair_agreement": pair_agreement(ma, mb), "pair_agreement_ci": ci(agree),
            "resamples": resamples, "rng_seed": rng_seed,
            "distinct_resamples": math.comb(2 * len(seeds) - 1, len(seeds))}


def rank(values) -> list[int]:
    """1 = lowest Δ (best); ties share the better rank."""
    v = list(values)
    return [1 + sum(x < y for x in v) for y in v]


def limits(res: dict, scales: list[dict]) -> list[str]:
    """What this check can and cannot say, with this grid's numbers."""
    n, k = len(res["methods"]), len(res["seeds"])
    pairs = n * (n - 1) // 2
    a, b = scales
    ratio = (b.get("params") or 0) / max(a.get("params") or 1, 1)
    return [
        f"It can say whether the ordering of {n} entries ({n - 1} methods and the baseline at Δ = 0) by paired "
        f"macro Δ NLL at {a['name']} is the ordering at {b['name']}, on this data, at these two budgets.",
        f"τ over {n} entries has {pairs + 1} possible values (steps of {2 / pairs:.2f} without ties): one "
        f"swapped pair moves it by {2 / pairs:.2f}, so a single τ is a coarse number, not a correlation "
        f"estimate." if pairs else "Fewer than two entries: no ranking to compare.",
        f"{k} seeds: the bootstrap has only {res['distinct_resamples']} distinct resamples, so its CI is coarse "
        f"and too narrow (it treats these {k} seeds as the population); seed-to-seed noise within one scale can "
        f"swap methods whose Δs are within their CIs, and then disagreement says nothing about transfer.",
        (f"It cannot separate model size from budget (both change between {a['name']} and {b['name']}). "
         if a.get("params") != b.get("params") and a.get("tokens_per_run") != b.get("tokens_per_run") else "")
        + f"It cannot say anything about other data, larger models or other methods, and two CPU-sized models "
        f"a factor ~{ratio:.1f} apart in parameters are not a proxy → production pair: read agreement here as "
        f"necessary, not sufficient.",
    ]


def markdown(doc: dict) -> str:
    res, (a, b) = doc["comparison"], doc["scales"]
    fmt = lambda c: "-" if c is None else f"[{c[0]:+.2f}, {c[1]:+.2f}]"

    def where(s):
        p = f"{s['params'] / 1e6:.2f}M params" if s.get("params") else "?"
        n = s.get("tokens_per_run")
        t = "?" if not n else f"{n / 1e6:.2f}M tokens/run" if n >= 1e5 else f"{n} tokens/run"
        return f"{s['name']}: {s.get('model')} ({p}), {t}, {s['dir']}"
    lines = [f"# Transfer check: {doc['name']}", "", f"- scale A = {where(a)}", f"- scale B = {where(b)}",
             f"- data hash {doc['data_hash'][:12]}, seeds {res['seeds']}, baseline {doc['baseline']}", "",
             f"**Kendall τ (A vs B) = {res['kendall_tau']:+.2f}**, 95% bootstrap CI {fmt(res['kendall_tau_ci'])}; "
             f"**pairwise decisions agreeing = {res['pair_agreement']:.2f}**, CI {fmt(res['pair_agreement_ci'])} "
             f"({res['resamples']} resamples of the seeds, paired across methods and scales, rng seed "
             f"{res['rng_seed']}).", "",
             f"Bootstrap distribution of τ: " + ", ".join(f"{float(v):+.2f}: {c}" for v, c in res["kendall_tau_bootstrap"].items())
             + (f" (undefined in {res['kendall_tau_undefined']})" if res["kendall_tau_undefined"] else ""), "",
             f"| method | Δ macro NLL at {a['name']} | rank | Δ macro NLL at {b['name']} | rank |", "|---|---|---|---|---|"]
    ra, rb = rank(res["delta_a"]), rank(res["delta_b"])
    for i, m in enumerate(res["methods"]):
        sa = doc["paired"][a["name"]].get(m)
        sb = doc["paired"][b["name"]].get(m)
        cell = lambda s: "0 (baseline)" if s is None else stats.fmt_delta(s)
        lines.append(f"| {m} | {cell(sa)} | {ra[i]} | {cell(sb)} | {rb[i]} |")
    lines += ["", "Δ: paired by seed vs the baseline (mean ± 95% t-interval (seeds improved)); negative = better; "
              "rank 1 = lowest Δ.", "", "## What this check can and cannot say", ""]
    lines += [f"- {x}" for x in doc["limits"]]
    return "\n".join(lines) + "\n"


def scale_summary(spec: ScaleSpec, grid: Path, runs: list) -> dict:
    info = runs[0]["info"] if runs else {}
    return {"name": spec.name, "dir": str(grid), "experiment": spec.experiment,
            "model": (info.get("model") or {}).get("size"), "params": (info.get("model") or {}).get("params"),
            "tokens_per_run": stats.budget_of(runs[0]) if runs else None}


def transfer(cfg: TransferConfig, log=print) -> dict:
    """Check, run (experiment scales, resumable), read, compare, write transfer.json/.md."""
    from toremi.experiment import ExperimentConfig, run_experiment

    names = tuple(s.name for s in cfg.scales)
    exps = [load_config(ExperimentConfig, s.experiment, []) if s.experiment else None for s in cfg.scales]
    if all(exps):
        check_experiments(*exps, names=names)
    elif any(exps):
        raise ConfigError("scales: give both as experiment YAMLs or both as finished dirs")
    grids = [Path(e.out) if e else Path(s.dir) for e, s in zip(exps, cfg.scales)]
    if not all(exps):  # read-only: both must already be there, checked before anything is written
        for g in grids:
            if not layout.experiment_file(g, "experiment.yaml").exists():
                raise FileNotFoundError(f"{g}: not an experiment dir (no experiment.yaml)")
    else:
        for e, s in zip(exps, cfg.scales):
            log(f"transfer: scale {s.name}: toremi experiment --config {s.experiment}")
            run_experiment(e, log)
    (ra, ea), (rb, eb) = (read_scale(g, cfg.exclude_methods) for g in grids)
    check_scales(ra, rb, names)
    baseline = cfg.baseline or ea.get("baseline", "uniform")
    if baseline != (cfg.baseline or eb.get("baseline", "uniform")):
        raise stats.EvidenceError(f"the two grids name different baselines: {ea.get('baseline')} and {eb.get('baseline')}")
    da, db = (stats.macro_deltas(r, baseline) for r in (ra, rb))
    pa, pb = (stats.paired(r, baseline) for r in (ra, rb))
    res = compare(da, db, baseline, cfg.resamples, cfg.rng_seed)
    scales = [scale_summary(s, g, r) for s, g, r in zip(cfg.scales, grids, (ra, rb))]
    doc = {"format": "toremi.transfer/1", "name": cfg.name, "baseline": baseline,
           "data_hash": ra[0]["info"]["data_hash"], "scales": scales, "comparison": res,
           "per_seed": {names[0]: {m: {str(s): v for s, v in d.items()} for m, d in da.items()},
                        names[1]: {m: {str(s): v for s, v in d.items()} for m, d in db.items()}},
           "paired": {names[0]: {m: v["macro_nll"] for m, v in pa["methods"].items()},
                      names[1]: {m: v["macro_nll"] for m, v in pb["methods"].items()}},
           "config": to_dict(cfg)}
    doc["limits"] = limits(res, scales)
    out = Path(cfg.out)
    md = markdown(doc)
    atomic_write_json(layout.experiment_file(out, "transfer.json"), doc)
    atomic_write_text(layout.experiment_file(out, "transfer.md"), md)
    return doc


STAGE = Stage("transfer", TransferConfig, lock=lambda cfg: cfg.out, doc=__doc__, config_required=True)


def main(argv: list[str] | None = None) -> int:
    return STAGE.run(argv, _transfer)


def _transfer(cfg: TransferConfig) -> int:
    try:
        doc = transfer(cfg)
    except (stats.EvidenceError, ConfigError) as exc:
        print(f"toremi transfer: {exc}", file=sys.stderr)
        return 2
    print(markdown(doc))
    print(f"transfer: wrote {layout.experiment_file(cfg.out, 'transfer.json')} and transfer.md")
    return 0
