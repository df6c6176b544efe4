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

import torch

from toremi.train.reweighter import Reweighter


class TopicReweighter(Reweighter):
    """The ``Reweighter`` (all reweighting logic lives there), defaulting to ``method="toremi"``."""

    def __init__(self, num_topics: int, method="toremi", *args, **kwargs):
        super().__init__(num_topics, method, *args, **kwargs)

def _hf():
    try:
        import transformers
    except ImportError:
        raise RuntimeError("the HF Trainer integration needs transformers: pip install transformers") from None
    return transformers


def TopicReweightCallback(reweighter: Reweighter):
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


def ReweightingTrainer(*args, reweighter: Reweighter, **kwargs):
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
                                                input_ids=inputs.get("input_ids"), seg_ids=seg_ids)
            return (loss, outputs) if return_outputs else loss

    callbacks = list(kwargs.pop("callbacks", None) or []) + [TopicReweightCallback(reweighter)]
    trainer = _Trainer(*args, callbacks=callbacks, **kwargs)
    trainer.reweighter = reweighter
    return trainer


def reweighter_unweighted(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Evaluation loss: token-weighted mean CE (perplexity = exp of it), no topic weights."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                             labels[:, 1:].flatten(), ignore_index=-100)
