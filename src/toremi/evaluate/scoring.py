"""The one scoring primitive every metric reduces to.

``score``: given token windows and how many of their last targets count, return the summed
log-likelihood of those targets. Perplexity windows and multiple-choice continuations are both such
windows, so padding, masking and batching live in one place (and are tested once).
"""

from __future__ import annotations

import numpy as np
from toremi.lazy import lazy

from toremi.evaluate.model_io import LoadedModel

torch = lazy("torch")
F = lazy("torch.nn.functional")


def score(lm: LoadedModel, windows: list[np.ndarray], n_scored: np.ndarray,
          batch_size: int = 8, progress: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sum of log p(target) over the last ``n_scored[i]`` targets of each window.

    Window ``w`` (length <= max_len + 1) gives inputs ``w[:-1]`` and targets ``w[1:]``. Windows are
    sorted by length so a batch pads little; padding sits on the right, where causal attention
    keeps it from influencing real positions, and its labels are -100 so it never enters the loss.
    Returns (log-likelihood float64 [N], greedy bool [N]: every scored target was the argmax).
    """
    with torch.inference_mode():  # not a decorator: importing this module must not load torch
        return _score(lm, windows, n_scored, batch_size, progress)


def _score(lm: LoadedModel, windows: list[np.ndarray], n_scored: np.ndarray, batch_size: int,
           progress: str | None) -> tuple[np.ndarray, np.ndarray]:
    import sys

    from toremi.progress import bar, is_tty

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
    # per-domain bars only on a terminal: eval logs hold one result line per domain instead
    quiet = progress is None or len(batches) < 4 or not is_tty(sys.stderr)
    for start in bar(batches, desc=progress or "", disable=quiet, leave=False):
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
