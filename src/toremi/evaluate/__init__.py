"""Evaluation: per-domain perplexity / bits-per-byte and zero-shot downstream accuracy.

Everything here reduces to one primitive, ``score``: given token windows and how many of their last
targets count, return the summed log-likelihood of those targets. Perplexity windows and
multiple-choice continuations are both such windows, so padding, masking and batching live in one
place (and are tested once).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toremi import layout
from toremi.lazy import lazy
from toremi.tokenizer import Tokenizer, from_file

# torch loads when a model does, not when `toremi eval`/`experiment` validates its config
torch = lazy("torch")
F = lazy("torch.nn.functional")


class CheckpointMismatch(ValueError):
    """The checkpoint and the tokenizer (or the run that produced them) disagree."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Tokenizer
    path: Path
    max_len: int  # context length in tokens
    bf16: bool = False  # bf16 autocast (CUDA only); default fp32 so that NLLs are exact

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def pick_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def resolve_run(run_dir: Path) -> tuple[Path, Path | None]:
    """A run's final model folder (else its newest checkpoint) and the tokenizer next to it."""
    run_dir = Path(run_dir)
    model_dir = layout.run_final(run_dir)
    if not layout.run_final_marker(run_dir).exists():
        ckpts = sorted(layout.run_checkpoints(run_dir).glob("step-*/model"))
        if not ckpts:
            raise FileNotFoundError(f"{run_dir}: no final/ and no checkpoints/step-*/model; "
                                    f"train the run first (`toremi train`)")
        model_dir = ckpts[-1]
    for cand in (model_dir / "tokenizer.json", layout.run_final(run_dir) / "tokenizer.json",
                 run_dir / "tokenizer.json"):
        if cand.exists():
            return model_dir, cand
    return model_dir, None


def _run_fingerprint(run_dir: Path | None) -> str | None:
    if run_dir is None or not layout.run_info(run_dir).exists():
        return None
    info = json.loads(layout.run_info(run_dir).read_text())
    tok = info.get("tokenizer")
    if isinstance(tok, dict):
        return tok.get("fingerprint")
    return info.get("tokenizer_fingerprint")


def check_compatible(config, tok: Tokenizer, where: Path, run_dir: Path | None = None) -> None:
    """Refuse a tokenizer that cannot have produced the model's training data, naming why."""
    vocab = int(config.vocab_size)
    mine = getattr(config, "toremi", None)  # written by toremi.model.save_hf: the exact size
    if isinstance(mine, dict) and mine.get("tokenizer_vocab_size") is not None:
        if int(mine["tokenizer_vocab_size"]) != tok.vocab_size:
            raise CheckpointMismatch(
                f"{where}: model trained with a {mine['tokenizer_vocab_size']}-token vocabulary, "
                f"tokenizer {tok.name!r} has {tok.vocab_size}; pass the tokenizer the model was "
                f"trained with (--tokenizer, or the tokenizer.json in the run's final/ folder)")
    else:
        # A model may pad its vocabulary to a multiple of 64..256 rows (50,257 -> 50,304) for
        # speed; any other difference means the model was trained with another tokenizer.
        padded = {tok.vocab_size} | {-(-tok.vocab_size // m) * m for m in (64, 128, 256)}
        if vocab not in padded:
            raise CheckpointMismatch(
                f"{where}: model vocabulary {vocab} does not match tokenizer {tok.name!r} "
                f"(vocab_size {tok.vocab_size}); pass the tokenizer the model was trained with "
                f"(--tokenizer, or the tokenizer.json saved in the run's final/ folder)")
        eos = getattr(config, "eos_token_id", None)
        if isinstance(eos, int) and eos < vocab and eos != tok.eot_id:
            raise CheckpointMismatch(
                f"{where}: model eos_token_id {eos} but the tokenizer's end-of-text id is "
                f"{tok.eot_id}; the checkpoint was trained with a different tokenizer")
    want = _run_fingerprint(run_dir)
    if want is not None and want != tok.fingerprint:
        raise CheckpointMismatch(
            f"{where}: tokenizer fingerprint {tok.fingerprint} differs from the run's "
            f"{want} (run.json); use the run's own tokenizer.json")


def load_model(model_dir: Path, tokenizer: Path | str | None = None, run_dir: Path | None = None,
               device: str = "auto", max_len: int | None = None, bf16: bool = False) -> LoadedModel:
    """An HF GPT-2 folder plus its tokenizer, checked against each other and put in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: not an HF model folder (no config.json)")
    if tokenizer is None:
        tokenizer = model_dir / "tokenizer.json"
    if str(tokenizer) == "gpt2":
        from toremi.tokenizer import gpt2

        tok = gpt2()
    else:
        if not Path(tokenizer).exists():
            raise FileNotFoundError(f"{tokenizer}: no tokenizer; pass --tokenizer PATH|gpt2")
        tok = from_file(Path(tokenizer))
    config = AutoConfig.from_pretrained(model_dir)
    check_compatible(config, tok, model_dir, run_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(pick_device(device)).eval()
    n_pos = int(getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings"))
    dev = next(model.parameters()).device
    return LoadedModel(model, tok, model_dir, min(max_len or n_pos, n_pos), bf16 and dev.type == "cuda")


def score(lm: LoadedModel, windows: list[np.ndarray], n_scored: np.ndarray,
          batch_size: int = 8, progress: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sum of log p(target) over the last ``n_scored[i]`` targets of each window.

    Window ``w`` (length <= max_len + 1) gives inputs ``w[:-1]`` and targets ``w[1:]``. Windows are
    sorted by length so a batch pads little; padding sits on the right, where causal attention
    keeps it from influencing real positions, and its labels are -100 so it never enters the loss.
    Returns (log-likelihood float64 [N], greedy bool [N]: every scored target was the argmax).
    """
    with torch.inference_mode():
        return _score(lm, windows, n_scored, batch_size, progress)


def _score(lm: LoadedModel, windows: list[np.ndarray], n_scored: np.ndarray, batch_size: int,
           progress: str | None) -> tuple[np.ndarray, np.ndarray]:
    from tqdm import tqdm

    n = len(windows)
    lengths = np.array([len(w) - 1 for w in windows], dtype=np.int64)
    if n and (lengths.max() > lm.max_len or (lengths < 1).any()):
        raise ValueError(f"windows must hold 2..{lm.max_len + 1} tokens")
    n_scored = np.asarray(n_scored, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    ll = np.zeros(n, dtype=np.float64)
    greedy = np.zeros(n, dtype=bool)
    device = lm.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=lm.bf16)
    batches = range(0, n, batch_size)
    for start in tqdm(batches, desc=progress, disable=progress is None or len(batches) < 4,
                      leave=False):
        idx = order[start:start + batch_size]
        width = int(lengths[idx].max())
        steps = np.arange(width)
        tokens = np.zeros((len(idx), width + 1), dtype=np.int64)
        for row, i in enumerate(idx):
            tokens[row, :len(windows[i])] = windows[i]
        # Scored targets: the last n_scored of the window's real targets.
        hi = lengths[idx][:, None]
        mask = (steps[None, :] < hi) & (steps[None, :] >= hi - n_scored[idx][:, None])
        inputs = torch.from_numpy(tokens[:, :-1]).to(device)
        targets = torch.from_numpy(np.where(mask, tokens[:, 1:], -100)).to(device)
        with autocast:
            logits = lm.model(input_ids=inputs).logits
        # Rows past the tokenizer's vocabulary (padding for speed) are never targets: leave them
        # out of the normalisation so perplexity is over the real vocabulary.
        logits = logits[..., :lm.tokenizer.vocab_size].float()
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100,
                              reduction="none").view(targets.shape)
        hit = (logits.argmax(-1) == targets) | (targets == -100)
        ll[idx] = -nll.sum(1).double().cpu().numpy()
        greedy[idx] = hit.all(1).cpu().numpy()
    return ll, greedy
