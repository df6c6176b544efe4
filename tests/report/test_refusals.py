"""Every refusal of the paired statistics, and the Holm adjustment, on real run folders."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from toremi import stats
from toremi.report import main as report_main
from toremi.runs import load_run

DOMAINS = ("code", "legal", "news")


def write_run(root, name, seed, nll=3.0, size="tiny", lr=1e-3, data="d1", steps=100, domains=DOMAINS,
              max_docs=64, label_method="uniform"):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "model": {"size": size}, "optim": {"lr": lr},
                                                   "packing": "docs", "batch_size": 16, "accum": 1}))
    info = {"method": label_method, "status": "done", "total_steps": steps, "tokens_per_step": 2048}
    if data is not None:
        info["data_hash"] = data
    (d / "run.json").write_text(json.dumps(info))
    (d / "eval.json").write_text(json.dumps({
        "domains": {dom: {"nll": nll + 0.01 * i, "bpb": nll / 4, "ppl": math.exp(nll)} for i, dom in enumerate(domains)},
        "config": {"max_docs": max_docs, "script_filter": "latin"}}))
    return d


def grid(tmp_path, **method_kw):
    runs = []
    for s in (1, 2, 3):
        runs.append(load_run(write_run(tmp_path, f"uniform-s{s}", s, nll=3.0 + 0.1 * s), "uniform"))
        runs.append(load_run(write_run(tmp_path, f"m-s{s}", s, nll=2.9 + 0.1 * s + 0.001 * s, **method_kw), "m"))
    return runs


def test_a_clean_grid_passes_with_holm(tmp_path):
    p = stats.paired(grid(tmp_path))
    s = p["methods"]["m"]["macro_nll"]
    assert s["verdict_holm"] == "better" and s["p_holm"] == pytest.approx(s["p"]) and s["p"] < 0.05


def test_holm_adjusts_over_the_grids_methods():
    methods = {m: {"macro_nll": {"mean": 0.1, "p": p}} for m, p in (("a", 0.01), ("b", 0.02), ("c", 0.04))}
    stats.holm(methods)
    assert [methods[m]["macro_nll"]["p_holm"] for m in "abc"] == pytest.approx([0.03, 0.04, 0.04])
    assert [methods[m]["macro_nll"]["verdict_holm"] for m in "abc"] == ["worse"] * 3
    methods["c"]["macro_nll"]["p"] = 0.2
    stats.holm(methods)
    assert methods["c"]["macro_nll"]["verdict_holm"] == "no difference detected"


def test_duplicate_label_and_seed_is_refused(tmp_path):
    runs = grid(tmp_path)
    runs.append(load_run(write_run(tmp_path, "alpha0-s1", 1), "m"))
    with pytest.raises(stats.EvidenceError, match=r"two runs are m seed 1: .*m-s1 and .*alpha0-s1"):
        stats.paired(runs)


def test_missing_data_hash_or_budget_is_refused(tmp_path):
    runs = grid(tmp_path)
    runs.append(load_run(write_run(tmp_path, "x-s1", 1, data=None), "x"))
    with pytest.raises(stats.EvidenceError, match=r"x-s1 .* records no data hash"):
        stats.paired(runs)


@pytest.mark.parametrize("kw, key", [({"size": "small-cpu"}, "model.size"), ({"lr": 3e-3}, "optim.lr"),
                                     ({"max_docs": 10}, "eval.max_docs"), ({"data": "d2"}, "data hash"),
                                     ({"steps": 50}, "token budget")])
def test_different_settings_are_refused_unless_declared(tmp_path, kw, key):
    with pytest.raises(stats.EvidenceError, match=key.replace(".", r"\.")):
        stats.paired(grid(tmp_path, **kw))
    if "." in key:  # a method's entry that declares the key may change it
        stats.paired(grid(tmp_path / "ok", **kw), declared={"m": [key]})


def test_a_domain_missing_from_one_run_is_refused(tmp_path):
    with pytest.raises(stats.EvidenceError, match=r"m-s1 .* no held-out result for domain\(s\) \['news'\]"):
        stats.paired(grid(tmp_path, domains=("code", "legal")))
    p = stats.paired(grid(tmp_path / "ex"), exclude=("news",))
    assert p["domains"] == ["code", "legal"] and p["excluded"] == ["news"]


def test_recompute_names_missing_files(tmp_path, capsys):
    g = tmp_path / "g"
    write_run(g / "runs", "uniform-s1", 1)
    (g / "runs" / "uniform-s1" / "eval.json").unlink()
    assert report_main(["--recompute", str(g)]) == 2
    assert "missing per-run files: uniform-s1/metrics.jsonl, uniform-s1/eval.json" in capsys.readouterr().err


def test_report_runs_refuses_a_duplicate(tmp_path, capsys):
    a = write_run(tmp_path, "uniform-s1", 1)
    b = write_run(tmp_path / "other", "uniform-s1", 1)
    assert report_main(["--runs", str(a), str(b), "--out", str(tmp_path / "rep")]) == 2
    assert "two runs are uniform seed 1" in capsys.readouterr().err


REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("grid, exclude", [("quality_leakfree", []), ("noise_quality", []), ("cap_cpu", []),
                                           ("noise_quality", ["news"]), ("cap_quality", []), ("quality_more", []),
                                           ("noise_tokens", ["news"]), ("noise_words", ["news"]), ("topics_k32", []), ("topics_k64", []), ("quality_alpha", []),
                                           ("replay_2x", []), ("transfer_tiny", []), ("transfer_x10", [])])
def test_committed_grids_recompute_from_their_per_run_files(grid, exclude, capsys):
    """The committed results are what the committed per-run files give (no stale table)."""
    path = REPO / "docs" / "results" / grid
    assert (path / "runs").is_dir()
    args = ["--recompute", str(path), "--check"] + (["--exclude", *exclude] if exclude else [])
    assert report_main(args) == 0, capsys.readouterr().err


def test_report_takes_a_config_file(tmp_path, capsys):
    cfg = tmp_path / "report.yaml"
    cfg.write_text(yaml.safe_dump({"recompute": str(REPO / "docs" / "results" / "noise_quality"),
                                   "exclude": ["news"], "check": True}))
    assert report_main(["--config", str(cfg)]) == 0
    cfg.write_text(yaml.safe_dump({"recompte": "x"}))
    from toremi.config import ConfigError

    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['recompte'\]; valid keys here: \['baseline'"):
        report_main(["--config", str(cfg)])  # `toremi report` prints it as one line, exit 2


def test_a_finished_run_with_another_config_is_refused_by_the_grid(tiny_tokens, tmp_path):
    """experiment reuses a finished run only when it trained with the grid's settings."""
    from toremi.config import ConfigError, load_config
    from toremi.experiment import config_drift, main as experiment_main
    from toremi.train import TrainConfig, train

    base = [f"tokens_dir={tiny_tokens}", "steps=2", "batch_size=2", "eval_every=0", "progress=false",
            "model.size=tiny", "device=cpu", "seed=1"]
    run = tmp_path / "exp" / "runs" / "uniform-s1"
    train(load_config(TrainConfig, None, base + [f"out={run}"]))
    same = load_config(TrainConfig, None, base + [f"out={run}", "log_every=7"])
    assert config_drift(run, same) == ""  # cadence and location are not settings of the result
    other = load_config(TrainConfig, None, base + [f"out={run}", "optim.lr=0.01"])
    assert "optim.lr: 0.001 vs 0.01" in config_drift(run, other) or "optim.lr" in config_drift(run, other)
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"name": "g", "out": str(tmp_path / "exp"), "tokens": str(tiny_tokens),
                                   "seeds": [1], "evaluate": False, "report": False,
                                   "train": {"steps": 2, "batch_size": 2, "eval_every": 0, "progress": False,
                                             "model": {"size": "tiny"}, "device": "cpu",
                                             "optim": {"lr": 0.01}},
                                   "methods": [{"name": "uniform", "train": {"method.name": "uniform"}}]}))
    with pytest.raises(ConfigError, match=r"uniform-s1 finished with other settings than this grid's \(optim\.lr"):
        experiment_main(["--config", str(exp)])


def test_signed_rank_p_beside_the_t_test():
    """Six seeds all better, one of them by 10x the others: the t-interval covers 0, the exact
    signed-rank p is its minimum 2/2^6; three seeds can never reach 0.05 (2/2^3)."""
    from toremi.stats import p_value, signed_rank_p, t_interval

    deltas = [-0.005, -0.001, -0.214, -0.023, -0.010, -0.020]
    assert p_value(deltas) > 0.05 and t_interval(deltas)["ci"] > abs(sum(deltas) / 6)
    assert signed_rank_p(deltas) == pytest.approx(2 / 2**6)
    assert signed_rank_p([-1.0, -2.0, -3.0]) == pytest.approx(0.25)
    assert signed_rank_p([1.0, -1.5, 2.0, -2.5, 0.5, 3.0]) > 0.5
    assert signed_rank_p([0.1]) is None and t_interval(deltas)["p_rank"] == signed_rank_p(deltas)
