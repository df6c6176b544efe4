"""A run resumed, and a run replayed, across a re-annotation of the same documents (toremi.train.retopic).

Real files end to end: the BBC test corpus is annotated with k=3, prepared, trained a few steps
with toremi and stopped; re-annotated with k=5 and prepared again with the same tokenizer; mapped
with ``toremi remap``; then resumed. Refusals (no mapping, another tokenizer) are one line, exit 2.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import write_bbc_corpus
from test_remap import NEW_NAMES, OLD_NAMES, annotate_by_hand, new_topics, old_topics, prepare_with
from toremi import cli
from toremi.io import read_json, read_jsonl
from toremi.remap import map_vector, load_mapping

TRAIN = ["steps=8", "batch_size=4", "log_every=1", "eval_every=4", "eval_batches=1", "progress=false",
         "device=cpu", "optim.warmup_steps=2", "method.interval=2"]


def prepare(corpus, ann, out, tokenizer="bpe:512"):
    from toremi.prepare import PrepareConfig, prepare as run_prepare

    return run_prepare(PrepareConfig(corpus=corpus, out=out, tokenizer=str(tokenizer), seq_len=64,
                                     topics_from="annotations", annotations=ann, bpe_train_mb=1.0))


@pytest.fixture(scope="module")
def reannotated(tmp_path_factory):
    from toremi.annotate import cli as annotate

    root = tmp_path_factory.mktemp("reannotated")
    corpus = write_bbc_corpus(root / "corpus", train_per_topic=20, eval_per_topic=4)
    for k in (3, 5):
        assert annotate.main(["all", "--corpus", str(corpus), "--out", str(root / f"ann-k{k}"),
                              f"cluster.k={k}", "progress=false"]) == 0
    a = prepare(corpus, root / "ann-k3", root / "tok-k3")
    b = prepare(corpus, root / "ann-k5", root / "tok-k5", tokenizer=a / "tokenizer.json")
    run = root / "run"
    rc = cli.main(["train", "--tokens", str(a), "--out", str(run), "method=toremi", "stop_at_step=4", *TRAIN])
    assert rc == 75  # stopped with a checkpoint at step 4
    return {"root": root, "corpus": corpus, "a": a, "b": b, "run": run}


def test_resume_on_a_reannotated_tokens_dir(reannotated, tmp_path, capsys):
    a, b, run = reannotated["a"], reannotated["b"], reannotated["run"]
    man_a, man_b = read_json(a / "manifest.json"), read_json(b / "manifest.json")
    assert man_a["data_hash"] != man_b["data_hash"]
    assert man_a["tokenizer"]["fingerprint"] == man_b["tokenizer"]["fingerprint"]

    # without a mapping: refused, one line naming the change, nothing written
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    rc = cli.main(["train", "--tokens", str(b), "--out", str(run), "method=toremi", *TRAIN])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "data hash" in err and "remap" in err, err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before

    # another tokenizer (same k=5 annotation, a 384-token BPE): refused even with a mapping
    c = prepare(reannotated["corpus"], reannotated["root"] / "ann-k5", tmp_path / "tok-other", "bpe:384")
    mapping = tmp_path / "map.json"
    assert cli.main(["remap", "--old", str(a), "--new", str(b), "--run", str(run), "--out", str(mapping)]) == 0
    capsys.readouterr()
    rc = cli.main(["train", "--tokens", str(c), "--out", str(run), "method=toremi", f"remap={mapping}", *TRAIN])
    err = capsys.readouterr().err.strip()
    fp_a, fp_c = man_a["tokenizer"]["fingerprint"][:12], read_json(c / "manifest.json")["tokenizer"]["fingerprint"][:12]
    assert rc == 2 and len(err.splitlines()) == 1 and fp_a in err and fp_c in err, err

    # a mapping that does not start from this run's data: refused
    wrong = tmp_path / "wrong.json"
    # (both annotations name the same 41 labels, so remap accepts b -> b; the resume must not)
    assert cli.main(["remap", "--old", str(b), "--new", str(b), "--run", str(run), "--out", str(wrong)]) == 0
    capsys.readouterr()
    rc = cli.main(["train", "--tokens", str(b), "--out", str(run), "method=toremi", f"remap={wrong}", *TRAIN])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "maps from data" in err and len(err.splitlines()) == 1, err

    # with the mapping: resumes at step 4 and finishes step 8 on the new tokens dir
    m = load_mapping(mapping)
    last = read_jsonl(run / "weights.jsonl")[-1]
    assert last["step"] == 4
    rc = cli.main(["train", "--tokens", str(b), "--out", str(run), "method=toremi", f"remap={mapping}", *TRAIN])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "re-annotated tokens dir" in out and "reset:" in out
    info = read_json(run / "run.json")
    assert info["status"] == "done" and info["steps_done"] == 8 and info["data_hash"] != man_a["data_hash"]
    rec, = info["remaps"]
    assert rec["step"] == 4 and rec["coverage"] == m["coverage"] and rec["coverage"]["documents"] == 1.0
    # weights mapped as documented: the checkpoint's weights (= the last record) through the matrix,
    # which is what `toremi remap` computed from that record
    np.testing.assert_allclose(rec["weights_before"], last["weights"], rtol=1e-7)
    np.testing.assert_allclose(rec["weights_after"], map_vector(m, last["weights"]), rtol=1e-7)
    np.testing.assert_allclose(rec["weights_after"], m["weights"], atol=1e-5)
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 9))  # 1-4 on the k=3 tokens, 5-8 continuing on the k=5 tokens
    recs = read_jsonl(run / "weights.jsonl")
    assert [r["step"] for r in recs] == [2, 4, 6, 8]
    # epoch accounting continues: the resumed run's epochs are at least the mapped estimate
    assert len(info["topic_epochs"]) == len(man_b["topic_names"])
    # the final checkpoint keeps the record, and a rerun of the same command is a no-op resume
    st = torch.load(sorted((run / "checkpoints").iterdir())[-1] / "train_state.pt", weights_only=True)
    assert st["remaps"][0]["remap"] == str(mapping) and st["data_hash"] == info["data_hash"]
    rc = cli.main(["train", "--tokens", str(b), "--out", str(run), "method=toremi", f"remap={mapping}", *TRAIN])
    assert rc == 0 and len(read_json(run / "run.json")["remaps"]) == 1


@pytest.fixture(scope="module")
def named_sides(tiny_corpus, tiny_tokens, tmp_path_factory):
    """Two annotations with different topic names (test_remap's), prepared with one tokenizer."""
    root = tmp_path_factory.mktemp("replay-remap")
    tok = tiny_tokens / "tokenizer.json"
    old = prepare_with(tiny_corpus, annotate_by_hand(tiny_corpus, root / "ann-old", OLD_NAMES, old_topics),
                       root / "tok-old", tok)
    new = prepare_with(tiny_corpus, annotate_by_hand(tiny_corpus, root / "ann-new", NEW_NAMES, new_topics),
                       root / "tok-new", tok)
    src = root / "source"
    assert cli.main(["train", "--tokens", str(old), "--out", str(src), "method=toremi", *TRAIN]) == 0
    return {"old": old, "new": new, "source": src, "root": root}


def test_replay_reads_a_source_on_another_topic_set_through_a_mapping(named_sides, tmp_path, capsys):
    old, new, src = named_sides["old"], named_sides["new"], named_sides["source"]
    out = tmp_path / "replay"
    rc = cli.main(["train", "--tokens", str(new), "--out", str(out), "method=replay",
                   f"method.replay.source={src}", *TRAIN])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "other topics" in err and "remap" in err, err
    assert not out.exists()

    mapping = tmp_path / "map.json"
    assert cli.main(["remap", "--old", str(old), "--new", str(new), "--run", str(src), "--mode", "average",
                     "--out", str(mapping)]) == 0
    rc = cli.main(["train", "--tokens", str(new), "--out", str(out), "method=replay", f"method.replay.source={src}",
                   f"method.replay.remap={mapping}", *TRAIN])
    assert rc == 0, capsys.readouterr().err
    m = read_json(mapping)
    # average mode: the mean of the mapped vectors = the mapping of the mean (the map is linear)
    w = read_jsonl(out / "weights.jsonl")[-1]["weights"]
    present = [t["documents"] > 0 for t in m["mapping"]["per_topic"]]
    expect = [x if p else 0.0 for x, p in zip(m["weights"], present)]
    np.testing.assert_allclose(w, expect, atol=1e-5)
    assert read_json(out / "run.json")["topic_names"] == NEW_NAMES

    # a mapping from another topic set than the source's: refused in one line
    bad = dict(m, old=dict(m["old"], topic_names=["x"] * len(OLD_NAMES)))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    rc = cli.main(["train", "--tokens", str(new), "--out", str(tmp_path / "r2"), "method=replay",
                   f"method.replay.source={src}", f"method.replay.remap={tmp_path / 'bad.json'}", *TRAIN])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "maps from" in err, err
