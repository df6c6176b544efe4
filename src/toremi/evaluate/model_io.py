"""Loading a checkpoint for evaluation: the model folder and tokenizer of a run, checked against
each other before anything is scored.

A model evaluated with a tokenizer other than the one it was trained with gives perplexities that
look plausible and mean nothing, so every mismatch that can be detected (vocabulary size, end-of-text
id, tokenizer fingerprint of the run or the checkpoint) is refused here with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from toremi import layout
from toremi.lazy import lazy
from toremi.tokenizer import Tokenizer, from_file

# torch loads when a model does, not when `toremi eval`/`experiment` validates its config
torch = lazy("torch")


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
    """A run's final model folder (else its newest checkpoint) and the tokenizer it was trained
    with: beside the weights or the run, else the one in the run's tokens dir (None if none)."""
    run_dir = Path(run_dir)
    model_dir = layout.run_final(run_dir)
    if not layout.run_final_marker(run_dir).exists():
        ckpts = sorted(layout.run_checkpoints(run_dir).glob("step-*/model"))
        if not ckpts:
            raise FileNotFoundError(f"{run_dir}: no final/ and no checkpoints/step-*/model; "
                                    f"train the run first (`toremi train`)")
        model_dir = ckpts[-1]
    for cand in (layout.hf_tokenizer(model_dir), layout.hf_tokenizer(layout.run_final(run_dir)),
                 layout.hf_tokenizer(run_dir)):
        if cand.exists():
            return model_dir, cand
    if layout.run_info(run_dir).exists():  # a checkpoint only: the tokenizer of the run's tokens dir
        tokens = json.loads(layout.run_info(run_dir).read_text()).get("tokens_dir") or ""
        cand = layout.tokens_tokenizer(tokens)
        if tokens and cand.is_file():
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
    if not layout.hf_config(model_dir).exists():
        raise FileNotFoundError(f"{model_dir}: not an HF model folder (no config.json)")
    if tokenizer is None:
        tokenizer = layout.hf_tokenizer(model_dir)
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


def check_tokenizer_fingerprint(model_dir: Path, spec: str) -> None:
    """Refuse ``--tokenizer`` when it is not the one the model was trained with."""
    from toremi import integrity
    from toremi.tokenizer import gpt2

    want = integrity.model_tokenizer_fingerprint(model_dir)
    if want is None:
        return
    got = gpt2().fingerprint if spec == "gpt2" else from_file(Path(spec)).fingerprint
    if got != want:
        raise CheckpointMismatch(f"--tokenizer {spec}: fingerprint {got} differs from {want}, the "
                                 f"tokenizer {model_dir} was trained with; pass that one (the "
                                 f"tokenizer.json in the run's final/ folder)")
