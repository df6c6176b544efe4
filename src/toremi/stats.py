"""Statistics of the evidence protocol (design §8): paired differences against the baseline.

Every method × seed run is paired with the baseline run of the same seed (same initialisation and
data order), so the per-seed difference removes the noise that the seeds share. Per domain the
statistic is the held-out mean NLL (nats/token) and bits/byte; the macro is the mean over domains
of the per-domain NLL (log of the geometric-mean perplexity), so one bimodal domain cannot set it
the way it sets an arithmetic mean of perplexities. Intervals are 95% t-intervals of the paired
differences; with one seed there is no interval ("n/a").
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from toremi import layout


class EvidenceError(ValueError):
    """The runs cannot be compared as asked; the message names the runs involved."""


def t_interval(values) -> dict:
    """Mean, 95% t-interval half-width (None below 2 values), n, and how many values are < 0."""
    xs = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(xs) == 0:
        return {"mean": None, "ci": None, "n": 0, "improved": 0}
    half = None
    if len(xs) > 1:
        from scipy import stats

        half = float(stats.t.ppf(0.975, len(xs) - 1) * xs.std(ddof=1) / math.sqrt(len(xs)))
    return {"mean": float(xs.mean()), "ci": half, "n": int(len(xs)), "improved": int((xs < 0).sum())}


def budget_of(run: dict) -> int | None:
    info = run["info"]
    if info.get("total_steps") is None or info.get("tokens_per_step") is None:
        return None
    return int(info["total_steps"]) * int(info["tokens_per_step"])


def check_comparable(runs: list[dict]) -> None:
    """Refuse runs trained on different data or token budgets (naming one run of each side)."""
    for key, get in (("data hash", lambda r: r["info"].get("data_hash")), ("token budget", budget_of)):
        first = next((r for r in runs if get(r) is not None), None)
        for r in runs:
            if first is not None and get(r) is not None and get(r) != get(first):
                raise EvidenceError(f"runs differ in {key}: {first['name']} has {get(first)}, "
                                    f"{r['name']} has {get(r)}; compare runs of one data set and budget")


def nll(ev: dict, d: str) -> float:
    """Held-out mean NLL of domain d (nats/token); log(ppl) for evals that only kept ppl."""
    dom = ev["domains"][d]
    return float(dom["nll"]) if dom.get("nll") is not None else math.log(dom["ppl"])


def macro_nll(ev: dict, domains: list[str]) -> float:
    return float(np.mean([nll(ev, d) for d in domains]))


def weights_digest(run_dir: str | Path) -> str | None:
    """sha256 of the final weights file (the negative control must match the baseline's)."""
    f = layout.run_final(run_dir) / "model.safetensors"
    return hashlib.sha256(f.read_bytes()).hexdigest() if f.exists() else None


def paired(runs: list[dict], baseline: str = "uniform") -> dict:
    """Per method (≠ baseline): paired Δ NLL and Δ bits/byte per domain and macro, Δ of the
    arithmetic macro perplexity (secondary), and whether the final weights equal the baseline's.

    ``runs`` are ``report.load.load_run`` records with ``eval``. A method run without a baseline run of
    the same seed is refused (EvidenceError naming the missing run)."""
    check_comparable(runs)
    evald = [r for r in runs if r.get("eval")]
    domains = sorted(set.intersection(*[set(r["eval"].get("domains", {})) for r in evald])) if evald else []
    base = {r["seed"]: r for r in evald if r["label"] == baseline}
    labels = [lab for lab in dict.fromkeys(r["label"] for r in evald) if lab != baseline]
    out = {"baseline": baseline, "domains": domains, "unit": "nats/token (nll), bits/byte (bpb)",
           "methods": {}}
    for label in labels:
        rs = [r for r in evald if r["label"] == label]
        for r in rs:
            if r["seed"] not in base:
                raise EvidenceError(f"paired statistic for {r['name']}: no baseline run "
                                    f"'{baseline}' with seed {r['seed']} (expected {baseline}-s{r['seed']})")
        pairs = [(r, base[r["seed"]]) for r in rs]
        d_nll = {d: t_interval([nll(r["eval"], d) - nll(b["eval"], d) for r, b in pairs]) for d in domains}
        d_bpb = {d: t_interval([r["eval"]["domains"][d]["bpb"] - b["eval"]["domains"][d]["bpb"]
                                for r, b in pairs]) for d in domains}
        macro = t_interval([macro_nll(r["eval"], domains) - macro_nll(b["eval"], domains) for r, b in pairs])
        macro_bpb = t_interval([float(np.mean([r["eval"]["domains"][d]["bpb"] - b["eval"]["domains"][d]["bpb"]
                                               for d in domains])) for r, b in pairs])
        ppl = t_interval([(r["eval"].get("macro_ppl") or math.nan) - (b["eval"].get("macro_ppl") or math.nan)
                          for r, b in pairs])
        same = [weights_digest(r["dir"]) is not None and weights_digest(r["dir"]) == weights_digest(b["dir"])
                for r, b in pairs]
        out["methods"][label] = {"seeds": [r["seed"] for r in rs], "nll": d_nll, "bpb": d_bpb,
                                 "macro_nll": macro, "macro_bpb": macro_bpb, "macro_ppl_arith": ppl,
                                 "identical_weights": int(sum(same))}
    base_macro = t_interval([macro_nll(b["eval"], domains) for b in base.values()]) if domains else None
    out["baseline_macro_nll"] = base_macro
    return out


def fmt_delta(s: dict | None, digits: int = 3) -> str:
    """'+0.012 ± 0.008 (2/3)' — mean, 95% CI half-width (n/a below 2 seeds), seeds improved."""
    if not s or s.get("mean") is None:
        return "-"
    ci = "n/a" if s.get("ci") is None else f"{s['ci']:.{digits}f}"
    return f"{s['mean']:+.{digits}f} ± {ci} ({s['improved']}/{s['n']})"


def verdict(s: dict) -> str:
    """'better' / 'worse' when the CI excludes 0, else 'no difference detected' (n/a: 1 seed)."""
    if s.get("mean") is None or s.get("ci") is None:
        return "n/a (one seed: an anecdote)"
    if s["mean"] + s["ci"] < 0:
        return "better"
    if s["mean"] - s["ci"] > 0:
        return "worse"
    return "no difference detected"


def paired_markdown(p: dict) -> str:
    """Paired tables: macro first, then per-domain Δ NLL and Δ bits/byte."""
    ms, doms = p["methods"], p["domains"]
    lines = [f"### Paired Δ vs {p['baseline']} (same seed; mean ± 95% CI (seeds improved); "
             f"negative = better)", "",
             "| method | Δ macro NLL (nats/token) | verdict | Δ macro bits/byte | Δ arith. macro ppl "
             "(secondary) | weights = baseline |", "|---|---|---|---|---|---|"]
    for m, v in ms.items():
        lines.append(f"| {m} | {fmt_delta(v['macro_nll'])} | {verdict(v['macro_nll'])} | "
                     f"{fmt_delta(v['macro_bpb'], 4)} | {fmt_delta(v['macro_ppl_arith'], 1)} | "
                     f"{v['identical_weights']}/{len(v['seeds'])} |")
    for key, title in (("nll", "Δ NLL per domain (nats/token)"), ("bpb", "Δ bits/byte per domain")):
        lines += ["", f"### {title}", "", "| method | " + " | ".join(doms) + " |",
                  "|---|" + "---|" * len(doms)]
        for m, v in ms.items():
            lines.append(f"| {m} | " + " | ".join(fmt_delta(v[key][d], 3 if key == "nll" else 4)
                                                    for d in doms) + " |")
    return "\n".join(lines) + "\n"


def unigram_cross_entropy(tokens_dir: str | Path) -> dict:
    """Cross-entropy (nats/token) of the validation targets under a unigram model of the training
    targets (add-one smoothed), and the training targets' own entropy. A model whose validation
    loss is not well below this has learned little beyond token frequencies."""
    from toremi.data.shards import TokenDataset

    def counts(split: str) -> np.ndarray:
        ds = TokenDataset(tokens_dir, split)
        c = np.zeros(ds.vocab_size, dtype=np.int64)
        for s in np.unique(ds.shard):
            toks = np.asarray(ds.memmaps[int(s)])
            sel = ds.shard == s
            starts, lengths = ds.offset[sel] + 1, ds.length[sel] - 1
            idx = np.repeat(starts - np.cumsum(np.r_[0, lengths[:-1]]), lengths) + np.arange(lengths.sum())
            c += np.bincount(toks[idx], minlength=ds.vocab_size)[: ds.vocab_size]
        return c

    train, val = counts("train"), counts("dev")
    p = (train + 1) / (train.sum() + len(train))
    q = train[train > 0] / train.sum()
    return {"val_ce": float(-(val * np.log(p)).sum() / val.sum()),
            "train_entropy": float(-(q * np.log(q)).sum()),
            "train_tokens": int(train.sum()), "val_tokens": int(val.sum())}


def regime(runs: list[dict], baseline: str, tokens_dir: str | Path | None) -> dict:
    """Where the baseline stands: its final validation loss against the unigram cross-entropy of
    the validation tokens, the model and the token budget of a run."""
    from toremi.report.summary import final_val_loss

    base = [r for r in runs if r["label"] == baseline]
    uni = None
    if tokens_dir is not None and layout.tokens_manifest(tokens_dir).exists():
        try:
            uni = unigram_cross_entropy(tokens_dir)
        except (FileNotFoundError, KeyError, ValueError):  # not a complete prepared tokens dir
            uni = None
    val = t_interval([final_val_loss(r) for r in base])
    info = (base or runs)[0]["info"] if runs else {}
    model = info.get("model") or {}
    return {"unigram": uni, "baseline_val_loss": val,
            "gap_nats": None if uni is None or val["mean"] is None else uni["val_ce"] - val["mean"],
            "model": model.get("size"), "params": model.get("params"),
            "tokens_per_run": budget_of((base or runs)[0]) if runs else None,
            "seeds": sorted({r["seed"] for r in runs})}


def headline(pair: dict | None, reg: dict) -> str:
    """The first lines a user reads: paired macro Δ per method with its CI, and the regime."""
    lines = []
    n = len(reg["seeds"])
    for m, v in (pair or {}).get("methods", {}).items():
        s = v["macro_nll"]
        lines.append(f"**{m}** vs {pair['baseline']}: macro Δ NLL {fmt_delta(s)} nats/token "
                     f"(paired by seed, 95% CI, seeds improved) → {verdict(s)}.")
    if n < 2:
        lines.append("Only one seed: every difference above is an anecdote, not a result.")
    size, params, toks = reg.get("model"), reg.get("params"), reg.get("tokens_per_run")
    val, uni = reg["baseline_val_loss"].get("mean"), (reg.get("unigram") or {}).get("val_ce")
    where = f"{size} model" + (f" ({params / 1e6:.2f}M parameters)" if params else "") + \
        (f", {toks / 1e6:.2f}M tokens per run" if toks and toks >= 1e5 else f", {toks} tokens per run" if toks else "")
    if val is not None and uni is not None:
        where += f"; baseline validation loss {val:.2f} vs unigram cross-entropy {uni:.2f} nats/token " \
                 f"({abs(uni - val):.2f} nats {'below' if val < uni else 'ABOVE'})"
    lines.append(f"Regime: {where}. Small-scale evidence: not evidence about large-scale pre-training.")
    return "\n\n".join(lines)
