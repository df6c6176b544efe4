"""Two gloo processes: topic statistics are all-reduced, so both ranks hold identical weights."""

from __future__ import annotations

import os

import torch.multiprocessing as mp

from helpers import free_port
from toremi.io import read_json, read_jsonl


def _worker(rank: int, world: int, port: int, tokens: str, out: str, method: list[str]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch

    torch.set_num_threads(1)
    from toremi.config import load_config
    from toremi.train import TrainConfig, train

    cfg = load_config(TrainConfig, None, [
        f"tokens_dir={tokens}", f"out={out}", "steps=8", "batch_size=4", "accum=2", "log_every=2",
        "eval_every=4", "eval_batches=2", "progress=false", "device=cpu", "method.interval=2",
        "optim.warmup_steps=1", *method])
    train(cfg)


def test_two_ranks_hold_identical_weights(tiny_tokens, tmp_path):
    out = tmp_path / "ddp"
    method = ["method.name=toremi", "method.switch=fraction", "method.switch_fraction=0.5"]
    mp.spawn(_worker, args=(2, free_port(), str(tiny_tokens), str(out), method), nprocs=2, join=True)
    r0, r1 = (read_jsonl(out / "ranks" / f"rank-{r}.jsonl") for r in (0, 1))
    assert [r["step"] for r in r0] == [2, 4, 6, 8]
    assert r0 == r1  # sha256 of weights (and sampling probs) equal at every update
    w = read_jsonl(out / "weights.jsonl")
    # each update saw the global batch: 2 ranks x 2 micro-batches x 4 sequences x 2 steps
    assert all(sum(1 for _ in r["topic_count"]) == 5 for r in w)
    assert all(sum(r["topic_count"]) >= 2 * 2 * 4 * 2 for r in w)
    assert any(x != 1.0 for x in w[-1]["weights"])
    m = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert all(abs(r["weighted_loss"] / r["loss"] - 1) < 0.2 for r in m)  # global, not x world
    info = read_json(out / "run.json")
    assert info["world_size"] == 2 and info["status"] == "done"
    assert (out / "final" / "model.safetensors").exists()
