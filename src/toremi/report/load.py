"""Reading what runs wrote (run.json, config.yaml, metrics.jsonl, weights.jsonl, eval.json).

Only files are read, never a live trainer, so a report can be rebuilt at any time, including
while runs are still going.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from toremi import layout
from toremi.io import read_json, read_jsonl


def method_label(info: dict) -> str:
    """``method`` or ``method-preset``: runs are grouped (across seeds) by this label."""
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
    """One run as a plain dict; missing files read as empty, so unfinished runs still load."""
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


def first_per_label(runs: list[dict]) -> list[dict]:
    """The first run of each method that logged weights: per-topic panels show one seed each."""
    seen, out = set(), []
    for r in runs:
        if r["label"] not in seen and r["weights"]:
            seen.add(r["label"])
            out.append(r)
    return out
