"""How fast and how far: paired statistics of the training curves and of the realised topic mix.

- ``speed``: per method, paired by seed against the baseline: the first evaluated step at which a
  run reaches the same-seed baseline's final validation (dev) loss (steps-to-target), and the
  area under the validation-loss curve (trapezoid over the evaluated steps, divided by the last
  step: a mean loss over training; lower = learned sooner). Per topic the same from the per-topic
  validation losses (exploratory).
- ``distance``: per run, the KL divergence of the realised topic mix from the natural one, against
  the run's Δ macro NLL vs its seed's baseline: does the cost grow with how far the weights move?
  The realised mix is the weight-scaled tokens per topic for loss-weight methods
  (``topic_weighted_epochs`` x available tokens) and the tokens drawn for sampling methods.
"""

from __future__ import annotations

import math

import numpy as np

from toremi.stats import macro_nll, t_interval
from toremi.runs import RunRecord, final_val_loss


def _curve(run: RunRecord, topic: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    pts = [(m["step"], m["val_loss"] if topic is None else (m.get("val_topic_loss") or [None] * (topic + 1))[topic])
           for m in run["metrics"] if m.get("val_loss") is not None]
    pts = [(s, v) for s, v in pts if v is not None and math.isfinite(v)]
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


def steps_to(run: RunRecord, target: float | None, topic: int | None = None) -> int | None:
    steps, vals = _curve(run, topic)
    hit = np.flatnonzero(vals <= target) if target is not None else []
    return int(steps[hit[0]]) if len(hit) else None


def final_topic(run: RunRecord, topic: int) -> float | None:
    vals = _curve(run, topic)[1]
    return float(vals[-1]) if len(vals) else None


def area(run: RunRecord, topic: int | None = None) -> float | None:
    steps, vals = _curve(run, topic)
    if len(steps) < 2:
        return None
    return float(np.trapezoid(vals, steps) / (steps[-1] - steps[0]))


def speed(runs: list[RunRecord], baseline: str = "uniform") -> dict:
    base = {r["seed"]: r for r in runs if r["label"] == baseline}
    names = next((r["info"].get("topic_names") for r in runs if r["info"].get("topic_names")), []) or []
    out = {"baseline": baseline, "methods": {}}
    for label in dict.fromkeys(r["label"] for r in runs if r["label"] != baseline):
        pairs = [(r, base[r["seed"]]) for r in runs if r["label"] == label and r["seed"] in base]
        reach = [steps_to(r, final_val_loss(b)) for r, b in pairs]
        base_steps = [steps_to(b, final_val_loss(b)) for _, b in pairs]
        d_steps = [None if x is None else x - y for x, y in zip(reach, base_steps)]
        per_topic = {}
        for k, name in enumerate(names):
            finals = [final_topic(b, k) for _, b in pairs]
            hits = [steps_to(r, f, k) if f is not None else None for (r, _), f in zip(pairs, finals)]
            bh = [steps_to(b, f, k) if f is not None else None for (_, b), f in zip(pairs, finals)]
            per_topic[name] = {"reached": sum(h is not None for h in hits),
                               "d_steps": t_interval([h - g for h, g in zip(hits, bh) if h is not None and g is not None]),
                               "d_area": t_interval([_d(area(r, k), area(b, k)) for r, b in pairs])}
        out["methods"][label] = {
            "seeds": [r["seed"] for r, _ in pairs], "steps_to_target": reach, "baseline_steps": base_steps,
            "reached": sum(x is not None for x in reach),
            "d_steps": t_interval([x for x in d_steps if x is not None]),
            "d_area": t_interval([_d(area(r), area(b)) for r, b in pairs]), "per_topic": per_topic}
    return out


def _d(a, b):
    return None if a is None or b is None else a - b


def realised_mix(run: RunRecord) -> np.ndarray | None:
    info = run["info"]
    avail = np.asarray(info.get("topic_tokens_available") or [], dtype=float)
    if info.get("topic_weighted_epochs") is not None and len(avail):
        q = np.asarray(info["topic_weighted_epochs"], dtype=float) * avail
    elif info.get("topic_tokens_seen") is not None:
        q = np.asarray(info["topic_tokens_seen"], dtype=float)
    else:
        return None
    return q / q.sum() if q.sum() > 0 else None


def kl_from_natural(run: RunRecord) -> float | None:
    q = realised_mix(run)
    avail = np.asarray(run["info"].get("topic_tokens_available") or [], dtype=float)
    if q is None or not len(avail) or avail.sum() <= 0:
        return None
    p = avail / avail.sum()
    m = q > 0
    return float((q[m] * np.log(q[m] / p[m])).sum())


def distance(runs: list[RunRecord], baseline: str = "uniform", domains: list[str] | None = None) -> dict:
    """Per run: KL(realised || natural) and Δ macro NLL vs the same seed's baseline; the Spearman
    and Pearson correlation over the non-baseline runs (controls with a ``control-`` label and
    the A/A excluded: their distance is set by design)."""
    from scipy import stats as sps

    base = {r["seed"]: r for r in runs if r["label"] == baseline and r["eval"]}
    rows = []
    for r in runs:
        if r["label"] == baseline or not r["eval"] or r["seed"] not in base:
            continue
        doms = domains or sorted(r["eval"]["domains"])
        rows.append({"run": r["name"], "label": r["label"], "seed": r["seed"], "kl": kl_from_natural(r),
                     "d_macro": macro_nll(r["eval"], doms) - macro_nll(base[r["seed"]]["eval"], doms)})
    use = [x for x in rows if x["kl"] is not None and not x["label"].startswith("control-")]
    corr = {}
    if len(use) >= 3:
        kl, dm = [x["kl"] for x in use], [x["d_macro"] for x in use]
        sp, pe = sps.spearmanr(kl, dm), sps.pearsonr(kl, dm)
        corr = {"n": len(use), "spearman": float(sp.statistic), "spearman_p": float(sp.pvalue),
                "pearson": float(pe.statistic), "pearson_p": float(pe.pvalue)}
    return {"rows": rows, "correlation": corr}


def markdown(sp: dict, dist: dict) -> str:
    from toremi.stats import fmt_delta

    lines = [f"### Speed vs {sp['baseline']} (paired by seed; validation = the dev split)", "",
             "| method | reached baseline's final val loss | Δ steps-to-target | Δ area under val loss "
             "(mean loss over training, nats) |", "|---|---|---|---|"]
    for m, v in sp["methods"].items():
        lines.append(f"| {m} | {v['reached']}/{len(v['seeds'])} (steps {v['steps_to_target']} vs "
                     f"{v['baseline_steps']}) | {fmt_delta(v['d_steps'], 0)} | {fmt_delta(v['d_area'], 4)} |")
    lines += ["", "### Distance of the realised topic mix from natural vs cost", "",
              "| run | KL(realised ‖ natural) | Δ macro NLL vs same-seed baseline |", "|---|---|---|"]
    for x in dist["rows"]:
        kl = "-" if x["kl"] is None else f"{x['kl']:.4f}"
        lines.append(f"| {x['run']} | {kl} | {x['d_macro']:+.4f} |")
    c = dist["correlation"]
    if c:
        lines += ["", f"Over {c['n']} runs (controls excluded): Spearman ρ = {c['spearman']:+.2f} "
                      f"(p = {c['spearman_p']:.3f}), Pearson r = {c['pearson']:+.2f} (p = {c['pearson_p']:.3f})."]
    return "\n".join(lines) + "\n"
