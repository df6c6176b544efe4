"""Run-dir logging: config.yaml, run.json, metrics.jsonl, weights.jsonl, progress bar, TB/W&B.

Logs are JSON lines so that reports only read them. On resume, records past the checkpoint's step
are dropped first, so a resumed run's logs equal those of an uninterrupted run. The logger writes
the plain records it is given and changes no training state (the trainer reads and restarts the
device sums: ``Trainer.window_metrics``).
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import toremi
from toremi import layout
from toremi.config import save_config, to_dict
from toremi.io import append_jsonl, atomic_write_json, atomic_write_text, read_json, read_jsonl


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


class RunLogger:
    def __init__(self, trainer, enabled: bool = True):
        self.t, self.enabled = trainer, enabled
        cfg, run = trainer.cfg, trainer.run_dir
        self.metrics_path, self.weights_path = layout.run_metrics(run), layout.run_weights(run)
        self.last_time, self.last_step, self.start = time.perf_counter(), trainer.step, time.perf_counter()
        self.pbar = self.tb = self.wandb = None
        if trainer.d.enabled:  # every rank logs a hash of its weights at each update
            self.rank_path = layout.run_rank_log(run, trainer.d.rank)
            if trainer.resumed_from:
                truncate_jsonl(self.rank_path, trainer.step)
            else:
                self.rank_path.unlink(missing_ok=True)
        if not enabled:
            return
        run.mkdir(parents=True, exist_ok=True)
        for p in (self.metrics_path, self.weights_path):
            if trainer.resumed_from:
                truncate_jsonl(p, trainer.step)
            else:
                p.unlink(missing_ok=True)  # logs of a run that died before its first checkpoint
        save_config(cfg, layout.run_config(run))
        self.run_info = self._run_info()
        atomic_write_json(layout.run_info(run), self.run_info)
        if cfg.progress:
            from toremi.progress import bar

            self.pbar = bar(total=trainer.total, initial=trainer.step, unit="step", dynamic_ncols=True,
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
        for w in self._warnings():
            self.info("warning: " + w)
        if trainer.resumed_from:
            self.info(f"resumed from {trainer.resumed_from} at step {trainer.step}")

    def _warnings(self) -> list[str]:
        t, out = self.t, []
        if not t.labelled:
            out.append(f"{t.cfg.tokens_dir} has no topic labels (prepare it with topic attributes): "
                       f"training with every sample weighing {t.cfg.method.unlabelled_weight}, "
                       f"which makes '{t.cfg.method.name}' behave like uniform")
        unl = int((t.ds.topics < 0).all(1).sum()) if t.K else len(t.ds)
        if t.labelled and unl and t.cfg.method.unlabelled_weight == 0:
            out.append(f"{unl} unlabelled sequences get weight 0 and drop out of training "
                       f"(method.unlabelled_weight=0)")
        return out

    def _run_info(self) -> dict:
        t = self.t
        from importlib.metadata import PackageNotFoundError, version

        try:  # the version only: importing transformers would cost seconds
            tf_version = version("transformers")
        except PackageNotFoundError:
            tf_version = None
        m = t.ds.manifest
        return {"toremi": toremi.__version__, "python": platform.python_version(),
                "torch": torch.__version__, "transformers": tf_version,
                "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "status": "running", "tokens_dir": str(t.cfg.tokens_dir), "data_hash": t.ds.data_hash,
                "tokenizer": m.get("tokenizer"), "seq_len": t.T, "topic_names": t.ds.topic_names,
                "domain_names": t.ds.domain_names, "labelled": t.labelled,
                "method": t.cfg.method.name, "method_options": t.cfg.method.options(),
                "model": {"size": t.cfg.model.size, "params": t.model.num_params(),
                          "config": to_dict(t.model.config)},
                "device": str(t.dev), "world_size": t.d.world_size, "total_steps": t.total,
                "tokens_per_step": t.tokens_per_step, "max_repetition": t.cfg.max_repetition,
                "topic_tokens_available": t.loader.topic_available[:t.K].tolist(), "compile": t.engine.fwd is not t.engine._fwd,
                "fused_adamw": t.engine.fused, "resumed_from": str(t.resumed_from) if t.resumed_from else None,
                "remaps": t.remaps,
                "warnings": self._warnings()}

    def info(self, msg: str) -> None:
        if self.enabled:
            line = f"[toremi train] {msg}"
            self.pbar.write(line) if self.pbar else print(line, flush=True)

    # -- records --------------------------------------------------------------------------------
    def metrics(self, record: dict) -> None:
        """Write one metrics record (rank 0), adding throughput and elapsed time."""
        step = record["step"]
        now = time.perf_counter()
        window = step - self.last_step
        tps = window * self.t.tokens_per_step / max(now - self.last_time, 1e-9)
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

    def weights(self, record: dict, w: torch.Tensor, p: torch.Tensor | None) -> None:
        if self.t.d.enabled:
            append_jsonl(self.rank_path, {"step": record["step"], "sha256": weights_hash(w, p)})
        if self.enabled:
            append_jsonl(self.weights_path, record)
            if self.tb:
                for name, v in zip(self.t.ds.topic_names, record["weights"]):
                    self.tb.add_scalar(f"weight/{name}", v, record["step"])

    def eval(self, record: dict) -> None:
        if self.enabled:
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

    def close(self, reason: str | None, epochs: dict | None = None) -> None:
        """Final status; ``epochs``: the per-topic tokens seen and epochs through the last step."""
        if not self.enabled:
            return
        if self.pbar:
            self.pbar.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()
        info = read_json(layout.run_info(self.t.run_dir))
        done = self.t.step >= self.t.total and not reason
        info.update(status="done" if done else (reason or "incomplete"), steps_done=self.t.step,
                    skipped_steps=int(self.t.engine.bad[0]),
                    finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        if epochs is not None:
            info.update(epochs)
        atomic_write_json(layout.run_info(self.t.run_dir), info)
