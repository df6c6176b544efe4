"""Replaying another run's weights: average and schedule, as loss weights or as
sampling probabilities, checked where they act (the step's loss weights, the loader's
probabilities), and the refusal of a source on other topics or another tokenizer."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from helpers import train_cfg
from toremi import cli
from toremi.data.loader import BatchLoader
from toremi.io import read_json, read_jsonl
from toremi.train import train
from toremi.train.step import StepEngine


@pytest.fixture(scope="module")
def source(tiny_tokens, tmp_path_factory):
    """A ToReMi run whose weights move: 8 steps, an update every 2."""
    run = train(train_cfg(tiny_tokens, tmp_path_factory.mktemp("src") / "toremi", "method.name=toremi",
                    "method.alpha=20", "eval_every=0"))
    recs = read_jsonl(run / "weights.jsonl")
    assert [r["step"] for r in recs] == [2, 4, 6, 8]
    assert len({tuple(r["weights"]) for r in recs}) > 1, "the source's weights change over the run"
    return run


def test_average_as_loss_weights_reaches_the_step(source, tiny_tokens, tmp_path, monkeypatch):
    expected = torch.tensor([r["weights"] for r in read_jsonl(source / "weights.jsonl")],
                            dtype=torch.float64).mean(0)
    used = []
    orig = StepEngine.train_step

    def recording(self, batches):
        used.append(self.rw.w_dev.clone())
        return orig(self, batches)

    monkeypatch.setattr(StepEngine, "train_step", recording)
    run = train(train_cfg(tiny_tokens, tmp_path / "avg", "method.name=replay", f"method.replay.source={source}",
                    "method.replay.mode=average", "method.replay.apply=loss", "eval_every=0"))
    assert len(used) == 8 and all(torch.equal(u, expected.float()) for u in used)
    recs = read_jsonl(run / "weights.jsonl")
    assert all(r["weights"] == pytest.approx(expected.tolist()) and r["probs"] is None for r in recs)
    assert "topic_weighted_epochs" in read_json(run / "run.json")


def test_schedule_as_sampling_follows_the_source_by_fraction(source, tiny_tokens, tmp_path, monkeypatch):
    src = read_jsonl(source / "weights.jsonl")  # at source steps 2, 4, 6, 8 of 8
    probs_seen = []
    orig = BatchLoader.next_global_indices

    def recording(self):
        probs_seen.append(None if self.topic_probs is None else self.topic_probs.clone())
        return orig(self)

    monkeypatch.setattr(BatchLoader, "next_global_indices", recording)
    run = train(train_cfg(tiny_tokens, tmp_path / "sched", "method.name=replay", f"method.replay.source={source}",
                    "method.replay.mode=schedule", "method.replay.apply=sampling", "steps=16",
                    "method.interval=4", "eval_every=0"))

    def norm(w):
        w = torch.tensor(w, dtype=torch.float64)
        return w / w.sum()

    # target update at step s (of 16) = fraction s/16: the source record logged at or before it
    recs = read_jsonl(run / "weights.jsonl")
    expect_src = {s: max(r["step"] for r in src if r["step"] / 8 <= s / 16) for s in (4, 8, 12, 16)}
    for r in recs:
        i = next(j for j, x in enumerate(src) if x["step"] == expect_src[r["step"]])
        assert r["replay_source_step"] == expect_src[r["step"]]
        assert r["probs"] == pytest.approx(norm(src[i]["weights"]).tolist())
        assert r["weights"] == [1.0] * 5
    # what the sampler drew with: the first record before the first update, then each update's
    assert len(probs_seen) == 16
    assert torch.allclose(probs_seen[0], norm(src[0]["weights"]))
    for r in recs[:-1]:
        assert torch.allclose(probs_seen[r["step"]], torch.tensor(r["probs"], dtype=torch.float64))


def _doctored(source, tmp_path, edit) -> str:
    run = tmp_path / "doctored"
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("checkpoints", "final"))
    info = read_json(run / "run.json")
    edit(info)
    (run / "run.json").write_text(json.dumps(info))
    return str(run)


def test_a_source_on_other_topics_or_tokenizer_is_refused(source, tiny_tokens, tmp_path, capsys):
    def rename(info):
        info["topic_names"] = info["topic_names"][:-1] + ["weather"]

    def retoken(info):
        info["tokenizer"] = {**info["tokenizer"], "fingerprint": "0" * 64, "name": "other"}

    for edit, what in ((rename, "other topics"), (retoken, "another tokenizer")):
        src = _doctored(source, tmp_path / what.replace(" ", "-"), edit)
        out = tmp_path / "run"
        rc = cli.main(["train", "--tokens", str(tiny_tokens), "--out", str(out), "method=replay",
                       f"method.replay.source={src}", "steps=2", "progress=false", "device=cpu"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and what in err and src in err, err
        assert not out.exists()
    with pytest.raises(Exception, match="method.replay.source=RUN_DIR"):
        train_cfg(tiny_tokens, tmp_path / "x", "method.name=replay")
