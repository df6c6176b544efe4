"""The optimizer step, separate from data and logging so that benchmarks run the exact same code.

Per step, with no host sync (the loss and the statistics are built in ``objective``):
  s = the micro-batches' weights (``Reweighter.batch_weights``: per sample, or per target token
  when packed); loss = ``objective.weighted_sum(s, l, inv_norm)`` = Σ s·l / Σ s over the GLOBAL
  batch: the normaliser is summed over micro-batches and all-reduced over ranks before the forward
  passes (one scalar all-reduce, no host read). ``loss_norm=mean`` (authors) divides by the number
  of samples instead, which scales the effective learning rate by mean(s);
  the step's losses become one ``Observation``, added to the method's interval statistics (the
  ``Reweighter``) and to the log window (``Window``) by the same ``TopicStats.add``;
  a non-finite gradient norm skips the update on device (fused AdamW's ``found_inf``) and is
  counted, also on device (``BadSteps``).

Packed batches (``Batch.seg_ids`` set, toremi.train.segments): each target token carries its
document's s; topic statistics are per segment (``stat_per``). ``attention=doc`` passes the
segment ids to the model, which then masks attention across documents.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from toremi.data.loader import Batch
from toremi.methods import MethodConfig
from toremi.model import GPT, per_sample_loss
from toremi.train import objective, segments
from toremi.train.distributed import Dist
from toremi.train.objective import BadSteps, Observation, TopicStats, WindowSums
from toremi.train.reweighter import Reweighter


class Window:
    """The log window's device sums: per-topic loss/count (``topics``), scalars (``sums``).
    ``state_dict`` keeps the checkpoint keys of earlier versions (log_tloss, log_tcount, log_sums)."""

    def __init__(self, num_topics: int, device):
        self.topics = TopicStats(num_topics, ("loss", "count"), device)
        self.sums = WindowSums(device)

    def add(self, obs: Observation) -> None:
        self.topics.add(obs)
        tok_loss, toks = obs.token_sums()
        self.sums.token_loss += tok_loss
        self.sums.tokens += toks

    def flat(self) -> torch.Tensor:
        """sums, topic loss [K+1], topic count [K+1] in one tensor (one collective, one host read)."""
        return torch.cat([self.sums.tensor, self.topics.flat()])

    def zero_(self) -> None:
        self.topics.zero_()
        self.sums.tensor.zero_()

    def state_dict(self) -> dict:
        return {"log_tloss": self.topics["loss"].cpu(), "log_tcount": self.topics["count"].cpu(),
                "log_sums": self.sums.tensor.cpu()}

    def load_state_dict(self, sd: dict) -> None:
        self.topics["loss"].copy_(sd["log_tloss"])
        self.topics["count"].copy_(sd["log_tcount"])
        self.sums.tensor.copy_(sd["log_sums"])


class StepEngine:
    def __init__(self, model: GPT, opt: torch.optim.Optimizer, sched, method: Reweighter | MethodConfig,
                 grad_clip: float, num_topics: int, d: Dist, compile: bool = False, bf16: bool = True,
                 attention: str = "causal", stat_per: str = "segment"):
        self.model, self.opt, self.sched, self.grad_clip = model, opt, sched, grad_clip
        self.K, self.d, self.dev = num_topics, d, d.device
        self.rw = method if isinstance(method, Reweighter) else Reweighter(num_topics, method, device=d.device, dist=d)
        self.fused = bool(opt.defaults.get("fused"))
        self.window = Window(self.K, self.dev)
        self.bad = BadSteps(self.dev)
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
        return objective.weighted_sum(s, l, inv_norm), l, n

    def _fwd_packed(self, input_ids, labels, s_tok, inv_norm, doc_ids):
        """Packed: forward (document-masked when ``doc_ids`` is given) + per-token weighted loss."""
        with self.amp:
            logits = self.ddp(input_ids) if doc_ids is None else self.ddp(input_ids, doc_ids)
        ce = segments.token_ce(logits, labels)
        return objective.weighted_sum(s_tok, ce, inv_norm), ce

    def train_step(self, batches: list[Batch]) -> None:
        """One optimizer step over micro-batches already on the device."""
        packed = batches[0].seg_ids is not None
        s_all = [self.rw.batch_weights(b) for b in batches]
        inv_norm = objective.inv_norm(s_all, self.rw.cfg.loss_norm,
                                      [b.seg_ids for b in batches] if packed else None, self.d)
        outs, wloss = [], torch.zeros((), dtype=torch.float64, device=self.dev)
        for i, (b, s) in enumerate(zip(batches, s_all)):
            sync = self.ddp.no_sync() if self.d.enabled and i < len(batches) - 1 else nullcontext()
            with sync:
                if packed:
                    loss, *out = self.fwd_packed(b.input_ids, b.labels, s, inv_norm,
                                                 b.seg_ids if self.attention == "doc" else None)
                else:
                    loss, *out = self.fwd(b.input_ids, b.labels, s, inv_norm)
                loss.backward()
            outs.append([x.detach() for x in out])
            wloss += loss.detach().double() / self.d.world_size
        ok = self._optimizer_step()
        obs = self._observe_packed(s_all, outs, batches, ok) if packed else self._observe(s_all, outs, batches, ok)
        self.window.add(obs)
        self._count_step(ok, wloss)

    def _observe(self, s_all, outs, batches, ok) -> Observation:
        l, n = (torch.cat(x) for x in zip(*outs))
        self.rw.count_weighted(torch.cat(s_all), n, torch.cat([b.topic_ids for b in batches]))  # weighted epochs
        valid = (n > 0) & torch.isfinite(l) & ok
        return self.rw.observe_batches(l, n, valid, batches)

    def _observe_packed(self, s_all, outs, batches, ok) -> Observation:
        self.rw.count_weighted_packed(s_all, batches)  # weight-scaled epochs (drawn tokens)
        return self.rw.observe_packed([o[0] for o in outs], batches, ok, self.stat_per, self.attention == "doc")

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

    def _count_step(self, ok: torch.Tensor, wloss: torch.Tensor) -> None:
        w, b = self.window.sums, self.bad
        w.weighted_loss += torch.where(ok, wloss, 0)  # skipped steps stay out of the logged means
        w.steps += ok.double()
        bad = (~ok).double()
        b.skipped += bad
        b.run = (b.run + 1) * bad
        b.max_run = torch.maximum(b.max_run, b.run)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"bad": self.bad.tensor.cpu(), **self.window.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        self.bad.tensor.copy_(sd["bad"])
        self.window.load_state_dict(sd)

    def set_weights(self, topic_weights: torch.Tensor) -> None:
        """Fixed weights on the device (benchmarks); a method's own updates go via the Reweighter."""
        self.rw.w_dev = topic_weights.to(self.dev, torch.float32)
