"""The training loop shared by every method, so comparisons use the same data, model and budget.

The step itself (weighted loss, NaN skip; no host sync) is in ``step.py``; all reweighting (the
method, its device statistics and weights, the interval all-reduce) is in the ``Reweighter`` the
engine holds. Every ``method.interval`` steps the Reweighter updates identically on every rank and
the trainer passes new sampling probabilities to the loader. Logging, evaluation and checkpoints
are the only other places that read device values; the logger only writes what it is given.
"""

from __future__ import annotations

import math
import signal
from pathlib import Path

import numpy as np
import torch

from toremi.data.loader import Batch, BatchLoader
from toremi.data.shards import TokenDataset
from toremi import layout
from toremi.config import to_dict
from toremi.io import atomic_write_text
from toremi.methods import rules
from toremi.model import GPT, GPTConfig, per_sample_loss, save_hf
from toremi.train import checkpoint, epochs, retopic
from toremi.train.config import TrainConfig
from toremi.train.distributed import Dist, all_reduce_sum, barrier
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
    """Data, model, optimizer, logs and checkpoints around a step engine and its Reweighter."""

    def __init__(self, cfg: TrainConfig, d: Dist):
        self.cfg, self.d, self.dev = cfg, d, d.device
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
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg, self.total))
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
        self.engine = StepEngine(self.model, self.opt, self.sched, self.rw, cfg.optim.grad_clip,
                                 self.K, d, compile=use_compile, bf16=cfg.dtype in ("auto", "bfloat16"),
                                 attention=cfg.model.attention, stat_per=cfg.stat_per)
        self.resumed_from = self._maybe_resume()
        self._set_probs()

    def _set_probs(self) -> None:
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

    # ------------------------------------------------------------------ interval work
    def update_method(self, log: RunLogger) -> None:
        """Interval end: the Reweighter all-reduces and updates; new probabilities to the loader."""
        record = self.rw.step(self.step)
        if record is None:
            return
        record["tokens"] = self.step * self.tokens_per_step
        record.update(self.epoch_record())
        log.weights(record, self.method.topic_weights, self.method.sampling_probs)
        self._set_probs()

    def window_metrics(self) -> dict:
        """Read and restart the engine's log-window sums (all ranks): the logger's plain record."""
        e, k1 = self.engine, self.K + 1
        sums = all_reduce_sum(torch.cat([e.log_sums, e.log_tloss, e.log_tcount]), self.d).cpu()
        bad = e.bad.cpu().tolist()
        for acc in (e.log_sums, e.log_tloss, e.log_tcount):
            acc.zero_()
        e.bad[2] = 0
        tok_loss, toks, wloss, nsteps = sums[:4].tolist()
        nsteps /= self.d.world_size  # every rank counted the same steps
        tl, tc = sums[4:4 + self.K], sums[4 + k1:4 + k1 + self.K]
        return {"step": self.step, "tokens": self.step * self.tokens_per_step,
                "loss": tok_loss / toks if toks else None,
                "weighted_loss": wloss / nsteps if nsteps else None,
                "lr": self.sched.get_last_lr()[0], "skipped_steps": int(bad[0]),
                "topic_loss": [float(a / b) if b > 0 else None for a, b in zip(tl.tolist(), tc.tolist())],
                "_bad_run_max": bad[2]}

    @torch.no_grad()
    def evaluate(self) -> dict | None:
        """Token-weighted mean loss over (an evenly spaced capped subset of) the val split, overall
        and per topic; the per-topic losses go to the method's validation hook."""
        if self.val is None or len(self.val) == 0:
            return None
        self.model.eval()
        bs, n = self.cfg.batch_size, len(self.val)
        # evenly spaced over the split (which is ordered by domain), so a cap keeps every topic
        rows = np.unique(np.linspace(0, n - 1, min(n, bs * self.cfg.eval_batches)).astype(np.int64))
        starts = list(range(0, len(rows), bs))
        sums = torch.zeros(2 * (self.K + 1) + 2, dtype=torch.float64, device=self.dev)
        for j in starts[self.d.rank::self.d.world_size]:
            b = Batch(**self.val.gather(rows[j:j + bs])).to(self.dev)
            with self.engine.amp:
                logits = self.model(b.input_ids)
            l, cnt = per_sample_loss(logits, b.labels)
            k1, dummy = self.K + 1, sums.new_zeros(self.K + 1)
            rules.accumulate_topic_stats(sums[:k1], dummy, l.double() * cnt, b.topic_ids)
            rules.accumulate_topic_stats(sums[k1:2 * k1], dummy, cnt.double(), b.topic_ids)
            sums[2 * k1] += (l.double() * cnt).sum()
            sums[2 * k1 + 1] += cnt.sum()
        self.model.train()
        sums = all_reduce_sum(sums, self.d).cpu()
        k1 = self.K + 1
        loss = float(sums[2 * k1] / sums[2 * k1 + 1].clamp(min=1))
        tl, tc = sums[:self.K], sums[k1:k1 + self.K]
        topic = [float(a / b) if b > 0 else None for a, b in zip(tl.tolist(), tc.tolist())]
        self.rw.on_eval(loss, topic, self.step)  # the method's validation hook
        return {"step": self.step, "tokens": self.step * self.tokens_per_step, "val_loss": loss,
                "val_ppl": math.exp(min(loss, 50)), "val_tokens": int(sums[2 * k1 + 1]),
                "val_topic_loss": topic}

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        e = self.engine
        return {"state_version": STATE_VERSION, "step": self.step, "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "reweighter": self.rw.state_dict(),
                "loader": self.loader.state_dict(),
                "engine": {"bad": e.bad.cpu(), **{k: getattr(e, k).cpu() for k in e.ACCUMULATORS}},
                "data_hash": self.ds.data_hash, "topic_names": self.ds.topic_names,
                "world_size": self.d.world_size, "total_steps": self.total,
                "method_options": self.cfg.method.options(), "model_size": self.cfg.model.size,
                "config": to_dict(self.cfg), "config_changes": self.config_changes, "remaps": self.remaps}

    def save(self, log: RunLogger | None = None) -> Path | None:
        path = None
        if self.d.is_main:
            path = checkpoint.save(self.run_dir, self.step, self.model, self.state(), self.cfg.keep_checkpoints)
            if log:
                log.info(f"checkpoint {path}")
        barrier(self.d)
        return path

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
        self.rw.load_state_dict(st["reweighter"])  # a mid-interval checkpoint keeps partial stats
        self.loader.load_state_dict(st["loader"])
        for k in ("bad", *self.engine.ACCUMULATORS):
            getattr(self.engine, k).copy_(st["engine"][k].to(self.dev))
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
        d = self.d
        log = RunLogger(self, enabled=d.is_main)
        stop = {"signal": None}
        handlers = {}

        def on_signal(signum, _frame):
            stop["signal"] = signal.Signals(signum).name

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                handlers[sig] = signal.signal(sig, on_signal)
            except ValueError:  # not the main thread
                pass
        final = None
        try:
            self._loop(log, stop)
            final = self.epoch_record(final=True)
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
            log.close(self.stop_reason, final)
        return self.run_dir

    def _loop(self, log: RunLogger, stop: dict) -> None:
        c, d = self.cfg, self.d
        if self.step >= self.total:
            log.info(f"already trained {self.step} steps")
        while self.step < self.total:
            batches = self.next_batches()
            self.engine.train_step(batches)
            self.step += 1
            self.update_method(log)
            last = self.step == self.total
            if self.step % c.log_every == 0 or last:
                rec = self.window_metrics()
                run_max = rec.pop("_bad_run_max")
                log.metrics(rec)
                if run_max >= c.max_bad_steps:
                    self.stop_reason = (f"stopped: {int(run_max)} non-finite steps in a row "
                                        f"({rec['skipped_steps']} skipped in total); lower optim.lr or check the data")
                    self.engine.bad[1:] = 0
            if (c.eval_every and self.step % c.eval_every == 0) or last:
                ev = self.evaluate()
                if ev:
                    log.eval(ev)
            sig = stop["signal"]
            if d.enabled and (self.step % c.log_every == 0 or last):  # ranks must agree on stopping
                flag = all_reduce_sum(torch.tensor([1.0 if sig else 0.0], device=self.dev), d)
                sig = sig or ("SIGTERM" if float(flag) > 0 else None)
            elif d.enabled:
                sig = None
            if sig and not self.stop_reason and not last:
                self.stop_reason = f"interrupted by {sig}"
            if c.stop_at_step and self.step == c.stop_at_step and not last:
                self.stop_reason = self.stop_reason or f"stopped at step {self.step} (stop_at_step)"
            if self.stop_reason:
                self.save(log)
                log.info(f"{self.stop_reason}; checkpoint written, rerun the same command to resume")
                return
            if c.ckpt_every and self.step % c.ckpt_every == 0 and not last:
                self.save(log)
        self.save(log)
        if d.is_main:
            final = layout.run_final(self.run_dir)
            save_hf(self.model, final, eot_id=self.ds.eot_id)
            tok = layout.tokens_tokenizer(c.tokens_dir)
            if tok.exists():
                atomic_write_text(final / "tokenizer.json", tok.read_text())
        barrier(d)


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
