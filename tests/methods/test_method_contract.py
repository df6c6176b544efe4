"""Every method in the registry (``toremi.methods.REGISTRY``), today's and the next one, gets:

- state round-trip: ``state_dict`` -> torch.save/load(weights_only) -> ``load_state_dict`` gives the
  same state, and the same records and weights at the following updates;
- resume: a real run stopped mid-interval and resumed equals the uninterrupted run, bit for bit
  (one document per window, and packed windows);
- weights reach the step: in a real run, each step's gradient is that of Σ s_i l_i / Σ s_i (or / N)
  with s from the weights the method logged (in force at that step), computed here by hand; and
  the loader samples topics with the probabilities the method logged (sampling methods) or not at
  all (loss-weight methods);
- realised mix: topics drawn by the trainer's loader after the run follow the method's probabilities
  within a binomial tolerance (sampling methods) or the natural mix (loss-weight methods).

A method runs with ``method.name=<name>`` and its defaults, unless ``METHOD_INPUTS`` gives it the
inputs it cannot run without (a reference run, a source run, a topic). A new method with no entry
runs on its defaults, and fails here, naming ``METHOD_INPUTS``, only if its defaults cannot run.
"""

from __future__ import annotations

import copy
import io
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

from helpers import assert_same_run, train_cfg, train_interrupted, write_bbc_corpus
from toremi.config import ConfigError
from toremi.data.loader import BatchLoader
from toremi.data.shards import TokenDataset
from toremi.io import read_jsonl
from toremi.methods import REGISTRY, Method, build_method, rules
from toremi.train import train
from toremi.train.distributed import Dist
from toremi.train.step import StepEngine
from toremi.train.trainer import Trainer

STOP = 3  # updates at steps 2, 4, 6 (method.interval=2): the stop at 3 is mid-interval
BASE = ["steps=6", "batch_size=4", "accum=2", "log_every=1", "eval_every=2", "eval_batches=1",
        "progress=false", "device=cpu", "optim.warmup_steps=1", "method.interval=2", "packing=none"]
DOCS = {"business": 30, "entertainment": 6, "politics": 6, "sports": 6, "tech": 6}  # skewed mix
DRAWS = 1600  # realised mix: sequences drawn


class Sources:
    """Runs that some methods read, trained once per module when first asked for."""

    def __init__(self, tokens: Path, root: Path):
        self.tokens, self.root = tokens, root

    @cached_property
    def reference(self) -> Path:
        """A finished uniform run: DoReMi's reference model."""
        return train(train_cfg(self.tokens, self.root / "reference", "method.name=uniform", base=BASE))

    @cached_property
    def proxy(self) -> Path:
        """A finished DoReMi proxy run: DoReMi's main run and replay read its weights.jsonl."""
        return train(train_cfg(self.tokens, self.root / "proxy", "method.name=doremi", "method.doremi.eta=5",
                               f"method.doremi.reference={self.reference}", base=BASE))


# method name -> {variant: Sources -> overrides}: only for methods that cannot run on their defaults,
# whose defaults would leave a mode untested, or whose weights would not move in these runs' 3 updates.
METHOD_INPUTS = {
    "doremi": {"proxy": lambda s: [f"method.doremi.reference={s.reference}", "method.doremi.eta=5"],
               "main": lambda s: [f"method.doremi.weights_from={s.proxy}"]},
    "replay": {"loss-average": lambda s: [f"method.replay.source={s.proxy}"],
               "sampling-schedule": lambda s: [f"method.replay.source={s.proxy}", "method.replay.apply=sampling",
                                               "method.replay.mode=schedule"]},
    "oracle": {"topic-1": lambda s: ["method.oracle.topic=1"]},
    "toremi-noise": {"warmup-1": lambda s: ["method.toremi-noise.warmup_updates=1", "method.toremi-noise.emphasis=true"]},
    # EXP3's exploration keeps 5 topics uniform for 8 updates: 12 updates, 3 of them adaptive
    "odm": {"interval-1": lambda s: ["method.interval=1", "steps=12"]},
}
CASES = [(name, variant) for name in sorted(REGISTRY) for variant in METHOD_INPUTS.get(name, ["defaults"])]
IDS = [name if variant == "defaults" else f"{name}-{variant}" for name, variant in CASES]


@dataclass
class Step:
    """What one training step used: its micro-batches, the model before it, the gradient it
    applied (before clipping) and the loader's topic probabilities at each draw."""
    batches: list
    model: torch.nn.Module
    grad: torch.Tensor
    probs: list


class Contract:
    """The checks, for any registered method; real runs are cached per (method, variant)."""

    def __init__(self, tokens: Path, root: Path):
        self.tokens, self.root, self.sources = tokens, root, Sources(tokens, root / "sources")
        self.ds = TokenDataset(tokens, packing="none")
        self.K = self.ds.num_topics
        self.counts = torch.from_numpy(np.bincount(self.ds.topics[:, 0], minlength=self.K).astype(np.float64))
        self.runs: dict[tuple, tuple[Path, list[Step]]] = {}

    # ------------------------------------------------------------------ inputs
    def args(self, name: str, variant: str) -> list[str]:
        """``method.name=<name>`` plus its inputs; fails, naming METHOD_INPUTS, when a method with no
        entry cannot be built on its defaults."""
        inputs = METHOD_INPUTS.get(name)
        args = [f"method.name={name}", *(inputs[variant](self.sources) if inputs else [])]
        try:
            self.build(args)
        except (ConfigError, ValueError, TypeError) as e:
            if inputs:
                raise
            pytest.fail(f"method {name!r} cannot run on its defaults ({e}): give it its inputs in "
                        f"METHOD_INPUTS in {__file__}")
        return args

    def config(self, args: list[str], out: Path | None = None):
        return train_cfg(self.tokens, out or self.root / "unused", *args, base=BASE)

    def build(self, args: list[str], total_steps: int | None = None) -> Method:
        cfg = self.config(args)
        return build_method(cfg.method, self.K, total_steps or cfg.steps, self.counts)

    # ------------------------------------------------------------------ state round-trip
    def feed(self, m: Method, update: int) -> dict:
        """One update with made-up statistics (seeded by ``update``): falling losses that differ by
        topic, a topic absent in turn, reference losses if the method reads a reference model; then
        the evaluation hooks."""
        g = torch.Generator().manual_seed(update)
        K = self.K
        count = torch.randint(1, 6, (K,), generator=g).double()
        count[update % K] = 0
        mean = 3 + torch.arange(K, dtype=torch.float64) / K + torch.rand(K, generator=g, dtype=torch.float64) \
            - 0.1 * update
        extra = {}
        if m.reference_run:
            ref = mean - 0.5 + torch.rand(K, generator=g, dtype=torch.float64)
            extra = {"ref_loss": ref * count, "excess": (mean - ref).clamp(min=0) * count}
        rec = m.update(update * m.cfg.interval, mean * count, count, **extra)
        m.on_eval(update * m.cfg.interval, float(mean.mean()) + 0.01 * update)
        m.on_val_topics(update * m.cfg.interval, mean + 0.05 * torch.rand(K, generator=g, dtype=torch.float64))
        return rec

    def state_round_trip(self, name: str, variant: str) -> None:
        args = self.args(name, variant)
        m = self.build(args, total_steps=20)
        for u in range(1, 6):
            self.feed(m, u)
        buf = io.BytesIO()
        torch.save(m.state_dict(), buf)  # as a checkpoint holds it: safe to load with weights_only
        buf.seek(0)
        loaded = self.build(args, total_steps=20)
        loaded.load_state_dict(torch.load(buf, weights_only=True))
        diff = first_difference(m.state_dict(), loaded.state_dict())
        assert diff is None, f"{name}: state after state_dict -> load_state_dict differs at {diff}"
        for u in range(6, 11):
            diff = first_difference(self.feed(m, u), self.feed(loaded, u), "record")
            assert diff is None, f"{name}: update {u} after the round-trip differs: {diff}"
            assert torch.equal(m.topic_weights, loaded.topic_weights)
            assert first_difference(m.sampling_probs, loaded.sampling_probs) is None

    # ------------------------------------------------------------------ real runs
    def run(self, name: str, variant: str) -> tuple[Path, list[Step]]:
        """The uninterrupted run, each step observed (nothing in it draws random numbers)."""
        key = (name, variant)
        if key not in self.runs:
            out = self.root / "runs" / f"{name}-{variant}"
            steps, draws = [], []

            def on_draw(loader, _orig=BatchLoader.next_batch):
                draws.append(None if loader.topic_probs is None else loader.topic_probs.clone())
                return _orig(loader)

            def on_step(eng, batches, _orig=StepEngine.train_step):
                before = copy.deepcopy(eng.model)
                params = [p for p in eng.model.parameters()]
                grads = [torch.zeros_like(p) for p in params]

                def adder(acc):
                    def hook(g):  # returns None: the gradient itself is left alone
                        acc.add_(g)
                    return hook

                handles = [p.register_hook(adder(acc)) for p, acc in zip(params, grads)]
                try:
                    _orig(eng, batches)
                finally:
                    for h in handles:
                        h.remove()
                steps.append(Step([copy.deepcopy(b) for b in batches], before,
                                  torch.cat([g.flatten() for g in grads]), list(draws)))
                draws.clear()

            cfg = self.config(self.args(name, variant), out)  # trains the sources it needs, unobserved
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(BatchLoader, "next_batch", on_draw)
                mp.setattr(StepEngine, "train_step", on_step)
                train(cfg)
            assert len(steps) == cfg.steps
            self.runs[key] = (out, steps)
        return self.runs[key]

    def resume(self, name: str, variant: str, tmp: Path) -> None:
        ref, _ = self.run(name, variant)
        run = train_interrupted(self.tokens, tmp / "resumed", *self.args(name, variant), stop=STOP, base=BASE)
        assert_same_run(ref, run, f"{name}-{variant} stopped at step {STOP} and resumed")

    def resume_packed(self, name: str, variant: str, tmp: Path) -> None:
        """The same on packed windows (``packing=docs``: per-token weights, per-segment statistics)."""
        args = [*self.args(name, variant), "packing=docs"]
        ref = train(self.config(args, tmp / "ref"))
        run = train_interrupted(self.tokens, tmp / "resumed", *args, stop=STOP, base=BASE)
        assert_same_run(ref, run, f"{name}-{variant} on packed windows stopped at step {STOP} and resumed")

    def in_force(self, name: str, variant: str) -> tuple[list, list]:
        """Per step: (loss weights, sampling probs or None) the method had set before it."""
        out, _ = self.run(name, variant)
        args = self.args(name, variant)
        fresh = self.build(args)
        w, p = fresh.topic_weights.tolist(), fresh.sampling_probs
        p = None if p is None else p.tolist()
        cfg = self.config(args)
        recs = {r["step"]: r for r in read_jsonl(out / "weights.jsonl")}
        want = list(range(cfg.method.interval, cfg.steps + 1, cfg.method.interval))
        assert sorted(recs) == want, f"{name}: updates logged at steps {sorted(recs)}, expected {want}"
        weights, probs = [], []
        for step in range(1, cfg.steps + 1):
            weights.append(w)
            probs.append(p if fresh.uses_sampling else None)
            if step in recs:
                w = recs[step]["weights"]
                p = recs[step]["probs"]
                if fresh.uses_sampling:  # a sampling method trains on unweighted losses
                    w = [1.0] * self.K
        return weights, probs

    def weights_reach_the_step(self, name: str, variant: str) -> None:
        _, steps = self.run(name, variant)
        cfg = self.config(self.args(name, variant)).method
        weights, probs = self.in_force(name, variant)
        for i, (st, w, p) in enumerate(zip(steps, weights, probs), start=1):
            want = expected_grad(st, w, cfg.loss_norm, cfg.unlabelled_weight)
            err = float((st.grad - want).norm() / want.norm())
            assert err < 1e-5, (
                f"{name}-{variant} step {i}: the gradient is not that of the loss weighted by the method's "
                f"weights {np.round(w, 4).tolist()} (relative error {err:.2g}; unweighted loss: "
                f"{float((st.grad - expected_grad(st, [1.0] * self.K, cfg.loss_norm, 1.0)).norm() / want.norm()):.2g})")
            for got in st.probs:
                if p is None:
                    assert got is None, f"{name}-{variant} step {i}: a loss-weight method's loader samples " \
                                        f"topics with {got.tolist()} instead of the natural mix"
                else:
                    assert got is not None and got.tolist() == pytest.approx(p, rel=1e-12, abs=1e-15), (
                        f"{name}-{variant} step {i}: the loader samples with "
                        f"{None if got is None else got.tolist()}, the method set {p}")

    def realised_mix(self, name: str, variant: str) -> None:
        """Resume the finished run (its final checkpoint: method and loader state) and draw."""
        out, _ = self.run(name, variant)
        tr = Trainer(self.config(self.args(name, variant), out), Dist())
        assert tr.step == tr.total
        drawn = np.concatenate([b.topic_ids[:, 0].numpy() for _ in range(DRAWS // 8) for b in tr.next_batches()])
        natural = (self.counts / self.counts.sum()).numpy()
        if tr.method.uses_sampling:
            p, what = tr.method.sampling_probs.double().numpy(), "its sampling probabilities"
            p = p / p.sum()
        else:
            p, what = natural, "the natural mix"
        n = len(drawn)
        obs = np.bincount(drawn, minlength=self.K)
        tol = 4.5 * np.sqrt(n * p * (1 - p)) + 1  # per topic; ~1e-5 two-sided each at a fixed seed
        bad = np.abs(obs - n * p) > tol
        assert not bad.any(), (f"{name}-{variant}: {n} drawn topics {obs.tolist()} do not follow {what} "
                               f"{np.round(p, 4).tolist()} (expected {np.round(n * p, 1).tolist()} ± "
                               f"{np.round(tol, 1).tolist()}; natural mix {np.round(n * natural, 1).tolist()})")


def expected_grad(st: Step, w: list, loss_norm: str, unlabelled: float) -> torch.Tensor:
    """∇ of Σ s_i l_i / Σ s_i (loss_norm=mean: / N) over the step's samples, by hand: l_i = mean NLL
    of sample i's targets, s_i = mean weight of its topics (no targets: 0)."""
    model = copy.deepcopy(st.model)
    wt = torch.tensor(w, dtype=torch.float32)
    num, den, n = 0.0, 0.0, 0
    for b in st.batches:
        logp = model(b.input_ids).float().log_softmax(-1)
        for i in range(len(b.labels)):
            m = b.labels[i] != -100
            topics = b.topic_ids[i][b.topic_ids[i] >= 0]
            s = wt[topics].mean() if len(topics) else torch.tensor(unlabelled)
            s = s * m.any()
            if m.any():
                num = num - s * logp[i, m].gather(1, b.labels[i, m][:, None]).mean()
            den, n = den + s, n + 1
    loss = num / (n if loss_norm == "mean" else den)
    grads = torch.autograd.grad(loss, [p for p in model.parameters()], allow_unused=True)
    return torch.cat([torch.zeros_like(p).flatten() if g is None else g.flatten()
                      for p, g in zip(model.parameters(), grads)])


def first_difference(a, b, path: str = "") -> str | None:
    """Where two states (nested dicts/lists of tensors and plain values) differ, or None."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and (torch.equal(a, b) or a.is_floating_point() and torch.equal(
                a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)))
        return None if same else f"{path or 'state'}: {a} != {b}"
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{path or 'state'}: keys {sorted(a)} != {sorted(b)}"
        return next((d for k in a if (d := first_difference(a[k], b[k], f"{path}.{k}")) is not None), None)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return next((d for i, (x, y) in enumerate(zip(a, b))
                     if (d := first_difference(x, y, f"{path}[{i}]")) is not None), None)
    same = a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    return None if same else f"{path or 'state'}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def contract(tmp_path_factory) -> Contract:
    """Skewed real text (business 5x each other BBC topic), so the natural and a stratified mix differ."""
    from toremi.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("contract")
    write_bbc_corpus(root / "corpus", DOCS, eval_per_topic=2)
    tokens = prepare(PrepareConfig(corpus=root / "corpus", out=root / "tokens", tokenizer="bpe:512",
                                   seq_len=64, topics_from="label", bpe_train_mb=0.3))
    return Contract(tokens, root)


@pytest.mark.parametrize("name,variant", CASES, ids=IDS)
def test_state_round_trip(name, variant, contract):
    contract.state_round_trip(name, variant)


@pytest.mark.parametrize("name,variant", CASES, ids=IDS)
def test_resume_is_bit_exact(name, variant, contract, tmp_path):
    contract.resume(name, variant, tmp_path)


@pytest.mark.parametrize("name,variant", CASES, ids=IDS)
def test_resume_is_bit_exact_on_packed_windows(name, variant, contract, tmp_path):
    contract.resume_packed(name, variant, tmp_path)


@pytest.mark.parametrize("name,variant", CASES, ids=IDS)
def test_weights_reach_the_step(name, variant, contract):
    contract.weights_reach_the_step(name, variant)


@pytest.mark.parametrize("name,variant", CASES, ids=IDS)
def test_realised_topic_mix(name, variant, contract):
    contract.realised_mix(name, variant)


# ---------------------------------------------------------------------------------------- a new method
class LossChaser(Method):
    """Loss weights K·softmax(2·EMA of each topic's loss): state beyond the weights (the EMA)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ema = torch.zeros(self.num_topics, dtype=torch.float64)

    def _update(self, step, loss_sum, count):
        mean, seen = rules.topic_mean_loss(loss_sum, count)
        self.ema = torch.where(seen, 0.5 * self.ema + 0.5 * mean, self.ema)
        self.weights = self.num_topics * torch.softmax(2 * self.ema, 0)

    def _extra_state(self):
        return {"ema": self.ema.clone()}

    def _load_extra_state(self, extra):
        self.ema = extra["ema"].clone()


class ForgetsItsState(LossChaser):
    """LossChaser that does not save its EMA: what the contract must catch."""

    def _extra_state(self):
        return {}

    def _load_extra_state(self, extra):
        pass


@dataclass
class SourceOptions:
    source: Optional[str] = None

    def __post_init__(self):
        if not self.source:
            raise ValueError("needs method.test-needs-input.source=RUN")


def test_a_new_method_gets_the_contract_without_a_fixture_entry(contract, tmp_path):
    """Registered here, not in METHOD_INPUTS: a simple method passes every check on its defaults;
    one that forgets its state fails them; one that needs an input fails, naming METHOD_INPUTS."""
    from toremi.methods import register

    names = ["test-loss-chaser", "test-forgets-state", "test-needs-input"]
    register(names[0], interval=2)(LossChaser)
    register(names[1], interval=2)(ForgetsItsState)
    register(names[2], options=SourceOptions)(type("NeedsInput", (Method,), {}))
    try:
        contract.state_round_trip(names[0], "defaults")
        contract.resume(names[0], "defaults", tmp_path / "a")
        contract.weights_reach_the_step(names[0], "defaults")
        contract.realised_mix(names[0], "defaults")
        weights = [r["weights"] for r in read_jsonl(contract.run(names[0], "defaults")[0] / "weights.jsonl")]
        assert max(map(max, weights)) - min(map(min, weights)) > 0.01, "the new method's weights move"
        with pytest.raises(AssertionError, match="update 6 after the round-trip differs"):
            contract.state_round_trip(names[1], "defaults")
        with pytest.raises(AssertionError, match="metrics differ from the uninterrupted run"):
            contract.resume(names[1], "defaults", tmp_path / "b")
        with pytest.raises(pytest.fail.Exception, match="cannot run on its defaults .*METHOD_INPUTS"):
            contract.state_round_trip(names[2], "defaults")
    finally:
        for n in names:
            REGISTRY.pop(n, None)


def test_every_method_inputs_entry_names_a_registered_method():
    """A renamed or removed method must not leave its inputs behind (its new name would run on defaults)."""
    stale = sorted(set(METHOD_INPUTS) - set(REGISTRY))
    assert not stale, f"METHOD_INPUTS names methods that are not registered: {stale}"
