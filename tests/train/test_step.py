"""Guards on the training step: the loss it trains on, and that it never syncs with the host.

The reference here is written independently of ``toremi.model.per_sample_loss`` and
``toremi.methods.rules``: per-sample log-softmax + gather in a Python loop over samples, hand
written sample weights, and autograd on a copy of the model. The step must produce the gradient of

    Σ_i s_i l_i / Σ_i s_i     (loss_norm=weighted_mean, the default), or
    Σ_i s_i l_i / N           (loss_norm=mean, the authors' choice)

with l_i the mean NLL over sample i's *real* targets (not its padded length) and s_i the mean
weight of its topics (``unlabelled_weight`` without topics, 0 without targets).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from toremi.data.loader import Batch
from toremi.methods import MethodConfig
from toremi.model import GPT, GPTConfig
from toremi.train.distributed import Dist
from toremi.train.step import StepEngine

V, T = 96, 16
TOPIC_W = [0.5, 3.0, 1.5, 0.25, 2.0]
UNL = 0.7
# (topic ids, number of real targets) per sample, two micro-batches of three
SAMPLES = [[([0, -1], T), ([1, 2], 5), ([-1, -1], 10)],
           [([3, -1], T), ([4, -1], 0), ([2, -1], 3)]]


def expected_weight(topics, n_targets) -> float:
    if n_targets == 0:
        return 0.0
    real = [TOPIC_W[t] for t in topics if t >= 0]
    return sum(real) / len(real) if real else UNL


def make_batches(seed: int = 0, device="cpu") -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for micro in SAMPLES:
        ids = torch.randint(0, V, (len(micro), T + 1), generator=g)
        labels = ids[:, 1:].clone()
        for i, (_, n) in enumerate(micro):
            labels[i, n:] = -100
        out.append(Batch(input_ids=ids[:, :-1].contiguous(), labels=labels,
                         topic_ids=torch.tensor([t for t, _ in micro]),
                         domain_ids=torch.zeros(len(micro), dtype=torch.long),
                         sample_index=torch.arange(len(micro))).to(device))
    return out


class CaptureGrads(torch.optim.Optimizer):
    """An optimizer whose step records the gradients it was given (and changes nothing)."""

    def __init__(self, params):
        super().__init__(params, {})
        self.seen: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        self.seen.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])


def tiny_model(seed: int = 0, dropout: float = 0.0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=2, n_head=2, n_embd=64, dropout=dropout))


def engine_grads(loss_norm: str) -> tuple[list[torch.Tensor], GPT]:
    model = tiny_model()
    ref = copy.deepcopy(model)
    opt = CaptureGrads(model.parameters())
    cfg = MethodConfig(name="toremi", unlabelled_weight=UNL, loss_norm=loss_norm)
    eng = StepEngine(model, opt, None, cfg, grad_clip=0.0, num_topics=len(TOPIC_W), d=Dist())
    eng.set_weights(torch.tensor(TOPIC_W, dtype=torch.float64))
    eng.train_step(make_batches())
    assert len(opt.seen) == 1, "train_step must take exactly one optimizer step"
    return opt.seen[0], ref


def reference_loss(model: GPT, loss_norm: str) -> torch.Tensor:
    num, den, n_samples = 0.0, 0.0, 0
    for b, micro in zip(make_batches(), SAMPLES):
        logp = model(b.input_ids).float().log_softmax(-1)
        for i, (topics, n) in enumerate(micro):
            s = expected_weight(topics, n)
            n_samples += 1
            den += s
            if n == 0:
                continue
            nll = -logp[i, torch.arange(n), b.labels[i, :n]]
            num = num + s * nll.sum() / n  # mean over the REAL targets only
    return num / (den if loss_norm == "weighted_mean" else n_samples)


def max_rel_err(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    scale = max(float(w.abs().max()) for w in want)
    return max(float((g - w).abs().max()) for g, w in zip(got, want)) / scale


@pytest.mark.parametrize("loss_norm", ["weighted_mean", "mean"])
def test_step_gradient_is_weighted_mean_of_real_token_losses(loss_norm):
    got, ref_model = engine_grads(loss_norm)
    ref = reference_loss(ref_model, loss_norm)
    want = torch.autograd.grad(ref, list(ref_model.parameters()))
    err = max_rel_err(got, want)
    # fp32, same model, same data; only the summation order differs: ~1e-6 observed.
    assert err < 1e-4, (f"loss_norm={loss_norm}: the step's gradient is not that of "
                        f"{'Σ s_i l_i / Σ s_i' if loss_norm == 'weighted_mean' else 'Σ s_i l_i / N'} "
                        f"(l_i = mean NLL over real targets, s_i = mean topic weight): "
                        f"max relative error {err:.3g}")
    # Sanity of the reference itself: the weights and the padding change the gradient a lot.
    other = torch.autograd.grad(reference_loss(ref_model, "mean" if loss_norm == "weighted_mean"
                                               else "weighted_mean"), list(ref_model.parameters()))
    assert max_rel_err(other, want) > 1e-2


def test_step_topic_statistics_use_real_lengths():
    """The per-topic statistics the method sees: Σ l_i and counts over samples with targets."""
    model = tiny_model()
    ref_model = copy.deepcopy(model)
    eng = StepEngine(model, CaptureGrads(model.parameters()), None, MethodConfig(name="toremi"),
                     grad_clip=0.0, num_topics=len(TOPIC_W), d=Dist())
    eng.train_step(make_batches())
    want_loss, want_count = torch.zeros(len(TOPIC_W), dtype=torch.float64), torch.zeros(len(TOPIC_W))
    with torch.no_grad():
        for b, micro in zip(make_batches(), SAMPLES):
            logp = ref_model(b.input_ids).float().log_softmax(-1)
            for i, (topics, n) in enumerate(micro):
                if n == 0:
                    continue
                l = float(-logp[i, torch.arange(n), b.labels[i, :n]].mean())
                for t in topics:
                    if t >= 0:
                        want_loss[t] += l
                        want_count[t] += 1
    K = len(TOPIC_W)
    assert eng.rw.count[:K].tolist() == want_count.tolist(), "per-topic sample counts"
    torch.testing.assert_close(eng.rw.loss_sum[:K], want_loss, rtol=1e-5, atol=1e-6,
                               msg=lambda m: f"per-topic loss sums differ from the reference: {m}")


# --------------------------------------------------------------------------- host syncs
SYNC_OPS = {"nonzero", "masked_select", "_local_scalar_dense", "item", "is_nonzero", "equal",
            "masked_scatter", "unique", "_unique2", "repeat_interleave"}


class CountSyncs(TorchDispatchMode):
    """Count aten ops that need the host to know a device value: nonzero-like ops, ``.item()``,
    and indexing with a boolean mask (``x[mask]``: its output size depends on the data)."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if name in SYNC_OPS:
            self.calls.append(name)
        elif name in ("index", "index_put", "index_put_", "_index_put_impl_"):
            idx = args[1] if len(args) > 1 else (kwargs or {}).get("indices", ())
            if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in idx):
                self.calls.append(f"{name}[bool mask]")
        return func(*args, **(kwargs or {}))


def fused_engine(device, method="toremi", **mcfg):
    model = tiny_model().to(device)
    opt = model.configure_optimizer(1e-3, 0.1, fused=True)
    cfg = MethodConfig(name=method, **mcfg)
    eng = StepEngine(model, opt, None, cfg, grad_clip=1.0, num_topics=len(TOPIC_W),
                     d=Dist(device=torch.device(device)))
    eng.set_weights(torch.tensor(TOPIC_W, dtype=torch.float64))
    return eng


def test_self_check_the_sync_counter_sees_boolean_indexing():
    x, m = torch.randn(6), torch.tensor([True, False, True, False, False, True])
    with CountSyncs() as c:
        _ = x[m]
        _ = x.sum().item()
        _ = torch.where(m, x, 0)
    assert c.calls and all(("bool" in n) or n in SYNC_OPS for n in c.calls), c.calls
    assert not any("where" in n for n in c.calls)


@pytest.mark.parametrize("stat_unit", ["token", "byte"])
def test_step_has_no_boolean_indexing_or_host_reads(stat_unit):
    eng = fused_engine("cpu", stat_unit=stat_unit)
    steps = [make_batches(seed) for seed in range(3)]
    for bs in steps:
        for b in bs:
            b.target_bytes = (b.labels != -100).sum(1) * 3
    eng.train_step(steps[0])  # optimizer state is created lazily on the first step
    with CountSyncs() as counter:
        for bs in steps[1:]:
            eng.train_step(bs)
    assert counter.calls == [], (f"the training step calls ops that sync with the host on CUDA: "
                                 f"{sorted(set(counter.calls))}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run by the GPU script)")
@pytest.mark.parametrize("stat_unit", ["token", "byte"])
def test_cuda_step_runs_under_sync_debug_mode_error(stat_unit):
    """On a GPU: any synchronising op in the step raises (torch.cuda.set_sync_debug_mode)."""
    eng = fused_engine("cuda", stat_unit=stat_unit)
    steps = [make_batches(seed, device="cuda") for seed in range(3)]
    for bs in steps:
        for b in bs:
            b.target_bytes = (b.labels != -100).sum(1) * 3
    eng.train_step(steps[0])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for bs in steps[1:]:
            eng.train_step(bs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.isfinite(eng.rw.loss_sum).all()
