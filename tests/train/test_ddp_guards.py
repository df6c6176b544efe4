"""Two gloo ranks through the real step engine (DDP): gradients are all-reduced on every step.

Each rank takes its half of the same global micro-batches (padding, multi-topic samples, weights
far from 1, accum=2). Checked at every step:
- the parameters are bit-identical on both ranks (DDP all-reduces, so both apply the same update);
- the gradient equals that of ONE process given the whole global batch (2 ranks x B == 1 x 2B).
  Both compute the same fp32 sums in a different order (two half-batch backward passes + a gloo
  sum vs one backward pass), which moves the result by a few ulps: ~1e-6 relative. A bound of
  1e-4 is 100x that and far below what a real defect gives (missing all-reduce: O(1); a wrong
  normaliser: the ratio of two weight sums, >= 1e-2 here).
"""

from __future__ import annotations

import os

import torch
import torch.multiprocessing as mp

from helpers import free_port
from toremi.data.loader import Batch
from toremi.methods import MethodConfig
from toremi.model import GPT, GPTConfig
from toremi.train.distributed import Dist
from toremi.train.step import StepEngine

V, T, B, ACCUM, STEPS, WORLD = 64, 12, 2, 2, 3, 2
WEIGHTS = [0.3, 2.5, 1.0, 4.0]


def global_batches(step: int) -> list[Batch]:
    """ACCUM micro-batches of WORLD*B samples: random tokens, lengths and 1-2 topics."""
    g = torch.Generator().manual_seed(100 + step)
    out = []
    for _ in range(ACCUM):
        n = WORLD * B
        ids = torch.randint(0, V, (n, T + 1), generator=g)
        labels = ids[:, 1:].clone()
        lengths = torch.randint(1, T + 1, (n,), generator=g)
        labels[torch.arange(T)[None, :] >= lengths[:, None]] = -100
        topics = torch.randint(-1, len(WEIGHTS), (n, 2), generator=g)
        out.append(Batch(input_ids=ids[:, :-1].contiguous(), labels=labels, topic_ids=topics,
                         domain_ids=torch.zeros(n, dtype=torch.long), sample_index=torch.arange(n)))
    return out


def shard(b: Batch, rank: int) -> Batch:
    sl = slice(rank * B, (rank + 1) * B)
    return Batch(input_ids=b.input_ids[sl], labels=b.labels[sl], topic_ids=b.topic_ids[sl],
                 domain_ids=b.domain_ids[sl], sample_index=b.sample_index[sl])


class SGDRecording(torch.optim.SGD):
    """Plain SGD that keeps a copy of the gradients of every step."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.grads: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        self.grads.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


def run(d: Dist) -> dict:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=2, n_head=2, n_embd=32))
    opt = SGDRecording(model.parameters(), lr=0.5)
    eng = StepEngine(model, opt, None, MethodConfig(name="toremi", unlabelled_weight=0.5),
                     grad_clip=0.0, num_topics=len(WEIGHTS), d=d)
    eng.set_weights(torch.tensor(WEIGHTS, dtype=torch.float64))
    params = []
    for step in range(STEPS):
        batches = global_batches(step)
        eng.train_step([shard(b, d.rank) for b in batches] if d.enabled else batches)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]).clone())
    return {"params": params, "grads": [torch.cat([g.flatten() for g in gs]) for gs in opt.grads]}


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.save(run(Dist(rank=rank, world_size=WORLD)), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_parameters_and_match_one_process(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD))
    single = run(Dist())
    for step in range(STEPS):
        diff = float((r0["params"][step] - r1["params"][step]).abs().max())
        assert diff == 0.0, (f"step {step + 1}: the parameters differ between the two ranks "
                             f"(max |Δ| = {diff:.3g}); gradients were not all-reduced")
    for step in range(STEPS):
        g2, g1 = r0["grads"][step], single["grads"][step]
        err = float((g2 - g1).abs().max() / g1.abs().max())
        assert err < 1e-4, (f"step {step + 1}: 2 ranks x {B} samples give another gradient than "
                            f"1 process x {WORLD * B} (max relative difference {err:.3g})")
    err = float((r0["params"][-1] - single["params"][-1]).abs().max())
    assert err < 1e-5, f"after {STEPS} steps the 2-rank model is {err:.3g} away from the 1-process one"
