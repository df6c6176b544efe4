"""Resume guards on real runs: bit-exact with dropout, the plateau switch's state, refusing another
world size, and how many checkpoints are kept."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from toremi.config import load_config
from toremi.io import read_json, read_jsonl
from toremi.train import TrainConfig, checkpoint, train

TIMING = {"tokens_per_s", "elapsed_s"}


def cfg(tokens, out, *overrides) -> TrainConfig:
    base = [f"tokens_dir={tokens}", f"out={out}", "steps=8", "batch_size=4", "accum=1",
            "log_every=2", "eval_every=4", "eval_batches=1", "progress=false", "device=cpu",
            "optim.warmup_steps=2", "method.interval=2"]
    return load_config(TrainConfig, None, base + list(overrides))


def records(run) -> tuple[list, list]:
    m = [{k: v for k, v in r.items() if k not in TIMING} for r in read_jsonl(run / "metrics.jsonl")]
    return m, read_jsonl(run / "weights.jsonl")


def final_params(run) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "final" / "model.safetensors"))


def assert_identical_runs(ref, run, what: str) -> None:
    (ma, wa), (mb, wb) = records(ref), records(run)
    first = next((i for i, (a, b) in enumerate(zip(ma, mb)) if a != b), None)
    assert first is None and len(ma) == len(mb), (
        f"{what}: metrics differ from the uninterrupted run from record {first}: "
        f"{ma[first] if first is not None else len(ma)} != {mb[first] if first is not None else len(mb)}")
    assert wa == wb, f"{what}: weights.jsonl differs from the uninterrupted run"
    pa, pb = final_params(ref), final_params(run)
    diff = {k: float((pa[k] - pb[k]).abs().max()) for k in pa if not torch.equal(pa[k], pb[k])}
    assert not diff, f"{what}: final parameters differ from the uninterrupted run: {diff}"


def interrupted(tokens, run, *args, stop: int = 3):
    train(cfg(tokens, run, *args, f"stop_at_step={stop}"))
    assert checkpoint.latest(run).name == f"step-{stop:07d}" and not (run / "final").exists()
    train(cfg(tokens, run, *args))
    assert read_json(run / "run.json")["resumed_from"].endswith(f"step-{stop:07d}")


def test_resume_is_bit_exact_with_dropout(tiny_tokens, tmp_path):
    """Dropout draws from the global RNG: its state must travel in the checkpoint."""
    args = ["model.dropout=0.2", "method.name=toremi", "method.switch=fraction",
            "method.switch_fraction=0.5"]
    train(cfg(tiny_tokens, tmp_path / "ref", *args))
    interrupted(tiny_tokens, tmp_path / "resumed", *args)
    assert_identical_runs(tmp_path / "ref", tmp_path / "resumed", "resume with dropout=0.2")


PLATEAU = ["method.name=toremi", "method.switch=plateau", "eval_every=2", "steps=10"]


def test_plateau_switch_through_the_trainer_and_across_resume(tiny_tokens, tmp_path):
    # A val loss that improves by less than 50% between evaluations: switch at the 2nd evaluation
    # (step 4); the update at step 4 runs before that evaluation, so Stage 2 starts at step 6.
    train(cfg(tiny_tokens, tmp_path / "ref", *PLATEAU, "method.plateau_delta=0.5"))
    stages = [(r["step"], r["stage"]) for r in read_jsonl(tmp_path / "ref" / "weights.jsonl")]
    assert stages == [(2, 1), (4, 1), (6, 2), (8, 2), (10, 2)], stages
    evals = [r["val_loss"] for r in read_jsonl(tmp_path / "ref" / "metrics.jsonl") if "val_loss" in r]
    assert len(evals) == 5 and (evals[0] - evals[1]) / evals[0] < 0.5
    # A threshold no improvement can fall below: never switches.
    train(cfg(tiny_tokens, tmp_path / "never", *PLATEAU, "method.plateau_delta=-10"))
    assert {r["stage"] for r in read_jsonl(tmp_path / "never" / "weights.jsonl")} == {1}
    # Stopped at step 3 (one evaluation seen, none since): the resumed run must remember the
    # step-2 val loss to switch at step 4 like the uninterrupted run.
    interrupted(tiny_tokens, tmp_path / "resumed", *PLATEAU, "method.plateau_delta=0.5")
    assert_identical_runs(tmp_path / "ref", tmp_path / "resumed", "plateau switch across resume")


def _rank(rank: int, port: int, tokens: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    train(cfg(tokens, out, "batch_size=2", "steps=4", "stop_at_step=2", "eval_every=0"))


def test_resume_refuses_another_world_size(tiny_tokens, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "ddp"
    mp.spawn(_rank, args=(port, str(tiny_tokens), str(run)), nprocs=2, join=True)
    assert checkpoint.latest(run).name == "step-0000002"
    # Same global batch (1 x 4 == 2 x 2), other number of processes: refused, naming both.
    with pytest.raises(ValueError, match=r"2 processes.*has 1"):
        train(cfg(tiny_tokens, run, "batch_size=4", "steps=4", "eval_every=0"))
    assert not (run / "final").exists()


@pytest.mark.parametrize("keep,expected", [(2, [4, 5]), (1, [5]), (0, [1, 2, 3, 4, 5])])
def test_keep_checkpoints(keep, expected, tiny_tokens, tmp_path):
    run = tmp_path / "run"
    train(cfg(tiny_tokens, run, "steps=5", "ckpt_every=1", f"keep_checkpoints={keep}",
              "eval_every=0", "log_every=1"))
    kept = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").iterdir())
    assert kept == expected, f"keep_checkpoints={keep}: kept steps {kept}, expected {expected}"
    assert [p.name for p in checkpoint.list_checkpoints(run)] == [f"step-{s:07d}" for s in expected]
