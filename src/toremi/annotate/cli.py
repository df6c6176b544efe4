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

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Literal, Optional

from toremi import layout
from toremi.annotate.pipeline import AnnotateConfig
from toremi.config import ConfigError
from toremi.stage import Stage


@dataclasses.dataclass
class AnnotateCommand(AnnotateConfig):
    """AnnotateConfig plus what the command line names: the step, the corpus and the output."""

    step: Literal["embed", "cluster", "keywords", "label", "all"] = "all"  # one step, or all in order (also the first word)
    corpus: Optional[str] = None  # corpus dir with documents/<domain>/shard-*.parquet (required)
    out: Optional[str] = None     # annotation dir (default <corpus>/annotations)


def annotation_dir(cfg: AnnotateCommand) -> Path:
    """The dir this run writes (and locks); a missing corpus is refused before anything is made."""
    if not cfg.corpus:
        raise ConfigError("annotate needs --corpus DIR")
    if not Path(cfg.corpus).is_dir():
        raise FileNotFoundError(f"corpus dir {cfg.corpus} does not exist; build it first (toremi corpus build)")
    return layout.annotation_dir(cfg.corpus, cfg.out)


STAGE = Stage("annotate", AnnotateCommand, lock=annotation_dir, doc=__doc__, leading="step",
              aliases={"--engine": "engine.name"})


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from toremi.ray_cluster import EngineError

    try:
        return STAGE.run(argv, _annotate)
    except (FileNotFoundError, EngineError) as exc:
        print(f"toremi annotate: {exc}", file=sys.stderr)
        return 2


def _annotate(cmd: AnnotateCommand) -> int:
    from toremi.annotate.pipeline import STEPS, Annotator, summary_table

    cfg = AnnotateConfig(**{f.name: getattr(cmd, f.name) for f in dataclasses.fields(AnnotateConfig)})
    ann = Annotator(cmd.corpus, cmd.out, cfg)
    steps = STEPS if cmd.step == "all" else (cmd.step,)
    for step in steps:
        try:
            info = getattr(ann, step)()
        except (FileNotFoundError, ValueError) as exc:
            print(f"toremi annotate {step}: {exc}", file=sys.stderr)
            return 2
        print(f"[{step}] " + json.dumps(info))
    if "label" in steps:
        print(summary_table(ann.out))
    return 0
