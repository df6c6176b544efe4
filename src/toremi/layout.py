"""Every on-disk path toremi reads or writes, in one place.

Stage directories (the contract in docs/ARCHITECTURE.md: corpus_dir, annotation dir, tokens_dir, run_dir): a corpus dir, its
annotation dir, a prepared tokens dir, a run dir and an experiment dir. Stages ask these
functions for paths instead of joining names themselves, so the layout is written down once.
These functions only build paths; they never read or create files.

Data that is not an input of a stage (raw sources, PIQA, the Brown corpus) is found without
guessing the repository root (``Path(__file__).parents[3]`` pointed into site-packages after a
non-editable ``pip install .``). Order: an environment variable; the checkout this package
runs from (a ``pyproject.toml`` two levels above the package), so ``make sources`` keeps working;
then the current directory; else the user cache (``$XDG_CACHE_HOME/toremi``, default
``~/.cache/toremi``).
"""

from __future__ import annotations

import os
from pathlib import Path


def checkout() -> Path | None:
    """The source checkout this package is imported from (editable install), else None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").exists() and (root / "src" / "toremi").is_dir() else None


def user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "toremi"


def bases() -> list[Path]:
    """Candidate roots, most specific first: the checkout, the current directory."""
    return [b for b in (checkout(), Path.cwd()) if b is not None]


def sources_dir() -> Path:
    """Raw text sources: ``$TOREMI_SOURCES``, ``<checkout or cwd>/.cache/sources`` if it exists,
    else the user cache."""
    if os.environ.get("TOREMI_SOURCES"):
        return Path(os.environ["TOREMI_SOURCES"])
    for base in bases():
        if (base / ".cache" / "sources").is_dir():
            return base / ".cache" / "sources"
    return user_cache() / "sources"


def piqa_dir() -> Path:
    """PIQA: ``$TOREMI_PIQA``, else ``../shared/data/piqa`` beside the checkout or the cwd, else
    the user cache (``~/.cache/toremi/piqa``), whichever exists first. None exists: the checkout's
    candidate in a checkout, else the user cache (named in the "missing" message)."""
    if os.environ.get("TOREMI_PIQA"):
        return Path(os.environ["TOREMI_PIQA"])
    cands = [(b / ".." / "shared" / "data" / "piqa").resolve() for b in bases()] + [user_cache() / "piqa"]
    return next((c for c in cands if c.exists()), cands[0] if checkout() else user_cache() / "piqa")


def package_resources() -> Path:
    """Data shipped inside the package (stop words, category list, the sources fetch script)."""
    return Path(__file__).resolve().parent / "resources"


def locations() -> dict[str, Path | None]:
    """Where this install looks for what is not a stage's input (``python -m toremi.layout``)."""
    return {"checkout": checkout(), "user_cache": user_cache(), "sources": sources_dir(),
            "piqa": piqa_dir(), "resources": package_resources()}


# --- corpus dir: documents/<domain>/shard-*.parquet, eval/<domain>/..., manifest.json ----------
CORPUS_SPLITS = {"train": "documents", "heldout": "eval", "eval": "eval"}  # split -> folder


def corpus_documents(corpus: str | Path, split: str = "train", domain: str | None = None) -> Path:
    """The shard folder of a split (``train``, or ``heldout``/``eval``), or of one domain in it."""
    if split not in CORPUS_SPLITS:
        raise ValueError(f"split {split!r}: use one of {sorted(CORPUS_SPLITS)}")
    root = Path(corpus) / CORPUS_SPLITS[split]
    return root / domain if domain else root


def corpus_manifest(corpus: str | Path) -> Path:
    """Written last by a corpus build or ingest: present only when the corpus is complete."""
    return Path(corpus) / "manifest.json"


# --- annotation dir (default <corpus>/annotations) ---------------------------------------------
def annotation_dir(corpus: str | Path, given: str | Path | None = None) -> Path:
    """``given`` when set (``--out``/``annotations=``), else ``<corpus>/annotations``."""
    return Path(given) if given else Path(corpus) / "annotations"


def topics_json(annotations: str | Path) -> Path:
    return Path(annotations) / "topics.json"


def topic_attributes(annotations: str | Path) -> Path:
    """Per-document topic attributes: ``attributes/topics/<domain>/*.parquet``."""
    return Path(annotations) / "attributes" / "topics"


def embeddings_dir(annotations: str | Path) -> Path:
    return Path(annotations) / "embeddings"


def annotation_manifest(annotations: str | Path) -> Path:
    return Path(annotations) / "manifest.json"


# --- prepared tokens dir -------------------------------------------------------------------------
def tokens_manifest(tokens: str | Path) -> Path:
    """Written last by ``toremi prepare``: a tokens dir without it is unfinished."""
    return Path(tokens) / "manifest.json"


def tokens_index(tokens: str | Path, split: str) -> Path:
    """Sequence index of ``train`` or ``dev``."""
    return Path(tokens) / f"index-{split}.npz"


def tokens_tokenizer(tokens: str | Path) -> Path:
    """The tokenizer the tokens were made with (copied into a run's ``final/``)."""
    return Path(tokens) / "tokenizer.json"


def tokens_documents(tokens: str | Path) -> Path:
    """Document ids in index order (``doc`` in the index is a row of this table)."""
    return Path(tokens) / "documents.parquet"


def tokens_packed(tokens: str | Path, split: str = "train") -> Path:
    """Packed windows and their segment map (``packing=docs``; written for ``train``)."""
    return Path(tokens) / f"packed-{split}"


def noise_record(data: str | Path) -> Path:
    """``noise.json`` of a corpus or tokens dir written by ``toremi noise``: what was corrupted."""
    return Path(data) / "noise.json"


# --- run dir -------------------------------------------------------------------------------------
def run_final(run: str | Path) -> Path:
    """The finished model (HF format) of a run."""
    return Path(run) / "final"


def run_final_marker(run: str | Path) -> Path:
    """Written last into ``final/``: the model is complete."""
    return run_final(run) / "config.json"


def run_checkpoints(run: str | Path) -> Path:
    """``checkpoints/step-XXXXXXX/{model/, train_state.pt}``."""
    return Path(run) / "checkpoints"


def run_checkpoint(run: str | Path, step: int) -> Path:
    return run_checkpoints(run) / f"step-{step:07d}"


def run_info(run: str | Path) -> Path:
    """``run.json``: status, steps done, tokens dir, fingerprints."""
    return Path(run) / "run.json"


def run_eval(run: str | Path) -> Path:
    return Path(run) / "eval.json"


def run_weights(run: str | Path) -> Path:
    """One record per method update (weights, probabilities, per-topic losses)."""
    return Path(run) / "weights.jsonl"


def run_metrics(run: str | Path) -> Path:
    return Path(run) / "metrics.jsonl"


def run_config(run: str | Path) -> Path:
    return Path(run) / "config.yaml"


# --- experiment dir ------------------------------------------------------------------------------
def experiment_runs(out: str | Path) -> Path:
    """The folder of an experiment's (or a committed grid's) run dirs ``<label>-s<seed>``."""
    return Path(out) / "runs"


def experiment_run(out: str | Path, label: str, seed: int) -> Path:
    """The run dir of method ``label`` with ``seed`` in an experiment."""
    return experiment_runs(out) / f"{label}-s{seed}"


def experiment_file(out: str | Path, name: str) -> Path:
    """A grid-level file of an experiment: ``experiment.yaml``, ``unigram.json``,
    ``results[-without-…].json|md``."""
    return Path(out) / name


if __name__ == "__main__":
    for name, path in locations().items():
        print(f"{name:<11} {path}" + ("" if path is None or path.exists() else "  (missing)"))
