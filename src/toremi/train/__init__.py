"""Training: one loop for every method (``train(cfg) -> run_dir``), checkpoints, DDP, HF helpers."""

from __future__ import annotations

from pathlib import Path

from toremi.train.config import ModelConfig, OptimConfig, TrainConfig


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) the run described by ``cfg``; returns the run dir. Under torchrun every
    rank calls this; the process group is created here and torn down at the end."""
    from toremi.train import distributed
    from toremi.train.trainer import Trainer

    d = distributed.setup(cfg.device)
    try:
        return Trainer(cfg, d).run()
    finally:
        distributed.cleanup(d)


__all__ = ["ModelConfig", "OptimConfig", "TrainConfig", "train"]
