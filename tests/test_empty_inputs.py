"""Empty inputs the other stages' tests leave out: a held-out domain with no documents in eval."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq

from helpers import train_cfg
from toremi.evaluate.cli import main as eval_main
from toremi.io import read_json
from toremi.train import train


def test_eval_skips_an_empty_held_out_domain_and_scores_the_others(tiny_corpus, tiny_tokens, tmp_path):
    """A held-out shard with no rows (a filter that kept nothing): `toremi eval` records the domain
    as skipped and scores every other domain, instead of failing the whole evaluation."""
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    empty = corpus / "eval" / "tech" / "shard-00000.parquet"
    pq.write_table(pa.table({k: pa.array([], pa.string()) for k in ("id", "text", "domain", "label", "source")}),
                   empty)
    run = train(train_cfg(tiny_tokens, tmp_path / "run", "steps=2", "eval_every=0"))
    rc = eval_main(["--run", str(run), "--corpus", str(corpus), "downstream=[]", "max_docs=2"])
    assert rc == 0, "an empty held-out domain failed the evaluation"
    res = read_json(run / "eval.json")
    assert sorted(res["domains"]) == ["business", "entertainment", "politics", "sports"], res["domains"].keys()
    assert [s["what"] for s in res["skipped"]] == ["domain tech"], res["skipped"]
    assert res["macro_ppl"] > 1
