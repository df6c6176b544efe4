"""Statistics of the evidence protocol (docs/eval.md): paired differences against the baseline.

Every method × seed run is paired with the baseline run of the same seed (same initialisation and
data order), so the per-seed difference removes the noise that the seeds share. Per domain the
statistic is the held-out mean NLL (nats/token) and bits/byte; the macro is the mean over domains
of the per-domain NLL (log of the geometric-mean perplexity), so one bimodal domain cannot set it
the way it sets an arithmetic mean of perplexities. Intervals are 95% t-intervals of the paired
differences; with one seed there is no interval ("n/a").
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from toremi import layout
from toremi.runs import budget, final_val_loss


class EvidenceError(ValueError):
    """The runs cannot be compared as asked; the message names the runs involved."""


def t_interval(values) -> dict:
    """Mean, 95% t-interval half-width (None below 2 values), n, and how many values are < 0."""
    xs = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(xs) == 0:
        return {"mean": None, "ci": None, "n": 0, "improved": 0, "p": None, "p_rank": None}
    half = None
    if len(xs) > 1:
        from scipy import stats

        half = float(stats.t.ppf(0.975, len(xs) - 1) * xs.std(ddof=1) / math.sqrt(len(xs)))
    return {"mean": float(xs.mean()), "ci": half, "n": int(len(xs)), "improved": int((xs < 0).sum()),
            "p": p_value(xs), "p_rank": signed_rank_p(xs)}


def budget_of(run: dict) -> int | None:
    return budget(run["info"])


def _flat(d: dict | None) -> dict:
    from toremi.config import flatten

    return flatten(d or {})


def settings(run: dict) -> dict:
    """The settings two compared runs must share, flattened: model, optimiser, packing, context,
    and the evaluation's own settings (where it ran)."""
    cfg = run.get("config") or {}
    out = {f"model.{k}": v for k, v in _flat(cfg.get("model")).items()}
    out.update({f"optim.{k}": v for k, v in _flat(cfg.get("optim")).items()})
    out.update({k: cfg.get(k) for k in ("packing", "batch_size", "accum")})
    ev = (run.get("eval") or {}).get("config") or {}
    # where things sit and how they are batched do not change a score (batch invariance is tested)
    out.update({f"eval.{k}": v for k, v in _flat(ev).items()
                if k not in ("run", "out", "model", "corpus", "piqa", "device", "batch_size")})
    return out


def check_comparable(runs: list[dict], declared: dict[str, list[str]] | None = None) -> None:
    """Refuse, naming the runs and keys, what would make a paired comparison meaningless: two
    runs with one (label, seed); a run without a data hash or budget; different data, budget,
    model, optimiser, packing or eval settings, unless the method's entry declares that key
    (``declared``: label -> key prefixes its experiment entry sets, e.g. ``model.size``)."""
    declared = declared or {}
    seen: dict[tuple, str] = {}
    for r in runs:
        key = (r["label"], r["seed"])
        if key in seen:
            raise EvidenceError(f"two runs are {r['label']} seed {r['seed']}: {seen[key]} and {r['dir']}; "
                                f"give one of them another label")
        seen[key] = r["dir"]
    for r in runs:
        missing = [k for k, v in (("data hash", r["info"].get("data_hash")), ("token budget", budget_of(r)))
                   if v is None]
        if missing:
            raise EvidenceError(f"{r['name']} ({r['dir']}) records no {' and no '.join(missing)} in run.json; "
                                f"it cannot be compared (rerun it with this toremi)")
    for key, get in (("data hash", lambda r: r["info"].get("data_hash")), ("token budget", budget_of)):
        first = runs[0] if runs else None
        for r in runs:
            if get(r) != get(first):
                raise EvidenceError(f"runs differ in {key}: {first['name']} has {get(first)}, "
                                    f"{r['name']} has {get(r)}; compare runs of one data set and budget")
    if not runs:
        return
    ref = settings(runs[0])
    for r in runs[1:]:
        own = settings(r)
        allowed = tuple(declared.get(r["label"], [])) + tuple(declared.get(runs[0]["label"], []))
        diff = sorted(k for k in set(ref) | set(own) if ref.get(k) != own.get(k)
                      and not (r.get("eval") is None and k.startswith("eval."))
                      and not (runs[0].get("eval") is None and k.startswith("eval."))
                      and not any(k == a or k.startswith(a + ".") for a in allowed))
        if diff:
            shown = ", ".join(f"{k}: {ref.get(k)!r} vs {own.get(k)!r}" for k in diff[:4])
            raise EvidenceError(f"{runs[0]['name']} and {r['name']} differ in {shown}"
                                f"{' ...' if len(diff) > 4 else ''}; a method's entry must declare a setting "
                                f"it changes, or re-run/re-evaluate with one setting")


def check_domains(runs: list[dict], exclude=()) -> list[str]:
    """The domains every evaluated run scored (minus ``exclude``); a run missing one is refused."""
    evald = [r for r in runs if r.get("eval")]
    every = sorted({d for r in evald for d in r["eval"].get("domains", {})} - set(exclude))
    for r in evald:
        gone = [d for d in every if d not in r["eval"].get("domains", {})]
        if gone:
            raise EvidenceError(f"{r['name']} ({r['dir']}) has no held-out result for domain(s) {gone}; "
                                f"re-evaluate it, or leave the domain out (--exclude {gone[0]})")
    unknown = sorted(set(exclude) - {d for r in evald for d in r["eval"].get("domains", {})})
    if unknown:
        raise EvidenceError(f"--exclude {unknown}: no run scored such a domain; domains: {every}")
    return every


def nll(ev: dict, d: str) -> float:
    """Held-out mean NLL of domain d (nats/token); log(ppl) for evals that only kept ppl."""
    dom = ev["domains"][d]
    return float(dom["nll"]) if dom.get("nll") is not None else math.log(dom["ppl"])


def macro_nll(ev: dict, domains: list[str]) -> float:
    return float(np.mean([nll(ev, d) for d in domains]))


def weights_digest(run_dir: str | Path) -> str | None:
    """sha256 of the final weights file (the negative control must match the baseline's)."""
    f = layout.run_final_weights(run_dir)
    if f.exists():
        from toremi.done import file_sha256

        return file_sha256(f)
    saved = layout.run_final_digest(run_dir)  # a committed copy of the run keeps only the digest
    return saved.read_text().strip() if saved.exists() else None


def pairs_by_method(runs: list[dict], baseline: str = "uniform", exclude=(), declared=None):
    """The pairing every paired statistic uses: (domains, baseline run by seed, {label: [(run,
    baseline run of its seed)]}), after ``check_comparable``; a run without its baseline is refused."""
    check_comparable(runs, declared)
    evald = [r for r in runs if r.get("eval")]
    domains = check_domains(runs, exclude)
    base = {r["seed"]: r for r in evald if r["label"] == baseline}
    labels = [lab for lab in dict.fromkeys(r["label"] for r in evald) if lab != baseline]
    out = {}
    for label in labels:
        rs = [r for r in evald if r["label"] == label]
        for r in rs:
            if r["seed"] not in base:
                raise EvidenceError(f"paired statistic for {r['name']}: no baseline run "
                                    f"'{baseline}' with seed {r['seed']} (expected {baseline}-s{r['seed']})")
        out[label] = [(r, base[r["seed"]]) for r in rs]
    return domains, base, out


def macro_deltas(runs: list[dict], baseline: str = "uniform", exclude=(), declared=None) -> dict:
    """{label: {seed: paired Δ macro NLL}}: the per-seed values behind ``paired``'s macro row
    (a bootstrap over seeds resamples these)."""
    domains, _, by_label = pairs_by_method(runs, baseline, exclude, declared)
    return {lab: {r["seed"]: macro_nll(r["eval"], domains) - macro_nll(b["eval"], domains) for r, b in pairs}
            for lab, pairs in by_label.items()}


def paired(runs: list[dict], baseline: str = "uniform", exclude=(), declared=None) -> dict:
    """Per method (≠ baseline): paired Δ NLL and Δ bits/byte per domain and macro, Δ of the
    arithmetic macro perplexity (secondary), and whether the final weights equal the baseline's.

    ``runs`` are ``toremi.runs.load_run`` records with ``eval``. A method run without a baseline run of
    the same seed is refused (EvidenceError naming the missing run)."""
    domains, base, by_label = pairs_by_method(runs, baseline, exclude, declared)
    out = {"baseline": baseline, "domains": domains, "excluded": sorted(exclude),
           "unit": "nats/token (nll), bits/byte (bpb)", "methods": {}}
    for label, pairs in by_label.items():
        rs = [r for r, _ in pairs]
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
    holm(out["methods"])
    return out


def p_value(values) -> float | None:
    """Two-sided paired t-test p-value of mean 0 (None below 2 values)."""
    xs = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(xs) < 2:
        return None
    from scipy import stats

    sd = xs.std(ddof=1)
    if sd == 0:
        return 0.0 if xs.mean() != 0 else 1.0
    return float(2 * stats.t.sf(abs(xs.mean()) / (sd / math.sqrt(len(xs))), len(xs) - 1))


def signed_rank_p(values) -> float | None:
    """Two-sided exact Wilcoxon signed-rank p-value of median 0 (None below 2 values), reported
    beside the t-test: one seed in a bad basin (a paired Δ 10x the others) widens the t-interval
    past 0 even when every seed moves the same way; the rank test is not moved by its size. With
    n seeds its smallest p is 2 / 2**n (0.25 at 3 seeds, 0.031 at 6)."""
    xs = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(xs) < 2 or not xs.any():
        return None if len(xs) < 2 else 1.0
    from scipy import stats

    return float(stats.wilcoxon(xs, alternative="two-sided", method="exact", zero_method="zsplit").pvalue)


def holm(methods: dict, alpha: float = 0.05) -> None:
    """Holm-Bonferroni over the macro comparisons of all methods: adds ``p``, ``p_holm`` and
    ``verdict_holm`` to each method's ``macro_nll`` (in place)."""
    ps = {m: v["macro_nll"].get("p") for m, v in methods.items()}
    ranked = sorted((p, m) for m, p in ps.items() if p is not None)
    running = 0.0
    for i, (p, m) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - i) * p))
        s = methods[m]["macro_nll"]
        s["p_holm"] = running
        s["verdict_holm"] = ("worse" if s["mean"] > 0 else "better") if running < alpha else "no difference detected"
    for m, p in ps.items():
        if p is None:
            methods[m]["macro_nll"].update(p_holm=None, verdict_holm="n/a (one seed: an anecdote)")


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
    over = f" over {len(doms)} domains" + (f" (without {', '.join(p['excluded'])})" if p.get("excluded") else "")
    lines = [f"### Paired Δ vs {p['baseline']}{over} (same seed; mean ± 95% CI (seeds improved); "
             f"negative = better)", "",
             f"Verdicts: raw (each CI alone) and Holm-adjusted over the {len(ms)} macro comparisons of "
             f"this grid (paired t-test p-values); p rank: exact Wilcoxon signed-rank, robust to one "
             f"outlying seed (smallest possible p with n seeds: 2/2^n).", "",
             "| method | Δ macro NLL (nats/token) | verdict (raw) | p | p Holm | verdict (Holm) | p rank | "
             "Δ macro bits/byte | weights = baseline |", "|---|---|---|---|---|---|---|---|---|"]
    for m, v in ms.items():
        s = v["macro_nll"]
        pv = "-" if s.get("p") is None else f"{s['p']:.3f}"
        ph = "-" if s.get("p_holm") is None else f"{s['p_holm']:.3f}"
        pr = "-" if s.get("p_rank") is None else f"{s['p_rank']:.3f}"
        lines.append(f"| {m} | {fmt_delta(s)} | {verdict(s)} | {pv} | {ph} | {s.get('verdict_holm', '-')} | {pr} | "
                     f"{fmt_delta(v['macro_bpb'], 4)} | {v['identical_weights']}/{len(v['seeds'])} |")
    for key, title in (("nll", "Δ NLL per domain (nats/token; exploratory: unadjusted 95% CIs, "
                               "many comparisons)"),
                       ("bpb", "Δ bits/byte per domain (exploratory)")):
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


def regime(runs: list[dict], baseline: str, tokens_dir: str | Path | None, unigram: dict | None = None) -> dict:
    """Where the baseline stands: its final validation loss against the unigram cross-entropy of
    the validation tokens, the model and the token budget of a run."""
    base = [r for r in runs if r["label"] == baseline]
    uni = unigram
    if uni is None and tokens_dir is not None and layout.tokens_manifest(tokens_dir).exists():
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
