"""Prepare throughput vs raw HF `tokenizers` encode_batch, and loader speed vs a training step.

Both ratios are measured in this process on the same text and machine:
- prepare: tokens/s of `toremi prepare` (read parquet, encode, cut windows, write shards + index)
  over tokens/s of the raw HF `tokenizers` `encode_batch` call alone on the same documents
  (goal >= 0.8x). Prepare itself uses `encode_batch_fast` (no offsets) and tokenizes the next shard
  in a thread while the current one is written.
- loader: tokens/s that `BatchLoader` assembles over tokens/s that one CPU training step of the
  tiny GPT-2 consumes (goal >= 20x).
Usage: python bench/prepare.py [--corpus DIR] [--tokenizer gpt2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", type=Path, default=None)
    parser.add_argument("--tokenizer", default="gpt2")
    parser.add_argument("--seq-len", type=int, default=256)
    args = parser.parse_args()
    from toremi.data.loader import BatchLoader
    from toremi.data.shards import TokenDataset
    from toremi.prepare import PrepareConfig, document_shards, prepare
    from toremi.tokenizer import load_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    corpus = args.corpus
    if corpus is None:
        from conftest import write_bbc_corpus

        corpus = write_bbc_corpus(tmp / "corpus", train_per_topic=400, eval_per_topic=20)
    texts = [t for s in document_shards(corpus, "train")
             for t in pq.read_table(s, columns=["text"]).column("text").to_pylist()]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    tok = load_tokenizer(args.tokenizer)
    tok.encode_batch(texts[:64])  # warm-up

    raw, prep = [], []
    for i in range(3):  # interleaved, so that load from other processes hits both alike
        t0 = time.perf_counter()
        n_tokens = sum(len(e.ids) for e in tok.backend.encode_batch(texts, add_special_tokens=False))
        raw.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        prepare(PrepareConfig(corpus=corpus, out=tmp / f"tok{i}", tokenizer=args.tokenizer,
                              seq_len=args.seq_len, topics_from="domain"))
        prep.append(time.perf_counter() - t0)
    raw_tps, prep_tps = n_tokens / min(raw), n_tokens / min(prep)
    print(f"text: {len(texts)} documents, {mb:.1f} MB, {n_tokens:,} tokens ({args.tokenizer})")
    print(f"raw encode_batch : {raw_tps:,.0f} tokens/s")
    print(f"toremi prepare   : {prep_tps:,.0f} tokens/s  ->  ratio {prep_tps / raw_tps:.2f}x (goal >= 0.8x)")

    ds = TokenDataset(tmp / "tok0")
    batch, T = 8, args.seq_len
    loader = BatchLoader(ds, batch_size=batch, seed=0)
    loader.set_topic_probs(torch.ones(ds.num_topics))
    for _ in range(20):
        loader.next_batch()
    t0 = time.perf_counter()
    n = 400
    for _ in range(n):
        loader.next_batch()
    loader_tps = n * batch * T / (time.perf_counter() - t0)

    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=ds.vocab_size, n_positions=T, n_embd=64, n_layer=2,
                                       n_head=2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step_times = []
    for i in range(8):
        b = loader.next_batch()
        t0 = time.perf_counter()
        loss = model(input_ids=b.input_ids, labels=b.labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            step_times.append(time.perf_counter() - t0)
    step_tps = batch * T / statistics.median(step_times)
    print(f"loader assembly  : {loader_tps:,.0f} tokens/s (batch {batch}x{T}, topic sampling)")
    print(f"tiny GPT-2 step  : {step_tps:,.0f} tokens/s (2 layers, d=64, vocab {ds.vocab_size:,})")
    print(f"loader / step    : {loader_tps / step_tps:.1f}x (goal >= 20x)")


if __name__ == "__main__":
    main()
