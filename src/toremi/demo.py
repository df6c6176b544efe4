"""``toremi demo``: the whole pipeline on a small slice of the shipped real corpus.

corpus (13 domains, a slice of each) -> annotate (WordLlama, k-means, c-TF-IDF, similarity labels)
-> prepare (a BPE trained on the slice) -> `uniform` and `toremi` runs of a tiny GPT-2 ->
per-domain perplexity, PIQA, BBC and Brown classification -> HTML report. Three seeds, so that the
headline is a paired difference with a confidence interval (one seed would be an anecdote).
The warm-up is long for the step count on purpose: with a short one, the data order alone put
paired runs into different basins (configs/quality.yaml, docs/results/quality_cpu/README.md).
Sized for well under 20 minutes on a 2-core laptop; everything is resumable, so rerunning
continues where it stopped.
Override any setting as on the experiment CLI, e.g. ``toremi demo train.steps=100 seeds=[1,2]``.
"""

from __future__ import annotations

import time
from pathlib import Path

from toremi import layout
from toremi.experiment import ExperimentConfig
from toremi.stage import Stage

DEMO = {
    "name": "demo",
    "out": "out/demo",
    "seeds": [1, 2, 3],
    "pipeline": {
        "corpus": {"out": "out/demo/corpus", "max_mb_per_domain": 0.4},
        "annotate": {"cluster": {"k": 40}},
        "prepare": {"out": "out/demo/tokens", "tokenizer": "bpe:4096", "seq_len": 128},
    },
    "train": {
        "steps": 600, "batch_size": 16, "eval_every": 150, "eval_batches": 8, "log_every": 25,
        "model": {"size": "tiny"}, "optim": {"lr": 0.005, "warmup_steps": 100},
    },
    "methods": [
        {"name": "uniform", "train": {"method.name": "uniform"}},
        {"name": "toremi", "train": {"method.name": "toremi", "method.preset": "paper",
                                     "method.interval": 24}},
    ],
    "eval": {"max_docs": 40, "max_doc_tokens": 512, "max_tokens": 8000, "max_items": 300,
             "batch_size": 32,
             "downstream": ["piqa", "bbc_topic", "brown_genre", "bbc_topic_probe"]},
    "baseline": "uniform",
    "report": True,
}


# --config FILE replaces the built-in grid (it is not merged into it)
STAGE = Stage("demo", ExperimentConfig, lock=lambda cfg: cfg.out, doc=__doc__, defaults=DEMO,
              config_replaces_defaults=True)


def main(argv: list[str] | None = None) -> int:
    return STAGE.run(argv, _demo)


def _demo(cfg) -> int:
    from toremi.experiment import run_experiment

    t0 = time.time()
    result = run_experiment(cfg)
    minutes = (time.time() - t0) / 60
    out = Path(cfg.out)
    print(f"\ntoremi demo: finished in {minutes:.1f} min\n")
    print(result["headline"].replace("**", ""))
    print()
    print(f"  headline table : {layout.experiment_file(out, 'results.md')}")
    print(f"  report         : {layout.report_file(layout.experiment_report(out), 'report.html').resolve()}")
    print(f"  runs           : {', '.join(r['dir'] for r in result['runs'])}")
    return 0
