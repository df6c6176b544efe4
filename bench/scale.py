"""Corpus scale: annotate + prepare on local Ray vs in-process, driver peak RSS vs corpus size,
identical outputs, and the per-unit costs of docs/scale.md.

The corpus is synthetic but real text: paragraph windows (about 200-600 characters) of the shipped
domains, round-robin over domains, exact duplicates dropped, so every document is unique. Each
(engine, size) runs in its own process so that ``ru_maxrss`` is that driver's peak alone (Ray
workers are other processes).

Usage (nice it; it takes a while on 2 shared cores):
  python bench/scale.py all --sizes 50000 200000 --work /tmp/scale     # -> bench/scale.json
  python bench/scale.py units --work /tmp/scale [--size 50000]         # per-unit costs only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANNOTATE = ["cluster.k=100", "cluster.nredo=1", "cluster.sample_size=50000", "progress=false"]


def load() -> str:
    return os.popen("uptime").read().strip()


def synthetic_records(n: int, seed: int = 0) -> list[dict]:
    """``n`` unique paragraph windows of the shipped domains, round-robin over domains."""
    from toremi.corpus.sources import DOMAINS

    streams = {name: d.reader(seed) for name, d in DOMAINS.items()}
    seen, out, counters = set(), [], {name: 0 for name in streams}
    pending: dict[str, list[str]] = {name: [] for name in streams}
    while len(out) < n and streams:
        for name in list(streams):
            while not pending[name]:
                try:
                    doc = next(streams[name])
                except (StopIteration, FileNotFoundError, OSError):
                    streams.pop(name)
                    break
                text = doc["text"]
                text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
                pending[name] = windows(text)
            if name not in streams:
                continue
            w = pending[name].pop(0)
            h = hashlib.sha1(w.encode()).digest()
            if h in seen:
                continue
            seen.add(h)
            out.append({"id": f"{name}/{counters[name]}", "text": w, "domain": name, "label": name, "source": "x"})
            counters[name] += 1
            if len(out) >= n:
                break
    if len(out) < n:
        raise SystemExit(f"only {len(out)} unique windows in the shipped domains")
    return out


def windows(text: str, lo: int = 200, hi: int = 600) -> list[str]:
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    out, cur = [], ""
    for p in paras:
        cur = f"{cur}\n\n{p}" if cur else p
        if len(cur) >= lo:
            out.append(cur[:hi])
            cur = ""
    return out


def cmd_corpus(args) -> None:
    from toremi.annotate.corpora import write_corpus

    recs = synthetic_records(args.docs)
    write_corpus(args.out, recs, shard_rows=args.shard_rows)
    print(json.dumps({"docs": len(recs), "mb": round(sum(len(r["text"]) for r in recs) / 1e6, 1)}))


def cmd_run(args) -> None:
    """One engine on one corpus in this process; prints wall times and this driver's peak RSS."""
    from toremi.annotate.pipeline import AnnotateConfig, Annotator
    from toremi.config import load_config
    from toremi.prepare import PrepareConfig, prepare

    eng = [] if args.engine == "local" else ["engine.name=ray", "engine.num_cpus=2"]
    t0 = time.perf_counter()
    ann = Annotator(args.corpus, Path(args.out) / "ann", load_config(AnnotateConfig, None, ANNOTATE + eng))
    t_connect = time.perf_counter() - t0
    steps = ann.run()
    t_ann = time.perf_counter() - t0
    t1 = time.perf_counter()
    prepare(load_config(PrepareConfig, None, [f"corpus={args.corpus}", f"out={Path(args.out) / 'tok'}",
                                              "tokenizer=gpt2", "seq_len=256", f"annotations={Path(args.out) / 'ann'}",
                                              *eng]))
    t_prep = time.perf_counter() - t1
    print(json.dumps({"engine": args.engine, "annotate_s": round(t_ann, 1), "connect_s": round(t_connect, 1),
                      "prepare_s": round(t_prep, 1), "steps": {k: v.get("seconds") for k, v in steps.items()},
                      "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def same_outputs(a: Path, b: Path) -> list[str]:
    """Differences between two runs' annotation and token outputs (empty = identical)."""
    import numpy as np
    import pyarrow.parquet as pq

    diffs = []
    for f in sorted((a / "ann").rglob("*")):
        rel = f.relative_to(a)
        g = b / rel
        if f.is_dir() or f.name in ("manifest.json",) or f.suffix == ".done":
            continue
        if not g.exists():
            diffs.append(f"missing {rel}")
        elif f.suffix == ".npy" and not np.array_equal(np.load(f), np.load(g)):
            diffs.append(str(rel))
        elif f.suffix == ".json" and json.loads(f.read_text()) != json.loads(g.read_text()):
            diffs.append(str(rel))
        elif f.suffix == ".parquet" and pq.read_table(f) != pq.read_table(g):
            diffs.append(str(rel))
    for f in sorted((a / "tok" / "shards").glob("*.bin")):
        if f.read_bytes() != (b / "tok" / "shards" / f.name).read_bytes():
            diffs.append(str(f.relative_to(a)))
    for split in ("train", "val"):
        with np.load(a / "tok" / f"index-{split}.npz") as x, np.load(b / "tok" / f"index-{split}.npz") as y:
            diffs += [f"index-{split}:{k}" for k in x.files if not np.array_equal(x[k], y[k])]
    if pq.read_table(a / "tok/documents.parquet") != pq.read_table(b / "tok/documents.parquet"):
        diffs.append("documents.parquet")
    return diffs


def units_inputs(work: Path, size: int | None = None) -> tuple[int, Path, Path | None]:
    """(size, corpus dir, tokens dir or None) that ``units`` measures: ``corpus-<size>`` (default:
    the smallest ``corpus-<n>`` under ``work``) and the tokens of a run on it, if one was made."""
    if size is None:
        found = sorted(int(p.name[len("corpus-"):]) for p in work.glob("corpus-*")
                       if p.name[len("corpus-"):].isdigit() and (p / "documents").is_dir())
        if not found:
            raise SystemExit(f"no corpus-<n>/documents under {work}: run `all` or `corpus` first")
        size = found[0]
    corpus = work / f"corpus-{size}"
    if not (corpus / "documents").is_dir():
        raise SystemExit(f"{corpus}/documents is missing: run `all --sizes {size}` or `corpus` first")
    tokdirs = [work / f"run-{engine}-{size}" / "tok" for engine in ("local", "ray")]
    return size, corpus, next((t for t in tokdirs if (t / "index-train.npz").exists()), None)


def units(work: Path, size: int | None = None) -> dict:
    """Per-unit costs on this machine, in CPU seconds of this process (``time.process_time``, all
    its threads), which the load from other processes changes far less than wall time. Measured on
    ``corpus-<size>`` (see ``units_inputs``)."""
    size, corpus, tokdir = units_inputs(work, size)
    os.environ["RAYON_NUM_THREADS"] = "1"  # tokenizers: one core, before the pool starts
    import numpy as np
    import pyarrow.parquet as pq

    from toremi.annotate.cluster import ClusterConfig, assign, fit_kmeans
    from toremi.annotate.embed import EmbedConfig, embed_texts, make_embedder
    from toremi.annotate.keywords import KeywordsConfig, count_shard, load_stop_words
    from toremi.tokenizer import load_tokenizer

    texts = [t for p in sorted(corpus.glob("documents/*/shard-*.parquet"))[:20]
             for t in pq.read_table(p, columns=["text"]).column("text").to_pylist()][:20000]
    out = {"uptime_before": load(), "corpus_docs": size, "docs": len(texts),
           "doc_chars_mean": round(float(np.mean([len(t) for t in texts])), 1)}

    def cpu(fn):
        c0, w0 = time.process_time(), time.perf_counter()
        r = fn()
        return r, time.process_time() - c0, time.perf_counter() - w0

    cfg = EmbedConfig(backend="wordllama")
    wl = make_embedder(cfg)
    emb, c, w = cpu(lambda: embed_texts(wl, texts, cfg))
    out["wordllama_docs_per_cpu_s"], out["wordllama_docs_per_wall_s"] = round(len(texts) / c), round(len(texts) / w)
    st_cfg = EmbedConfig(backend="sentence-transformers", device="cpu", max_tokens=256)
    st = make_embedder(st_cfg)
    _, c, w = cpu(lambda: embed_texts(st, texts[:500], st_cfg))
    out["minilm_cpu_docs_per_cpu_s"], out["minilm_cpu_docs_per_wall_s"] = round(500 / c, 1), round(500 / w, 1)
    rng = np.random.default_rng(0)
    x = emb[np.any(emb != 0, axis=1)]
    for n in (5000, 20000):
        sample = x[rng.choice(len(x), size=min(n, len(x)), replace=False)]
        (cent, _), c, w = cpu(lambda: fit_kmeans(sample, 100, ClusterConfig(nredo=1, niter=25)))
        out[f"kmeans_k100_nredo1_niter25_n{len(sample)}_cpu_s"] = round(c, 2)
        out[f"kmeans_k100_nredo1_niter25_n{len(sample)}_wall_s"] = round(w, 2)
    _, c, _ = cpu(lambda: assign(x, cent, 65536, True, None))
    out["assign_k100_docs_per_cpu_s"] = round(len(x) / c)
    labels = rng.integers(0, 100, len(texts)).astype(np.int32)
    stop = load_stop_words()
    _, c, _ = cpu(lambda: count_shard(texts, labels, 100, KeywordsConfig(), stop))
    out["keyword_count_docs_per_cpu_s"] = round(len(texts) / c)
    tok = load_tokenizer("gpt2")
    ids, c, w = cpu(lambda: tok.encode_batch(texts))
    n_tok = sum(len(i) for i in ids)
    out["gpt2_tokens_per_cpu_s"], out["gpt2_tokens_per_wall_s"] = round(n_tok / c), round(n_tok / w)
    out["tokens_per_doc_mean"] = round(n_tok / len(texts), 1)
    if tokdir is not None:
        with np.load(tokdir / "index-train.npz") as z:
            windows_n = len(z["offset"])
            out["index_bytes_per_window"] = round(sum(z[k].nbytes for k in z.files) / windows_n, 1)
        out["windows_per_doc"] = round(windows_n / size, 3)
    out["uptime_after"] = load()
    return out


def cmd_all(args) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    res = {"sizes": {}, "settings": {"annotate": ANNOTATE, "prepare": "gpt2, seq_len 256, topics from annotations",
                                     "ray": "local, num_cpus=2"}}
    for n in args.sizes:
        corpus = work / f"corpus-{n}"
        if not (corpus / "documents").exists():
            subprocess.run([sys.executable, __file__, "corpus", "--docs", str(n), "--out", str(corpus)],
                           env=env, check=True)
        row = {}
        for engine in args.engines:
            out = work / f"run-{engine}-{n}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            up = load()
            r = subprocess.run([sys.executable, __file__, "run", "--engine", engine, "--corpus", str(corpus),
                                "--out", str(out)], env=env, capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(r.stdout + r.stderr)
            row[engine] = {**json.loads(r.stdout.strip().splitlines()[-1]), "uptime_before": up,
                           "uptime_after": load()}
            print(n, engine, row[engine], flush=True)
        if len(args.engines) == 2:
            row["differences"] = same_outputs(work / f"run-local-{n}", work / f"run-ray-{n}")
        res["sizes"][str(n)] = row
        Path(args.json).write_text(json.dumps(res, indent=1))
    if args.units:
        res["units"] = units(work, min(args.sizes))
        print(res["units"], flush=True)
    Path(args.json).write_text(json.dumps(res, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus")
    c.add_argument("--docs", type=int, required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--shard-rows", type=int, default=5000)
    r = sub.add_parser("run")
    r.add_argument("--engine", choices=["local", "ray"], required=True)
    r.add_argument("--corpus", required=True)
    r.add_argument("--out", required=True)
    a = sub.add_parser("all")
    a.add_argument("--sizes", type=int, nargs="+", default=[50000, 200000])
    a.add_argument("--engines", nargs="+", default=["local", "ray"])
    a.add_argument("--work", default="/tmp/toremi-scale")
    a.add_argument("--json", default=str(ROOT / "bench" / "scale.json"))
    a.add_argument("--units", action=argparse.BooleanOptionalAction, default=True)
    u = sub.add_parser("units")
    u.add_argument("--work", default="/tmp/toremi-scale")
    u.add_argument("--size", type=int, default=None, help="corpus-<size> to measure (default: the smallest)")
    args = ap.parse_args()
    if args.cmd == "units":
        print(json.dumps(units(Path(args.work), args.size), indent=1))
        return
    {"corpus": cmd_corpus, "run": cmd_run, "all": cmd_all}[args.cmd](args)


if __name__ == "__main__":
    main()
