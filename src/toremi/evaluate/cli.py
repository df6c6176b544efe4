"""``toremi eval``: per-domain perplexity / bits-per-byte and downstream accuracy of a checkpoint.

    toremi eval --run runs/x --corpus out/corpus [--piqa DIR] [--max-docs N] [--out FILE] [--allow-partial]
    toremi eval --model HF_DIR --corpus out/corpus [--tokenizer PATH|gpt2] [key=value ...]

Writes ``<run_dir>/eval.json`` (or ``<model_dir>/eval.json`` / ``--out``) in the format of
docs/ARCHITECTURE.md. A missing held-out domain, task domain or PIQA folder is skipped with a
message (listed under ``skipped``); a tokenizer that does not match the checkpoint is refused.
A run that did not finish (interrupted, stopped, diverged) is refused unless ``--allow-partial``
is given, and every held-out shard read is checked against the hash the corpus recorded.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from toremi import done, integrity, layout
from toremi.config import ConfigError, to_dict
from toremi.evaluate.downstream import ClassifyTask
from toremi.stage import Stage


PROBE_MAX_DOCS = 512  # held-out documents a linear probe (`<task>_probe`) reads at most


def default_tasks() -> list[ClassifyTask]:
    return [ClassifyTask("bbc_topic", "news", "Topic"), ClassifyTask("brown_genre", "mixed", "Genre")]


@dataclass
class EvalConfig:
    run: str | None = None  # run dir: evaluates final/ (else the newest checkpoint)
    model: str | None = None  # or any HF causal-LM folder
    tokenizer: str | None = None  # default: tokenizer.json beside the weights; "gpt2" allowed
    corpus: str | None = None  # corpus dir with eval/<domain>/*.parquet
    domains: list[str] = field(default_factory=list)  # empty = every held-out domain
    piqa: str | None = None  # PIQA folder; default toremi.layout.piqa_dir() ($TOREMI_PIQA, ...)
    tasks: list[ClassifyTask] = field(default_factory=default_tasks)  # label classification
    # also `<task>_probe` (e.g. bbc_topic_probe): a linear probe on the model's features
    downstream: list[str] = field(default_factory=lambda: ["piqa", "bbc_topic", "brown_genre"])
    max_docs: int | None = None  # held-out documents per domain / task (fixed-seed subset)
    max_tokens: int | None = None  # stop a domain's perplexity after this many tokens
    max_doc_tokens: int | None = None  # score only each document's first N tokens (more docs)
    # held-out documents whose letters are < min_script_share in this script are not scored
    # (perplexity only; counted under skipped_script): text with no counterpart in training
    script_filter: str = "latin"  # latin | none
    min_script_share: float = 0.9
    max_items: int | None = None  # PIQA items (fixed-seed subset)
    batch_size: int = 8
    max_len: int | None = None  # context for scoring; default the model's n_positions
    stride: int | None = None  # sliding-window stride; default max_len // 2
    device: str = "auto"
    dtype: str = "float32"  # float32 | bfloat16 (autocast on CUDA: faster, NLL less exact)
    out: str | None = None  # eval.json path; default <run or model dir>/eval.json
    allow_partial: bool = False  # evaluate the newest checkpoint of an unfinished run

    def __post_init__(self):
        if (self.run is None) == (self.model is None):
            raise ConfigError("give exactly one of --run RUN_DIR or --model HF_DIR")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.script_filter not in ("latin", "none"):
            raise ConfigError(f"script_filter must be latin or none, got {self.script_filter!r}")
        if not 0.0 <= self.min_script_share <= 1.0:
            raise ConfigError(f"min_script_share must be in [0, 1], got {self.min_script_share}")


def piqa_dir(spec: str | None) -> Path:
    if spec is not None:
        return Path(spec)
    from toremi.layout import piqa_dir as default

    return default()


def label_names(corpus: Path, domain: str) -> list[str]:
    """Every label of the domain, training split included: a held-out split cut by source may
    miss some labels, and the choices must not depend on which ones it happens to hold."""
    import pyarrow.parquet as pq

    names = set()
    for split in ("heldout", "train"):
        for p in sorted(layout.corpus_documents(corpus, split, domain).glob("*.parquet")):
            if "label" in pq.read_schema(p).names:
                names |= set(pq.read_table(p, columns=["label"]).column("label").to_pylist())
    return sorted(n for n in names if n)


def output_dir(cfg: EvalConfig, log=None) -> Path:
    """The dir ``eval.json`` goes to (locked while evaluating): the run's, the model's, or --out's."""
    src = Path(cfg.run or cfg.model)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} does not exist (--run RUN_DIR / --model HF_DIR)")
    return Path(cfg.out).parent if cfg.out else src


@integrity.locked("eval", output_dir)  # also when `toremi experiment` evaluates its runs
def evaluate(cfg: EvalConfig, log=print) -> dict:
    """Evaluate one checkpoint; returns (and writes) the eval.json record."""
    from toremi.evaluate.model_io import check_tokenizer_fingerprint, load_model, resolve_run
    from toremi.evaluate.downstream import classify, piqa
    from toremi.evaluate.perplexity import (NoDocuments, domain_perplexity, filter_script, heldout_domains,
                                            read_heldout)
    from toremi.evaluate.probe import linear_probe
    from toremi.io import atomic_write_json

    from toremi.allocator import keep_large_allocations_in_heap

    keep_large_allocations_in_heap()

    t0 = time.time()
    run_dir = Path(cfg.run) if cfg.run else None
    partial = None
    if run_dir is not None:
        partial = unfinished(run_dir)
        if partial and not cfg.allow_partial:
            raise ValueError(f"{run_dir}: the run is not finished ({partial['status']}, step "
                             f"{partial['steps_done']}); resume it with `toremi train --out {run_dir} "
                             f"...`, or pass --allow-partial to evaluate its newest checkpoint")
        model_dir, tok_path = resolve_run(run_dir)
    else:
        model_dir, tok_path = Path(cfg.model), None
        if cfg.tokenizer:
            check_tokenizer_fingerprint(model_dir, cfg.tokenizer)
    verified = None
    if cfg.corpus:  # every held-out shard checked before the model is even loaded
        t1 = time.perf_counter()
        shards = sorted(layout.corpus_documents(cfg.corpus, "heldout").glob("*/shard-*.parquet"))
        verified = {"files": integrity.verify_corpus_shards(Path(cfg.corpus), shards),
                    "seconds": round(time.perf_counter() - t1, 4)}
    lm = load_model(model_dir, cfg.tokenizer or tok_path, run_dir, cfg.device, cfg.max_len,
                    bf16=cfg.dtype == "bfloat16")
    result = {"model": str(model_dir), "tokenizer": lm.tokenizer.info(), "max_len": lm.max_len,
              "domains": {}, "macro_ppl": None, "downstream": {}, "skipped": [],
              "config": to_dict(cfg)}
    if partial:
        log(f"eval: warning: {run_dir} is not finished ({partial['status']}); evaluating {model_dir}")
        result["partial"] = partial
    if verified is not None:
        result["verified_sha256"] = verified

    def skip(what: str, why: str) -> None:
        log(f"eval: skipping {what}: {why}")
        result["skipped"].append({"what": what, "why": why})

    available = heldout_domains(cfg.corpus) if cfg.corpus else []
    if cfg.corpus is None:
        skip("perplexity", "no --corpus given")
    elif not available:
        skip("perplexity", f"{Path(cfg.corpus) / 'eval'} holds no held-out domains")
    for domain in cfg.domains or available:
        if domain not in available:
            skip(f"domain {domain}", f"no held-out shards under {Path(cfg.corpus) / 'eval' / domain}")
            continue
        docs = read_heldout(cfg.corpus, domain, cfg.max_docs)
        ids, texts, dropped = filter_script(docs["id"], docs["text"], cfg.script_filter, cfg.min_script_share)
        try:
            stats = domain_perplexity(lm, texts, cfg.stride, cfg.batch_size, cfg.max_tokens,
                                      desc=f"ppl {domain}", max_doc_tokens=cfg.max_doc_tokens, ids=ids)
        except NoDocuments as exc:  # an empty domain: the others are still scored
            skip(f"domain {domain}", str(exc))
            continue
        result["domains"][domain] = {**stats, "skipped_script": dropped}
        log(f"eval: {domain:<12} ppl {stats['ppl']:9.2f}  bpb {stats['bpb']:.4f}  "
            f"({stats['tokens']} tokens, {stats['docs']} docs)")
    if result["domains"]:
        ppls = [d["ppl"] for d in result["domains"].values()]
        result["macro_ppl"] = float(math.fsum(ppls) / len(ppls))

    pdir = piqa_dir(cfg.piqa)
    if "piqa" not in cfg.downstream:
        pass
    elif not (pdir / "valid.jsonl").exists():
        skip("piqa", f"{pdir} has no valid.jsonl (set $TOREMI_PIQA or pass --piqa DIR; "
                     f"default: toremi.layout.piqa_dir())")
    else:
        result["downstream"]["piqa"] = piqa(lm, pdir, cfg.max_items, cfg.batch_size)
    for task in cfg.tasks:
        probe_name = f"{task.name}_probe"
        wanted = [n for n in (task.name, probe_name) if n in cfg.downstream]
        if not wanted:
            continue
        if task.domain not in available:
            for name in wanted:
                skip(name, f"held-out domain {task.domain!r} not in the corpus")
            continue
        for name in wanted:
            # The probe's folds need documents more than its forward passes need time: it reads
            # up to PROBE_MAX_DOCS whatever max_docs says.
            docs = read_heldout(cfg.corpus, task.domain,
                                PROBE_MAX_DOCS if name == probe_name else cfg.max_docs)
            labels = docs.get("label", [None] * len(docs["text"]))
            try:
                result["downstream"][name] = (
                    linear_probe(lm, task, docs["text"], labels, cfg.batch_size)
                    if name == probe_name else
                    classify(lm, task, docs["text"], labels, cfg.batch_size,
                             names=label_names(Path(cfg.corpus), task.domain)))
            except ValueError as exc:
                skip(name, str(exc))
    for name, d in result["downstream"].items():
        second = (f"random-init {d['random_init_acc']:.4f}" if "random_init_acc" in d
                  else f"acc_norm {d['acc_norm']:.4f}")
        log(f"eval: {name:<12} acc {d['acc']:.4f}  {second}  (n={d['n']}, "
            f"majority {d.get('majority', float('nan')):.3f}, chance {d['chance']:.3f})")
    result["seconds"] = round(time.time() - t0, 2)
    out = Path(cfg.out) if cfg.out else layout.run_eval(run_dir or model_dir)
    atomic_write_json(out, result)
    done.mark(out, {"inputs": eval_inputs(cfg, model_dir)})
    log(f"eval: wrote {out}")
    return result


def eval_inputs(cfg: EvalConfig, model_dir: Path) -> dict:
    """What an eval.json depends on, for its done marker: the eval settings (not where the run or
    the output sits: a run copied into another grid keeps its evaluation) and the model's bytes."""
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("run", "out")}
    return {**settings, "model_sha256": done.file_sha256(layout.hf_weights(model_dir))}


def unfinished(run_dir: Path) -> dict | None:
    """None for a finished run (``toremi.runs.status``); else its status and step."""
    from toremi.io import read_json
    from toremi.runs import status

    st = status(run_dir)
    if st == "done":
        return None
    info = read_json(layout.run_info(run_dir)) if layout.run_info(run_dir).exists() else {}
    return {"status": st if st != "missing" else "no run.json", "steps_done": info.get("steps_done")}


STAGE = Stage("eval", EvalConfig, lock=output_dir, doc=__doc__)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return STAGE.run(argv, _evaluate)


def _evaluate(cfg: EvalConfig) -> int:
    try:
        evaluate(cfg)
    except (FileNotFoundError, ValueError) as exc:
        print(f"toremi eval: {exc}", file=sys.stderr)
        return 2
    return 0
