"""``toremi annotate [embed|cluster|keywords|label|all] --corpus DIR [--out DIR] [k=v ...]``

Steps can run one by one or all together; each resumes where it stopped. Overrides are
``section.key=value`` over :class:`toremi.annotate.pipeline.AnnotateConfig`, for example
``cluster.k=20 cluster.seed=1 embed.backend=sentence-transformers label.labeller=llm
label.llm.base_url=http://127.0.0.1:8000/v1 label.llm.model=llama3 engine=ray`` (or
``engine.name=ray engine.address=auto|ray://HOST:10001``; docs/scale.md).

Defaults: embed.backend=wordllama (static, fast on a CPU; sentence-transformers runs fp16 on a
GPU), cluster.k=0 (= round(sqrt(n/2)) for n non-empty documents, at most 10,000),
cluster.nredo=5 restarts, keywords.top_n=150, label.labeller=similarity against the 41 Wikipedia
categories (label.topics=FILE for your own, one per line, optional ": description"). The LLM
labeller reads its API key from the variable named by label.llm.api_key_env (OPENAI_API_KEY).

Writes embeddings/, clusters/, keywords.json, topics.json, attributes/topics/ and manifest.json
under the annotation dir; the corpus is never rewritten.
"""

from __future__ import annotations

import argparse
import json
import os


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(prog="toremi annotate [embed|cluster|keywords|label|all]", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="corpus_dir with documents/<domain>/shard-*.parquet")
    ap.add_argument("--out", default=None, help="annotation dir (default <corpus>/annotations)")
    ap.add_argument("--config", default=None, help="YAML file with AnnotateConfig fields")
    ap.add_argument("--engine", choices=["local", "ray"], default=None)
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    argv = list(argv or [])
    step = argv.pop(0) if argv and argv[0] in ("embed", "cluster", "keywords", "label", "all") else "all"
    args = ap.parse_intermixed_args(argv)

    from toremi.annotate.pipeline import STEPS, AnnotateConfig, Annotator, summary_table
    from toremi.config import flags_to_overrides, load_config

    cfg = load_config(AnnotateConfig, args.config, flags_to_overrides(args, {"engine": "engine.name"}))
    from toremi.ray_cluster import EngineError

    try:
        ann = Annotator(args.corpus, args.out, cfg)
    except (FileNotFoundError, EngineError) as exc:
        print(f"toremi annotate: {exc}")
        return 2
    from toremi.integrity import hold_lock

    _lock = hold_lock(ann.out, "annotate")  # one writer per annotation dir
    steps = STEPS if step == "all" else (step,)
    for step in steps:
        try:
            info = getattr(ann, step)()
        except (FileNotFoundError, ValueError) as exc:
            print(f"toremi annotate {step}: {exc}")
            return 2
        print(f"[{step}] " + json.dumps(info))
    if "label" in steps:
        print(summary_table(ann.out))
    return 0
