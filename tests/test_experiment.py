"""Experiment runner end to end on real BBC text: prepare -> train (real trainer, tiny model) ->
eval -> tables, then rerun to check that finished runs are skipped and interrupted ones resume."""

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import pytest
import yaml

from helpers import bbc_texts
from toremi.config import ConfigError, load_config
from toremi.experiment import ExperimentConfig, main as experiment_main
from toremi.io import read_json, read_jsonl

REPO = Path(__file__).resolve().parents[1]


def make_corpus(root: Path) -> Path:
    for split, skip, n in (("documents", 0, 16), ("eval", 100, 3)):
        rows = [(t, lab) for lab in ("business", "sports", "tech") for t in bbc_texts(lab, n, skip, chars=1200)]
        d = root / split / "news"
        d.mkdir(parents=True)
        ids = [f"{split}-{i}" for i in range(len(rows))]
        pq.write_table(pa.table({"id": ids, "text": [t for t, _ in rows], "domain": ["news"] * len(rows),
                                 "label": [lab for _, lab in rows], "source": ids}),
                       d / "shard-00000.parquet")
    return root


def write_config(tmp: Path, corpus: Path, **extra) -> Path:
    cfg = {
        "name": "tiny", "out": str(tmp / "exp"), "corpus": str(corpus), "seeds": [1, 2],
        "pipeline": {"prepare": {"out": str(tmp / "tokens"), "tokenizer": "bpe:300", "seq_len": 32,
                                 "topics_from": "label"}},
        "train": {"steps": 6, "batch_size": 4, "eval_every": 3, "eval_batches": 2, "log_every": 2,
                  "progress": False, "model": {"size": "tiny"}, "device": "cpu"},
        "methods": [{"name": "uniform", "train": {"method.name": "uniform"}},
                    {"name": "toremi-authors", "train": {"method": {"name": "toremi",
                     "preset": "authors", "interval": 2, "switch_step": 4}}}],
        "eval": {"max_docs": 3, "downstream": ["bbc_topic"], "batch_size": 4},
        **extra,
    }
    path = tmp / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_budget_keys_are_shared_across_methods(tmp_path):
    path = write_config(tmp_path, tmp_path)
    with pytest.raises(ConfigError, match="token budget"):
        load_config(ExperimentConfig, path, ["methods=[{name: a, train: {steps: 9}}]"])


def test_experiment_runs_skips_and_resumes(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "corpus")
    path = write_config(tmp_path, corpus)
    exp = tmp_path / "exp"
    # First pass is cut short: the first run stops at step 3 and the experiment says so.
    assert experiment_main(["--config", str(path), "train.stop_at_step=3"]) == 2
    first = exp / "runs" / "uniform-s1"
    assert read_json(first / "run.json")["status"] != "done" and not (first / "final").exists()
    # Second pass resumes it and runs the rest of the grid.
    assert experiment_main(["--config", str(path)]) == 0
    info = read_json(first / "run.json")
    assert info["status"] == "done" and info["resumed_from"]
    assert [m["step"] for m in read_jsonl(first / "metrics.jsonl") if "loss" in m] == [2, 4, 6]
    res = read_json(exp / "results.json")
    assert [(r["label"], r["seed"]) for r in res["runs"]] == [
        ("uniform", 1), ("toremi-authors", 1), ("uniform", 2), ("toremi-authors", 2)]
    for r in res["runs"]:
        ev = read_json(exp / r["dir"] / "eval.json")
        assert ev["domains"]["news"]["tokens"] > 0 and ev["downstream"]["bbc_topic"]["n"] == 3
    s = res["summary"]["methods"]
    assert s["uniform"]["domains"]["news"]["n"] == 2 and s["uniform"]["domains"]["news"]["ci"] is not None
    assert s["uniform"]["steps_to_baseline"]["reached"] == 2
    w = read_jsonl(exp / "runs" / "toremi-authors-s2" / "weights.jsonl")
    assert [r["step"] for r in w] == [2, 4, 6] and w[-1]["stage"] == 2
    md = (exp / "results.md").read_text()  # 3 paired tables (macro, Δ NLL, Δ bpb) lead, then 3 more
    assert md.count("| toremi-authors |") == 7 and md.index("Paired Δ") < md.index("Per-domain perplexity")
    assert res["paired"]["methods"]["toremi-authors"]["macro_nll"]["n"] == 2
    assert (exp / "report" / "report.html").exists()
    out = capsys.readouterr().out
    assert "| uniform | 2 |" in out
    from toremi.report import main as report_main

    assert report_main(["--experiment", str(exp), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "report.html").read_text()
    assert page.count("<img") == 6 and "toremi-authors-s2" in page  # forest + 4 + epochs; no noise panel
    # The per-run files alone rebuild the tables: export, recompute, compare; a changed file shows.
    grid = tmp_path / "grid"
    assert report_main(["--export", str(exp), "--out", str(grid)]) == 0
    assert not list(grid.rglob("*.safetensors")) and (grid / "runs" / "uniform-s1" / "eval.json").exists()
    assert report_main(["--recompute", str(grid), "--check"]) == 0
    ev_path = grid / "runs" / "toremi-authors-s2" / "eval.json"
    ev = read_json(ev_path)
    ev["domains"]["news"]["nll"] += 0.5
    ev_path.write_text(__import__("json").dumps(ev))
    assert report_main(["--recompute", str(grid), "--check"]) == 1
    assert "paired.methods.toremi-authors.macro_nll" in capsys.readouterr().err
    # Third pass: everything finished -> nothing retrained or re-evaluated.
    mtimes = {p: p.stat().st_mtime for p in exp.glob("runs/*/eval.json")}
    assert experiment_main(["--config", str(path)]) == 0
    assert capsys.readouterr().out.count("finished, skipping training") == 4
    assert mtimes == {p: p.stat().st_mtime for p in exp.glob("runs/*/eval.json")}
    # Fourth pass with other eval settings: every eval.json is redone (old numbers must not stay
    # in the tables), and the log says which setting changed.
    assert experiment_main(["--config", str(path), "eval.max_doc_tokens=20"]) == 0
    log = capsys.readouterr().out
    assert log.count("(max_doc_tokens ") == 4 and log.count(" -> 20 changed)") == 4, log
    for p in mtimes:
        assert read_json(p)["domains"]["news"]["max_doc_tokens"] == 20
    # eval.json's done marker vouches for its bytes and for the model it scored: an edited
    # eval.json, or another model in final/, is evaluated again (and only that run).
    ev_path = exp / "runs" / "uniform-s2" / "eval.json"
    ev_path.write_text(ev_path.read_text().replace('"nll"', '"nll" ', 1))
    shutil.copy(exp / "runs" / "toremi-authors-s1" / "final" / "model.safetensors",
                exp / "runs" / "uniform-s1" / "final" / "model.safetensors")
    assert experiment_main(["--config", str(path), "eval.max_doc_tokens=20"]) == 0
    log = capsys.readouterr().out
    assert log.count("experiment: evaluating") == 2, log
    assert "evaluating uniform-s2 (eval.json changed after it was written" in log
    assert "evaluating uniform-s1 (model_sha256 " in log


@pytest.mark.parametrize("name", ["quality.yaml", "noise.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(ExperimentConfig, REPO / "configs" / name)
    assert cfg.methods[0].name == "uniform" and len(cfg.seeds) >= 1


def test_noise_pipeline_trains_on_noisy_tokens(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    path = write_config(tmp_path, corpus, seeds=[1], evaluate=False, report=False,
                        methods=[{"name": "uniform", "train": {"method.name": "uniform"}}])
    cfg = yaml.safe_load(path.read_text())
    cfg["pipeline"]["noise"] = {"topic": "tech", "kind": "words"}
    cfg["train"]["steps"] = 2
    path.write_text(yaml.safe_dump(cfg))
    assert experiment_main(["--config", str(path)]) == 0
    res = read_json(tmp_path / "exp" / "results.json")
    noisy = tmp_path / "exp" / "tokens-noisy"
    assert res["noise_topic"] == "tech" and res["tokens"] == str(noisy)
    man = read_json(noisy / "manifest.json")
    assert man["noise"]["corrupted"] == 16  # every training document labelled tech
    clean = read_json(tmp_path / "tokens" / "manifest.json")["tokenizer"]
    assert [man["tokenizer"][k] for k in ("fingerprint", "vocab_size", "eot_id")] == \
        [clean[k] for k in ("fingerprint", "vocab_size", "eot_id")]  # the same tokenizer
    from toremi.runs import load_run

    run = load_run(tmp_path / "exp" / "runs" / "uniform-s1")
    assert run["info"]["tokens_dir"] == str(noisy) and run["noise"]["topic"] == "tech"


def test_aa_control_data_seed_offset_changes_only_the_data_order(tiny_tokens, tmp_path):
    """`data_seed_offset` (the A/A control) reaches the trainer through `toremi experiment`: the
    control's run records data_seed = seed + offset and, from the same initialisation, sees other
    batches (other losses from step 1), while a copy of the baseline without an offset is identical."""
    cfg = {
        "name": "aa", "out": str(tmp_path / "exp"), "tokens": str(tiny_tokens), "seeds": [1],
        "evaluate": False, "report": False,
        "train": {"steps": 3, "batch_size": 4, "eval_every": 0, "eval_batches": 1, "log_every": 1,
                  "progress": False, "model": {"size": "tiny"}, "device": "cpu"},
        "methods": [{"name": "uniform", "train": {"method.name": "uniform"}},
                    {"name": "uniform-again", "train": {"method.name": "uniform"}},
                    {"name": "control-aa", "data_seed_offset": 1000, "train": {"method.name": "uniform"}}],
    }
    path = tmp_path / "aa.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert experiment_main(["--config", str(path)]) == 0
    runs = tmp_path / "exp" / "runs"
    seeds = {name: yaml.safe_load((runs / f"{name}-s1" / "config.yaml").read_text())
             for name in ("uniform", "uniform-again", "control-aa")}
    assert [(c["seed"], c["data_seed"]) for c in seeds.values()] == [(1, None), (1, None), (1, 1001)]
    losses = {name: [m["loss"] for m in read_jsonl(runs / f"{name}-s1" / "metrics.jsonl") if "loss" in m]
              for name in seeds}
    assert len(losses["uniform"]) == 3
    assert losses["uniform-again"] == losses["uniform"]  # same seed, same data: bit-identical
    assert losses["control-aa"][0] != losses["uniform"][0]  # same init, another first batch
