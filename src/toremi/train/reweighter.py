"""``Reweighter``: the one object that does topic reweighting, wherever the training loop lives.

It owns the method, the per-topic statistics on the device, the topic weights on the device, the
all-reduce once per update interval, and ``state_dict``/``load_state_dict``. The toremi trainer
(through ``StepEngine``), a plain PyTorch loop and the HF ``Trainer`` integration each hold one.

Per step, without a host sync: ``sample_weights(topic_ids)`` -> s_i, then ``observe(...)`` adds
each sample's loss statistic to its topics. ``step()`` after each optimizer step: every
``interval`` steps the sums are all-reduced (one collective), the method updates, the new weights
go to the device and the sums restart. A method with a ``reference_run`` also gets, per topic, the
frozen reference model's loss and the clipped excess loss max(l_i - l_ref_i, 0) (DoReMi).
Epoch accounting (toremi.train.epochs): ``count_weighted``/``count_weighted_packed`` add each drawn
target token's loss weight to its topics on the device; the sums travel with the interval's
statistics (same collective) into ``weighted_tokens``, the run's cumulative per-topic total.

Plain loop::

    rw = Reweighter(K, "toremi", total_steps=10_000, device="cuda", interval=100, preset="paper")
    for batch in loader:
        loss = rw.weighted_loss(model(batch["input_ids"]).logits, batch["topic_ids"],
                                labels=batch["labels"], shift=True)
        loss.backward(); opt.step(); opt.zero_grad()
        rw.step()                          # every `interval` calls: all-reduce + update
        if rw.sampling_probs is not None:  # sampling methods: feed your sampler
            sampler.set_probs(rw.sampling_probs)
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import Tensor

from toremi import layout
from toremi.io import append_jsonl, read_json
from toremi.methods import MethodConfig, build_method
from toremi.model import per_sample_loss
from toremi.train import objective, segments
from toremi.train.objective import Observation, TopicStats

STATE_VERSION = 1
REFERENCE_STATS = ("ref_loss", "excess")  # a method with a reference_run gets these (DoReMi)


class Reweighter:
    def __init__(self, num_topics: int, method: MethodConfig | str = "uniform", total_steps: int = 1,
                 topic_counts: Tensor | None = None, device: str | torch.device = "cpu",
                 log_path: str | Path | None = None, dist=None, data_info: dict | None = None,
                 stat_per: str = "segment", **options):
        if stat_per not in ("segment", "token"):
            raise ValueError(f"stat_per={stat_per!r}: choose segment or token")
        self.stat_per = stat_per  # packed batches: per document piece or per token (segments.py)
        if isinstance(method, str):
            method = MethodConfig(name=method, **options)
        elif options:
            raise TypeError(f"give options inside the MethodConfig, not as keywords: {sorted(options)}")
        self.cfg, self.K, self.device, self.d = method, num_topics, torch.device(device), dist
        self.method = build_method(method, num_topics, total_steps, topic_counts)
        self.steps = 0
        self.log_path = Path(log_path) if log_path else None
        self.records: list[dict] = []
        self.amp = nullcontext()  # the step engine sets its autocast (reference forward)
        if data_info:
            self.method.check_data(data_info)  # e.g. replay: same topics and tokenizer as its source
        self.ref_model = self._load_reference(self.method.reference_run, data_info) \
            if self.method.reference_run else None
        self.extra = dict(self.method.statistics)  # per-topic statistics the method declares
        clash = set(self.extra) & {"loss", "count", "wtok", *REFERENCE_STATS}
        if clash:
            raise ValueError(f"method {method.name!r} declares statistics {sorted(clash)}, names toremi uses")
        names = ("loss", "count") + (REFERENCE_STATS if self.ref_model is not None else ()) \
            + tuple(self.extra) + ("wtok",)
        self.weighted_tokens = torch.zeros(self.K, dtype=torch.float64)  # host, through the last update
        self.stats = TopicStats(self.K, names, self.device)
        self.push_weights()

    # ------------------------------------------------------------------ device state
    @property
    def loss_sum(self) -> Tensor:
        return self.stats["loss"]

    @property
    def count(self) -> Tensor:
        return self.stats["count"]

    @property
    def topic_weights(self) -> Tensor:
        return self.method.topic_weights

    @property
    def sampling_probs(self) -> Tensor | None:
        return self.method.sampling_probs

    def push_weights(self) -> None:
        """Copy the method's weights to the device (after an update or a resume)."""
        self.w_dev = self.method.topic_weights.to(self.device, torch.float32)

    def to(self, device: torch.device) -> "Reweighter":
        self.device = torch.device(device)
        self.stats.to(self.device)
        if self.ref_model is not None:
            self.ref_model.to(self.device)
        self.push_weights()
        return self

    def _load_reference(self, run: str, data_info: dict | None):
        from toremi.model import load_hf

        run = Path(run)
        info = read_json(layout.run_info(run)) if layout.run_info(run).exists() else {}
        mine, theirs = (data_info or {}).get("tokenizer"), info.get("tokenizer")
        if mine and theirs and mine.get("fingerprint") != theirs.get("fingerprint"):
            raise ValueError(f"reference run {run} used another tokenizer ({theirs.get('name')}); "
                             f"train the reference on the same tokens dir")
        model = load_hf(layout.run_final(run), map_location=self.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    # ------------------------------------------------------------------ per step (no host sync)
    def count_weighted(self, s: Tensor, n: Tensor, topic_ids: Tensor) -> None:
        """Weight-scaled tokens: each sample's s_i x n_i (target tokens) to its topics, on device."""
        self.stats.credit("wtok", s.double() * n.double(), topic_ids)

    def count_weighted_packed(self, s_tok: list[Tensor], batches: list) -> None:
        """Packed: Σ of the per-token weights of each segment to the segment's topics."""
        for s, b in zip(s_tok, batches):
            self.stats.credit("wtok", segments.segment_sums(s, b.seg_ids, b.seg_topics.shape[0]), b.seg_topics)

    def sample_weights(self, topic_ids: Tensor) -> Tensor:
        """s_i = mean weight of sample i's topics ([B], float32 on the device)."""
        if topic_ids.device != self.w_dev.device:
            self.to(topic_ids.device)
        return objective.sample_weights(self.w_dev, topic_ids, self.cfg.unlabelled_weight)

    def token_weights(self, seg_topics: Tensor, seg_ids: Tensor) -> Tensor:
        """Packed windows: s per target token [B, T] (its document's weight; 0 = no target)."""
        if seg_topics.device != self.w_dev.device:
            self.to(seg_topics.device)
        return objective.token_weights(self.w_dev, seg_topics, seg_ids, self.cfg.unlabelled_weight)

    def batch_weights(self, b) -> Tensor:
        """s of one toremi ``Batch``: per sample [B] (0 without targets), per target token if packed."""
        if b.seg_ids is not None:
            return self.token_weights(b.seg_topics, b.seg_ids)
        return self.sample_weights(b.topic_ids) * (b.labels != -100).any(1)

    def statistic(self, l: Tensor, n: Tensor, target_bytes: Tensor | None = None) -> Tensor:
        """Per-sample loss the method sees: per target token, or per target byte (stat_unit)."""
        if self.cfg.stat_unit == "token":
            return l
        if target_bytes is None:
            raise ValueError("method.stat_unit=byte needs target_bytes in batches (re-run prepare)")
        return l * n / target_bytes.to(l.dtype).clamp(min=1)

    def _record(self, obs: Observation) -> Observation:
        """Add an observation to the interval's statistics: loss/count and the method's own."""
        self.stats.add(obs)
        if self.extra:
            valid = obs.unit_valid()
            for name, fn in self.extra.items():
                self.stats.add_values(name, fn(obs), obs.topics, valid)
        return obs

    def observe(self, l: Tensor, n: Tensor, valid: Tensor, topic_ids: Tensor,
                target_bytes: Tensor | None = None, input_ids: Tensor | None = None,
                labels: Tensor | None = None) -> Observation:
        """Add per-sample losses ``l`` [B] (``n`` target tokens each; ``valid`` masks samples that
        must not count) to their topics; returns the ``Observation`` (statistic in token or byte unit)."""
        obs = self._record(Observation(self.statistic(l.detach(), n, target_bytes), n, topic_ids, valid,
                                       raw=l, stat_unit=self.cfg.stat_unit))
        if self.ref_model is not None:
            if input_ids is None or labels is None:
                raise ValueError(f"method {self.cfg.name!r} compares with a reference model: pass "
                                 f"input_ids and labels to observe()")
            with torch.no_grad(), self.amp:
                r, _ = per_sample_loss(self.ref_model(input_ids), labels)
            r = self.statistic(r.float(), n, target_bytes)
            r = torch.where(valid, r, torch.zeros_like(r))
            self.stats.add_values("ref_loss", r, topic_ids, valid)
            self.stats.add_values("excess", (obs.loss - r).clamp(min=0), topic_ids, valid)
        return obs

    def observe_batches(self, l: Tensor, n: Tensor, valid: Tensor, batches: list) -> Observation:
        """``observe`` for the toremi loader's ``Batch`` list (micro-batches of one step)."""
        cat = lambda name: torch.cat([getattr(b, name) for b in batches])
        tb = cat("target_bytes") if self.cfg.stat_unit == "byte" and all(
            b.target_bytes is not None for b in batches) else None
        ref = self.ref_model is not None
        return self.observe(l, n, valid, cat("topic_ids"), tb, cat("input_ids") if ref else None,
                            cat("labels") if ref else None)

    def observe_packed(self, ces: list[Tensor], batches: list, valid: Tensor, stat_per: str = "segment",
                       doc_attention: bool = False) -> Observation:
        """``observe`` for packed micro-batches: per-token losses ``ces`` [B, T] each -> per-segment
        (loss sum, tokens), added to their documents' topics (``stat_per``, toremi.train.segments)."""
        seg_loss, seg_n = (torch.cat(x) for x in zip(*[
            segments.segment_stats(ce, b.seg_ids, b.seg_topics.shape[0]) for ce, b in zip(ces, batches)]))
        topics = torch.cat([b.seg_topics for b in batches])
        nbytes = None if any(b.seg_bytes is None for b in batches) else torch.cat([b.seg_bytes for b in batches])
        obs = self._record(Observation(seg_loss, seg_n, topics, valid, packed=True, nbytes=nbytes,
                                       stat_unit=self.cfg.stat_unit, stat_per=stat_per))
        if self.ref_model is not None:
            ref = []
            with torch.no_grad(), self.amp:
                for b in batches:
                    logits = self.ref_model(b.input_ids, b.seg_ids) if doc_attention else self.ref_model(b.input_ids)
                    ref.append(segments.segment_sums(segments.token_ce(logits, b.labels), b.seg_ids,
                                                     b.seg_topics.shape[0]))
            ref_loss = torch.cat(ref)
            # the excess is clipped per document piece: max(l - l_ref, 0), as per sample unpacked
            self.stats.add(Observation(ref_loss, seg_n, topics, valid, True, None, nbytes, obs.stat_unit,
                                       stat_per), "ref_loss", None)
            self.stats.add(Observation((seg_loss - ref_loss).clamp(min=0), seg_n, topics, valid, True, None,
                                       nbytes, obs.stat_unit, stat_per), "excess", None)
        return obs

    def weighted_loss(self, logits_or_losses: Tensor, topic_ids: Tensor, labels: Tensor | None = None,
                      shift: bool = False, input_ids: Tensor | None = None,
                      seg_ids: Tensor | None = None) -> Tensor:
        """Σ s_i l_i / Σ s_i (or / B with ``loss_norm="mean"``) and record per-topic statistics.

        Give either per-sample losses [B] or logits [B, T, V] with ``labels`` [B, T] (-100 =
        ignore); ``shift=True`` for HF-style labels (equal to the inputs, shifted inside).
        Packed batches: a segment map ``seg_ids`` or per-token ``topic_ids`` [B, T, M]
        (see ``packed_loss``).
        """
        if seg_ids is not None or topic_ids.dim() == 3:
            return self.packed_loss(logits_or_losses, topic_ids, labels, shift, seg_ids)
        if labels is None:
            l = logits_or_losses
            n = torch.ones_like(l)
            ok = torch.ones_like(l, dtype=torch.bool)
        else:
            logits = logits_or_losses
            if shift:  # causal model: positions [:-1] of the inputs predict labels [1:]
                input_ids = (labels if input_ids is None else input_ids)[:, :-1]
                logits, labels = logits[:, :-1], labels[:, 1:]
            l, n = per_sample_loss(logits.contiguous(), labels.contiguous())
            ok = n > 0
        s = self.sample_weights(topic_ids) * ok
        self.observe(l, n, ok & torch.isfinite(l), topic_ids, input_ids=input_ids, labels=labels)
        return objective.weighted_sum(s, l, objective.inv_norm([s], self.cfg.loss_norm))

    def packed_loss(self, logits: Tensor, topic_ids: Tensor, labels: Tensor, shift: bool = False,
                    seg_ids: Tensor | None = None) -> Tensor:
        """Per-token weighted loss Σ_t s_t ce_t / Σ_t s_t of packed windows; statistics per segment.

        - segment map: ``seg_ids`` [B, T] aligned with ``labels`` (the document piece each label
          token belongs to, -1 = none) with ``topic_ids`` [B, S, M] (per row: segment j's topics;
          ids are row-local) or [S, M] (ids numbered over the batch, as toremi's loader gives);
        - per-token topics: ``topic_ids`` [B, T, M] and no ``seg_ids``; every token is its own
          piece, so the statistics are token-weighted.
        """
        if self.ref_model is not None:
            raise ValueError(f"method {self.cfg.name!r} (reference model) is not supported with packed "
                             f"batches in your own loop; use `toremi train` or unpacked batches")
        if shift:
            logits, labels = logits[:, :-1], labels[:, 1:]
            seg_ids = None if seg_ids is None else seg_ids[:, 1:]
            topic_ids = topic_ids[:, 1:] if seg_ids is None else topic_ids
        b, t = labels.shape
        if seg_ids is None:  # per-token topics
            seg_ids = torch.arange(b * t, device=labels.device).view(b, t)
            seg_topics = topic_ids.reshape(b * t, -1)
        elif topic_ids.dim() == 3:  # row-local segment ids
            seg_ids = torch.where(seg_ids >= 0, seg_ids + topic_ids.shape[1] *
                                  torch.arange(b, device=seg_ids.device)[:, None], -1)
            seg_topics = topic_ids.reshape(-1, topic_ids.shape[-1])
        else:
            seg_topics = topic_ids
        seg_ids = torch.where(labels != -100, seg_ids, -1)
        s = self.token_weights(seg_topics, seg_ids)
        ce = segments.token_ce(logits, labels)
        seg_loss, seg_n = segments.segment_stats(ce, seg_ids, seg_topics.shape[0])
        self._record(Observation(seg_loss, seg_n, seg_topics, True, packed=True, stat_unit=self.cfg.stat_unit,
                                 stat_per=self.stat_per))
        return objective.weighted_sum(s, ce, objective.inv_norm([s], self.cfg.loss_norm, seg_ids=[seg_ids]))

    # ------------------------------------------------------------------ per interval
    def _all_reduce(self, t: Tensor) -> Tensor:
        if self.d is not None:
            from toremi.train.distributed import all_reduce_sum

            return all_reduce_sum(t, self.d)
        if torch_dist.is_available() and torch_dist.is_initialized():
            torch_dist.all_reduce(t)
        return t

    def step(self, step: int | None = None) -> dict | None:
        """Call once per optimizer step (``step`` = steps done, default: count them); every
        ``interval`` steps updates the method and returns its weights.jsonl record."""
        self.steps = self.steps + 1 if step is None else step
        if self.steps % self.cfg.interval:
            return None
        return self.update()

    def update(self) -> dict:
        """All-reduce the interval's sums (one collective), update the method, push the weights."""
        names, k = self.stats.names, self.K
        flat = self._all_reduce(self.stats.flat(topics_only=True)).cpu()
        parts = dict(zip(names, flat.split(k) if k else [flat] * len(names)))
        self.weighted_tokens += parts.pop("wtok")
        record = self.method.update(self.steps, parts.pop("loss"), parts.pop("count"), **parts)
        self.push_weights()
        self.stats.zero_()
        self.records.append(record)
        if self.log_path and (not torch_dist.is_initialized() or torch_dist.get_rank() == 0):
            append_jsonl(self.log_path, record)
        return record

    def weighted_tokens_now(self) -> Tensor:
        """[K] weight-scaled tokens including the open interval (a collective: call on all ranks)."""
        part = self._all_reduce(self.stats["wtok"][:self.K].clone()).cpu()
        return self.weighted_tokens + part

    def on_eval(self, val_loss: float, topic_loss: list | Tensor | None = None, step: int | None = None) -> None:
        """Validation hook: overall loss (plateau switch) and per-topic loss (None/NaN = absent)."""
        step = self.steps if step is None else step
        self.method.on_eval(step, val_loss)
        if topic_loss is not None:
            tl = torch.tensor([math.nan if x is None else float(x) for x in topic_loss], dtype=torch.float64) \
                if isinstance(topic_loss, list) else topic_loss.detach().cpu().double()
            self.method.on_val_topics(step, tl)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "method": self.method.state_dict(), "steps": self.steps,
                "stats": {k: v.cpu() for k, v in self.stats.t.items()},
                "weighted_tokens": self.weighted_tokens.clone()}

    def load_state_dict(self, sd: dict) -> None:
        version = sd.get("version")
        if version != STATE_VERSION:
            raise ValueError(f"reweighter state version {version} is not {STATE_VERSION} (this toremi); "
                             f"resume with the toremi that wrote it or start a new run")
        missing = sorted(set(self.stats.names) - set(sd["stats"]) - {"wtok"})  # wtok: newer than some states
        if missing:
            raise ValueError(f"reweighter state lacks statistics {missing} that method "
                             f"{self.cfg.name!r} needs; it was saved by another method")
        self.method.load_state_dict(sd["method"])
        self.steps = int(sd["steps"])
        for k in self.stats.names:
            if k in sd["stats"]:
                self.stats[k].copy_(sd["stats"][k].to(self.device))
        self.weighted_tokens = sd.get("weighted_tokens", torch.zeros(self.K, dtype=torch.float64)).clone().double()
        self.push_weights()
