"""Per-method statistics over seeds and the tables they make (Markdown and HTML share them).

Across seeds a number is shown as mean +/- the 95% t-interval half-width (``stats.t_interval``).
"""

from __future__ import annotations

from toremi import stats
from toremi.runs import final_val_loss

TASK_METRICS = ("acc", "acc_norm", "random_init_acc")  # downstream keys, where a task has them


def mean_ci(values) -> dict:
    """Mean and 95% t-interval half-width over seeds (half-width None for a single value)."""
    s = stats.t_interval(values)
    return {"mean": s["mean"], "ci": s["ci"], "n": s["n"]}


def steps_to_reach(run: dict, target: float | None) -> int | None:
    """First evaluated step whose validation loss is <= target (None if never)."""
    from toremi.dynamics import steps_to

    return steps_to(run, target)


def summarize(runs: list[dict], baseline: str = "uniform") -> dict:
    """Per method: per-domain ppl, macro ppl, downstream acc, final val loss, steps to reach the
    baseline's final validation loss (same seed's baseline run when there is one)."""
    labels = list(dict.fromkeys(r["label"] for r in runs))
    domains = sorted({d for r in runs if r["eval"] for d in r["eval"].get("domains", {})})
    tasks = sorted({t for r in runs if r["eval"] for t in r["eval"].get("downstream", {})})
    base = {r["seed"]: final_val_loss(r) for r in runs if r["label"] == baseline}
    base_mean = mean_ci(base.values())["mean"]
    out = {"methods": {}, "domains": domains, "tasks": tasks, "baseline": baseline}
    for label in labels:
        rs = [r for r in runs if r["label"] == label]
        evs = [r["eval"] for r in rs if r["eval"]]
        reach = [steps_to_reach(r, base.get(r["seed"], base_mean)) for r in rs]
        out["methods"][label] = {
            "runs": [r["name"] for r in rs], "seeds": [r["seed"] for r in rs],
            "domains": {d: mean_ci([e["domains"][d]["ppl"] for e in evs if d in e.get("domains", {})])
                        for d in domains},
            "bpb": {d: mean_ci([e["domains"][d]["bpb"] for e in evs if d in e.get("domains", {})])
                    for d in domains},
            "macro_ppl": mean_ci([e.get("macro_ppl") for e in evs]),
            "downstream": {t: {k: mean_ci([e["downstream"][t][k] for e in evs
                                           if k in e.get("downstream", {}).get(t, {})])
                               for k in TASK_METRICS} for t in tasks},
            "final_val_loss": mean_ci([final_val_loss(r) for r in rs]),
            "steps_to_baseline": {"per_run": reach, "reached": sum(x is not None for x in reach),
                                  **mean_ci([x for x in reach if x is not None])},
        }
    return out


def fmt(s: dict, digits: int = 2) -> str:
    if not s or s.get("mean") is None:
        return "-"
    m = f"{s['mean']:.{digits}f}"
    return m if s.get("ci") is None else f"{m} ± {s['ci']:.{digits}f}"


def tables(summary: dict) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Header + rows of every results table (rendered to Markdown and HTML)."""
    ms = summary["methods"]
    ppl = (["method", "seeds"] + summary["domains"] + ["macro"],
           [[m, str(len(v["runs"]))] + [fmt(v["domains"][d]) for d in summary["domains"]]
            + [fmt(v["macro_ppl"])] for m, v in ms.items()])
    # Only the metrics a task reports: zero-shot tasks acc / acc_norm, probes acc / random_init_acc.
    cols = [(t, k) for t in summary["tasks"] for k in TASK_METRICS
            if any(v["downstream"][t][k].get("mean") is not None for v in ms.values())]
    down = (["method"] + [f"{t} {k}" for t, k in cols],
            [[m] + [fmt(v["downstream"][t][k], 3) for t, k in cols] for m, v in ms.items()])
    train = (["method", "final val loss", f"steps to {summary['baseline']} final val loss", "reached"],
             [[m, fmt(v["final_val_loss"], 4), fmt(v["steps_to_baseline"], 0),
               f"{v['steps_to_baseline']['reached']}/{len(v['runs'])}"] for m, v in ms.items()])
    return {"Per-domain perplexity (held-out)": ppl,
            "Downstream accuracy (zero-shot; *_probe: linear probe, random_init_acc its control)": down,
            "Training": train}


def markdown(summary: dict) -> str:
    parts = []
    for title, (head, rows) in tables(summary).items():
        parts += [f"### {title}", "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows] + [""]
    return "\n".join(parts)


def epochs_by_method(runs: list[dict]) -> dict:
    """Per method, per topic: mean over seeds of the final effective epochs (run.json
    ``topic_epochs``: tokens seen / the topic's tokens) and, for loss-weight methods, of the
    weight-scaled epochs (``topic_weighted_epochs``); the cap (``max_repetition``) if set."""
    out = {}
    for label in dict.fromkeys(r["label"] for r in runs):
        rs = [r for r in runs if r["label"] == label and r["info"].get("topic_epochs") is not None]
        if not rs:
            continue
        names = rs[0]["info"].get("topic_names") or [str(k) for k in range(len(rs[0]["info"]["topic_epochs"]))]
        mean = lambda key: [float(sum(r["info"][key][k] for r in rs) / len(rs)) for k in range(len(names))] \
            if all(r["info"].get(key) is not None for r in rs) else None
        out[label] = {"topics": names, "epochs": mean("topic_epochs"),
                      "weighted_epochs": mean("topic_weighted_epochs"), "seeds": len(rs),
                      "max_repetition": rs[0]["info"].get("max_repetition")}
    return out


def epochs_table(runs: list[dict]) -> tuple[list[str], list[list[str]]] | None:
    """Topics x methods: 'epochs (weight-scaled epochs)'; None when no run recorded epochs."""
    ep = epochs_by_method(runs)
    if not ep:
        return None
    labels = list(ep)
    topics = list(dict.fromkeys(t for v in ep.values() for t in v["topics"]))
    head = ["topic"] + [lab + (f" (cap {ep[lab]['max_repetition']:g})" if ep[lab]["max_repetition"] else "")
                        for lab in labels]

    def cell(v, t):
        if t not in v["topics"]:
            return "-"
        k = v["topics"].index(t)
        w = v["weighted_epochs"]
        return f"{v['epochs'][k]:.2f}" + (f" ({w[k]:.2f})" if w is not None else "")
    rows = [[t] + [cell(ep[lab], t) for lab in labels] for t in topics]
    rows.append(["max"] + [f"{max(ep[lab]['epochs']):.2f}" for lab in labels])
    return head, rows


EPOCHS_TITLE = ("Per-topic epochs (tokens seen / the topic's training tokens, mean over seeds; in parentheses, "
                "loss-weight methods: weight-scaled epochs)")


def epochs_markdown(runs: list[dict]) -> str:
    t = epochs_table(runs)
    if t is None:
        return ""
    head, rows = t
    return "\n".join([f"### {EPOCHS_TITLE}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


DIAGNOSIS_HEAD = ["topic", "diagnosis", "loss level", "slope (rel. drop/update)", "Stage-1 peak / mean",
                  "final / mean", "noisy since step"]


def diagnosis_rows(run: dict) -> list[list[str]]:
    """Per topic, from a noise-aware run's weights.jsonl: the final diagnosis, loss level and
    slope, the Stage-1 peak weight and the final weight (relative to the mean weight), and the
    step the topic was first diagnosed noisy."""
    recs = [w for w in run["weights"] if w.get("diagnosis")]
    if not recs:
        return []
    names = run["info"].get("topic_names") or [str(k) for k in range(len(recs[-1]["weights"]))]
    rel = lambda w, k: w["weights"][k] / (sum(w["weights"]) / len(w["weights"]))
    rows = []
    for k, name in enumerate(names):
        s1 = [rel(w, k) for w in recs if w["stage"] == 1]
        noisy_at = next((w["step"] for w in recs if w["diagnosis"][k] == "noisy"), None)
        level, slope = recs[-1]["level"][k], recs[-1]["slope"][k]
        rows.append([name, recs[-1]["diagnosis"][k], "-" if level is None else f"{level:.3f}",
                     f"{slope:+.4f}", f"{max(s1):.2f}x" if s1 else "-", f"{rel(recs[-1], k):.2f}x",
                     "-" if noisy_at is None else str(noisy_at)])
    return rows
