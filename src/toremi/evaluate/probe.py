"""Linear probe: label classification from the model's features, for models too small to answer
zero-shot.

A 0.4M-parameter model scoring "<text>\\nTopic: business" against the other labels predicts one
label for every document (the quality grid's BBC accuracy was the majority share for every method
and seed), so zero-shot accuracy cannot tell mixtures apart at CPU scale. The probe asks instead
whether the model's representation of a document separates its labels: the final hidden states,
averaged over the document's first ``max_len`` tokens, feed a logistic regression scored by
stratified k-fold cross-validation on the held-out documents.

A random bag of token embeddings already separates topics somewhat, so every result carries the
same probe on an untrained model of the same architecture (``random_init_acc``, fixed seed): the
trained model's representation is worth something only above that line.
"""

from __future__ import annotations

import numpy as np

from toremi.evaluate.downstream import ClassifyTask
from toremi.evaluate.model_io import LoadedModel
from toremi.lazy import lazy

torch = lazy("torch")

MAX_FOLDS = 5


def doc_features(model, lm: LoadedModel, texts: list[str], batch_size: int = 16) -> np.ndarray:
    """Mean final hidden state over each document's first ``lm.max_len`` tokens (EOT-prefixed,
    as in training); shape [len(texts), hidden]."""
    ids = [[lm.tokenizer.eot_id] + ids[:lm.max_len - 1] for ids in lm.tokenizer.encode_batch(texts)]
    out = []
    with torch.inference_mode():
        for s in range(0, len(ids), batch_size):
            chunk = ids[s:s + batch_size]
            width = max(map(len, chunk))
            tokens = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width)
            for row, seq in enumerate(chunk):
                tokens[row, :len(seq)] = torch.tensor(seq)
                mask[row, :len(seq)] = 1  # right padding: causal attention keeps it out of real rows
            hidden = model(input_ids=tokens.to(lm.device), output_hidden_states=True).hidden_states[-1]
            mask = mask.to(hidden.device)[..., None]
            out.append(((hidden.float() * mask).sum(1) / mask.sum(1)).cpu().numpy())
    return np.concatenate(out)


def probe_accuracy(features: np.ndarray, gold: np.ndarray, seed: int = 0) -> tuple[float, int]:
    """Mean accuracy of a standardised logistic regression over stratified folds; (acc, folds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(MAX_FOLDS, int(np.bincount(gold)[np.bincount(gold) > 0].min()))
    if folds < 2:
        raise ValueError("every label needs at least 2 held-out documents for a cross-validated probe")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(clf, features, gold, cv=cv).mean()), folds


def linear_probe(lm: LoadedModel, task: ClassifyTask, texts: list[str], labels: list,
                 batch_size: int = 16, seed: int = 0) -> dict:
    """Probe accuracy of ``lm`` and of an untrained twin on the labelled documents."""
    from transformers import AutoModelForCausalLM

    pairs = [(t, lab) for t, lab in zip(texts, labels) if lab]
    names = sorted({lab for _, lab in pairs})
    if len(names) < 2:
        raise ValueError(f"{task.name}: domain {task.domain!r} has {len(names)} distinct labels in "
                         f"its held-out split; need at least 2")
    docs = [t[:task.max_chars] for t, _ in pairs]
    gold = np.array([names.index(lab) for _, lab in pairs])
    acc, folds = probe_accuracy(doc_features(lm.model, lm, docs, batch_size), gold, seed)
    torch.manual_seed(seed)
    twin = AutoModelForCausalLM.from_config(lm.model.config).to(lm.device).eval()
    rand_acc, _ = probe_accuracy(doc_features(twin, lm, docs, batch_size), gold, seed)
    counts = np.bincount(gold)
    return {"acc": acc, "random_init_acc": rand_acc, "n": len(gold), "folds": folds,
            "labels": names, "majority": float(counts.max() / len(gold)),
            "chance": 1.0 / len(names), "probe": "logistic regression on mean final hidden state"}
