"""Evaluation against a tiny random GPT-2 saved in HF format with a BPE trained on BBC articles.

References are computed independently, one document / choice at a time with the model's own
``labels=`` loss, so batching, padding, masking and windowing errors show up as mismatches.
"""

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from helpers import bbc_texts
from toremi.evaluate import CheckpointMismatch, load_model, score
from toremi.evaluate.cli import main as eval_main
from toremi.evaluate.cli import piqa_dir
from toremi.evaluate.downstream import ClassifyTask, classify_docs, multiple_choice
from toremi.evaluate.perplexity import domain_perplexity, make_windows
from toremi.tokenizer import train_bpe

# ../shared/data/piqa beside the checkout (like `toremi eval`), or $TOREMI_PIQA
PIQA = piqa_dir(os.environ.get("TOREMI_PIQA"))


def bbc_articles(per_topic: int, topics=("business", "sports", "tech")) -> list[tuple[str, str]]:
    return [(text, t) for t in topics for text in bbc_texts(t, per_topic)]


def save_tiny_model(path: Path, tok, n_positions: int = 128, seed: int = 0) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=tok.vocab_size, n_positions=n_positions, n_embd=64, n_layer=2,
                     n_head=2, bos_token_id=tok.eot_id, eos_token_id=tok.eot_id)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tok.save(path / "tokenizer.json")
    return path


def write_eval_shard(corpus: Path, domain: str, docs: list[tuple[str, str]],
                     split: str = "eval") -> None:
    d = corpus / split / domain
    d.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": [f"{domain}-{i}" for i in range(len(docs))],
                      "text": [t for t, _ in docs], "domain": [domain] * len(docs),
                      "label": [lab for _, lab in docs], "source": [f"s{i}" for i in range(len(docs))]})
    pq.write_table(table, d / "shard-00000.parquet")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    articles = bbc_articles(40)
    tok = train_bpe([t for t, _ in articles], 400)
    model_dir = save_tiny_model(root / "model", tok)
    corpus = root / "corpus"
    write_eval_shard(corpus, "news", articles[::4])
    # A label that only the training split holds is still one of the classification choices.
    write_eval_shard(corpus, "news", bbc_articles(2, ("politics",)), split="documents")
    lm = load_model(model_dir, max_len=None)
    return {"root": root, "tok": tok, "model_dir": model_dir, "corpus": corpus, "lm": lm,
            "articles": articles}


def reference_nll(lm, ids: list[int], chunk: int) -> tuple[float, int]:
    """Summed NLL of ``ids`` (EOT-prefixed) in disjoint chunks, one HF forward per chunk."""
    seq = torch.tensor([lm.tokenizer.eot_id] + ids)
    total, n = 0.0, 0
    for s in range(0, len(seq) - 1, chunk):
        piece = seq[s:s + chunk + 1][None]
        with torch.no_grad():
            out = lm.model(input_ids=piece[:, :-1], labels=None).logits[0]
        nll = torch.nn.functional.cross_entropy(out, piece[0, 1:], reduction="sum")
        total += float(nll)
        n += piece.shape[1] - 1
    return total, n


def test_windows_score_every_target_once():
    for L, T, S in [(1, 8, 4), (7, 8, 4), (8, 8, 8), (50, 8, 3), (50, 8, 8), (33, 16, 1)]:
        ids = np.arange(L + 1)
        windows, scored = make_windows(ids, T, S)
        targets = np.concatenate([w[1:][len(w) - 1 - k:] for w, k in zip(windows, scored)])
        assert targets.tolist() == list(range(1, L + 1)), (L, T, S)
        assert all(len(w) - 1 <= T for w in windows)
        # every window after the first gives its first scored target exactly T - S earlier
        # tokens of context (more for the later ones), never less
        for w, k in list(zip(windows, scored))[1:]:
            assert len(w) - 1 - k == T - S


def test_perplexity_matches_per_document_reference(setup):
    lm, texts = setup["lm"], [t for t, _ in setup["articles"][:6]]
    T = lm.max_len
    got = domain_perplexity(lm, texts, stride=T, batch_size=5)  # disjoint windows
    ref_nll, ref_n = 0.0, 0
    for t in texts:
        nll, n = reference_nll(lm, lm.tokenizer.encode(t), T)
        ref_nll, ref_n = ref_nll + nll, ref_n + n
    n_bytes = sum(len(t.encode()) for t in texts)
    assert got["tokens"] == ref_n and got["bytes"] == n_bytes
    assert got["nll"] == pytest.approx(ref_nll / ref_n, rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(ref_nll / ref_n), rel=1e-4)
    assert got["bpb"] == pytest.approx(ref_nll / math.log(2) / n_bytes, rel=1e-5)
    # A random model is near-uniform over the vocabulary.
    assert 0.3 * lm.tokenizer.vocab_size < got["ppl"] < 3 * lm.tokenizer.vocab_size
    # Overlapping windows score the same tokens (each once) and still give a sane value.
    strided = domain_perplexity(lm, texts, stride=T // 4, batch_size=7)
    assert strided["tokens"] == ref_n and strided["windows"] > got["windows"]
    assert strided["nll"] == pytest.approx(got["nll"], rel=0.05)


def test_per_document_cap_scores_each_prefix(setup):
    """max_doc_tokens: the same numbers as scoring each document's first N tokens by hand, with
    bits/byte over the bytes of those prefixes (not of the whole documents)."""
    lm, texts = setup["lm"], [t for t, _ in setup["articles"][:6]]
    cap = 50
    got = domain_perplexity(lm, texts, stride=lm.max_len, batch_size=3, max_doc_tokens=cap)
    ref_nll, ref_n, ref_bytes = 0.0, 0, 0
    for t in texts:
        ids = lm.tokenizer.encode(t)
        assert len(ids) > cap  # else the test would not test the cap
        nll, n = reference_nll(lm, ids[:cap], lm.max_len)
        ref_nll, ref_n = ref_nll + nll, ref_n + n
        ref_bytes += len(lm.tokenizer.decode(ids[:cap]).encode("utf-8"))
    assert got["tokens"] == ref_n == cap * len(texts) and got["docs"] == len(texts)
    assert got["bytes"] == ref_bytes < sum(len(t.encode()) for t in texts)
    assert got["nll"] == pytest.approx(ref_nll / ref_n, rel=1e-5)
    assert got["bpb"] == pytest.approx(ref_nll / math.log(2) / ref_bytes, rel=1e-5)
    with pytest.raises(ValueError, match="max_doc_tokens"):
        domain_perplexity(lm, texts, max_doc_tokens=0)


def test_per_document_nll_matches_each_document_alone(setup):
    """eval.json's per-document NLL: each equals scoring that document by hand, and they add up
    to the domain's pool (so any aggregate can be recomputed from the stored documents)."""
    lm, texts = setup["lm"], [t for t, _ in setup["articles"][:5]]
    got = domain_perplexity(lm, texts, stride=lm.max_len, batch_size=2, ids=list("abcde"))
    assert [d["id"] for d in got["documents"]] == list("abcde")
    for d, t in zip(got["documents"], texts):
        ids = lm.tokenizer.encode(t)
        nll, n = reference_nll(lm, ids, lm.max_len)
        assert d["tokens"] == n and d["nll_sum"] == pytest.approx(nll, rel=1e-5)
    assert sum(d["nll_sum"] for d in got["documents"]) / got["tokens"] == pytest.approx(got["nll"], rel=1e-9)


def test_script_filter_drops_text_in_another_script():
    from toremi.evaluate.perplexity import filter_script, script_share

    ja = "このライセンスは、ソフトウェアの使用を許可します。 MIT License"
    en = "Permission is hereby granted, free of charge, to any person — naïve café."
    assert script_share(en, "latin") == 1.0 and script_share(ja, "latin") < 0.5
    kept_ids, kept, dropped = filter_script(["en", "ja"], [en, ja], "latin", 0.9)
    assert kept_ids == ["en"] and kept == [en] and dropped == ["ja"]
    assert filter_script(["en", "ja"], [en, ja], "none", 0.9)[2] == []
    with pytest.raises(ValueError, match="script_filter"):
        filter_script(["en"], [en], "klingon", 0.9)


def test_score_is_batch_invariant(setup):
    lm = setup["lm"]
    rng = np.random.default_rng(0)
    windows = [rng.integers(0, lm.tokenizer.vocab_size, size=n) for n in (3, 40, 129, 17, 2, 90)]
    k = np.array([1, 10, 128, 16, 1, 5])
    one, _ = score(lm, windows, k, batch_size=1)
    many, _ = score(lm, windows, k, batch_size=4)
    np.testing.assert_allclose(one, many, rtol=1e-5)


def test_multiple_choice_matches_naive_loglik(setup):
    lm = setup["lm"]
    contexts = ["Question: How do you open a jar?\nAnswer:", "The market fell sharply\nTopic:"]
    choices = [["twist the lid", "hit it with a fish repeatedly"], ["business", "sports", "tech"]]
    lls = []
    for ctx, opts in zip(contexts, choices):
        row = []
        for o in opts:
            c = lm.tokenizer.encode(ctx)
            whole = lm.tokenizer.encode(ctx + " " + o)
            ids = torch.tensor(whole)[None]
            with torch.no_grad():
                logp = lm.model(input_ids=ids).logits[0].log_softmax(-1)
            row.append(float(sum(logp[j - 1, whole[j]] for j in range(len(c), len(whole)))))
        lls.append(np.array(row))
    for gold_pick in range(2):
        gold = [int(np.argmax(l)) if gold_pick == 0 else int(np.argmin(l)) for l in lls]
        res = multiple_choice(lm, contexts, choices, gold, batch_size=3)
        assert res["acc"] == (1.0 if gold_pick == 0 else 0.0)
        norm_gold = [int(np.argmax(l / np.array([len(o) for o in opts])))
                     for l, opts in zip(lls, choices)]
        expected = np.mean([g == n for g, n in zip(gold, norm_gold)])
        assert res["acc_norm"] == pytest.approx(expected)


def test_classify_prompt_and_labels():
    task = ClassifyTask("genre", "mixed", "Genre", max_chars=10)
    ctx, choices, gold, names = classify_docs(
        task, ["abcdefghijklmnop", "x", "y"], ["science_fiction", None, "news"])
    assert ctx == ["abcdefghij\nGenre:", "y\nGenre:"]
    assert choices[0] == ["news", "science fiction"] and names == ["news", "science_fiction"]
    assert gold == [1, 0]


def test_mismatched_tokenizer_is_refused(setup, tmp_path):
    other = train_bpe([t for t, _ in setup["articles"][:30]], 300)
    bad = tmp_path / "bad.json"
    other.save(bad)
    with pytest.raises(CheckpointMismatch, match="vocabulary"):
        load_model(setup["model_dir"], tokenizer=bad)
    # A run whose run.json names another tokenizer fingerprint is refused too.
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    for f in setup["model_dir"].iterdir():
        (run / "final" / f.name).write_bytes(f.read_bytes())
    (run / "run.json").write_text(json.dumps({"tokenizer": {"fingerprint": "0" * 16}}))
    rc = eval_main(["--run", str(run), "--corpus", str(setup["corpus"]), "downstream=[]"])
    assert rc == 2 and not (run / "eval.json").exists()


def test_cli_writes_eval_json_and_skips_missing(setup, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = eval_main(["--model", str(setup["model_dir"]), "--corpus", str(setup["corpus"]),
                    "--piqa", str(PIQA), "--max-docs", "6", "--max-items", "8", "--out", str(out),
                    "domains=[news,legal]", "batch_size=4"])
    assert rc == 0
    res = json.loads(out.read_text())
    news = res["domains"]["news"]
    assert set(news) >= {"nll", "ppl", "bpb", "tokens", "bytes"} and news["docs"] == 6
    assert res["macro_ppl"] == pytest.approx(news["ppl"])
    bbc = res["downstream"]["bbc_topic"]
    assert bbc["n"] == 6 and bbc["labels"] == ["business", "politics", "sports", "tech"]
    skipped = {s["what"] for s in res["skipped"]}
    assert {"domain legal", "brown_genre"} <= skipped
    if PIQA.exists():  # the CLI reports what the library computes on the same fixed subset
        from toremi.evaluate.downstream import piqa

        want = piqa(setup["lm"], PIQA, max_items=8, batch_size=3)
        got = res["downstream"]["piqa"]
        assert got["n"] == 8 and (got["acc"], got["acc_norm"]) == (want["acc"], want["acc_norm"])
    # No PIQA folder: skipped with a message naming the folder, everything else still evaluated.
    rc = eval_main(["--model", str(setup["model_dir"]), "--corpus", str(setup["corpus"]),
                    "--piqa", str(tmp_path / "nowhere"), "--max-docs", "3", "--out", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0 and "piqa" not in res["downstream"] and "news" in res["domains"]
    assert "nowhere" in capsys.readouterr().out


def test_piqa_matches_lm_evaluation_harness(setup, tmp_path):
    """Same acc / acc_norm and per-choice log-likelihoods as lm-eval's own HF model on PIQA."""
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install lm-eval)")
    if not PIQA.exists():
        pytest.skip(f"no PIQA at {PIQA}")
    from lm_eval.tasks import TaskManager

    from toremi.evaluate.downstream import load_piqa

    lm, n = setup["lm"], 40
    contexts, choices, gold = load_piqa(PIQA)
    rows = [(c, ch, g) for c, ch, g in zip(contexts, choices, gold)
            if max(len(lm.tokenizer.encode(c + " " + o)) for o in ch) < lm.max_len][:n]
    data = tmp_path / "piqa.jsonl"
    data.write_text("".join(json.dumps({"goal": c[len("Question: "):-len("\nAnswer:")],
                                        "sol1": ch[0], "sol2": ch[1], "label": g}) + "\n"
                            for c, ch, g in rows))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "piqa_local.yaml").write_text(f"""task: piqa_local
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
output_type: multiple_choice
validation_split: validation
doc_to_text: "Question: {{{{goal}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{{{[sol1, sol2]}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    res = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={setup['model_dir']},dtype=float32",
        tasks=["piqa_local"], task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
        batch_size=8, device="cpu", log_samples=True)
    theirs = res["results"]["piqa_local"]
    ours = multiple_choice(lm, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                           return_loglik=True)
    assert ours["n"] == n
    samples = sorted(res["samples"]["piqa_local"], key=lambda s: s["doc_id"])
    their_ll = np.array([[float(r[0][0]) for r in s["resps"]] for s in samples])
    our_ll = np.array(ours["loglik"])
    # fp32 on CPU, same weights, different batching/padding: agreement to ~1e-5 nats
    worst = np.abs(our_ll - their_ll).max()
    assert worst < 1e-3, (f"multiple_choice's per-choice log-likelihoods differ from lm-eval's by up "
                          f"to {worst:.3g} nats (item {np.abs(our_ll - their_ll).max(1).argmax()})")
    assert ours["acc"] == pytest.approx(theirs["acc,none"])
    assert ours["acc_norm"] == pytest.approx(theirs["acc_norm,none"])


def test_probe_features_are_per_document_means(setup):
    """Batched, right-padded features equal one unpadded forward per document."""
    from toremi.evaluate.probe import doc_features

    lm, texts = setup["lm"], [t for t, _ in setup["articles"][:5]] + ["short one"]
    batched = doc_features(lm.model, lm, texts, batch_size=4)
    for i, t in enumerate(texts):
        ids = torch.tensor([[lm.tokenizer.eot_id] + lm.tokenizer.encode(t)[:lm.max_len - 1]])
        with torch.no_grad():
            h = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
        np.testing.assert_allclose(batched[i], h.mean(0).numpy(), rtol=1e-4, atol=1e-5)


def test_probe_accuracy_separable_vs_shuffled():
    from toremi.evaluate.probe import probe_accuracy

    rng = np.random.default_rng(0)
    gold = np.repeat(np.arange(4), 15)
    separable = rng.normal(size=(60, 8)) + 4 * np.eye(8)[gold]
    assert probe_accuracy(separable, gold)[0] > 0.95
    assert probe_accuracy(rng.normal(size=(60, 8)), gold)[0] < 0.6  # no signal: near 1/4
    with pytest.raises(ValueError, match="at least 2"):
        probe_accuracy(separable[:5], np.array([0, 0, 1, 1, 2]))


def test_cli_linear_probe_with_random_init_control(setup, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = eval_main(["--model", str(setup["model_dir"]), "--corpus", str(setup["corpus"]),
                    "--max-docs", "4", "--out", str(out), "domains=[news]",
                    "downstream=[bbc_topic_probe]"])
    res = json.loads(out.read_text())["downstream"]["bbc_topic_probe"]
    # The probe reads every held-out labelled document (30), not --max-docs.
    assert rc == 0 and res["n"] == 30 and res["folds"] == 5
    assert res["labels"] == ["business", "sports", "tech"] and res["majority"] == pytest.approx(1 / 3)
    assert 0 <= res["random_init_acc"] <= 1 and 0 <= res["acc"] <= 1
    assert "bbc_topic_probe" in capsys.readouterr().out
