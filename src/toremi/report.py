"""``toremi report``: one self-contained HTML page (+ the PNGs beside it) from run logs and evals.

    toremi report --runs runs/a runs/b ... --out report/
    toremi report --experiment runs/quality --out report/

Reads only what runs wrote (run.json, config.yaml, metrics.jsonl, weights.jsonl, eval.json), so a
report can be rebuilt at any time, including while runs are still going. Runs are grouped by
method label; across seeds a number is shown as mean +/- the 95% t-interval half-width.
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import warnings
from pathlib import Path

import numpy as np
import yaml

from toremi import layout, stats
from toremi.io import atomic_write_text, read_json, read_jsonl


# -- loading and statistics ---------------------------------------------------------------------
def method_label(info: dict) -> str:
    opts = info.get("method_options") or {}
    name = info.get("method") or opts.get("name") or "unknown"
    return f"{name}-{opts['preset']}" if opts.get("preset") else name


def noise_of(info: dict) -> dict | None:
    """The noise record of the data a run trained on (tokens manifest, or its source corpus)."""
    if info.get("noise"):
        return info["noise"]
    tokens = Path(info.get("tokens_dir") or "")
    if not layout.tokens_manifest(tokens).exists():
        return None
    man = read_json(layout.tokens_manifest(tokens))
    if man.get("noise"):
        return man["noise"]
    corpus = Path((man.get("config") or {}).get("corpus") or "")
    return read_json(layout.noise_record(corpus)) if layout.noise_record(corpus).exists() else None


def load_run(run_dir: Path, label: str | None = None, name: str | None = None) -> dict:
    run_dir = Path(run_dir)
    info = read_json(layout.run_info(run_dir)) if layout.run_info(run_dir).exists() else {}
    config = yaml.safe_load(layout.run_config(run_dir).read_text()) \
        if layout.run_config(run_dir).exists() else {}
    ev = layout.run_eval(run_dir)
    return {"dir": str(run_dir), "name": name or run_dir.name, "label": label or method_label(info),
            "seed": (config or {}).get("seed"), "info": info, "config": config or {},
            "metrics": read_jsonl(layout.run_metrics(run_dir)),
            "weights": read_jsonl(layout.run_weights(run_dir)),
            "eval": read_json(ev) if ev.exists() else None, "noise": noise_of(info)}


def mean_ci(values) -> dict:
    """Mean and 95% t-interval half-width over seeds (half-width None for a single value)."""
    xs = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(xs) == 0:
        return {"mean": None, "ci": None, "n": 0}
    if len(xs) == 1:
        return {"mean": float(xs[0]), "ci": None, "n": 1}
    from scipy import stats

    half = stats.t.ppf(0.975, len(xs) - 1) * xs.std(ddof=1) / math.sqrt(len(xs))
    return {"mean": float(xs.mean()), "ci": float(half), "n": int(len(xs))}


def final_val_loss(run: dict) -> float | None:
    vals = [m["val_loss"] for m in run["metrics"] if m.get("val_loss") is not None]
    return vals[-1] if vals else None


def steps_to_reach(run: dict, target: float | None) -> int | None:
    """First evaluated step whose validation loss is <= target (None if never)."""
    if target is None:
        return None
    for m in run["metrics"]:
        if m.get("val_loss") is not None and m["val_loss"] <= target:
            return int(m["step"])
    return None


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
                                           if t in e.get("downstream", {})])
                               for k in ("acc", "acc_norm")} for t in tasks},
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
    down = (["method"] + [f"{t} {k}" for t in summary["tasks"] for k in ("acc", "acc_norm")],
            [[m] + [fmt(v["downstream"][t][k], 3) for t in summary["tasks"] for k in ("acc", "acc_norm")]
             for m, v in ms.items()])
    train = (["method", "final val loss", f"steps to {summary['baseline']} final val loss", "reached"],
             [[m, fmt(v["final_val_loss"], 4), fmt(v["steps_to_baseline"], 0),
               f"{v['steps_to_baseline']['reached']}/{len(v['runs'])}"] for m, v in ms.items()])
    return {"Per-domain perplexity (held-out)": ppl, "Downstream accuracy (zero-shot)": down,
            "Training": train}


def markdown(summary: dict) -> str:
    parts = []
    for title, (head, rows) in tables(summary).items():
        parts += [f"### {title}", "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows] + [""]
    return "\n".join(parts)


# -- figures --------------------------------------------------------------------------------------
def _series(run: dict, key: str, source: str = "weights") -> tuple[np.ndarray, np.ndarray]:
    """Steps and [N, K] values of ``key`` in weights.jsonl / metrics.jsonl (None -> nan)."""
    recs = [r for r in run[source] if r.get(key) is not None]
    steps = np.array([r["step"] for r in recs])
    vals = np.array([[np.nan if v is None else v for v in r[key]] for r in recs], dtype=float)
    return steps, vals


def _first_per_label(runs: list[dict]) -> list[dict]:
    seen, out = set(), []
    for r in runs:
        if r["label"] not in seen and r["weights"]:
            seen.add(r["label"])
            out.append(r)
    return out


def _topic_grid(runs, key, ylabel, title, path, noisy=None):
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    if pair and pair["methods"]:
        forest(pair, out / "forest.png")
        made.append(("forest.png", "Paired Δ NLL per domain and macro against the baseline of the same "
                                   "seed (mean ± 95% CI; zero = no effect)."))
    first = _first_per_label(runs)
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


# -- HTML -----------------------------------------------------------------------------------------
CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
font-size:13px;text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee}figure{margin:1em 0}figcaption{font-size:13px;color:#555}
pre{background:#f7f7f7;padding:.6em;font-size:12px;overflow:auto}"""


def html_table(head: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


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


def diagnosis_tables(runs: list[dict]) -> list[str]:
    """HTML: one per-topic diagnosis table (noise-aware ToReMi) for the first seed of a method."""
    parts = []
    for r in _first_per_label(runs):
        rows = diagnosis_rows(r)
        if rows:
            parts.append(f"<h2>Topic diagnosis: {html.escape(r['name'])}</h2>" + html_table(
                ["topic", "diagnosis", "loss level", "slope (rel. drop/update)", "Stage-1 peak / mean",
                 "final / mean", "noisy since step"], rows))
    return parts


def render(runs: list[dict], summary: dict, figs: list[tuple[str, str]], out: Path,
           title: str, noisy: str | None, lead: str = "") -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>", lead,
             f"<p>{len(runs)} runs, {len(summary['methods'])} methods. Numbers are means over seeds "
             f"± the 95% t-interval half-width. Perplexity = exp(token-weighted mean NLL) on the "
             f"held-out split of each domain." + (f" Noisy topic: <b>{html.escape(noisy)}</b>."
                                                  if noisy else "") + "</p>"]
    for t, (head, rows) in tables(summary).items():
        parts.append(f"<h2>{html.escape(t)}</h2>" + html_table(head, rows))
    parts.extend(diagnosis_tables(runs))
    parts.append("<h2>Figures</h2>")
    for name, caption in figs:
        data = base64.b64encode((out / name).read_bytes()).decode()
        fig = (f"<figure><img alt='{name}' src='data:image/png;base64,{data}'>"
               f"<figcaption>{html.escape(caption)} ({name})</figcaption></figure>")
        if name == "forest.png":  # the report leads with it, right under the headline
            parts[1] = parts[1].replace("<!--forest-->", fig)
        else:
            parts.append(fig)
    parts.append("<h2>Runs</h2>")
    rows = [[r["name"], r["label"], str(r["seed"]), str(r["info"].get("status", "?")),
             str(r["info"].get("steps_done", "")), str(r["info"].get("model", {}).get("size", "")),
             str((r["info"].get("tokenizer") or {}).get("name", "")), r["dir"]] for r in runs]
    parts.append(html_table(["run", "method", "seed", "status", "steps", "model", "tokenizer",
                             "dir"], rows))
    for r in runs:
        opts = yaml.safe_dump({"method_options": r["info"].get("method_options"),
                               "config": r["config"]}, sort_keys=False)
        parts.append(f"<details><summary>config of {html.escape(r['name'])}</summary>"
                     f"<pre>{html.escape(opts)}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def report(run_dirs: list[Path], out: Path, title: str = "toremi report",
           labels: dict[str, str] | None = None, noisy: str | None = None,
           baseline: str = "uniform") -> Path:
    labels = labels or {}
    runs = [load_run(d, labels.get(str(d))) for d in run_dirs if layout.run_info(d).exists()
            or layout.run_metrics(d).exists()]
    if not runs:
        raise FileNotFoundError(f"no runs (run.json / metrics.jsonl) in {[str(d) for d in run_dirs]}")
    noisy = noisy or next((r["noise"]["topic"] for r in runs if r["noise"]), None)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs, baseline)
    pair, lead_md = None, ""
    if any(r["label"] == baseline and r["eval"] for r in runs):  # else: no paired section
        pair = stats.paired(runs, baseline)
    tokens = next((r["info"].get("tokens_dir") for r in runs if r["info"].get("tokens_dir")), None)
    reg = stats.regime(runs, baseline, tokens)
    lead_md = stats.headline(pair, reg) + "\n\n" + (stats.paired_markdown(pair) if pair else "")
    figs = figures(runs, summary, out, noisy, pair, (reg.get("unigram") or {}).get("val_ce"))
    atomic_write_text(out / "report.md", f"# {title}\n\n{lead_md}\n" + markdown(summary))
    head_md, _, tables_md = lead_md.partition("### ")
    lead = lead_html(head_md) + "<!--forest-->" + lead_html("### " + tables_md if tables_md else "")
    atomic_write_text(out / "report.html", render(runs, summary, figs, out, title, noisy, lead))
    return out / "report.html"


def lead_html(md: str) -> str:
    """The headline and paired tables (Markdown from stats) as HTML paragraphs and tables."""
    parts, rows = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-"):
                rows.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if rows:
            parts.append(html_table(rows[0], rows[1:]))
            rows = []
        if line.startswith("### "):
            parts.append(f"<h2>{html.escape(line[4:])}</h2>")
        elif line.strip():
            text = html.escape(line)
            while text.count("**") >= 2:
                text = text.replace("**", "<b>", 1).replace("**", "</b>", 1)
            parts.append(f"<p>{text}</p>")
    return "\n".join(parts)


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
