"""The optimizer step, separate from data and logging so that benchmarks run the exact same code.

Per step, with no host sync:
  s_i = mean weight of sample i's topics (unlabelled: ``unlabelled_weight``; no targets: 0);
  l_i = mean CE over sample i's real target tokens;
  loss = Σ s_i l_i / Σ s_i over the GLOBAL batch: the normaliser is summed over micro-batches and
  all-reduced over ranks before the forward passes (one scalar all-reduce, no host read).
  ``loss_norm=mean`` (authors) divides by the number of samples instead, which scales the
  effective learning rate by mean(s);
  per-topic loss sums/counts accumulate on device with ``index_add_`` (in the ``Reweighter``, which
  owns weights and statistics; the engine holds one);
  a non-finite gradient norm skips the update on device (fused AdamW's ``found_inf``) and is
  counted, also on device.

Packed batches (``Batch.seg_ids`` set, toremi.train.segments): each target token carries its
document's s and loss = Σ_t s_t ce_t / Σ_t s_t over the global batch (``loss_norm=mean``: / the
number of target tokens); topic statistics are per segment (``stat_per``). ``attention=doc`` passes
the segment ids to the model, which then masks attention across documents.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from toremi.data.loader import Batch
from toremi.methods import MethodConfig, rules
from toremi.model import GPT, per_sample_loss
from toremi.train import segments
from toremi.train.distributed import Dist, all_reduce_sum
from toremi.train.reweighter import Reweighter


class StepEngine:
    ACCUMULATORS = ("log_tloss", "log_tcount", "log_sums")  # log-window sums (the stats: Reweighter)

    def __init__(self, model: GPT, opt: torch.optim.Optimizer, sched, method: Reweighter | MethodConfig,
                 grad_clip: float, num_topics: int, d: Dist, compile: bool = False, bf16: bool = True,
                 attention: str = "causal", stat_per: str = "segment"):
        self.model, self.opt, self.sched, self.grad_clip = model, opt, sched, grad_clip
        self.K, self.d, self.dev = num_topics, d, d.device
        self.rw = method if isinstance(method, Reweighter) else Reweighter(num_topics, method, device=d.device, dist=d)
        self.fused = bool(opt.defaults.get("fused"))
        # device accumulators: [K+1] (last slot = padding), log-window stats
        z = lambda: torch.zeros(self.K + 1, dtype=torch.float64, device=self.dev)
        self.log_tloss, self.log_tcount = z(), z()
        self.log_sums = torch.zeros(4, dtype=torch.float64, device=self.dev)  # tok-loss, tokens, wloss, steps
        self.bad = torch.zeros(3, dtype=torch.float64, device=self.dev)  # skipped total, run, max run
        self.amp = (torch.autocast("cuda", dtype=torch.bfloat16) if self.dev.type == "cuda" and bf16
                    else nullcontext())
        self.ddp = DDP(model, device_ids=[self.dev.index] if self.dev.type == "cuda" else None) \
            if d.enabled else model
        self.fwd = torch.compile(self._fwd) if compile else self._fwd
        if attention not in ("causal", "doc") or stat_per not in ("segment", "token"):
            raise ValueError(f"attention={attention!r} (causal|doc), stat_per={stat_per!r} (segment|token)")
        self.attention, self.stat_per = attention, stat_per
        self.fwd_packed = torch.compile(self._fwd_packed) if compile else self._fwd_packed
        self.rw.amp = self.amp

    def _fwd(self, input_ids, labels, s, inv_norm):
        """Forward + weighted loss; compiled as one graph when ``compile`` is on."""
        with self.amp:
            logits = self.ddp(input_ids)
        l, n = per_sample_loss(logits, labels)
        return (s * l).sum() * inv_norm, l, n

    def _fwd_packed(self, input_ids, labels, s_tok, inv_norm, doc_ids):
        """Packed: forward (document-masked when ``doc_ids`` is given) + per-token weighted loss."""
        with self.amp:
            logits = self.ddp(input_ids) if doc_ids is None else self.ddp(input_ids, doc_ids)
        ce = segments.token_ce(logits, labels)
        return (s_tok * ce).sum() * inv_norm, ce

    def train_step(self, batches: list[Batch]) -> None:
        """One optimizer step over micro-batches already on the device."""
        if batches[0].seg_ids is not None:
            return self._train_step_packed(batches)
        world = self.d.world_size
        s_all = [self.rw.sample_weights(b.topic_ids) * (b.labels != -100).any(1) for b in batches]
        if self.rw.cfg.loss_norm == "mean":
            inv_norm = 1.0 / sum(len(s) for s in s_all)  # x world / (N x world): DDP averages ranks
        else:
            inv_norm = world / all_reduce_sum(torch.stack([s.sum() for s in s_all]).sum(), self.d).clamp(min=1e-12)
        ls, ns, wloss = [], [], torch.zeros((), dtype=torch.float64, device=self.dev)
        for i, (b, s) in enumerate(zip(batches, s_all)):
            sync = self.ddp.no_sync() if self.d.enabled and i < len(batches) - 1 else nullcontext()
            with sync:
                loss, l, n = self.fwd(b.input_ids, b.labels, s, inv_norm)
                loss.backward()
            ls.append(l.detach())
            ns.append(n)
            wloss += loss.detach().double() / world
        ok = self._optimizer_step()
        l, n = torch.cat(ls), torch.cat(ns)
        tids = torch.cat([b.topic_ids for b in batches])
        self.rw.count_weighted(torch.cat(s_all), n, tids)  # weight-scaled epochs (drawn tokens)
        valid = (n > 0) & torch.isfinite(l) & ok
        l_stat = self.rw.observe_batches(l, n, valid, batches)
        rules.accumulate_topic_stats(self.log_tloss, self.log_tcount, l_stat, tids, valid)
        nv = n.double() * valid
        self.log_sums[0] += (torch.where(valid, l, 0).double() * nv).sum()
        self.log_sums[1] += nv.sum()
        self._log_step(ok, wloss)

    def _optimizer_step(self) -> torch.Tensor:
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip or math.inf)
        ok = torch.isfinite(gnorm)
        if self.fused:
            self.opt.found_inf = (~ok).float()
            self.opt.step()
        elif ok:  # non-fused optimizer: this check costs one host sync
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.sched is not None:
            self.sched.step()
        return ok

    def _log_step(self, ok: torch.Tensor, wloss: torch.Tensor) -> None:
        self.log_sums[2] += torch.where(ok, wloss, 0)  # skipped steps stay out of the logged means
        self.log_sums[3] += ok.double()
        bad = (~ok).double()
        self.bad[0] += bad
        self.bad[1] = (self.bad[1] + 1) * bad
        self.bad[2] = torch.maximum(self.bad[2], self.bad[1])

    def _train_step_packed(self, batches: list[Batch]) -> None:
        """Packed windows: per-token weights, per-segment statistics (toremi.train.segments)."""
        world = self.d.world_size
        s_all = [self.rw.token_weights(b.seg_topics, b.seg_ids) for b in batches]
        if self.rw.cfg.loss_norm == "mean":
            norm = torch.stack([(b.seg_ids >= 0).sum() for b in batches]).sum().double()
        else:
            norm = torch.stack([s.sum() for s in s_all]).sum()
        inv_norm = world / all_reduce_sum(norm, self.d).clamp(min=1e-12)
        ces, wloss = [], torch.zeros((), dtype=torch.float64, device=self.dev)
        for i, (b, s) in enumerate(zip(batches, s_all)):
            sync = self.ddp.no_sync() if self.d.enabled and i < len(batches) - 1 else nullcontext()
            with sync:
                loss, ce = self.fwd_packed(b.input_ids, b.labels, s, inv_norm.float(),
                                           b.seg_ids if self.attention == "doc" else None)
                loss.backward()
            ces.append(ce.detach())
            wloss += loss.detach().double() / world
        ok = self._optimizer_step()
        self.rw.count_weighted_packed(s_all, batches)  # weight-scaled epochs (drawn tokens)
        seg_loss, seg_n, topics, nbytes = self.rw.observe_packed(
            ces, batches, ok, self.stat_per, self.attention == "doc")
        segments.accumulate(self.log_tloss, self.log_tcount, seg_loss, seg_n, topics, nbytes,
                            self.rw.cfg.stat_unit, self.stat_per, ok)
        valid = torch.isfinite(seg_loss) & ok
        self.log_sums[0] += torch.where(valid, seg_loss, 0).sum()
        self.log_sums[1] += torch.where(valid, seg_n, 0).sum()
        self._log_step(ok, wloss)

    # -- the reweighting state lives in the Reweighter; these keep older callers working -------
    @property
    def w_dev(self) -> torch.Tensor:
        return self.rw.w_dev

    @property
    def stat_loss(self) -> torch.Tensor:
        return self.rw.loss_sum

    @property
    def stat_count(self) -> torch.Tensor:
        return self.rw.count

    def set_weights(self, topic_weights: torch.Tensor) -> None:
        """Fixed weights on the device (benchmarks); a method's own updates go via the Reweighter."""
        self.rw.w_dev = topic_weights.to(self.dev, torch.float32)
