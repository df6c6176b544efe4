"""Everything around the optimizer step, as callbacks with one small interface.

Why: the loop (``Trainer.run``) then reads top-down, and a new concern (a logger, a stop rule,
an extra evaluation) is one class added to the list instead of an edit inside the loop::

    on_train_start                      (after a resume; files, handlers)
    while step < total and not stop_reason:
        engine.train_step(batches); step += 1
        on_step_end                     (each callback decides whether this step is its step)
    on_train_end                        (after the last step or a stop; not after an exception)
    close                               (always)

Hooks, all optional; ``t`` is the ``Trainer``: callbacks read ``t.step``, ``t.total``,
``t.tokens_per_step``, ``t.cfg``, ``t.d`` and the components ``t.rw``, ``t.loader``, ``t.engine``,
``t.model``, and set ``t.stop_reason`` to stop. A callback that produces a record hands it to every
callback with ``t.emit``:

    on_update(t, record)  a method update (weights.jsonl record), from ``WeightUpdate``
    on_log(t, record)     a log window (metrics record; keys starting with "_" are not written)
    on_eval(t, record)    an evaluation (val_loss, val_topic_loss, ...), from ``Evaluate``

Stateful callbacks set ``state_key`` and implement ``state_dict``/``load_state_dict``; the trainer
saves them in train_state.pt under that key (``WeightUpdate``: "reweighter"). Hooks run in list
order (``Trainer.callbacks``): RunLogger, WeightUpdate, LogWindow, Evaluate, StopPolicy, the
user's, Checkpoint (last, so a checkpoint holds every callback's state after the step). This is
the order of the loop before callbacks, so logs, weights and checkpoints are bit-identical to it.
"""

from __future__ import annotations

import math
import signal

import numpy as np
import torch

from toremi.data.loader import Batch
from toremi.model import per_sample_loss
from toremi.train.distributed import all_reduce_sum
from toremi.train.objective import TopicStats


class Callback:
    """No-op hooks; subclasses override what they need."""

    state_key: str | None = None  # set -> state_dict()/load_state_dict() travel in checkpoints

    def on_train_start(self, t) -> None: ...
    def on_step_end(self, t) -> None: ...
    def on_update(self, t, record: dict) -> None: ...
    def on_log(self, t, record: dict) -> None: ...
    def on_eval(self, t, record: dict) -> None: ...
    def on_train_end(self, t) -> None: ...
    def close(self, t) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None: ...


def is_last(t) -> bool:
    return t.step == t.total


class WeightUpdate(Callback):
    """Interval end: the Reweighter all-reduces and updates the method (identically on every rank);
    new sampling probabilities go to the loader; evaluations reach the method's validation hook."""

    state_key = "reweighter"

    def __init__(self, rw):
        self.rw = rw

    def on_step_end(self, t) -> None:
        record = self.rw.step(t.step)
        if record is None:
            return
        record["tokens"] = t.step * t.tokens_per_step
        record.update(t.epoch_record())
        t.emit("on_update", record)
        t.set_sampling()

    def on_eval(self, t, record: dict) -> None:
        self.rw.on_eval(record["val_loss"], record["val_topic_loss"], t.step)

    def state_dict(self) -> dict:
        return self.rw.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.rw.load_state_dict(sd)  # a mid-interval checkpoint keeps partial stats


class LogWindow(Callback):
    """Every ``log_every`` steps (and the last): read and restart the engine's window sums (one
    collective, one host read) and emit the metrics record."""

    def on_step_end(self, t) -> None:
        if t.step % t.cfg.log_every == 0 or is_last(t):
            t.emit("on_log", self.read(t))

    @staticmethod
    def read(t) -> dict:
        e, k1 = t.engine, t.K + 1
        sums = all_reduce_sum(e.window.flat(), t.d).cpu()
        bad = e.bad.tensor.cpu().tolist()
        e.window.zero_()
        e.bad.max_run = 0
        n = len(e.window.sums.FIELDS)
        tok_loss, toks, wloss, nsteps = sums[:n].tolist()
        nsteps /= t.d.world_size  # every rank counted the same steps
        tl, tc = sums[n:n + t.K], sums[n + k1:n + k1 + t.K]
        skipped, _, run_max = bad
        return {"step": t.step, "tokens": t.step * t.tokens_per_step,
                "loss": tok_loss / toks if toks else None,
                "weighted_loss": wloss / nsteps if nsteps else None,
                "lr": t.sched.get_last_lr()[0], "skipped_steps": int(skipped),
                "topic_loss": [float(a / b) if b > 0 else None for a, b in zip(tl.tolist(), tc.tolist())],
                "_bad_run_max": run_max}


class Evaluate(Callback):
    """Every ``eval_every`` steps (and the last): token-weighted mean loss over (an evenly spaced,
    capped subset of) the dev split, overall and per topic; emits ``on_eval``."""

    def __init__(self, val):
        self.val = val

    def on_step_end(self, t) -> None:
        if (t.cfg.eval_every and t.step % t.cfg.eval_every == 0) or is_last(t):
            record = self.evaluate(t)
            if record:
                t.emit("on_eval", record)

    @torch.no_grad()
    def evaluate(self, t) -> dict | None:
        if self.val is None or len(self.val) == 0:
            return None
        model, d, K = t.model, t.d, t.K
        model.eval()
        bs, n = t.cfg.batch_size, len(self.val)
        # evenly spaced over the split (which is ordered by domain), so a cap keeps every topic
        rows = np.unique(np.linspace(0, n - 1, min(n, bs * t.cfg.eval_batches)).astype(np.int64))
        starts = list(range(0, len(rows), bs))
        topic = TopicStats(K, ("loss", "tokens"), t.dev)
        total = torch.zeros(2, dtype=torch.float64, device=t.dev)  # loss x tokens, tokens
        for j in starts[d.rank::d.world_size]:
            b = Batch(**self.val.gather(rows[j:j + bs])).to(t.dev)
            with t.engine.amp:
                logits = model(b.input_ids)
            l, cnt = per_sample_loss(logits, b.labels)
            # token-weighted per topic: Σ l_i n_i and Σ n_i of the samples carrying the topic
            topic.add_values("loss", l.double() * cnt, b.topic_ids)
            topic.add_values("tokens", cnt.double(), b.topic_ids)
            total[0] += (l.double() * cnt).sum()
            total[1] += cnt.sum()
        model.train()
        sums = all_reduce_sum(torch.cat([topic.flat(), total]), d).cpu()
        k1 = K + 1
        loss = float(sums[2 * k1] / sums[2 * k1 + 1].clamp(min=1))
        tl, tc = sums[:K], sums[k1:k1 + K]
        topic_loss = [float(a / b) if b > 0 else None for a, b in zip(tl.tolist(), tc.tolist())]
        return {"step": t.step, "tokens": t.step * t.tokens_per_step, "val_loss": loss,
                "val_ppl": math.exp(min(loss, 50)), "val_tokens": int(sums[2 * k1 + 1]),
                "val_topic_loss": topic_loss}


class StopPolicy(Callback):
    """When to stop early: ``max_bad_steps`` non-finite steps in a row, SIGTERM/SIGINT (ranks agree
    at log steps), or ``stop_at_step``. It only sets ``t.stop_reason``; ``Checkpoint`` saves."""

    def __init__(self):
        self.signal, self.handlers = None, {}

    def on_train_start(self, t) -> None:
        def on_signal(signum, _frame):
            self.signal = signal.Signals(signum).name

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.handlers[sig] = signal.signal(sig, on_signal)
            except ValueError:  # not the main thread
                pass

    def on_log(self, t, record: dict) -> None:
        run_max = record["_bad_run_max"]
        if run_max >= t.cfg.max_bad_steps:
            t.stop_reason = (f"stopped: {int(run_max)} non-finite steps in a row "
                             f"({record['skipped_steps']} skipped in total); lower optim.lr or check the data")
            t.engine.bad.run = 0
            t.engine.bad.max_run = 0

    def on_step_end(self, t) -> None:
        c, d, last = t.cfg, t.d, is_last(t)
        sig = self.signal
        if d.enabled and (t.step % c.log_every == 0 or last):  # ranks must agree on stopping
            flag = all_reduce_sum(torch.tensor([1.0 if sig else 0.0], device=t.dev), d)
            sig = sig or ("SIGTERM" if float(flag) > 0 else None)
        elif d.enabled:
            sig = None
        if sig and not t.stop_reason and not last:
            t.stop_reason = f"interrupted by {sig}"
        if c.stop_at_step and t.step == c.stop_at_step and not last:
            t.stop_reason = t.stop_reason or f"stopped at step {t.step} (stop_at_step)"

    def close(self, t) -> None:
        for sig, h in self.handlers.items():
            signal.signal(sig, h)
        self.handlers = {}


class Checkpoint(Callback):
    """Checkpoints every ``ckpt_every`` steps and on a stop; at the end, the last checkpoint and
    the HF export in ``final/`` (``Trainer.save``/``Trainer.export``)."""

    def on_train_start(self, t) -> None:
        if t.step >= t.total:
            t.log.info(f"already trained {t.step} steps")

    def on_step_end(self, t) -> None:
        if t.stop_reason:
            t.save()
            t.log.info(f"{t.stop_reason}; checkpoint written, rerun the same command to resume")
        elif t.cfg.ckpt_every and t.step % t.cfg.ckpt_every == 0 and not is_last(t):
            t.save()

    def on_train_end(self, t) -> None:
        if not t.stop_reason:
            t.save()
            t.export()


__all__ = ["Callback", "Checkpoint", "Evaluate", "LogWindow", "StopPolicy", "WeightUpdate"]
