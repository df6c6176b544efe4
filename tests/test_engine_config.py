"""The method registry (a new method is one module), option ownership errors, experiment configs
validated at load, ``python -m toremi``."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

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
        assert cfg.method.interval == 2 and cfg.method.opts.factor == 3.0
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
    # a renamed key of earlier versions is refused with the valid ones; the short flat form of a
    # field equals the nested one, and the saved config round-trips
    with pytest.raises(ConfigError, match=r"unknown config key method.odm_smoothing.*'smoothing'"):
        load_config(TrainConfig, None, ["method.name=odm", "method.odm_smoothing=0.5"])
    flat = load_config(TrainConfig, None, ["method.name=odm", "method.smoothing=0.5"])
    new = load_config(TrainConfig, None, ["method.name=odm", "method.odm.smoothing=0.5"])
    assert flat.method.options() == new.method.options() and new.method.opts.smoothing == 0.5
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
    assert tc.method.opts.reference == str(tmp_path / "o" / "runs" / "uniform-s2")


def test_python_dash_m_toremi():
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-m", "toremi", "--version"], env=env, capture_output=True,
                         text=True, timeout=120)
    import toremi

    assert out.returncode == 0 and out.stdout.strip() == toremi.__version__


# --- configs validated before any work ---------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]


def quality_with(tmp_path, old: str, new: str) -> Path:
    """configs/quality.yaml with one line changed and its outputs moved under tmp_path."""
    text = (REPO / "configs" / "quality.yaml").read_text()
    assert old in text
    text = text.replace(old, new).replace("out/quality/", f"{tmp_path}/q/").replace(
        "out: runs/quality", f"out: {tmp_path}/runs")
    path = tmp_path / "typo.yaml"
    path.write_text(text)
    return path


STAGE_TYPO = """
import sys, time
t0 = time.perf_counter()
from toremi.cli import main
rc = main(sys.argv[1:])
print("RESULT", rc, "torch" in sys.modules, "numpy" in sys.modules, round(time.perf_counter() - t0, 2))
"""


def run_stage(*args: str, cwd: Path) -> tuple[int, bool, str]:
    """``toremi ARGS`` in a fresh interpreter: (exit code, torch imported, stderr)."""
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-c", STAGE_TYPO, *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=120)
    rc, torch_loaded = out.stdout.split("RESULT")[1].split()[:2]
    return int(rc), torch_loaded == "True", out.stderr


def test_experiment_eval_typo_fails_before_any_work_and_before_torch(tmp_path):
    """The issue's case: a typo in `eval:` of the quality config. It is refused at load (exit 2),
    names the key and the valid keys, creates nothing, and never imports torch: the check runs in
    the time it takes to import the config modules (the < 2 s goal), not torch's."""
    path = quality_with(tmp_path, "  max_docs: 64", "  max_dox: 64")
    rc, torch_loaded, err = run_stage("experiment", "--config", str(path), cwd=tmp_path)
    assert rc == 2, err
    assert "unknown config key(s) ['eval.max_dox']" in err
    assert "valid keys here: [" in err and "'eval.max_docs'" in err and "'eval.max_tokens'" in err
    assert not torch_loaded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["typo.yaml"]  # no corpus, no runs


@pytest.mark.parametrize("old,new,message", [
    ("  steps: 2000", "  stepz: 2000", "['train.stepz']; valid keys here: ["),
    ("method.alpha: 0.1", "method.alhpa: 0.1", "unknown config key method.alhpa; valid keys"),
    ("seq_len: 128,", "seq_lenn: 128,", "['pipeline.prepare.seq_lenn']; valid keys here: ["),
    ("max_mb_per_domain: 1.5", "max_mb_per_domian: 1.5", "['pipeline.corpus.max_mb_per_domian']"),
])
def test_experiment_typo_in_any_section_fails_before_torch(tmp_path, old, new, message):
    path = quality_with(tmp_path, old, new)
    rc, torch_loaded, err = run_stage("experiment", "--config", str(path), cwd=tmp_path)
    assert rc == 2 and message in err and not torch_loaded, err
    assert not (tmp_path / "q").exists() and not (tmp_path / "runs").exists()


def test_train_and_prepare_typos_fail_before_torch(tmp_path):
    rc, torch_loaded, err = run_stage("train", "--tokens", str(tmp_path / "t"), "--out",
                                      str(tmp_path / "r"), "method=toremi", "optim.lrr=1", cwd=tmp_path)
    assert rc == 2 and not torch_loaded, err
    assert "['optim.lrr']; valid keys here: [" in err and "'optim.lr'" in err
    rc, torch_loaded, err = run_stage("prepare", "--corpus", str(tmp_path / "c"), "--out",
                                      str(tmp_path / "t"), "seq_lenn=64", cwd=tmp_path)
    assert rc == 2 and not torch_loaded and "['seq_lenn']" in err and "'seq_len'" in err, err
    assert not (tmp_path / "r").exists() and not (tmp_path / "t").exists()


def test_method_options_validate_without_torch_and_methods_still_run():
    """Method modules bind torch lazily (toremi.lazy): options validate without it; a method that
    runs gets the real module."""
    code = ("import sys; from toremi.config import load_config; from toremi.train import TrainConfig;"
            "c = load_config(TrainConfig, None, ['method.name=toremi-noise', 'method.preset=paper']);"
            "print(c.method.name, 'torch' in sys.modules);"
            "import torch; from toremi.methods import build_method;"
            "m = build_method(c.method, 3, 10);"
            "m.update(0, torch.tensor([3., 2., 1.], dtype=torch.float64), torch.ones(3, dtype=torch.float64));"
            "print(type(m.weights).__name__, m.weights.shape[0])")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": SRC},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["toremi-noise", "False", "Tensor", "3"]


# --- one path from CLI flags to overrides --------------------------------------------------------
@dataclass
class FlagsConfig:
    corpus: Optional[str] = None
    out: Optional[str] = None
    seq_len: int = 8
    tokenizer: str = "gpt2"
    resume: Literal["auto", "must", "never"] = "auto"
    allow_partial: bool = False
    tokens_dir: Optional[str] = None
    method: str = "x"


def test_command_line_overrides():
    """toremi.stage: options and key=value items become overrides in one place, with one refusal."""
    from toremi.stage import Stage

    st = Stage("t", FlagsConfig, lock=lambda cfg: None, aliases={"--tokens": "tokens_dir", "--resume": "resume=must"},
               shorthands={"m": "method"})
    cfg = st.parse(["--corpus", "c", "--seq-len", "64", "--allow-partial", "tokenizer=bpe:512", "m=toremi"])
    assert (cfg.corpus, cfg.out, cfg.seq_len, cfg.allow_partial, cfg.tokenizer, cfg.method) == \
        ("c", None, 64, True, "bpe:512", "toremi")
    cfg = st.parse(["--tokens", "T", "--resume"])
    assert (cfg.tokens_dir, cfg.resume) == ("T", "must")
    # the same key both ways: refused with both spellings, unless the values agree
    with pytest.raises(ConfigError, match=r"seq_len is given twice, as --seq-len 64 and as seq_len=128"):
        st.parse(["--seq-len", "64", "seq_len=128"])
    with pytest.raises(ConfigError, match=r"resume is given twice, as --resume and as resume=never"):
        st.parse(["--resume", "resume=never"])
    assert st.parse(["--seq-len", "64", "seq_len=64"]).seq_len == 64


def test_stage_clis_share_the_flag_path(tmp_path):
    """train/prepare/eval parse their flags through toremi.stage (same refusal everywhere)."""
    from toremi.train.cli import parse

    cfg = parse(["--tokens", "T", "--out", "O", "--resume", "method=toremi", "preset=authors"])
    assert (str(cfg.tokens_dir), str(cfg.out), cfg.resume) == ("T", "O", "must")
    assert cfg.method.name == "toremi" and cfg.method.opts.preset == "authors"
    with pytest.raises(ConfigError, match="out is given twice"):
        parse(["--out", "O", "out=P"])
    from toremi.evaluate.cli import main as eval_main
    from toremi.prepare import main as prepare_main

    with pytest.raises(ConfigError, match=r"seq_len is given twice, as --seq-len 64"):
        prepare_main(["--corpus", str(tmp_path), "--seq-len", "64", "seq_len=128"])
    with pytest.raises(ConfigError, match=r"max_docs is given twice, as --max-docs 3"):
        eval_main(["--run", str(tmp_path), "--max-docs", "3", "max_docs=4"])


def test_flatten_unflatten_and_dotted_keys():
    from toremi.config import apply_overrides, flatten, unflatten

    nested = {"method": {"name": "toremi", "toremi": {"alpha": 1.0}}, "steps": 3, "eval": {}}
    flat = flatten(nested)
    assert flat == {"method.name": "toremi", "method.toremi.alpha": 1.0, "steps": 3, "eval": {}}
    assert unflatten(flat) == nested
    # dotted and nested keys mix (experiment `train:` sections are written both ways)
    assert unflatten({"method.name": "odm", "method": {"odm": {"smoothing": 0.5}}}) == {
        "method": {"name": "odm", "odm": {"smoothing": 0.5}}}
    with pytest.raises(ConfigError, match=r"override 'steps.x=1': steps is not a section"):
        apply_overrides({"steps": 3}, ["steps.x=1"])
    with pytest.raises(ConfigError, match=r"steps.x: steps is not a section"):
        unflatten({"steps": 3, "steps.x": 1})
