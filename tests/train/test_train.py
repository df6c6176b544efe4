"""Trainer on real prepared tokens: resume equality, signals, NaN skip, sync-free step, HF export."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from functools import partial

import pytest
import torch

from helpers import SRC, assert_same_run, count_host_syncs, final_params, run_logs, train_cfg
from toremi.config import load_config
from toremi.io import read_json, read_jsonl
from toremi.train import TrainConfig, train
from toremi.train import checkpoint
from toremi.train.distributed import Dist
from toremi.train.trainer import Trainer

make_cfg = partial(train_cfg, base=["steps=12", "batch_size=4", "accum=2", "log_every=2", "eval_every=6",
                                    "eval_batches=2", "progress=false", "optim.warmup_steps=2", "method.interval=2"])


METHOD_ARGS = {
    "toremi": ["method.name=toremi", "method.switch=fraction", "method.switch_fraction=0.5"],
    "odm": ["method.name=odm"],
}


@pytest.fixture(scope="module")
def reference_runs(tiny_tokens, tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    return {name: train(make_cfg(tiny_tokens, root / name, *args)) for name, args in METHOD_ARGS.items()}


@pytest.mark.parametrize("name", list(METHOD_ARGS))
def test_resume_equals_uninterrupted(name, tiny_tokens, tmp_path, reference_runs):
    run = tmp_path / name
    train(make_cfg(tiny_tokens, run, *METHOD_ARGS[name], "stop_at_step=7"))  # mid-interval stop
    assert checkpoint.latest(run).name == "step-0000007"
    assert not (run / "final").exists()
    assert "stop_at_step" in read_json(run / "run.json")["status"]
    train(make_cfg(tiny_tokens, run, *METHOD_ARGS[name]))  # automatic resume
    info = read_json(run / "run.json")
    assert info["status"] == "done" and info["resumed_from"].endswith("step-0000007")
    assert_same_run(reference_runs[name], run)
    w = read_jsonl(run / "weights.jsonl")
    assert [r["step"] for r in w] == list(range(2, 13, 2))
    if name == "toremi":
        assert {r["stage"] for r in w} == {1, 2} and any(x != 1.0 for x in w[-1]["weights"])
    else:
        assert w[-1]["probs"] is not None and abs(sum(w[-1]["probs"]) - 1) < 1e-9


def test_sigterm_checkpoints_and_resumes(tiny_tokens, tmp_path, reference_runs):
    run = tmp_path / "sig"
    args = [f"--tokens={tiny_tokens}", f"--out={run}", "steps=12", "batch_size=4", "accum=2",
            "log_every=2", "eval_every=6", "eval_batches=2", "progress=false",
            "optim.warmup_steps=2", "method.interval=2", *METHOD_ARGS["toremi"]]
    code = ("import sys, time, toremi.train.trainer as t\n"
            "orig = t.StepEngine.train_step\n"
            "def slow(self, b):\n    time.sleep(0.3)\n    return orig(self, b)\n"
            "t.StepEngine.train_step = slow\n"  # slow the loop down so the signal lands mid-run
            "from toremi.train.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not read_jsonl(run / "metrics.jsonl"):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out  # interrupted and checkpointed (README: exit codes)
    assert "interrupted by SIGTERM" in out
    ck = checkpoint.latest(run)
    assert ck is not None and not (run / "final").exists()
    train(make_cfg(tiny_tokens, run, *METHOD_ARGS["toremi"]))
    assert_same_run(reference_runs["toremi"], run)


def test_resume_refused_on_other_data(tiny_tokens, tmp_path):
    run = tmp_path / "run"
    train(make_cfg(tiny_tokens, run, "steps=2"))
    with pytest.raises(ValueError, match=r"method_options changed.*'name': \('uniform', 'odm'\)"):
        train(make_cfg(tiny_tokens, run, "steps=4", "method.name=odm"))
    other = tmp_path / "tokens"
    shutil.copytree(tiny_tokens, other)
    man = read_json(other / "manifest.json")
    man["topic_names"] = man["topic_names"][:-1] + ["weather"]
    (other / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ValueError, match=r"topic set changed \(added \['weather'\], removed \['tech'\]\)"):
        train(make_cfg(other, run, "steps=4"))
    man["data_hash"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ValueError, match="data hash"):
        train(make_cfg(other, run, "steps=4"))


def _trainer(tokens, out, *overrides) -> Trainer:
    return Trainer(make_cfg(tokens, out, *overrides), Dist())


def test_nonfinite_step_is_skipped_then_training_continues(tiny_tokens, tmp_path):
    tr = _trainer(tiny_tokens, tmp_path / "nan", "method.name=toremi", "packing=none")  # 8 samples/step
    p = tr.model.transformer.h[0].mlp.c_fc.weight
    poison = {"on": False}
    p.register_hook(lambda g: torch.full_like(g, float("nan")) if poison["on"] else g)
    tr.engine.train_step(tr.next_batches())
    before = [q.detach().clone() for q in tr.model.parameters()]
    poison["on"] = True
    tr.engine.train_step(tr.next_batches())
    assert all(torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))  # step skipped
    assert tr.engine.bad.tensor.tolist() == [1, 1, 1]
    poison["on"] = False
    tr.engine.train_step(tr.next_batches())
    assert not all(torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
    assert tr.engine.bad.tensor.tolist() == [1, 0, 1]
    assert torch.isfinite(tr.rw.loss_sum).all() and tr.rw.count[:tr.K].sum() == 2 * 8  # 2 good steps


def test_persistent_nonfinite_stops_with_checkpoint(tiny_tokens, tmp_path):
    run = tmp_path / "bad"
    cfg = make_cfg(tiny_tokens, run, "max_bad_steps=3", "log_every=1", "optim.lr=1e30",
                   "optim.warmup_steps=0", "optim.grad_clip=0")
    train(cfg)
    info = read_json(run / "run.json")
    assert "non-finite steps in a row" in info["status"], info["status"]
    assert info["skipped_steps"] >= 3 and checkpoint.latest(run) is not None
    m = read_jsonl(run / "metrics.jsonl")  # strict JSON: no NaN written for skipped steps
    assert m and all(r["weighted_loss"] is None or r["weighted_loss"] == r["weighted_loss"] for r in m)
    assert not (run / "final").exists()


def test_training_step_is_sync_free(tiny_tokens, tmp_path, monkeypatch):
    """Count every Tensor -> host conversion during ordinary steps: there must be none."""
    tr = _trainer(tiny_tokens, tmp_path / "sync", "method.name=toremi")
    batches = [tr.next_batches() for _ in range(3)]
    assert count_host_syncs(monkeypatch, lambda: [tr.engine.train_step(b) for b in batches]) == []
    tr.step = 2
    from toremi.train.callbacks import WeightUpdate

    # the interval update does read the stats: the counter must see it
    assert count_host_syncs(monkeypatch, lambda: WeightUpdate(tr.rw).on_step_end(tr))


def test_hf_export_matches_and_final_dir(tiny_tokens, tmp_path):
    from transformers import GPT2LMHeadModel

    from toremi.model import load_hf

    run = train(make_cfg(tiny_tokens, tmp_path / "run", "steps=3", "eval_every=0"))
    final = run / "final"
    assert (final / "tokenizer.json").read_text() == (tiny_tokens / "tokenizer.json").read_text()
    from toremi.tokenizer import from_file

    hf_cfg = json.loads((final / "config.json").read_text())
    assert hf_cfg["eos_token_id"] == from_file(tiny_tokens / "tokenizer.json").eot_id
    ours = load_hf(final).eval()
    hf = GPT2LMHeadModel.from_pretrained(final).eval()
    x = torch.randint(0, 512, (2, 64))
    with torch.no_grad():
        a, b = ours(x), hf(x).logits
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    # the checkpoint's weights are the HF export, and match the trained model exactly
    model, state = checkpoint.load(checkpoint.latest(run))
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), ours.state_dict().values()))
    assert state["step"] == 3 and state["reweighter"]["method"]["weights"].shape == (5,)
    info = read_json(run / "run.json")
    assert info["topic_names"] == ["business", "entertainment", "politics", "sports", "tech"]
    assert info["tokenizer"]["fingerprint"] and info["method_options"]["name"] == "uniform"


def test_cli_unlabelled_tokens_warn_and_train(tiny_corpus, tmp_path, capsys):
    """Tokens prepared without topic attributes: a warning, every sample weighs 1, training runs."""
    from toremi.prepare import PrepareConfig, prepare
    from toremi.train.cli import main

    tokens = prepare(PrepareConfig(corpus=tiny_corpus, out=tmp_path / "tok", tokenizer="bpe:512",
                                   seq_len=64, topics_from="none", bpe_train_mb=0.3))
    run = tmp_path / "run"
    rc = main(["--tokens", str(tokens), "--out", str(run), "method=toremi", "steps=3",
               "batch_size=2", "progress=false", "method.interval=1", "eval_batches=1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "has no topic labels" in out
    info = read_json(run / "run.json")
    assert info["labelled"] is False and info["status"] == "done" and info["warnings"]
    assert info["method_options"]["name"] == "toremi"
    m = read_jsonl(run / "metrics.jsonl")
    assert m[-1]["step"] == 3 and m[-2]["loss"] is not None
    cfg = load_config(TrainConfig, run / "config.yaml")  # the saved config loads back
    assert cfg.method.name == "toremi" and cfg.method.unlabelled_weight == 1.0


def test_every_named_size_builds_and_runs():
    """CPU sizes run a real forward; the GPT-2 sizes are built on the meta device (no memory) and
    must have exactly the parameter count of OpenAI's GPT-2 124M / 355M (HF GPT2LMHeadModel)."""
    from toremi.model import GPT, SIZES, GPTConfig

    hf_params = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168}
    assert set(hf_params) < set(SIZES)
    for size in SIZES:
        if size in hf_params:
            with torch.device("meta"):
                model = GPT(GPTConfig.named(size, vocab_size=50257, block_size=1024, pad_vocab_to=1))
                out = model(torch.zeros(1, 8, dtype=torch.long))
            assert model.num_params(non_embedding=False) == hf_params[size], size
            assert out.shape == (1, 8, 50257), size
            continue
        model = GPT(GPTConfig.named(size, vocab_size=100, block_size=8))
        out = model(torch.zeros(1, 8, dtype=torch.long))
        assert out.shape == (1, 8, 128) and torch.isfinite(out).all(), size

def to_layout1(state: dict) -> dict:
    """train_state.pt as toremi wrote it before the Reweighter (commit 0364be7): method state and
    every device accumulator at the top level, flat method options of every method."""
    old = {k: v for k, v in state.items() if k not in ("state_version", "reweighter", "engine")}
    rw, eng = state["reweighter"], state["engine"]
    old["method"] = rw["method"]
    old["bad"] = eng["bad"]
    old["accumulators"] = {"stat_loss": rw["stats"]["loss"], "stat_count": rw["stats"]["count"],
                           **{k: eng[k] for k in ("log_tloss", "log_tcount", "log_sums")}}
    old["method_options"] = {**state["method_options"], "tau": float("inf"), "odm_smoothing": 0.9}
    return old


def test_pre_reweighter_checkpoint_resumes_bit_exact(tiny_tokens, tmp_path, reference_runs):
    run = tmp_path / "legacy"
    train(make_cfg(tiny_tokens, run, *METHOD_ARGS["toremi"], "stop_at_step=7"))
    path = checkpoint.latest(run) / "train_state.pt"
    state = torch.load(path, weights_only=False)
    torch.save(to_layout1(state), path)
    train(make_cfg(tiny_tokens, run, *METHOD_ARGS["toremi"]))
    # A layout-1 checkpoint predates the per-topic epoch counters: they restart from the resume
    # step (documented); everything else continues bit for bit.
    epochs = ("topic_tokens_seen", "topic_epochs", "topic_weighted_epochs")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in epochs} for r in rs]  # noqa: E731
    (ma, wa), (mb, wb) = run_logs(reference_runs["toremi"]), run_logs(run)
    assert ma == mb and strip(wa) == strip(wb) and len(wa) > 0
    sa, sb = final_params(reference_runs["toremi"]), final_params(run)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_checkpoint_from_a_newer_layout_is_refused(tiny_tokens, tmp_path):
    run = tmp_path / "newer"
    train(make_cfg(tiny_tokens, run, "steps=2"))
    path = checkpoint.latest(run) / "train_state.pt"
    state = torch.load(path, weights_only=False)
    state["state_version"] = 99
    torch.save(state, path)
    with pytest.raises(ValueError, match="state layout 99 is newer"):
        train(make_cfg(tiny_tokens, run, "steps=4"))
