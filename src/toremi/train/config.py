"""Training config dataclasses (YAML + ``key.sub=value`` overrides via toremi.config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from toremi.methods.base import MethodConfig
from toremi.model_sizes import SIZES


@dataclass
class ModelConfig:
    size: str = "tiny"                 # tiny | tiny-x10 | small-cpu | medium-cpu | ... (toremi.model_sizes)
    block_size: Optional[int] = None   # context; default: the tokens dir's seq_len
    dropout: float = 0.0
    pad_vocab_to: int = 64
    # packed windows: causal = attend across the documents of a window; doc = only within one
    # document (FlexAttention block mask on CUDA, masked SDPA on CPU). Unpacked windows: no effect.
    attention: Literal["causal", "doc"] = "causal"

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"model.size={self.size!r}: choose one of {list(SIZES)}")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr_ratio: float = 0.1          # final lr = lr * min_lr_ratio
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0             # 0 = no clipping (the norm is still computed)

    def __post_init__(self):
        if self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("optim: need lr > 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1")


@dataclass
class TrainConfig:
    tokens_dir: Optional[Path] = None  # prepared tokens (``toremi prepare``); its dev split feeds in-training validation
    out: Optional[Path] = None         # run dir
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 0                     # optimizer steps; 0 = derive from ``tokens``
    tokens: int = 0                    # token budget (global batch x seq_len per step)
    batch_size: int = 8                # per-rank micro-batch (sequences)
    accum: int = 1                     # micro-batches per optimizer step
    eval_every: int = 100              # 0 = only at the end
    eval_batches: int = 20             # cap on validation batches per evaluation
    log_every: int = 10
    ckpt_every: int = 0                # 0 = only at the end / on a signal / on a stop
    keep_checkpoints: int = 2
    seed: int = 0
    data_seed: Optional[int] = None    # data order / topic sampling seed; default ``seed`` (A/A control)
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"   # auto: bf16 autocast on CUDA
    compile: Optional[bool] = None     # torch.compile the whole step; default: on CUDA only
    max_bad_steps: int = 20            # non-finite steps in a row before checkpoint + stop
    resume: Literal["auto", "must", "never"] = "auto"
    stop_at_step: int = 0              # checkpoint and stop after this step (time-slicing, tests)
    progress: bool = True
    tensorboard: bool = False
    wandb: Optional[str] = None        # wandb project name
    # auto: what `toremi prepare` wrote (packing=docs -> packed windows); none | docs: insist
    packing: Literal["auto", "none", "docs"] = "auto"
    # packed windows: a topic's statistic is the mean loss of each document piece counted once
    # (segment), or Σ loss / Σ tokens over the topic's tokens (token); see toremi.train.segments
    stat_per: Literal["segment", "token"] = "segment"
    # cap on any topic's effective epochs (tokens drawn / its tokens in the split); topic sampling
    # renormalises over the topics under it; a budget it cannot hold is refused before training
    max_repetition: Optional[float] = None
    # resume on a re-annotated tokens dir: a `toremi remap` output mapping the checkpoint's topics
    # to this tokens dir's (toremi.train.retopic); ignored when the checkpoint is on this data
    remap: Optional[Path] = None

    def __post_init__(self):
        if self.batch_size < 1 or self.accum < 1:
            raise ValueError("batch_size and accum must be >= 1")
        if self.steps < 0 or self.tokens < 0:
            raise ValueError("steps and tokens must be >= 0")
        if self.log_every < 1:
            raise ValueError("log_every must be >= 1")
        if self.max_repetition is not None and not self.max_repetition > 0:
            raise ValueError(f"max_repetition must be > 0 (epochs per topic), got {self.max_repetition}")

    def total_steps(self, world_size: int, seq_len: int) -> int:
        if self.steps:
            return self.steps
        if not self.tokens:
            raise ValueError("set `steps=N` or a token budget `tokens=N`")
        per_step = self.batch_size * self.accum * world_size * seq_len
        return max(1, -(-self.tokens // per_step))
