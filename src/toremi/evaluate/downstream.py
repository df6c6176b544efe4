"""Zero-shot downstream tasks scored by log-likelihood, the way lm-evaluation-harness does it.

Multiple choice (lm-eval ``output_type: multiple_choice``): each choice is a continuation
``" " + choice`` of the context; acc = argmax of the summed log-likelihood, acc_norm = argmax of the
log-likelihood divided by ``len(choice)`` (lm-eval's ``completion_len``: the choice string's length
in characters, without the delimiter; equal to its byte length for ASCII text such as PIQA).
Context/continuation are tokenized like lm-eval's ``_encode_pair`` (trailing context spaces move
to the continuation; the continuation's tokens are those of ``context + continuation`` after the
context's) and the joined sequence is left-truncated to the model's context.

Tasks: PIQA (validation split, lm-eval's prompt ``Question: {goal}\\nAnswer:``), and label
classification of held-out documents (BBC topic, Brown genre): ``<text>\\nTopic:`` scored against
every label of the domain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toremi.evaluate.model_io import LoadedModel
from toremi.evaluate.scoring import score


@dataclass
class ClassifyTask:
    """Label classification of the held-out documents of ``domain`` by label likelihood."""

    name: str
    domain: str
    prompt: str = "Topic"  # the context is "<text>\n{prompt}:"
    max_chars: int = 2000  # documents are cut to their first max_chars characters first


def encode_pair(lm: LoadedModel, context: str, continuation: str) -> tuple[list[int], list[int]]:
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if not context:  # lm-eval conditions an empty context on the end-of-text token
        return [lm.tokenizer.eot_id], lm.tokenizer.encode(continuation)
    whole = lm.tokenizer.encode(context + continuation)
    ctx = lm.tokenizer.encode(context)
    return ctx, whole[len(ctx):]


def multiple_choice(lm: LoadedModel, contexts: list[str], choices: list[list[str]],
                    gold: list[int], batch_size: int = 8, desc: str | None = None,
                    return_loglik: bool = False) -> dict:
    """acc / acc_norm over items given as context, choice strings and the gold choice index;
    ``return_loglik`` adds ``loglik``: each item's per-choice log-likelihoods (for parity checks)."""
    windows, n_cont, owner = [], [], []
    for item, (ctx, opts) in enumerate(zip(contexts, choices)):
        for opt in opts:
            c, k = encode_pair(lm, ctx, " " + opt)
            if not k:
                raise ValueError(f"item {item}: choice {opt!r} encodes to no tokens")
            windows.append(np.asarray((c + k)[-(lm.max_len + 1):], dtype=np.int64))
            n_cont.append(min(len(k), len(windows[-1]) - 1))
            owner.append(item)
    ll, _ = score(lm, windows, np.array(n_cont), batch_size=batch_size, progress=desc)
    acc, acc_norm, per_item, start = [], [], [], 0
    for opts, g in zip(choices, gold):
        lls = ll[start:start + len(opts)]
        per_item.append(lls.tolist())
        start += len(opts)
        lengths = np.array([float(len(o)) for o in opts])
        acc.append(float(np.argmax(lls) == g))
        acc_norm.append(float(np.argmax(lls / lengths) == g))
    n = len(gold)
    out = {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm)), "n": n,
           "acc_stderr": float(np.std(acc, ddof=1) / np.sqrt(n)) if n > 1 else None,
           "chance": float(np.mean([1 / len(o) for o in choices]))}
    if return_loglik:
        out["loglik"] = per_item
    return out


def load_piqa(piqa_dir: Path, max_items: int | None = None, seed: int = 0):
    """PIQA validation (valid.jsonl + valid-labels.lst); a fixed-seed subset if max_items."""
    piqa_dir = Path(piqa_dir)
    items = [json.loads(line) for line in (piqa_dir / "valid.jsonl").read_text().splitlines()
             if line.strip()]
    labels = [int(x) for x in (piqa_dir / "valid-labels.lst").read_text().split()]
    if len(items) != len(labels):
        raise ValueError(f"{piqa_dir}: {len(items)} items but {len(labels)} labels")
    keep = np.arange(len(items))
    if max_items is not None and len(items) > max_items:
        keep = np.sort(np.random.default_rng(seed).permutation(len(items))[:max_items])
    contexts = [f"Question: {items[i]['goal']}\nAnswer:" for i in keep]
    choices = [[items[i]["sol1"], items[i]["sol2"]] for i in keep]
    return contexts, choices, [labels[i] for i in keep]


def piqa(lm: LoadedModel, piqa_dir: Path, max_items: int | None = None,
         batch_size: int = 8) -> dict:
    contexts, choices, gold = load_piqa(piqa_dir, max_items)
    return multiple_choice(lm, contexts, choices, gold, batch_size, desc="piqa")


def classify_docs(task: ClassifyTask, texts: list[str], labels: list[str | None],
                  names: list[str] | None = None) -> tuple:
    """Contexts, label choices and gold indices for the labelled documents; the choices are
    ``names`` (all labels of the domain) or else the labels present in ``labels``."""
    pairs = [(t, lab) for t, lab in zip(texts, labels) if lab]
    names = sorted(set(names or []) | {lab for _, lab in pairs})
    if len(names) < 2:
        raise ValueError(f"{task.name}: domain {task.domain!r} has {len(names)} distinct "
                         f"labels in its held-out split; need at least 2")
    shown = [n.replace("_", " ") for n in names]
    contexts = [f"{t[:task.max_chars].strip()}\n{task.prompt}:" for t, _ in pairs]
    gold = [names.index(lab) for _, lab in pairs]
    return contexts, [shown] * len(pairs), gold, names


def classify(lm: LoadedModel, task: ClassifyTask, texts: list[str], labels: list,
             batch_size: int = 8, names: list[str] | None = None) -> dict:
    contexts, choices, gold, names = classify_docs(task, texts, labels, names)
    out = multiple_choice(lm, contexts, choices, gold, batch_size, desc=task.name)
    out["labels"] = names
    out["majority"] = float(np.bincount(gold).max() / len(gold))
    return out
