"""The report's PNG figures (matplotlib, Agg backend): forest plot of paired differences, topic
weights and per-topic losses, loss curves, per-domain perplexity and the noise panel.

Each figure is written beside the page and embedded in it too, so the page stands alone.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from toremi.runs import first_per_label


def _series(run: dict, key: str, source: str = "weights") -> tuple[np.ndarray, np.ndarray]:
    """Steps and [N, K] values of ``key`` in weights.jsonl / metrics.jsonl (None -> nan)."""
    recs = [r for r in run[source] if r.get(key) is not None]
    steps = np.array([r["step"] for r in recs])
    vals = np.array([[np.nan if v is None else v for v in r[key]] for r in recs], dtype=float)
    return steps, vals


def _topic_grid(runs, key, ylabel, title, path, noisy=None):
    """One panel per run of a per-topic series (weights or loss), the noisy topic dashed."""
    import matplotlib.pyplot as plt

    n = len(runs)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, run in zip(axes.flat, runs):
        k = key if key != "weights" or not run["weights"][0].get("probs") else "probs"
        # Per-topic loss: the training log's windows (every log_every steps) when it has them,
        # finer than the update intervals of weights.jsonl.
        source = "metrics" if key == "topic_loss" and any(
            m.get("topic_loss") for m in run["metrics"]) else "weights"
        steps, vals = _series(run, k, source)
        names = run["info"].get("topic_names") or [str(i) for i in range(vals.shape[1])]
        # Many topics: colour the 8 that moved most (and the noisy one), the rest thin and grey.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # topics with no samples: all nan
            spread = np.nan_to_num(np.nanmax(vals, 0) - np.nanmin(vals, 0)) if len(vals) else []
        top = set(np.argsort(-np.asarray(spread))[:8].tolist())
        for i in range(vals.shape[1]):
            hi = i in top or names[i] == noisy
            ax.plot(steps, vals[:, i], lw=2.2 if names[i] == noisy else (1.4 if hi else 0.6),
                    color=None if hi else "0.75", label=names[i] if hi else None,
                    ls="--" if names[i] == noisy else "-")
        stages = np.array([r.get("stage", 1) for r in run["weights"]])
        if (stages > 1).any():
            ax.axvline(run["weights"][int(np.argmax(stages > 1))]["step"], color="k", ls=":",
                       lw=1.2, label="stage 2")
        ax.set_title(f"{run['label']} ({run['name']})" + (" [sampling p]" if k == "probs" else ""),
                     fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=6, ncol=2)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def epochs_panel(runs: list[dict], path: Path) -> bool:
    """Per-topic effective epochs at the end of each run (mean over seeds, one bar per method;
    hollow marks: weight-scaled epochs of loss-weight methods; dashed: a repetition cap). Why: an
    up-weighted small topic is repeated, and past a few epochs repetition stops helping."""
    import matplotlib.pyplot as plt

    from toremi.report.summary import epochs_by_method

    ep = epochs_by_method(runs)
    if not ep:
        return False
    topics = list(dict.fromkeys(t for v in ep.values() for t in v["topics"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(topics) * max(1, len(ep)) ** 0.5 + 2), 4))
    width = 0.8 / len(ep)
    for i, (lab, v) in enumerate(ep.items()):
        x = np.array([topics.index(t) for t in v["topics"]]) + i * width
        ax.bar(x, v["epochs"], width, color=f"C{i}", label=f"{lab} ({v['seeds']} seed(s))")
        if v["weighted_epochs"] is not None:
            ax.scatter(x, v["weighted_epochs"], marker="o", facecolors="none", edgecolors="k", s=14, zorder=3,
                       label="weight-scaled epochs" if i == 0 or not ax.get_legend_handles_labels()[1].count(
                           "weight-scaled epochs") else None)
        if v["max_repetition"]:
            ax.axhline(v["max_repetition"], color=f"C{i}", ls="--", lw=1, label=f"{lab} cap")
    ax.set_xticks(np.arange(len(topics)) + width * (len(ep) - 1) / 2, topics, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("epochs (tokens seen / topic tokens)")
    ax.set_title("Per-topic epochs at the end of training")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def forest(pair: dict, path: Path) -> None:
    """Paired Δ NLL per domain and macro (mean ± 95% CI, one row per domain, one marker per
    method), zero marked: the figure the report leads with."""
    import matplotlib.pyplot as plt

    ms, rows = list(pair["methods"]), ["macro"] + pair["domains"]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) * max(1, len(ms)) ** 0.5 + 1.6))
    off = np.linspace(-0.3, 0.3, len(ms)) if len(ms) > 1 else [0.0]
    for i, m in enumerate(ms):
        st = [pair["methods"][m]["macro_nll"]] + [pair["methods"][m]["nll"][d] for d in pair["domains"]]
        y = np.arange(len(rows)) + off[i]
        x = [s["mean"] if s["mean"] is not None else np.nan for s in st]
        err = [s["ci"] if s["ci"] is not None else 0.0 for s in st]
        ax.errorbar(x, y, xerr=err, fmt="o", ms=4, capsize=2, color=f"C{i}", label=m)
    ax.axvline(0, color="k", lw=1)
    ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
    ax.set_yticks(np.arange(len(rows)), rows)
    ax.invert_yaxis()
    ax.set_xlabel(f"Δ held-out NLL vs {pair['baseline']} (nats/token), paired by seed; < 0 = better")
    n = max((len(v["seeds"]) for v in pair["methods"].values()), default=0)
    ax.set_title(f"Paired differences, mean ± 95% CI over {n} seed(s)" + (" (1 seed: no CI)" if n < 2 else ""))
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def figures(runs: list[dict], summary: dict, out: Path, noisy: str | None,
            pair: dict | None = None, unigram: float | None = None) -> list[tuple[str, str]]:
    """Write every figure the runs have data for into ``out``; (file name, caption) in page order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    if pair and pair["methods"]:
        forest(pair, out / "forest.png")
        made.append(("forest.png", "Paired Δ NLL per domain and macro against the baseline of the same "
                                   "seed (mean ± 95% CI; zero = no effect)."))
    first = first_per_label(runs)
    moving = [r for r in first if r["weights"][0].get("probs") or len(
        {tuple(w["weights"]) for w in r["weights"]} | {(1.0,) * len(r["weights"][0]["weights"])}) > 1]
    if moving:
        _topic_grid(moving, "weights", "topic weight", "Topic weights (first seed of each method)",
                    out / "weights.png", noisy)
        made.append(("weights.png", "Topic-weight trajectories (methods whose weights move); "
                                    "dotted line: stage switch."))
    if first:
        _topic_grid(first, "topic_loss", "mean loss", "Per-topic training loss",
                    out / "topic_loss.png", noisy)
        made.append(("topic_loss.png", "Per-topic training loss (mean per-token loss of the samples "
                                           "carrying each topic, per logging window)."))
    if any(r["metrics"] for r in runs):
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        colors = {lab: f"C{i}" for i, lab in enumerate(summary["methods"])}
        for r in runs:
            tr = [(m["step"], m["loss"]) for m in r["metrics"] if m.get("loss") is not None]
            va = [(m["step"], m["val_loss"]) for m in r["metrics"] if m.get("val_loss") is not None]
            lab = r["label"] if r["name"] == summary["methods"][r["label"]]["runs"][0] else None
            if tr:
                axes[0].plot(*zip(*tr), color=colors[r["label"]], lw=1, alpha=0.8, label=lab)
            if va:
                axes[1].plot(*zip(*va), color=colors[r["label"]], lw=1, marker=".", label=lab)
        if unigram is not None:
            axes[1].axhline(unigram, color="k", ls="--", lw=1, label=f"unigram CE {unigram:.2f}")
        for ax, t in zip(axes, ("training loss", "validation loss")):
            ax.set_title(t)
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "loss.png", dpi=90)
        plt.close(fig)
        made.append(("loss.png", "Training and validation loss of every run; dashed: cross-entropy "
                                 "of the validation tokens under a unigram model of the training tokens."))
    if summary["domains"]:
        ms, doms = list(summary["methods"]), summary["domains"] + ["macro"]
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(doms) * max(1, len(ms)) / 2), 4))
        width = 0.8 / max(1, len(ms))
        for i, m in enumerate(ms):
            st = [summary["methods"][m]["domains"].get(d) or {} for d in doms[:-1]]
            st.append(summary["methods"][m]["macro_ppl"])
            mean = [s.get("mean") or np.nan for s in st]
            err = [s.get("ci") or 0.0 for s in st]
            ax.bar(np.arange(len(doms)) + i * width, mean, width, yerr=err, capsize=2, label=m)
        ax.set_xticks(np.arange(len(doms)) + width * (len(ms) - 1) / 2, doms, rotation=30,
                      ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("perplexity (log scale)")
        ax.set_title("Held-out perplexity per domain (mean ± 95% CI over seeds)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "domains.png", dpi=90)
        plt.close(fig)
        made.append(("domains.png", "Per-domain perplexity across methods (error bars: 95% CI)."))
    if epochs_panel(runs, out / "epochs.png"):
        made.append(("epochs.png", "Per-topic epochs at the end of training (tokens seen / the topic's training "
                                   "tokens; mean over seeds); hollow marks: weight-scaled epochs; dashed: a cap."))
    noise_runs = [r for r in runs if noisy and r["weights"]
                  and noisy in (r["info"].get("topic_names") or [])]
    if noise_runs:
        fig, ax = plt.subplots(figsize=(7, 3.8))
        colors = {lab: f"C{i}" for i, lab in enumerate(summary["methods"])}
        labelled = set()
        for r in noise_runs:
            key = "probs" if r["weights"][0].get("probs") else "weights"
            steps, w = _series(r, key)
            j = r["info"]["topic_names"].index(noisy)
            others = np.nanmean(np.delete(w, j, axis=1), axis=1)
            tag = r["label"] + (" (sampling p)" if key == "probs" else "")
            first = r["label"] not in labelled
            labelled.add(r["label"])
            ax.plot(steps, w[:, j], color=colors[r["label"]], lw=1.8,
                    label=f"{tag}: {noisy}" if first else None)
            ax.plot(steps, others, color=colors[r["label"]], lw=1, ls="--",
                    label=f"{tag}: other topics (mean)" if first else None)
        ax.set_xlabel("step")
        ax.set_ylabel("topic weight / sampling probability")
        ax.set_title(f"Noise experiment: weight of the corrupted topic {noisy!r} vs the others")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "noise.png", dpi=90)
        plt.close(fig)
        made.append(("noise.png", f"Noisy topic {noisy} (solid) against the mean of the other "
                                  f"topics (dashed)."))
    return made
