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


def corpus_shard(corpus: str | Path, split: str, domain: str, index: int) -> Path:
    """One document shard: ``<split folder>/<domain>/shard-00000.parquet``."""
    return corpus_documents(corpus, split, domain) / f"shard-{index:05d}.parquet"


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


def annotation_shard_file(annotations: str | Path, kind: str, shard: str | Path, ext: str) -> Path:
    """A per-shard output of a step: ``<kind>/<domain>/<shard stem><ext>`` (``embeddings``, ``clusters``,
    ``attributes/topics``), named after the document shard it comes from."""
    shard = Path(shard)
    return Path(annotations) / kind / shard.parent.name / (shard.stem + ext)


def clusters_file(annotations: str | Path, name: str) -> Path:
    """A grid-level output of ``cluster``: ``clusters/centroids.npy``, ``center.npy``,
    ``member_means.npy``, ``stats.json``."""
    return Path(annotations) / "clusters" / name


def keywords_json(annotations: str | Path) -> Path:
    return Path(annotations) / "keywords.json"


def llm_cache(annotations: str | Path) -> Path:
    """Answers of the LLM labeller, so a rerun asks only what it has not asked."""
    return Path(annotations) / "llm_cache.jsonl"


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


def tokens_shard(tokens: str | Path, split: str, index: int) -> Path:
    """One token shard (``shards/train-00000.bin``), beside its index part and done marker."""
    return Path(tokens) / "shards" / f"{split}-{index:05d}.bin"


def tokens_config(tokens: str | Path) -> Path:
    """``prepare.yaml``: the PrepareConfig the tokens were made with."""
    return Path(tokens) / "prepare.yaml"


def tokens_tokenizer_spec(tokens: str | Path) -> Path:
    """The tokenizer spec (``gpt2``, ``bpe:N``, a path) a trained tokenizer.json was made for."""
    return Path(tokens) / "tokenizer.spec"


def noise_record(data: str | Path) -> Path:
    """``noise.json`` of a corpus or tokens dir written by ``toremi noise``: what was corrupted."""
    return Path(data) / "noise.json"


def noise_ids(data: str | Path) -> Path:
    """The ids of the corrupted documents (one per line) of a noisy corpus."""
    return Path(data) / "noise_ids.txt"


def noise_corpus(tokens: str | Path) -> Path:
    """The corrupted corpus a text-noise tokens dir was prepared from (``<tokens>/corpus``)."""
    return Path(tokens) / "corpus"


# --- run dir -------------------------------------------------------------------------------------
def run_final(run: str | Path) -> Path:
    """The finished model (HF format) of a run."""
    return Path(run) / "final"


def run_final_marker(run: str | Path) -> Path:
    """Written last into ``final/``: the model is complete."""
    return run_final(run) / "config.json"


def hf_tokenizer(model_dir: str | Path) -> Path:
    """``tokenizer.json`` beside an HF-format model (a run's ``final/`` or any model folder)."""
    return Path(model_dir) / "tokenizer.json"


def hf_config(model_dir: str | Path) -> Path:
    """``config.json`` of an HF-format model: written last, so its presence means complete."""
    return Path(model_dir) / "config.json"


def run_final_weights(run: str | Path) -> Path:
    return hf_weights(run_final(run))


def hf_weights(model_dir: str | Path) -> Path:
    """The weights file of a model dir in HF format (``final/`` or a checkpoint's export)."""
    return Path(model_dir) / "model.safetensors"


def run_final_digest(run: str | Path) -> Path:
    """``final.sha256``: a committed copy of a run keeps the weights' digest, not the weights."""
    return Path(run) / "final.sha256"


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


def run_rank_log(run: str | Path, rank: int) -> Path:
    """Under DDP, each rank's hash of its weights at every update (ranks must agree)."""
    return Path(run) / "ranks" / f"rank-{rank}.jsonl"


def run_tensorboard(run: str | Path) -> Path:
    return Path(run) / "tb"


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


def experiment_report(out: str | Path) -> Path:
    """The report dir ``toremi experiment`` writes (``report: true``)."""
    return Path(out) / "report"


def experiment_noisy_tokens(out: str | Path) -> Path:
    """The noisy tokens dir of an experiment's ``pipeline.noise``."""
    return Path(out) / "tokens-noisy"


# --- report dir ----------------------------------------------------------------------------------
def report_file(out: str | Path, name: str) -> Path:
    """``report.html``, ``report.md`` and the PNGs of a report dir."""
    return Path(out) / name


if __name__ == "__main__":
    for name, path in locations().items():
        print(f"{name:<11} {path}" + ("" if path is None or path.exists() else "  (missing)"))
