"""Leak-free splits: the dev split (every in-training signal) is carved from training documents,
and neither it nor the train split holds a held-out eval document."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from toremi import layout
from toremi.corpus.documents import read_split


def split_doc_ids(tokens, split: str) -> set[str]:
    ids = pq.read_table(layout.tokens_documents(tokens)).column("id").to_pylist()
    with np.load(layout.tokens_index(tokens, split)) as z:
        return {ids[d] for d in np.unique(z["doc"])}


def test_dev_train_and_eval_are_disjoint_by_document(tiny_corpus, tiny_tokens):
    eval_ids = set(read_split(tiny_corpus, "eval", columns=["id"]).column("id").to_pylist())
    corpus_train = set(read_split(tiny_corpus, "train", columns=["id"]).column("id").to_pylist())
    train, dev = split_doc_ids(tiny_tokens, "train"), split_doc_ids(tiny_tokens, "dev")
    assert eval_ids and train and dev
    assert not dev & eval_ids, "dev holds held-out eval documents"
    assert not train & eval_ids, "train holds held-out eval documents"
    assert not dev & train
    assert dev | train == corpus_train  # dev is carved from the training documents, nothing lost
    assert not layout.tokens_index(tiny_tokens, "val").exists()


def test_dev_takes_whole_source_units(tiny_corpus, tmp_path):
    """Two documents of one source unit always land in the same split."""
    from toremi.prepare import PrepareConfig, dev_mask

    table = read_split(tiny_corpus, "train", columns=["id", "domain", "source", "text"])
    twin = table.set_column(2, "source", __import__("pyarrow").array(
        [s.split(".")[0][:2] for s in table.column("source").to_pylist()]))  # ~50 units per domain
    mask = dev_mask(twin, 0.3, 0)
    units = np.array([f"{d}/{u}" for d, u in zip(twin.column("domain").to_pylist(), twin.column("source").to_pylist())])
    for u in np.unique(units):
        assert len(set(mask[units == u])) == 1
    assert 0 < mask.mean() < 0.6
    size = np.array([len(t.encode()) for t in twin.column("text").to_pylist()])
    for d in np.unique(twin.column("domain").to_pylist()):  # about 30% of each domain's bytes
        rows = np.array(twin.column("domain").to_pylist()) == d
        assert 0.1 < size[rows & mask].sum() / size[rows].sum() <= 0.6
    with pytest.raises(ValueError, match="dev_fraction"):
        PrepareConfig(dev_fraction=1.0)


def test_validation_hook_never_sees_an_eval_document(tiny_corpus, tiny_tokens, tmp_path):
    """Every sequence the trainer's evaluate() feeds a method's validation hook comes from dev."""
    from toremi.train import trainer as trainer_mod

    eval_ids = set(read_split(tiny_corpus, "eval", columns=["id"]).column("id").to_pylist())
    ids = pq.read_table(layout.tokens_documents(tiny_tokens)).column("id").to_pylist()
    val = trainer_mod.dev_split(tiny_tokens)
    assert val is not None and len(val)
    fed = {ids[d] for d in np.unique(val.doc)}
    assert fed and not fed & eval_ids
    assert fed <= split_doc_ids(tiny_tokens, "dev")


def test_a_tokens_dir_with_the_old_eval_val_split_is_refused(tiny_tokens, tmp_path):
    import shutil

    from toremi.train.trainer import dev_split

    old = tmp_path / "old"
    shutil.copytree(tiny_tokens, old)
    layout.tokens_index(old, "dev").rename(layout.tokens_index(old, "val"))
    with pytest.raises(ValueError, match="re-run `toremi prepare`"):
        dev_split(old)
