"""Quality at equal real target tokens: packed vs unpacked (uniform), causal vs doc attention.

One tokens dir prepared with ``packing=docs`` serves both modes (the per-document index is always
written). The packed runs take ``--steps`` steps; the unpacked run takes more so that every run sees
the same number of *real* target tokens (steps x fill_docs / fill_none). Each run is evaluated with
``toremi eval`` (held-out documents, per domain, strided) and compared by macro NLL (mean over
domains of nats per token) as paired differences over seeds with a 95% t-interval.

    python bench/packing_quality.py --corpus /tmp/i10/corpus --out /tmp/i10/quality
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from toremi.config import load_config  # noqa: E402
from toremi.evaluate.cli import EvalConfig, evaluate  # noqa: E402
from toremi.io import read_json  # noqa: E402
from toremi.prepare import PrepareConfig, prepare  # noqa: E402
from toremi.train import TrainConfig, train  # noqa: E402

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def t_interval(xs: list[float]) -> dict:
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return {"mean": m, "ci95": None, "n": len(xs)}
    half = T975.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))
    return {"mean": m, "ci95": [m - half, m + half], "n": len(xs)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", default="bpe:4096")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=300, help="packed steps; unpacked gets more")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--max-docs", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=20000)
    a = ap.parse_args(argv)
    out = Path(a.out)
    tokens = prepare(PrepareConfig(corpus=Path(a.corpus), out=out / "tokens", tokenizer=a.tokenizer,
                                   seq_len=a.seq_len, packing="docs"))
    fill = {k: v["overall"] for k, v in read_json(tokens / "manifest.json")["fill"].items()}
    variants = {"unpacked": ("none", "causal", round(a.steps * fill["docs"] / fill["none"])),
                "packed_causal": ("docs", "causal", a.steps), "packed_doc": ("docs", "doc", a.steps)}
    print(f"fill {fill}; steps {({k: v[2] for k, v in variants.items()})}", flush=True)
    results: dict = {"fill": fill, "config": vars(a), "runs": {}}
    for seed in [int(s) for s in a.seeds.split(",")]:
        for name, (packing, attention, steps) in variants.items():
            run = out / f"{name}-s{seed}"
            t0 = time.time()
            cfg = load_config(TrainConfig, None, [
                f"tokens_dir={tokens}", f"out={run}", f"steps={steps}", f"batch_size={a.batch}",
                f"seed={seed}", f"packing={packing}", f"model.attention={attention}", "model.size=tiny",
                "optim.lr=0.003", f"optim.warmup_steps={max(1, steps // 6)}", "eval_every=0", "eval_batches=4",
                "log_every=50", "progress=false", "method.name=uniform"])
            if not (run / "eval.json").exists():
                train(cfg)
                evaluate(EvalConfig(run=str(run), corpus=a.corpus, downstream=[], max_docs=a.max_docs,
                                    max_tokens=a.max_tokens, batch_size=32, out=str(run / "eval.json")),
                         log=lambda *_: None)
            ev = read_json(run / "eval.json")
            nll = {d: v["nll"] for d, v in ev["domains"].items()}
            results["runs"][f"{name}-s{seed}"] = {"macro_nll": statistics.fmean(nll.values()), "nll": nll,
                                                  "steps": steps, "seconds": round(time.time() - t0, 1)}
            print(f"{name:>14} seed {seed}: macro NLL {results['runs'][f'{name}-s{seed}']['macro_nll']:.4f} "
                  f"({steps} steps, {time.time() - t0:.0f}s)", flush=True)
    seeds = [int(s) for s in a.seeds.split(",")]
    r = results["runs"]
    for label, (x, y) in {"packed_causal - unpacked": ("packed_causal", "unpacked"),
                          "packed_doc - packed_causal": ("packed_doc", "packed_causal"),
                          "packed_doc - unpacked": ("packed_doc", "unpacked")}.items():
        diffs = [r[f"{x}-s{s}"]["macro_nll"] - r[f"{y}-s{s}"]["macro_nll"] for s in seeds]
        results[label] = {**t_interval(diffs), "per_seed": diffs}
        ci = results[label]["ci95"]
        print(f"Δ macro NLL {label}: {results[label]['mean']:+.4f}" +
              (f"  95% CI [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "") + f"  per seed {[round(d, 4) for d in diffs]}")
    (out / "packing_quality.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'packing_quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
