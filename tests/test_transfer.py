"""``toremi transfer``: rank agreement of methods across two scales, on real run files.

The two "scales" are copies of the committed leak-free quality grid (docs/results/quality_leakfree:
real run.json/config.yaml/eval.json files); scale B's eval.json values are shifted per method by
known amounts, so the paired Δs at B are known exactly and the rank statistics can be checked.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from toremi import cli, stats
from toremi.report.recompute import grid_runs
from toremi.transfer import _tau_b, compare, kendall_tau, pair_agreement

GRID = Path(__file__).resolve().parents[1] / "docs" / "results" / "quality_leakfree"
CONTROLS = ["control-aa", "control-oracle-news", "toremi-paper-a0.1"]


def copy_grid(dest: Path, shift: dict[str, float] | None = None, edit_yaml=None, edit_info=None) -> Path:
    """The committed grid's per-run files; ``shift``: label -> added to every domain's NLL."""
    dest.mkdir(parents=True)
    exp = yaml.safe_load((GRID / "experiment.yaml").read_text())
    if edit_yaml:
        edit_yaml(exp)
    (dest / "experiment.yaml").write_text(yaml.safe_dump(exp))
    for run in sorted((GRID / "runs").iterdir()):
        out = dest / "runs" / run.name
        shutil.copytree(run, out)
        label = run.name.rsplit("-s", 1)[0]
        if shift and label in shift:
            ev = json.loads((out / "eval.json").read_text())
            for d in ev["domains"].values():
                d["nll"] += shift[label]
            (out / "eval.json").write_text(json.dumps(ev))
        if edit_info:
            info = json.loads((out / "run.json").read_text())
            edit_info(info)
            (out / "run.json").write_text(json.dumps(info))
    return dest


def transfer_yaml(path: Path, a: Path, b: Path, out: Path, **extra) -> Path:
    doc = {"name": "t", "out": str(out), "scales": [{"name": "small", "dir": str(a)}, {"name": "large", "dir": str(b)}],
           "exclude_methods": CONTROLS, **extra}
    path.write_text(yaml.safe_dump(doc))
    return path


def deltas(grid: Path) -> dict:
    runs, _ = grid_runs(grid)
    return stats.macro_deltas([r for r in runs if r["label"] not in CONTROLS], "uniform")


def test_same_grid_agrees_and_a_reversed_one_disagrees(tmp_path, capsys):
    base = deltas(GRID)
    means = {m: float(np.mean(list(d.values()))) for m, d in base.items()}
    assert len(means) == 3 and len(set(np.sign(list(means.values())))) > 0
    a = copy_grid(tmp_path / "a")
    same = copy_grid(tmp_path / "same")
    rev = copy_grid(tmp_path / "rev", shift={m: -2 * v for m, v in means.items()})  # every Δ mean negated

    # the pairing is stats' own: the shifted grid's per-seed Δ = the original's + the shift
    got = deltas(rev)
    for m in base:
        for s in base[m]:
            assert got[m][s] == pytest.approx(base[m][s] - 2 * means[m], abs=1e-12)

    rc = cli.main(["transfer", "--config", str(transfer_yaml(tmp_path / "same.yaml", a, same, tmp_path / "o1"))])
    assert rc == 0
    doc = json.loads((tmp_path / "o1" / "transfer.json").read_text())
    c = doc["comparison"]
    assert c["kendall_tau"] == 1.0 and c["pair_agreement"] == 1.0 and c["kendall_tau_ci"] == [1.0, 1.0]
    assert c["methods"][-1] == "uniform" and c["resamples"] == 2000 and c["distinct_resamples"] == 10

    rc = cli.main(["transfer", "--config", str(transfer_yaml(tmp_path / "rev.yaml", a, rev, tmp_path / "o2"))])
    assert rc == 0
    doc = json.loads((tmp_path / "o2" / "transfer.json").read_text())
    c = doc["comparison"]
    assert c["kendall_tau"] == pytest.approx(-1.0) and c["pair_agreement"] == 0.0
    np.testing.assert_allclose(c["delta_b"], [-x for x in c["delta_a"]], atol=1e-12)
    md = (tmp_path / "o2" / "transfer.md").read_text()
    assert "| toremi-deemph |" in md and "Δ macro NLL at small" in md and "Δ macro NLL at large" in md
    assert "cannot" in md and "7 possible values" in md  # 4 entries: 6 pairs -> 7 values of τ
    # the side-by-side cells are stats.paired's own (t-interval), e.g. toremi-paper at scale A
    assert stats.fmt_delta(doc["paired"]["small"]["toremi-paper"]) in md
    out = capsys.readouterr().out
    assert "Kendall τ" in out


def test_bootstrap_is_seeded_and_paired():
    da = {"m1": {1: -0.02, 2: 0.01, 3: -0.03}, "m2": {1: 0.05, 2: 0.02, 3: 0.04}}
    db = {"m1": {1: -0.01, 2: 0.00, 3: -0.02}, "m2": {1: -0.01, 2: 0.03, 3: 0.06}}
    r1, r2 = compare(da, db, "base", 1000, 7), compare(da, db, "base", 1000, 7)
    assert r1 == r2
    assert r1["kendall_tau"] == pytest.approx(1.0)  # means: m1 < base < m2 at both scales
    lo, hi = r1["kendall_tau_ci"]
    assert lo < 1.0 and hi == 1.0  # seed 2 alone puts m1 above the baseline at scale A
    assert sum(r1["kendall_tau_bootstrap"].values()) + r1["kendall_tau_undefined"] == 1000
    with pytest.raises(stats.EvidenceError, match="seeds"):
        compare(da, {**db, "m2": {1: 0.0, 2: 0.0}}, "base", 1000)


def test_tau_and_pairwise_agreement_by_hand():
    rng = np.random.default_rng(0)
    for _ in range(50):
        x, y = rng.integers(0, 4, 6).astype(float), rng.integers(0, 4, 6).astype(float)
        if len(set(x)) > 1 and len(set(y)) > 1:
            assert _tau_b(x, y) == pytest.approx(kendall_tau(x, y), abs=1e-12)
    x, y = [0.0, 1.0, 2.0, 3.0], [0.0, 2.0, 1.0, 3.0]
    assert pair_agreement(x, y) == pytest.approx(5 / 6)
    assert _tau_b(x, y) == pytest.approx((5 - 1) / 6)
    same = [np.sign(x[i] - x[j]) == np.sign(y[i] - y[j]) for i, j in itertools.combinations(range(4), 2)]
    assert sum(same) == 5


def _refused(capsys, tmp_path, cfg: Path, *words) -> None:
    rc = cli.main(["transfer", "--config", str(cfg)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err
    assert not (tmp_path / "out").exists()


def test_refusals_one_line_exit_2_nothing_written(tmp_path, capsys):
    a = copy_grid(tmp_path / "a")

    def other_data(info):
        info["data_hash"] = "f" * 64
    b = copy_grid(tmp_path / "b-data", edit_info=other_data)
    _refused(capsys, tmp_path, transfer_yaml(tmp_path / "1.yaml", a, b, tmp_path / "out"), "different data", "ffffffffffff")

    def fewer_methods(exp):
        exp["methods"] = [m for m in exp["methods"] if m["name"] != "toremi-deemph"]
    b = copy_grid(tmp_path / "b-methods", edit_yaml=fewer_methods)
    _refused(capsys, tmp_path, transfer_yaml(tmp_path / "2.yaml", a, b, tmp_path / "out"), "different methods")

    def fewer_seeds(exp):
        exp["seeds"] = [1, 2]
    b = copy_grid(tmp_path / "b-seeds", edit_yaml=fewer_seeds)
    _refused(capsys, tmp_path, transfer_yaml(tmp_path / "3.yaml", a, b, tmp_path / "out"), "different seeds", "seed 3")


def test_two_experiment_configs_may_differ_only_in_scale(tmp_path, capsys):
    exp = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "transfer-tiny.yaml").read_text())
    big = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "transfer-x10.yaml").read_text())
    assert exp["train"]["model"]["size"] == "tiny" and big["train"]["model"]["size"] == "tiny-x10"
    assert exp["tokens"] == big["tokens"] and exp["methods"] == big["methods"] and exp["seeds"] == big["seeds"]

    def write(name, doc):
        p = tmp_path / name
        p.write_text(yaml.safe_dump(doc))
        return str(p)
    other = dict(big, tokens="elsewhere")
    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), "scales": [
        {"name": "tiny", "experiment": write("a.yaml", exp)}, {"name": "medium", "experiment": write("b.yaml", other)}]}))
    _refused(capsys, tmp_path, cfg, "different data", "tokens", "elsewhere")
    other = dict(big, methods=big["methods"][:-1])
    cfg.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), "scales": [
        {"name": "tiny", "experiment": write("a.yaml", exp)}, {"name": "medium", "experiment": write("c.yaml", other)}]}))
    _refused(capsys, tmp_path, cfg, "different methods")
    other = dict(big, train={**big["train"], "max_repetition": 2.0})
    cfg.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), "scales": [
        {"name": "tiny", "experiment": write("a.yaml", exp)}, {"name": "medium", "experiment": write("d.yaml", other)}]}))
    _refused(capsys, tmp_path, cfg, "max_repetition")
