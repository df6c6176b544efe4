"""Sampling methods change what the model trains on: the realised topic mix of a real run.

A corpus with a skewed natural topic mix (one BBC topic has 6x the documents of each other one).
Each sampling method trains for real (``train()``); every micro-batch handed to the step engine is
recorded, and the histogram of the topics of the sequences actually trained on is compared with
the probabilities the method had in force at each step (initially uniform over topics, then the
``probs`` it logged after each update) by a Pearson χ² test at a fixed seed. A loader that ignored
the method would reproduce the natural mix, which the same test rejects (checked on ``uniform``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from helpers import write_bbc_corpus
from toremi.config import load_config
from toremi.data.shards import TokenDataset
from toremi.io import read_jsonl
from toremi.train import TrainConfig, train
from toremi.train.step import StepEngine

DOCS = {"business": 48, "entertainment": 8, "politics": 8, "sports": 8, "tech": 8}
STEPS, BATCH = 40, 8


@pytest.fixture(scope="module")
def skewed_tokens(tmp_path_factory):
    from toremi.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("skewed")
    write_bbc_corpus(root / "corpus", DOCS, eval_per_topic=2)
    return prepare(PrepareConfig(corpus=root / "corpus", out=root / "tokens", tokenizer="bpe:512",
                                 seq_len=64, topics_from="label", bpe_train_mb=0.3))


def drawn_topics(tokens, out, method_args, monkeypatch) -> tuple[np.ndarray, list]:
    """Train for real; return the topic of every sequence the step engine trained on, per step."""
    seen = []
    orig = StepEngine.train_step

    def recording(self, batches):
        seen.append(torch.cat([b.topic_ids[:, 0] for b in batches]).cpu().numpy())
        return orig(self, batches)

    monkeypatch.setattr(StepEngine, "train_step", recording)
    cfg = load_config(TrainConfig, None, [
        f"tokens_dir={tokens}", f"out={out}", f"steps={STEPS}", f"batch_size={BATCH}", "accum=1",
        "log_every=10", "eval_every=0", "eval_batches=1", "progress=false", "seed=3",
        "device=cpu", *method_args])
    train(cfg)
    monkeypatch.undo()
    assert len(seen) == STEPS and all(len(s) == BATCH for s in seen), "one recorded batch per step"
    return np.stack(seen), read_jsonl(out / "weights.jsonl")


def probs_per_step(weights_log: list, K: int) -> np.ndarray:
    """[STEPS, K]: uniform until the first update, then the probs logged at each update."""
    p = np.full((STEPS, K), 1.0 / K)
    for rec in weights_log:
        assert rec["probs"] is not None, "a sampling method logs its sampling probabilities"
        p[rec["step"]:] = rec["probs"]  # in force from the step after the update
    return p


def chi2(topics: np.ndarray, p: np.ndarray, K: int) -> tuple[float, np.ndarray, np.ndarray]:
    observed = np.bincount(topics.reshape(-1), minlength=K)
    expected = (p * topics.shape[1]).sum(0)
    return float(chisquare(observed, expected).pvalue), observed, expected


@pytest.mark.parametrize("method_args", [
    ["method.name=stratified"],
    ["method.name=odm"],
    ["method.name=toremi-sampling", "method.interval=5", "method.alpha=10"],
], ids=["stratified", "odm", "toremi-sampling"])
def test_realised_topic_mix_follows_the_method(method_args, skewed_tokens, tmp_path, monkeypatch):
    ds = TokenDataset(skewed_tokens)
    K = ds.num_topics
    topics, log = drawn_topics(skewed_tokens, tmp_path / "run", method_args, monkeypatch)
    p = probs_per_step(log, K)
    if "toremi-sampling" in method_args[0]:
        # p ∝ natural share × w starts at the natural mix: judge the steps after the first update
        first = log[0]["step"]
        topics, p = topics[first:], p[first:]
    pval, obs, exp = chi2(topics, p, K)
    natural = np.bincount(ds.topics[:, 0], minlength=K) / len(ds)
    assert pval > 1e-3, (f"{method_args[0]}: the topics trained on do not follow the method's "
                         f"sampling probabilities (χ² p={pval:.2g}); observed {obs.tolist()}, "
                         f"expected {np.round(exp, 1).tolist()}, natural mix "
                         f"{np.round(natural * topics.size, 1).tolist()}")
    # the method's mix is far from the natural one, so the test above has the power to notice
    if "toremi-sampling" not in method_args[0]:  # toremi-sampling starts at, and stays near, the natural mix
        assert chisquare(obs, natural * topics.size).pvalue < 1e-6
    if "toremi-sampling" in method_args[0]:
        assert np.ptp(p[-1]) > 0.05, "toremi-sampling's probabilities moved during the run"


def test_uniform_trains_on_the_natural_mix(skewed_tokens, tmp_path, monkeypatch):
    ds = TokenDataset(skewed_tokens)
    K = ds.num_topics
    topics, _ = drawn_topics(skewed_tokens, tmp_path / "run", ["method.name=uniform"], monkeypatch)
    natural = np.bincount(ds.topics[:, 0], minlength=K) / len(ds)
    obs = np.bincount(topics.reshape(-1), minlength=K)
    assert natural.max() > 0.5, f"the fixture's natural mix is skewed: {natural}"
    assert chisquare(obs, natural * topics.size).pvalue > 1e-3
    # ... and the χ² test rejects a stratified (uniform-over-topics) mix on this run
    assert chisquare(obs, np.full(K, topics.size / K)).pvalue < 1e-6
