"""``toremi experiment --config configs/X.yaml``: methods x seeds on the same data, evaluated and
tabulated.

Every run trains on the same prepared tokens with the same token budget (the shared ``train``
section; a method may not change steps/tokens/batch), so differences come from the method alone.
Finished runs (``final/`` written and run.json status ``done``) are skipped, unfinished ones
resume from their last checkpoint, evaluations are redone only when missing or older than the
model, so rerunning the command after an interruption continues where it stopped.

Optionally the config names pipeline stages to run first (``pipeline.corpus``, ``annotate``,
``prepare``, ``noise``); each is just a call of that stage's function with the given settings.
Writes ``<out>/results.json``, ``<out>/results.md`` and (``report: true``) ``<out>/report/``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from toremi import done, layout
from toremi.integrity import DirLock
from toremi.config import ConfigError, flatten, from_dict, to_dict, unflatten
from toremi.io import atomic_write_json, atomic_write_text, read_json
from toremi.stage import Stage

BUDGET_KEYS = ("steps", "tokens", "batch_size", "accum", "tokens_dir", "out", "seed")


@dataclass
class MethodSpec:
    name: str  # label used in tables, e.g. toremi-authors
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides ("method.preset": ...)
    # A/A control: same initialisation as the seed, data order from seed + this offset (0 = same).
    data_seed_offset: int = 0


@dataclass
class PipelineConfig:
    corpus: dict[str, Any] | None = None  # CorpusConfig fields -> toremi.corpus.build.build
    annotate: dict[str, Any] | None = None  # AnnotateConfig fields -> Annotator(...).run()
    prepare: dict[str, Any] | None = None  # PrepareConfig fields (corpus filled in) -> prepare
    noise: dict[str, Any] | None = None  # NoiseConfig fields (tokens/out filled in) -> make_noise


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    out: str = "runs/experiment"
    tokens: str | None = None  # prepared tokens dir; default pipeline.prepare.out
    corpus: str | None = None  # corpus with eval/ for `toremi eval`; default pipeline corpus
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    methods: list[MethodSpec] = field(default_factory=list)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields shared by every run
    eval: dict[str, Any] = field(default_factory=dict)  # EvalConfig fields (max_docs, piqa, ...)
    evaluate: bool = True
    baseline: str = "uniform"  # method label for "steps to reach its final val loss"
    noise_topic: str | None = None  # default: pipeline.noise.topic
    report: bool = True

    def __post_init__(self):
        if not self.methods:
            raise ConfigError("methods: list at least one {name, train} entry")
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ConfigError(f"methods: duplicate names in {names}")
        for m in self.methods:
            bad = [k for k in flatten(m.train) if k.split(".")[0] in BUDGET_KEYS]
            if bad:
                raise ConfigError(f"methods[{m.name}].train sets {bad}: the token budget, data and "
                                  f"seed are shared by every method (set them in `train`/`seeds`)")
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        validate_sections(self)


def validate_sections(cfg: "ExperimentConfig") -> None:
    """Build every section's typed config now (placeholders for paths filled in later), so that a
    typo anywhere fails at load time naming the key and the valid keys, before any stage runs."""
    p, x = cfg.pipeline, "<filled in later>"
    if p.corpus is not None:
        from toremi.corpus.build import CorpusConfig

        from_dict(CorpusConfig, p.corpus, prefix="pipeline.corpus.")
    if p.annotate is not None:
        from toremi.annotate.pipeline import AnnotateConfig

        from_dict(AnnotateConfig, p.annotate, "pipeline.annotate.")
    if p.prepare is not None:
        from toremi.prepare import PrepareConfig

        from_dict(PrepareConfig, {"corpus": x, **p.prepare}, "pipeline.prepare.")
    if p.noise is not None:
        from toremi.noise import NoiseConfig

        from_dict(NoiseConfig, {"tokens": x, "out": x, **p.noise}, "pipeline.noise.")
    from toremi.evaluate.cli import EvalConfig

    from_dict(EvalConfig, {**unflatten(cfg.eval), "run": x, "corpus": None}, "eval.")
    for m in cfg.methods:
        try:
            train_config(cfg, m, cfg.seeds[0], Path(x), Path(x))
        except ConfigError as exc:  # `train` merged with the method's own `train`
            raise ConfigError(f"method {m.name!r} (train: merged with methods[{m.name}].train): "
                              f"{exc}") from None


def run_pipeline(cfg: ExperimentConfig, log=print) -> tuple[Path | None, Path | None]:
    """Run the stages the config names; returns (corpus for eval, tokens dir)."""
    p = cfg.pipeline
    corpus = Path(cfg.corpus) if cfg.corpus else None
    if p.corpus is not None:
        from toremi.corpus.build import CorpusConfig, build

        ccfg = from_dict(CorpusConfig, p.corpus, prefix="pipeline.corpus.")
        log(f"experiment: corpus -> {ccfg.out}")
        build(ccfg)
        corpus = Path(ccfg.out)
    if p.annotate is not None:
        from toremi.annotate.pipeline import AnnotateConfig, Annotator

        if corpus is None:
            raise ConfigError("pipeline.annotate needs a corpus (pipeline.corpus or corpus:)")
        log(f"experiment: annotate {corpus}")
        ann = Annotator(corpus, None, from_dict(AnnotateConfig, p.annotate, "pipeline.annotate."))
        with DirLock(ann.out, "annotate"):  # the other stages called here lock in their functions
            ann.run()
    tokens = Path(cfg.tokens) if cfg.tokens else None
    if p.prepare is not None:
        from toremi.prepare import PrepareConfig, prepare

        pcfg = from_dict(PrepareConfig, {"corpus": str(corpus), **p.prepare}, "pipeline.prepare.")
        log(f"experiment: prepare {pcfg.corpus} -> {pcfg.out}")
        tokens = prepare(pcfg)
    if p.noise is not None:
        # On the prepared (clean) tokens: text noise re-prepares the corrupted corpus with the
        # clean tokenizer, so noisy and clean runs share one vocabulary.
        from toremi.noise import NoiseConfig, make_noise

        if tokens is None:
            raise ConfigError("pipeline.noise needs prepared tokens (pipeline.prepare or tokens:)")
        ncfg = from_dict(NoiseConfig, {"tokens": str(tokens), "out": str(layout.experiment_noisy_tokens(cfg.out)),
                                       **p.noise}, "pipeline.noise.")
        done = layout.noise_record(ncfg.out)
        same = ("topic", "kind", "fraction", "seed")
        if not (done.exists() and all(read_json(done).get(k) == getattr(ncfg, k) for k in same)):
            make_noise(ncfg, log)
        tokens = Path(ncfg.out)
        cfg.noise_topic = cfg.noise_topic or ncfg.topic
    return corpus, tokens


def run_ref(value, cfg: ExperimentConfig, method: MethodSpec, seed: int):
    """``{run:LABEL}`` -> the run dir of method LABEL (listed earlier) with the same seed, so a
    method can use another's finished run (DoReMi: reference -> proxy -> main)."""
    if not isinstance(value, str) or "{run:" not in value:
        return value
    import re

    labels = [m.name for m in cfg.methods]

    def sub(match):
        label = match.group(1)
        if label not in labels[:labels.index(method.name)]:
            raise ConfigError(f"methods[{method.name}]: {{run:{label}}} must name a method listed "
                              f"before it; listed before: {labels[:labels.index(method.name)]}")
        return str(layout.experiment_run(cfg.out, label, seed))
    return re.sub(r"\{run:([^}]+)\}", sub, value)


def train_config(cfg: ExperimentConfig, method: MethodSpec, seed: int, tokens: Path, run_dir: Path):
    from toremi.train import TrainConfig

    merged = {**flatten(cfg.train), **flatten(method.train)}
    data = unflatten({k: run_ref(v, cfg, method, seed) for k, v in merged.items()})
    data.update(tokens_dir=str(tokens), out=str(run_dir), seed=seed)
    if method.data_seed_offset:
        data["data_seed"] = seed + method.data_seed_offset
    return from_dict(TrainConfig, data, prefix="train.")


def run_experiment(cfg: ExperimentConfig, log=print) -> dict:
    from toremi.report import report
    from toremi.report.recompute import declared_keys, tabulate, write_unigram
    from toremi.runs import is_finished, load_run

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(layout.experiment_file(out, "experiment.yaml"), yaml.safe_dump(to_dict(cfg), sort_keys=False))
    corpus, tokens = run_pipeline(cfg, log)
    if tokens is None:
        raise ConfigError("no training data: set `tokens:` or a pipeline.prepare section")
    grid = [(m, s) for s in cfg.seeds for m in cfg.methods]  # seed-major: early seeds finish first
    # Build every config before training anything, so a typo fails in seconds, not hours.
    configs = [train_config(cfg, m, s, tokens, layout.experiment_run(out, m.name, s)) for m, s in grid]
    entries = []
    for (m, s), tcfg in zip(grid, configs):
        run_dir = Path(tcfg.out)
        if is_finished(run_dir):
            drift = config_drift(run_dir, tcfg)
            if drift:
                raise ConfigError(f"{run_dir} finished with other settings than this grid's ({drift}); "
                                  f"delete the run dir to re-run it, or restore the grid's settings")
            log(f"experiment: {run_dir.name} finished, skipping training")
        else:
            from toremi.train import train

            log(f"experiment: training {run_dir.name}")
            t0 = time.time()
            train(tcfg)
            if not is_finished(run_dir):
                info = layout.run_info(run_dir)
                status = read_json(info).get("status") if info.exists() else "?"
                raise RuntimeError(f"{run_dir} stopped before the end ({status}); rerun the "
                                   f"experiment to resume it")
            log(f"experiment: {run_dir.name} trained in {time.time() - t0:.0f}s")
        if cfg.evaluate:
            from toremi.evaluate.cli import EvalConfig, evaluate

            ecfg = from_dict(EvalConfig, {**unflatten(cfg.eval), "run": str(run_dir),
                                          "corpus": str(corpus) if corpus else None}, "eval.")
            why = stale_eval(run_dir, ecfg)
            if why:
                log(f"experiment: evaluating {run_dir.name} ({why})")
                evaluate(ecfg, log)
        entries.append({"label": m.name, "seed": s, "dir": str(run_dir)})
    runs = [load_run(Path(e["dir"]), e["label"]) for e in entries]
    uni = write_unigram(out, tokens)
    result, md = tabulate(runs, cfg.name, cfg.baseline, tokens, uni, (), declared_keys(to_dict(cfg)),
                          cfg.noise_topic)
    result.update(tokens=str(tokens), corpus=str(corpus) if corpus else None, config=to_dict(cfg))
    atomic_write_json(layout.experiment_file(out, "results.json"), result)
    atomic_write_text(layout.experiment_file(out, "results.md"), md)
    print(md)
    if cfg.report:
        path = report([Path(e["dir"]) for e in entries], layout.experiment_report(out), f"toremi experiment {cfg.name}",
                      {e["dir"]: e["label"] for e in entries}, cfg.noise_topic, cfg.baseline)
        log(f"experiment: report {path}")
    return result


# Settings a resumed run may change (applied from the resume step, listed in run.json), and where
# the run sits: a finished run with other values still belongs to the grid.
DRIFT_OK = ("out", "progress", "log_every", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints",
            "stop_at_step")


def config_drift(run_dir: Path, tcfg) -> str:
    """'key: run's value vs grid's value, ...' for the settings a finished run did not train
    with (empty when it matches)."""
    from toremi.config import flatten

    saved = layout.run_config(run_dir)
    if not saved.exists():
        return "no config.yaml"
    have = flatten(yaml.safe_load(saved.read_text()) or {})
    want = flatten(to_dict(tcfg))
    keys = sorted(k for k in set(have) | set(want) if k.split(".")[0] not in DRIFT_OK
                  and str(have.get(k)) != str(want.get(k)))
    return ", ".join(f"{k}: {have.get(k)!r} vs {want.get(k)!r}" for k in keys[:5]) + (" ..." if len(keys) > 5 else "")


def stale_eval(run_dir: Path, ecfg) -> str | None:
    """Why the run's eval.json must be (re)computed, or None when it is current: missing, edited,
    made from another model or with other eval settings (a changed `eval:` section must not leave
    old numbers in the tables). Its done marker records all three."""
    from toremi.evaluate.cli import eval_inputs

    ev = layout.run_eval(run_dir)
    if not ev.exists():
        return "no eval.json"
    if done.read(ev) is not None:  # the marker records the settings and the model it scored
        return done.why_redo(ev, inputs=eval_inputs(ecfg, layout.run_final(run_dir)))
    # an eval.json of an older toremi (no marker): its model's age and its recorded settings
    if ev.stat().st_mtime < layout.run_final_marker(run_dir).stat().st_mtime:
        return "eval.json older than the model"
    # Where the run or the output sits is not a setting: a run linked into another experiment
    # keeps its evaluation.
    old, new = ({k: v for k, v in c.items() if k not in ("run", "out")}
                for c in (read_json(ev).get("config") or {}, to_dict(ecfg)))
    why = done.stale_reason(old, new)
    return f"eval settings changed: {why}" if why else None


STAGE = Stage("experiment", ExperimentConfig, lock=lambda cfg: cfg.out, doc=__doc__, config_required=True)


def main(argv: list[str] | None = None) -> int:
    return STAGE.run(argv, _experiment)  # every section validated before any work


def _experiment(cfg: ExperimentConfig) -> int:
    from toremi import stats

    try:
        run_experiment(cfg)
    except (FileNotFoundError, RuntimeError, stats.EvidenceError) as exc:
        print(f"toremi experiment: {exc}", file=sys.stderr)
        return 2
    return 0
