"""Evidence protocol (docs/eval.md): paired statistics, the controls, and the method fixes.

The negative control and the A/A pair train real tiny runs; the statistics are checked on run
records with hand-computed differences."""

import math
from pathlib import Path

import numpy as np
import pytest

from helpers import t
from toremi.methods import MethodConfig, build_method
from toremi.stats import EvidenceError, fmt_delta, paired, t_interval, unigram_cross_entropy


# -- method fixes ----------------------------------------------------------------------------------
def test_toremi_sampling_starts_natural_and_alpha0_stays_natural():
    counts = t(10, 30, 60, 0)
    natural = (counts / counts.sum()).tolist()
    m = build_method(MethodConfig(name="toremi-sampling", interval=1, alpha=0.0), 4, 10, counts)
    assert m.sampling_probs.tolist() == pytest.approx(natural)
    for step in range(1, 11):  # both stages, large loss differences: α=0 never moves
        m.update(step, t(9, 1, 3, 0), t(1, 1, 1, 0))
    assert m.stage == 2 and m.sampling_probs.tolist() == natural
    # α=1: w = [min(1 + (9 - 13/3), β), 1, 1, 1] after one update -> p ∝ n_k w_k
    m1 = build_method(MethodConfig(name="toremi-sampling", interval=1), 4, 10, counts)
    m1.update(1, t(9, 1, 3, 0), t(1, 1, 1, 0))
    w0 = min(1 + (9 - 13 / 3), 5.0)  # clamp β = 5
    p = np.array([10 * w0, 30, 60, 0])
    assert m1.sampling_probs.tolist() == pytest.approx((p / p.sum()).tolist())


@pytest.mark.parametrize("total,interval,stage2_updates", [(8000, 100, 11), (400, 20, 10), (120, 20, 3),
                                                           (400, 100, 2)])
def test_stage2_gets_min_updates(total, interval, stage2_updates):
    """8000/100: the paper's 7/8 switch already leaves 11 updates; short runs move the switch."""
    m = build_method(MethodConfig(name="toremi", preset="paper", interval=interval), 2, total)
    stages = []
    for step in range(interval, total + 1, interval):  # the trainer's update steps
        m.update(step, t(3, 1), t(1, 1))
        stages.append(m.stage)
    assert stages.count(2) == stage2_updates and stages[0] == 1


def test_oracle_weights_one_topic():
    m = build_method(MethodConfig(name="oracle", opts={"topic": 2, "factor": 3.0}), 4, 10)
    m.update(5, t(1, 2, 3, 4), t(1, 1, 1, 1))
    assert m.topic_weights.tolist() == [1, 1, 3, 1] and m.sampling_probs is None
    with pytest.raises(ValueError, match="topic=7"):
        build_method(MethodConfig(name="oracle", opts={"topic": 7}), 4, 10)


# -- controls on real training runs ---------------------------------------------------------------
def _train(tokens: Path, out: Path, **kw) -> bytes:
    from toremi.train import TrainConfig, train

    train(TrainConfig(tokens_dir=tokens, out=out, steps=8, batch_size=4, eval_every=0, eval_batches=1,
                      log_every=4, progress=False, device="cpu", seed=3, **kw))
    return (out / "final" / "model.safetensors").read_bytes()


def test_negative_control_alpha0_equals_uniform_bit_for_bit_and_aa_differs(tiny_tokens, tmp_path):
    uniform = _train(tiny_tokens, tmp_path / "u", method=MethodConfig(name="uniform"))
    alpha0 = _train(tiny_tokens, tmp_path / "a0", method=MethodConfig(name="toremi", interval=2, alpha=0.0))
    assert alpha0 == uniform
    # Same seed, another data order: same initialisation, different weights at the end.
    aa = _train(tiny_tokens, tmp_path / "aa", method=MethodConfig(name="uniform"), data_seed=1003)
    assert aa != uniform
    same_order = _train(tiny_tokens, tmp_path / "s3", method=MethodConfig(name="uniform"), data_seed=3)
    assert same_order == uniform
    # A real toremi run moves away from uniform (the control is not equal by accident).
    moved = _train(tiny_tokens, tmp_path / "t", method=MethodConfig(name="toremi", interval=2, alpha=5.0))
    assert moved != uniform


def test_unigram_cross_entropy_matches_direct_count(tiny_tokens):
    from toremi.data.shards import TokenDataset

    u = unigram_cross_entropy(tiny_tokens)
    counts = {}
    for split in ("train", "dev"):
        ds = TokenDataset(tiny_tokens, split)
        b = ds.gather(np.arange(len(ds)))["labels"].numpy().ravel()
        counts[split] = np.bincount(b[b >= 0], minlength=ds.vocab_size)
    p = (counts["train"] + 1) / (counts["train"].sum() + len(counts["train"]))
    assert u["val_ce"] == pytest.approx(-(counts["dev"] * np.log(p)).sum() / counts["dev"].sum())
    assert u["train_tokens"] == counts["train"].sum() and 0 < u["train_entropy"] < math.log(len(p))


# -- paired statistics ----------------------------------------------------------------------------
def run(label, seed, nll, bpb=None, data_hash="h", steps=10, ppl=None):
    doms = {d: {"nll": v, "bpb": (bpb or {}).get(d, v / 2), "ppl": math.exp(v)} for d, v in nll.items()}
    return {"label": label, "seed": seed, "name": f"{label}-s{seed}", "dir": f"/nonexistent/{label}-s{seed}",
            "info": {"data_hash": data_hash, "total_steps": steps, "tokens_per_step": 64},
            "eval": {"domains": doms, "macro_ppl": ppl or float(np.mean([x["ppl"] for x in doms.values()]))},
            "metrics": [], "weights": []}


def test_paired_differences_macro_ci_and_improved():
    base = [run("uniform", s, {"a": 5.0 + s, "b": 4.0}) for s in (1, 2, 3)]
    meth = [run("m", 1, {"a": 5.9, "b": 4.0}), run("m", 2, {"a": 6.8, "b": 4.1}),
            run("m", 3, {"a": 8.2, "b": 3.9})]
    p = paired(base + meth, "uniform")["methods"]["m"]
    da = [-0.1, -0.2, 0.2]
    assert p["nll"]["a"]["mean"] == pytest.approx(np.mean(da))
    assert p["nll"]["a"]["ci"] == pytest.approx(4.302653 * np.std(da, ddof=1) / math.sqrt(3), rel=1e-5)
    assert p["nll"]["a"]["improved"] == 2
    macro = [(-0.1 + 0.0) / 2, (-0.2 + 0.1) / 2, (0.2 - 0.1) / 2]  # mean over domains of Δ NLL
    assert p["macro_nll"]["mean"] == pytest.approx(np.mean(macro))
    assert p["macro_nll"]["improved"] == 2 and p["identical_weights"] == 0


def test_one_seed_ci_is_na_and_missing_baseline_is_named():
    p = paired([run("uniform", 1, {"a": 5.0}), run("m", 1, {"a": 4.5})], "uniform")["methods"]["m"]
    assert p["macro_nll"]["ci"] is None and fmt_delta(p["macro_nll"]) == "-0.500 ± n/a (1/1)"
    assert t_interval([1.0])["ci"] is None
    with pytest.raises(EvidenceError, match=r"m-s2: no baseline run 'uniform' with seed 2 \(expected uniform-s2\)"):
        paired([run("uniform", 1, {"a": 5.0}), run("m", 1, {"a": 4.5}), run("m", 2, {"a": 4.5})])


@pytest.mark.parametrize("kw,what", [({"data_hash": "other"}, "data hash"), ({"steps": 11}, "token budget")])
def test_runs_with_different_data_or_budget_are_refused(kw, what):
    with pytest.raises(EvidenceError, match=f"differ in {what}: uniform-s1 has .*, m-s1 has"):
        paired([run("uniform", 1, {"a": 5.0}), run("m", 1, {"a": 4.5}, **kw)])
