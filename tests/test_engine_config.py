"""The method registry (a new method is one module), option ownership errors, experiment configs
validated at load, ``python -m toremi``."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from toremi.config import ConfigError, load_config, to_dict
from toremi.io import read_jsonl
from toremi.methods import REGISTRY, Method, MethodConfig, register
from toremi.train import TrainConfig, train

SRC = str(Path(__file__).resolve().parents[1] / "src")


@dataclass
class BoostOptions:
    factor: float = 2.0


def test_a_method_registered_outside_the_package_trains(tiny_tokens, tmp_path):
    @register("test-boost", options=BoostOptions, interval=2)
    class Boost(Method):
        """Doubles topic 0's weight at each update."""

        def _update(self, step, loss_sum, count):
            self.weights = self.weights.clone()
            self.weights[0] *= self.opts.factor

    try:
        cfg = load_config(TrainConfig, None, [
            f"tokens_dir={tiny_tokens}", f"out={tmp_path / 'run'}", "steps=4", "batch_size=2",
            "eval_every=0", "eval_batches=1", "progress=false", "method.name=test-boost",
            "method.test-boost.factor=3"])
        assert cfg.method.interval == 2 and cfg.method.factor == 3.0
        w = read_jsonl(train(cfg) / "weights.jsonl")
        assert [r["weights"][0] for r in w] == [3.0, 9.0] and w[-1]["weights"][1:] == [1.0] * 4
        with pytest.raises(ConfigError, match=r"method.factor is an option of method .*test-boost"):
            MethodConfig(name="odm", factor=2)
    finally:
        del REGISTRY["test-boost"]


def test_option_errors_name_the_owner_and_the_registered_methods():
    with pytest.raises(ConfigError, match=r"unknown method; registered: \[.*'doremi'.*'toremi-noise'"):
        load_config(TrainConfig, None, ["method.name=tormi"])
    with pytest.raises(ConfigError, match=r"method.tau is an option of method stratified"):
        load_config(TrainConfig, None, ["method.name=toremi", "method.tau=2"])
    with pytest.raises(ConfigError, match=r"method.odm: these are options of method 'odm'"):
        load_config(TrainConfig, None, ["method.name=toremi", "method.odm.smoothing=0.5"])
    # flat keys of earlier versions still work, and the saved config round-trips
    old = load_config(TrainConfig, None, ["method.name=odm", "method.odm_smoothing=0.5"])
    new = load_config(TrainConfig, None, ["method.name=odm", "method.odm.smoothing=0.5"])
    assert old.method.options() == new.method.options() and new.method.smoothing == 0.5
    saved = to_dict(new)["method"]
    assert saved == {"name": "odm", "interval": 1, "loss_norm": "weighted_mean",
                     "unlabelled_weight": 1.0, "stat_unit": "token", "odm": {"smoothing": 0.5}}
    assert load_config(TrainConfig, None, [], defaults={"method": saved}).method.options() == new.method.options()


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


EXP = """name: t
out: {out}
tokens: /nowhere
methods:
  - {{name: uniform, train: {{method.name: uniform}}}}
  - {{name: proxy, train: {{method.name: doremi, method.doremi.reference: "{{run:{ref}}}"}}}}
train: {{steps: 10}}
eval: {{{eval}}}
"""


def test_experiment_typo_fails_at_load_naming_key(tmp_path):
    from toremi.experiment import ExperimentConfig, train_config

    cfg = write(tmp_path, EXP.format(out=tmp_path / "o", ref="uniform", eval="max_doc: 4"))
    with pytest.raises(ConfigError, match=r"\['eval.max_doc'\]; valid keys here: .*'eval.max_docs'"):
        load_config(ExperimentConfig, cfg)
    assert not (tmp_path / "o").exists()  # nothing ran
    cfg = write(tmp_path, EXP.format(out=tmp_path / "o", ref="proxy", eval="max_docs: 4"))
    with pytest.raises(ConfigError, match=r"\{run:proxy\} must name a method listed before it"):
        load_config(ExperimentConfig, cfg)
    cfg = write(tmp_path, EXP.format(out=tmp_path / "o", ref="uniform", eval="max_docs: 4"))
    exp = load_config(ExperimentConfig, cfg)
    tc = train_config(exp, exp.methods[1], 2, Path("/t"), tmp_path / "o" / "runs" / "proxy-s2")
    assert tc.method.reference == str(tmp_path / "o" / "runs" / "uniform-s2")


def test_python_dash_m_toremi():
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-m", "toremi", "--version"], env=env, capture_output=True,
                         text=True, timeout=120)
    import toremi

    assert out.returncode == 0 and out.stdout.strip() == toremi.__version__
