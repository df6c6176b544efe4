"""One typed record of a training run, read only from the files the run wrote.

``load_run`` is what experiment, eval, statistics, report and DoReMi know about a run: its
``run.json`` (info), resolved ``config.yaml``, ``metrics.jsonl``, ``weights.jsonl``, ``eval.json``,
the noise record of its data, and two derived facts everyone asks: ``status`` (``done`` only when
run.json says so *and* the final model's marker exists: the one "is this run finished?" rule) and
``budget`` (tokens: total steps x tokens per step). Statistics and the report both depend on this
module, never on each other's internals. Missing files read as empty, so unfinished runs load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict

import yaml

from toremi import layout
from toremi.io import read_json, read_jsonl


class RunRecord(TypedDict):
    dir: str
    name: str                # run dir name, e.g. toremi-paper-s1
    label: str               # method label: runs are grouped across seeds by it
    seed: int | None
    status: str              # done | running | stopped | ... | missing
    budget: int | None       # training tokens (total steps x tokens per step)
    info: dict[str, Any]     # run.json
    config: dict[str, Any]   # config.yaml (the settings in effect)
    metrics: list[dict]
    weights: list[dict]
    eval: dict | None
    noise: dict | None


def method_label(info: dict) -> str:
    """``method`` or ``method-preset``: runs are grouped (across seeds) by this label."""
    opts = info.get("method_options") or {}
    name = info.get("method") or opts.get("name") or "unknown"
    return f"{name}-{opts['preset']}" if opts.get("preset") else name


def status(run_dir: Path) -> str:
    """``done`` when run.json says so and ``final/`` is marked complete; else what run.json says
    (``missing`` without one)."""
    info = layout.run_info(run_dir)
    if not info.exists():
        return "done" if layout.run_final_marker(run_dir).exists() else "missing"
    st = read_json(info).get("status") or "unknown"
    return "done" if st == "done" and layout.run_final_marker(run_dir).exists() else \
        ("incomplete" if st == "done" else st)


def is_finished(run_dir: Path) -> bool:
    return status(Path(run_dir)) == "done"


def budget(info: dict) -> int | None:
    if info.get("total_steps") is None or info.get("tokens_per_step") is None:
        return None
    return int(info["total_steps"]) * int(info["tokens_per_step"])


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


def load_run(run_dir: Path, label: str | None = None, name: str | None = None) -> RunRecord:
    run_dir = Path(run_dir)
    info = read_json(layout.run_info(run_dir)) if layout.run_info(run_dir).exists() else {}
    config = yaml.safe_load(layout.run_config(run_dir).read_text()) \
        if layout.run_config(run_dir).exists() else {}
    ev = layout.run_eval(run_dir)
    return RunRecord(dir=str(run_dir), name=name or run_dir.name, label=label or method_label(info),
                     seed=(config or {}).get("seed"), status=status(run_dir), budget=budget(info),
                     info=info, config=config or {}, metrics=read_jsonl(layout.run_metrics(run_dir)),
                     weights=read_jsonl(layout.run_weights(run_dir)),
                     eval=read_json(ev) if ev.exists() else None, noise=noise_of(info))


def final_val_loss(run: RunRecord) -> float | None:
    vals = [m["val_loss"] for m in run["metrics"] if m.get("val_loss") is not None]
    return vals[-1] if vals else None


def first_per_label(runs: list[RunRecord]) -> list[RunRecord]:
    """The first run of each method that logged weights: per-topic panels show one seed each."""
    seen, out = set(), []
    for r in runs:
        if r["label"] not in seen and r["weights"]:
            seen.add(r["label"])
            out.append(r)
    return out
