"""Resume guards on real runs: bit-exact with dropout, the plateau switch's state, refusing another
world size, and how many checkpoints are kept."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from helpers import assert_same_run, free_port, train_cfg, train_interrupted
from toremi.io import read_jsonl
from toremi.train import checkpoint, train


def test_resume_is_bit_exact_with_dropout(tiny_tokens, tmp_path):
    """Dropout draws from the global RNG: its state must travel in the checkpoint."""
    args = ["model.dropout=0.2", "method.name=toremi", "method.switch=fraction",
            "method.switch_fraction=0.5"]
    train(train_cfg(tiny_tokens, tmp_path / "ref", *args))
    train_interrupted(tiny_tokens, tmp_path / "resumed", *args)
    assert_same_run(tmp_path / "ref", tmp_path / "resumed", "resume with dropout=0.2")


PLATEAU = ["method.name=toremi", "method.switch=plateau", "eval_every=2", "steps=10"]


def test_plateau_switch_through_the_trainer_and_across_resume(tiny_tokens, tmp_path):
    # A val loss that improves by less than 50% between evaluations: switch at the 2nd evaluation
    # (step 4); the update at step 4 runs before that evaluation, so Stage 2 starts at step 6.
    train(train_cfg(tiny_tokens, tmp_path / "ref", *PLATEAU, "method.plateau_delta=0.5"))
    stages = [(r["step"], r["stage"]) for r in read_jsonl(tmp_path / "ref" / "weights.jsonl")]
    assert stages == [(2, 1), (4, 1), (6, 2), (8, 2), (10, 2)], stages
    evals = [r["val_loss"] for r in read_jsonl(tmp_path / "ref" / "metrics.jsonl") if "val_loss" in r]
    assert len(evals) == 5 and (evals[0] - evals[1]) / evals[0] < 0.5
    # A threshold no improvement can fall below: never switches.
    train(train_cfg(tiny_tokens, tmp_path / "never", *PLATEAU, "method.plateau_delta=-10"))
    assert {r["stage"] for r in read_jsonl(tmp_path / "never" / "weights.jsonl")} == {1}
    # Stopped at step 3 (one evaluation seen, none since): the resumed run must remember the
    # step-2 val loss to switch at step 4 like the uninterrupted run.
    train_interrupted(tiny_tokens, tmp_path / "resumed", *PLATEAU, "method.plateau_delta=0.5")
    assert_same_run(tmp_path / "ref", tmp_path / "resumed", "plateau switch across resume")


def _rank(rank: int, port: int, tokens: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    train(train_cfg(tokens, out, "batch_size=2", "steps=4", "stop_at_step=2", "eval_every=0"))


def test_resume_refuses_another_world_size(tiny_tokens, tmp_path):
    run = tmp_path / "ddp"
    mp.spawn(_rank, args=(free_port(), str(tiny_tokens), str(run)), nprocs=2, join=True)
    assert checkpoint.latest(run).name == "step-0000002"
    # Same global batch (1 x 4 == 2 x 2), other number of processes: refused, naming both.
    with pytest.raises(ValueError, match=r"2 processes.*has 1"):
        train(train_cfg(tiny_tokens, run, "batch_size=4", "steps=4", "eval_every=0"))
    assert not (run / "final").exists()


@pytest.mark.parametrize("keep,expected", [(2, [4, 5]), (1, [5]), (0, [1, 2, 3, 4, 5])])
def test_keep_checkpoints(keep, expected, tiny_tokens, tmp_path):
    run = tmp_path / "run"
    train(train_cfg(tiny_tokens, run, "steps=5", "ckpt_every=1", f"keep_checkpoints={keep}",
              "eval_every=0", "log_every=1"))
    kept = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").iterdir())
    assert kept == expected, f"keep_checkpoints={keep}: kept steps {kept}, expected {expected}"
    assert [p.name for p in checkpoint.list_checkpoints(run)] == [f"step-{s:07d}" for s in expected]
