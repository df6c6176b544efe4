"""Topic reweighting in your own training loop or in a Hugging Face ``Trainer``.

Own loop::

    rw = TopicReweighter(num_topics=K, method="toremi", total_steps=10_000, interval=100)
    for batch in loader:
        logits = model(batch["input_ids"]).logits
        loss = rw.weighted_loss(logits, batch["topic_ids"], labels=batch["labels"], shift=True)
        loss.backward(); opt.step(); opt.zero_grad()
        rw.step()                       # every `interval` calls: all-reduce stats, update weights
        if rw.sampling_probs is not None:  # sampling methods: feed your sampler
            sampler.set_probs(rw.sampling_probs)

HF ``Trainer``: pass ``topic_ids`` ([B, M], -1 padded) as a column, set
``remove_unused_columns=False`` and use ``ReweightingTrainer(..., reweighter=rw)``; it computes the
weighted loss and calls ``rw.step()`` after every optimizer step (``TopicReweightCallback``).
With gradient accumulation the normaliser Σ s_i is per micro-batch there (the toremi trainer uses
the global batch).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from toremi.io import append_jsonl
from toremi.methods import MethodConfig, build_method, rules
from toremi.model import per_sample_loss
from toremi.train import segments


class TopicReweighter:
    """Wraps a method: per-sample weighting, on-device topic statistics, periodic updates."""

    def __init__(self, num_topics: int, method: str = "toremi", total_steps: int = 1,
                 topic_counts: torch.Tensor | None = None, device: str | torch.device = "cpu",
                 log_path: str | Path | None = None, **options):
        self.stat_per = options.pop("stat_per", "segment")  # packed batches (toremi.train.segments)
        self.cfg = MethodConfig(name=method, **options)
        self.method = build_method(self.cfg, num_topics, total_steps, topic_counts)
        self.K, self.device, self.steps = num_topics, torch.device(device), 0
        self.log_path = Path(log_path) if log_path else None
        self.records: list[dict] = []
        self._reset()
        self._weights_to_device()

    def _reset(self):
        self.loss_sum = torch.zeros(self.K + 1, dtype=torch.float64, device=self.device)
        self.count = torch.zeros(self.K + 1, dtype=torch.float64, device=self.device)

    def _weights_to_device(self):
        self.w = self.method.topic_weights.to(self.device, torch.float32)

    @property
    def topic_weights(self) -> torch.Tensor:
        return self.method.topic_weights

    @property
    def sampling_probs(self) -> torch.Tensor | None:
        return self.method.sampling_probs

    def sample_weights(self, topic_ids: torch.Tensor) -> torch.Tensor:
        if topic_ids.device != self.w.device:
            self.device = topic_ids.device
            self.loss_sum, self.count = self.loss_sum.to(self.device), self.count.to(self.device)
            self._weights_to_device()
        return rules.sample_weights(self.w, topic_ids, self.cfg.unlabelled_weight)

    def weighted_loss(self, logits_or_losses: torch.Tensor, topic_ids: torch.Tensor,
                      labels: torch.Tensor | None = None, shift: bool = False,
                      seg_ids: torch.Tensor | None = None) -> torch.Tensor:
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
            ok = torch.ones_like(l, dtype=torch.bool)
        else:
            logits = logits_or_losses
            if shift:
                logits, labels = logits[:, :-1], labels[:, 1:]
            l, n = per_sample_loss(logits.contiguous(), labels.contiguous())
            ok = n > 0
        s = self.sample_weights(topic_ids) * ok
        rules.accumulate_topic_stats(self.loss_sum, self.count, l, topic_ids, ok & torch.isfinite(l))
        norm = s.sum().clamp(min=1e-12) if self.cfg.loss_norm == "weighted_mean" else len(l)
        return (s * l).sum() / norm

    # ---- packed batches (issue 10): kept apart from the per-sample path above ---------------
    def packed_loss(self, logits: torch.Tensor, topic_ids: torch.Tensor, labels: torch.Tensor,
                    shift: bool = False, seg_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token weighted loss Σ_t s_t ce_t / Σ_t s_t of packed windows; statistics per segment.

        - segment map: ``seg_ids`` [B, T] aligned with ``labels`` (the document piece each label
          token belongs to, -1 = none) with ``topic_ids`` [B, S, M] (per row: segment j's topics;
          ids are row-local) or [S, M] (ids numbered over the batch, as toremi's loader gives);
        - per-token topics: ``topic_ids`` [B, T, M] and no ``seg_ids``; every token is its own
          piece, so the statistics are token-weighted.
        """
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
        s = self._token_weights(seg_topics, seg_ids)
        ce = segments.token_ce(logits, labels)
        seg_loss, seg_n = segments.segment_stats(ce, seg_ids, seg_topics.shape[0])
        segments.accumulate(self.loss_sum, self.count, seg_loss, seg_n, seg_topics, None,
                            self.cfg.stat_unit, self.stat_per)
        norm = s.sum() if self.cfg.loss_norm == "weighted_mean" else (seg_ids >= 0).sum()
        return (s * ce).sum() / norm.clamp(min=1e-12)

    def _token_weights(self, seg_topics: torch.Tensor, seg_ids: torch.Tensor) -> torch.Tensor:
        self.sample_weights(seg_topics)  # moves the state to the batch's device
        return segments.token_weights(self.w, seg_topics, seg_ids, self.cfg.unlabelled_weight)

    def step(self) -> dict | None:
        """Call once per optimizer step; every ``interval`` steps updates and returns the record."""
        self.steps += 1
        if self.steps % self.cfg.interval:
            return None
        stats = torch.cat([self.loss_sum[:self.K], self.count[:self.K]])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        stats = stats.cpu()
        record = self.method.update(self.steps, stats[:self.K], stats[self.K:])
        self._weights_to_device()
        self._reset()
        self.records.append(record)
        if self.log_path and (not dist.is_initialized() or dist.get_rank() == 0):
            append_jsonl(self.log_path, record)
        return record

    def on_eval(self, val_loss: float) -> None:
        self.method.on_eval(self.steps, val_loss)

    def state_dict(self) -> dict:
        return {"method": self.method.state_dict(), "steps": self.steps,
                "loss_sum": self.loss_sum.cpu(), "count": self.count.cpu()}

    def load_state_dict(self, sd: dict) -> None:
        self.method.load_state_dict(sd["method"])
        self.steps = sd["steps"]
        self.loss_sum, self.count = sd["loss_sum"].to(self.device), sd["count"].to(self.device)
        self._weights_to_device()


def _hf():
    try:
        import transformers
    except ImportError:
        raise RuntimeError("the HF Trainer integration needs transformers: pip install transformers") from None
    return transformers


def TopicReweightCallback(reweighter: TopicReweighter):
    """A ``transformers.TrainerCallback`` that calls ``reweighter.step()`` after each optimizer
    step, logs the new weights, and feeds evaluation losses to the plateau stage switch."""
    tf = _hf()

    class _Callback(tf.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            rec = reweighter.step()
            if rec is not None:
                state.log_history.append({"step": state.global_step, "topic_weights": rec["weights"],
                                          "topic_loss": rec["topic_loss"], "stage": rec["stage"]})

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            if metrics and "eval_loss" in metrics:
                reweighter.on_eval(metrics["eval_loss"])

    return _Callback()


def ReweightingTrainer(*args, reweighter: TopicReweighter, **kwargs):
    """A ``transformers.Trainer`` whose training loss is the topic-weighted per-sample loss.
    Batches must carry ``topic_ids``; the model gets the other columns (labels are used here)."""
    tf = _hf()

    class _Trainer(tf.Trainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            # our loss is a per-micro-batch mean: let HF divide it by the accumulation steps
            self.model_accepts_loss_kwargs = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = dict(inputs)
            topic_ids, labels = inputs.pop("topic_ids"), inputs.pop("labels")
            seg_ids = inputs.pop("seg_ids", None)  # packed rows: segment map (see packed_loss)
            outputs = model(**inputs)
            if not model.training:
                loss = reweighter_unweighted(outputs.logits, labels)
            else:
                loss = reweighter.weighted_loss(outputs.logits, topic_ids, labels=labels, shift=True,
                                                seg_ids=seg_ids)
            return (loss, outputs) if return_outputs else loss

    callbacks = list(kwargs.pop("callbacks", None) or []) + [TopicReweightCallback(reweighter)]
    trainer = _Trainer(*args, callbacks=callbacks, **kwargs)
    trainer.reweighter = reweighter
    return trainer


def reweighter_unweighted(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Evaluation loss: token-weighted mean CE (perplexity = exp of it), no topic weights."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                             labels[:, 1:].flatten(), ignore_index=-100)
