"""Run-dir logging: config.yaml, run.json, metrics.jsonl, weights.jsonl, progress bar, TB/W&B.

Logs are JSON lines so that reports only read them. On resume, records past the checkpoint's step
are dropped first, so a resumed run's logs equal those of an uninterrupted run. The logger is a
callback (toremi.train.callbacks): it writes the plain records the other callbacks emit and changes
no training state (``LogWindow`` reads and restarts the device sums).
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from toremi import layout
from toremi.config import save_config, to_dict
from toremi.io import append_jsonl, atomic_write_json, atomic_write_text, read_json, read_jsonl
from toremi.train.callbacks import Callback


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Keep the records with step <= max_step (the ones written before that checkpoint)."""
    if path.exists():
        keep = [r for r in read_jsonl(path) if r.get("step", 0) <= max_step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def weights_hash(w: torch.Tensor, p: torch.Tensor | None) -> str:
    h = hashlib.sha256(w.detach().cpu().double().numpy().tobytes())
    if p is not None:
        h.update(p.detach().cpu().double().numpy().tobytes())
    return h.hexdigest()


class RunLogger(Callback):
    """Writes the records other callbacks emit (``on_update``, ``on_log``, ``on_eval``) and the run
    files; reads only the trainer's public counters and ``describe()``/``warnings()``. On ranks
    other than 0 (``enabled=False``) it writes only the per-rank weight hashes of a DDP run."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.started = enabled, False  # not started (no run): records go nowhere
        self.pbar = self.tb = self.wandb = None
        self.final_epochs: dict | None = None

    def on_train_start(self, t) -> None:
        cfg, run = t.cfg, t.run_dir
        self.started = True
        self.run_dir, self.d, self.tokens_per_step, self.topic_names = run, t.d, t.tokens_per_step, t.topic_names
        self.metrics_path, self.weights_path = layout.run_metrics(run), layout.run_weights(run)
        self.last_time, self.last_step, self.start = time.perf_counter(), t.step, time.perf_counter()
        if t.d.enabled:  # every rank logs a hash of its weights at each update
            self.rank_path = layout.run_rank_log(run, t.d.rank)
            if t.resumed_from:
                truncate_jsonl(self.rank_path, t.step)
            else:
                self.rank_path.unlink(missing_ok=True)
        if not self.enabled:
            return
        run.mkdir(parents=True, exist_ok=True)
        for p in (self.metrics_path, self.weights_path):
            if t.resumed_from:
                truncate_jsonl(p, t.step)
            else:
                p.unlink(missing_ok=True)  # logs of a run that died before its first checkpoint
        save_config(cfg, layout.run_config(run))
        warnings = t.warnings()
        atomic_write_json(layout.run_info(run), {**t.describe(), "warnings": warnings})
        if cfg.progress:
            from toremi.progress import bar

            self.pbar = bar(total=t.total, initial=t.step, unit="step", dynamic_ncols=True,
                            desc=f"train {cfg.method.name}")
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RuntimeError("tensorboard=true needs TensorBoard: pip install 'toremi[tb]'") from None
            self.tb = SummaryWriter(str(layout.run_tensorboard(run)))
        if cfg.wandb:
            try:
                import wandb
            except ImportError:
                raise RuntimeError("wandb=<project> needs Weights & Biases: pip install wandb") from None
            self.wandb = wandb.init(project=cfg.wandb, config=to_dict(cfg), dir=str(run), resume="allow")
        for w in warnings:
            self.info("warning: " + w)
        if t.resumed_from:
            self.info(f"resumed from {t.resumed_from} at step {t.step}")

    def info(self, msg: str) -> None:
        if self.enabled:
            line = f"[toremi train] {msg}"
            self.pbar.write(line) if self.pbar else print(line, flush=True)

    # -- records --------------------------------------------------------------------------------
    def on_log(self, t, record: dict) -> None:
        """Write one metrics record (rank 0), adding throughput and elapsed time."""
        if not self.started:
            return
        record = {k: v for k, v in record.items() if not k.startswith("_")}
        step = record["step"]
        now = time.perf_counter()
        window = step - self.last_step
        tps = window * self.tokens_per_step / max(now - self.last_time, 1e-9)
        self.last_time, self.last_step = now, step
        if not self.enabled:
            return
        rec = {**record, "tokens_per_s": round(tps, 1), "elapsed_s": round(now - self.start, 2)}
        append_jsonl(self.metrics_path, rec)
        if self.pbar:
            self.pbar.update(step - self.pbar.n)
            self.pbar.set_postfix(loss=f"{rec['loss']:.3f}" if rec["loss"] is not None else "nan",
                                  tok_s=f"{tps:,.0f}", refresh=False)
        self._external(rec, step)

    def on_update(self, t, record: dict) -> None:
        if not self.started:
            return
        if self.d.enabled:  # the record's weights/probs are the method's float64 values, exactly
            w = torch.tensor(record["weights"], dtype=torch.float64)
            p = None if record["probs"] is None else torch.tensor(record["probs"], dtype=torch.float64)
            append_jsonl(self.rank_path, {"step": record["step"], "sha256": weights_hash(w, p)})
        if self.enabled:
            append_jsonl(self.weights_path, record)
            if self.tb:
                for name, v in zip(self.topic_names, record["weights"]):
                    self.tb.add_scalar(f"weight/{name}", v, record["step"])

    def on_eval(self, t, record: dict) -> None:
        if self.enabled and self.started:
            append_jsonl(self.metrics_path, record)
            self.info(f"step {record['step']}: val loss {record['val_loss']:.4f} ppl {record['val_ppl']:.2f}")
            self._external(record, record["step"])

    def _external(self, rec: dict, step: int) -> None:
        scalars = {k: v for k, v in rec.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb:
            self.wandb.log(scalars, step=step)

    def on_train_end(self, t) -> None:
        """Per-topic tokens seen and epochs through the last step (a collective: every rank)."""
        self.final_epochs = t.epoch_record(final=True)

    def close(self, t) -> None:
        """Final status in run.json (also after an exception: status from ``t.stop_reason``)."""
        if not self.enabled or not self.started:
            return
        if self.pbar:
            self.pbar.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()
        reason = t.stop_reason
        info = read_json(layout.run_info(self.run_dir))
        done = t.step >= t.total and not reason
        info.update(status="done" if done else (reason or "incomplete"), steps_done=t.step,
                    skipped_steps=t.skipped_steps(),
                    finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        if self.final_epochs is not None:
            info.update(self.final_epochs)
        atomic_write_json(layout.run_info(self.run_dir), info)
