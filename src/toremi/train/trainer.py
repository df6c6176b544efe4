"""The training loop shared by every method, so comparisons use the same data, model and budget.

``Trainer.run`` reads top-down: batches -> ``StepEngine.train_step`` (weighted loss, statistics,
NaN skip; no host sync; step.py, objective.py) -> the callbacks' ``on_step_end``
(toremi.train.callbacks): the method update (``WeightUpdate``, which holds the ``Reweighter``),
the log window, evaluation, the stop policy, checkpoints, and the logger that writes what they
emit. The trainer itself only builds the components and saves/resumes their state.
"""

from __future__ import annotations

import math
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from toremi.data.loader import Batch, BatchLoader
from toremi.data.shards import TokenDataset
import toremi
from toremi import layout
from toremi.config import to_dict
from toremi.io import atomic_write_text
from toremi.model import GPT, GPTConfig, save_hf
from toremi.train import checkpoint, epochs, retopic
from toremi.train.callbacks import Callback, Checkpoint, Evaluate, LogWindow, StopPolicy, WeightUpdate
from toremi.train.config import TrainConfig
from toremi.train.distributed import Dist, barrier
from toremi.train.reweighter import Reweighter
from toremi.train.runlog import RunLogger
from toremi.train.step import StepEngine

STATE_VERSION = 2  # train_state.pt layout; 1 = before the Reweighter (no "state_version" key)


def lr_lambda(cfg: TrainConfig, total: int):
    o = cfg.optim

    def f(step: int) -> float:  # step = optimizer steps taken so far
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        frac = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
        decay = 0.5 * (1 + math.cos(math.pi * frac)) if o.schedule == "cosine" else 1 - frac
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * decay
    return f


def dev_split(tokens_dir) -> TokenDataset | None:
    """The dev split (carved from training documents) that every in-training signal reads; a tokens
    dir from before it existed held the eval documents as ``val`` and is refused, not read."""
    if layout.tokens_index(tokens_dir, "dev").exists():
        return TokenDataset(tokens_dir, "dev")
    if layout.tokens_index(tokens_dir, "val").exists():
        raise ValueError(f"{tokens_dir}: its validation split is the held-out eval split (prepared by an "
                         f"older toremi); re-run `toremi prepare` to carve a dev split from the training documents")
    return None


class Trainer:
    """Data, model, optimizer and step engine, with the callbacks that run around each step.

    ``callbacks``: extra ``Callback`` objects (toremi.train.callbacks), run after the default ones
    and before ``Checkpoint``, so their state and stop requests are in the step's checkpoint."""

    def __init__(self, cfg: TrainConfig, d: Dist, callbacks: list[Callback] | None = None):
        self.cfg, self.d = cfg, d
        if cfg.tokens_dir is None or cfg.out is None:
            raise ValueError("set tokens_dir (--tokens) and out (--out)")
        self.run_dir = Path(cfg.out)
        self.ds = TokenDataset(cfg.tokens_dir, packing=cfg.packing)
        self.val = dev_split(cfg.tokens_dir)  # never the held-out eval documents
        self.K = self.ds.num_topics
        labelled = self.ds.topics[self.ds.topics >= 0]
        self.topic_counts = torch.from_numpy(np.bincount(labelled, minlength=self.K).astype(np.float64))
        self.labelled = self.K > 0 and len(labelled) > 0
        self.total = cfg.total_steps(d.world_size, self.ds.seq_len)
        self.T = self.ds.seq_len
        self.tokens_per_step = cfg.batch_size * cfg.accum * d.world_size * self.T

        torch.manual_seed(cfg.seed)
        mc = cfg.model
        self.model = GPT(GPTConfig.named(mc.size, self.ds.vocab_size, mc.block_size or self.T,
                                         dropout=mc.dropout, pad_vocab_to=mc.pad_vocab_to)).to(self.dev)
        o = cfg.optim
        self.opt = self.model.configure_optimizer(o.lr, o.weight_decay, (o.beta1, o.beta2), o.eps)
        sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg, self.total))
        self.rw = Reweighter(self.K, cfg.method, self.total, self.topic_counts, self.dev, dist=d,
                             data_info={"tokenizer": self.ds.manifest.get("tokenizer"),
                                        "topic_names": self.ds.topic_names})
        self.method = self.rw.method
        data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
        self.loader = BatchLoader(self.ds, cfg.batch_size, seed=data_seed, rank=d.rank, world_size=d.world_size,
                                  max_repetition=cfg.max_repetition)
        self._check_cap()
        self.step, self.stop_reason = 0, None
        self.config_changes: list[dict] = []  # settings changed at resumes: [{step, changed}]
        self.remaps: list[dict] = []  # resumes on a re-annotated tokens dir (toremi.train.retopic)
        use_compile = cfg.compile if cfg.compile is not None else self.dev.type == "cuda"
        self.engine = StepEngine(self.model, self.opt, sched, self.rw, cfg.optim.grad_clip,
                                 self.K, d, compile=use_compile, bf16=cfg.dtype in ("auto", "bfloat16"),
                                 attention=cfg.model.attention, stat_per=cfg.stat_per)
        self.log = RunLogger(enabled=d.is_main)
        # Checkpoint last: it saves after every other callback has seen the step (and may stop it)
        self.callbacks: list[Callback] = [self.log, WeightUpdate(self.rw), LogWindow(), Evaluate(self.val),
                                          StopPolicy(), *(callbacks or []), Checkpoint()]
        self.resumed_from = self._maybe_resume()
        self.set_sampling()

    @property
    def dev(self) -> torch.device:
        return self.d.device

    @property
    def sched(self):
        return self.engine.sched

    @property
    def topic_names(self) -> list[str]:
        return self.ds.topic_names

    def emit(self, hook: str, *args) -> None:
        """Call ``hook`` on every callback, in list order."""
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def skipped_steps(self) -> int:
        return int(self.engine.bad.skipped)

    def set_sampling(self) -> None:
        """The method's sampling probabilities to the loader (sampling methods on labelled data)."""
        if self.method.uses_sampling and self.labelled:
            self.loader.set_topic_probs(self.method.sampling_probs)

    def _check_cap(self) -> None:
        """Refuse (before anything is written) a budget ``max_repetition`` cannot hold."""
        sampling = self.method.uses_sampling and self.labelled
        probs = self.method.sampling_probs if sampling else None
        if sampling and probs is None:  # adaptive sampler not started yet: any present topic
            probs = (self.topic_counts > 0).double()
        epochs.check_cap(self.cfg.max_repetition, self.total * self.tokens_per_step, self.loader.topic_available,
                         self.ds.topic_names, probs, self.loader._unlabelled_share, self.cfg.method.name)

    def epoch_record(self, final: bool = False) -> dict:
        """Per-topic tokens seen and epochs (and weight-scaled epochs for loss-weight methods).
        ``final``: include the open interval's weighted tokens (a collective: all ranks call it)."""
        avail = self.loader.topic_available[:self.K]
        weighted = None
        if not self.method.uses_sampling:
            weighted = (self.rw.weighted_tokens_now() if final else self.rw.weighted_tokens).numpy()
        return epochs.summary(self.loader.topic_tokens[:self.K], avail, weighted)

    def next_batches(self) -> list[Batch]:
        return [self.loader.next_batch().to(self.dev) for _ in range(self.cfg.accum)]

    def describe(self) -> dict:
        """run.json's opening record: versions, data, method, model and loop settings."""
        from importlib.metadata import PackageNotFoundError, version

        try:  # the version only: importing transformers would cost seconds
            tf_version = version("transformers")
        except PackageNotFoundError:
            tf_version = None
        m, cfg = self.ds.manifest, self.cfg
        return {"toremi": toremi.__version__, "python": platform.python_version(),
                "torch": torch.__version__, "transformers": tf_version,
                "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "status": "running", "tokens_dir": str(cfg.tokens_dir), "data_hash": self.ds.data_hash,
                "tokenizer": m.get("tokenizer"), "seq_len": self.T, "topic_names": self.ds.topic_names,
                "domain_names": self.ds.domain_names, "labelled": self.labelled,
                "method": cfg.method.name, "method_options": cfg.method.options(),
                "model": {"size": cfg.model.size, "params": self.model.num_params(),
                          "config": to_dict(self.model.config)},
                "device": str(self.dev), "world_size": self.d.world_size, "total_steps": self.total,
                "tokens_per_step": self.tokens_per_step, "max_repetition": cfg.max_repetition,
                "topic_tokens_available": self.loader.topic_available[:self.K].tolist(),
                "compile": self.engine.fwd is not self.engine._fwd, "fused_adamw": self.engine.fused,
                "resumed_from": str(self.resumed_from) if self.resumed_from else None, "remaps": self.remaps}

    def warnings(self) -> list[str]:
        """Settings that make the run differ from what its method name suggests."""
        out, cfg = [], self.cfg
        if not self.labelled:
            out.append(f"{cfg.tokens_dir} has no topic labels (prepare it with topic attributes): "
                       f"training with every sample weighing {cfg.method.unlabelled_weight}, "
                       f"which makes '{cfg.method.name}' behave like uniform")
        unl = int((self.ds.topics < 0).all(1).sum()) if self.K else len(self.ds)
        if self.labelled and unl and cfg.method.unlabelled_weight == 0:
            out.append(f"{unl} unlabelled sequences get weight 0 and drop out of training "
                       f"(method.unlabelled_weight=0)")
        return out

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        """train_state.pt: the loop's counters, optimizer, loader, engine and stateful callbacks."""
        stateful = {cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_key}
        return {"state_version": STATE_VERSION, "step": self.step, "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), **stateful,
                "loader": self.loader.state_dict(), "engine": self.engine.state_dict(),
                "data_hash": self.ds.data_hash, "topic_names": self.ds.topic_names,
                "world_size": self.d.world_size, "total_steps": self.total,
                "method_options": self.cfg.method.options(), "model_size": self.cfg.model.size,
                "config": to_dict(self.cfg), "config_changes": self.config_changes, "remaps": self.remaps}

    def save(self) -> Path | None:
        path = None
        if self.d.is_main:
            path = checkpoint.save(self.run_dir, self.step, self.model, self.state(), self.cfg.keep_checkpoints)
            self.log.info(f"checkpoint {path}")
        barrier(self.d)
        return path

    def export(self) -> None:
        """The final model in HF format (and the tokenizer) under ``final/``."""
        if self.d.is_main:
            final = layout.run_final(self.run_dir)
            save_hf(self.model, final, eot_id=self.ds.eot_id)
            tok = layout.tokens_tokenizer(self.cfg.tokens_dir)
            if tok.exists():
                atomic_write_text(final / "tokenizer.json", tok.read_text())
        barrier(self.d)

    def _maybe_resume(self) -> Path | None:
        path = checkpoint.latest(self.run_dir)
        if self.cfg.resume == "must" and path is None:
            raise ValueError(f"--resume: no checkpoint under {self.run_dir / 'checkpoints'}")
        if path is None:
            return None
        if self.cfg.resume == "never":
            raise ValueError(f"{self.run_dir} already has checkpoints ({path.name}); resume=never "
                             f"refuses to overwrite it: pick a new --out or use resume=auto")
        model, st = checkpoint.load(path, self.dev)
        st = retopic.adapt(upgrade_state(st, path), self, path)  # re-annotated data: through cfg.remap
        self.remaps = list(st.get("remaps", []))
        for key, now in (("method_options", self.cfg.method.options()), ("model_size", self.cfg.model.size)):
            old = st.get(key, now)
            if isinstance(now, dict) and st.get("upgraded_from") == 1:  # pre-registry: flat, all methods
                now = {k: v for k, v in now.items() if k in old}
                old = {k: old[k] for k in now}
            if old != now:
                diff = {k: (st[key].get(k), now[k]) for k in now if st[key].get(k) != now[k]} \
                    if isinstance(now, dict) else (st[key], now)
                raise ValueError(f"cannot resume from {path}: {key} changed (checkpoint, now): {diff}; "
                                 f"use the original settings or a new --out")
        if st["world_size"] != self.d.world_size:
            raise ValueError(f"{path} was written by {st['world_size']} processes, this run has "
                             f"{self.d.world_size}; resume with the same number")
        # Settings changed since the checkpoint: refused (data/model/method/batch) or applied below.
        changed = checkpoint.resume_changes(st, self.cfg, path,
                                            skip=("method.",) if st.get("upgraded_from") == 1 else ())
        self.model.load_state_dict(model.state_dict())
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        for cb in self.callbacks:
            if cb.state_key:
                cb.load_state_dict(st[cb.state_key])
        self.loader.load_state_dict(st["loader"])
        self.engine.load_state_dict(st["engine"])
        self.step = st["step"]
        checkpoint.set_rng_state(st["rng"])
        checkpoint.apply_optim(self.opt, self.sched, self.cfg.optim)  # changed optim settings apply
        self.config_changes = list(st.get("config_changes", [])) + (
            [{"step": self.step, "changed": changed}] if changed else [])
        if changed and self.d.is_main:
            print(f"[toremi train] resume at step {self.step}: applying " + ", ".join(
                f"{k} {a} -> {b}" for k, (a, b) in changed.items()), flush=True)
        return path

    # ------------------------------------------------------------------ the loop
    def run(self) -> Path:
        """Train to ``total`` steps or until a callback sets ``stop_reason``; returns the run dir."""
        try:
            self.emit("on_train_start")
            while self.step < self.total and not self.stop_reason:
                self.engine.train_step(self.next_batches())
                self.step += 1
                self.emit("on_step_end")
            self.emit("on_train_end")
        finally:
            self.emit("close")
        return self.run_dir


def upgrade_state(st: dict, path: Path) -> dict:
    """A checkpoint written before the Reweighter (layout 1: "method" + "accumulators" at the top
    level, flat method options) becomes layout 2; a newer layout is refused with the reason."""
    version = st.get("state_version", 1)
    if version == STATE_VERSION:
        return st
    if version != 1:
        raise ValueError(f"cannot resume from {path}: its state layout {version} is newer than this "
                         f"toremi's ({STATE_VERSION}); resume with the toremi that wrote it")
    acc = st["accumulators"]
    st = dict(st, upgraded_from=1)
    st["reweighter"] = {"version": 1, "method": st.pop("method"), "steps": st["step"],
                        "stats": {"loss": acc["stat_loss"], "count": acc["stat_count"]}}
    st["engine"] = {"bad": st.pop("bad"), **{k: acc[k] for k in ("log_tloss", "log_tcount", "log_sums")}}
    opts = dict(st["method_options"])
    if "odm_smoothing" in opts:
        opts["smoothing"] = opts["odm_smoothing"]
    st["method_options"] = opts
    return st
