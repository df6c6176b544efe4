"""toremi.layout: data locations without the repository-root guess (works outside a checkout)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def test_sources_dir_order(tmp_path, monkeypatch):
    from toremi import layout

    monkeypatch.setenv("TOREMI_SOURCES", str(tmp_path / "env"))
    assert layout.sources_dir() == tmp_path / "env"
    monkeypatch.delenv("TOREMI_SOURCES")
    monkeypatch.setattr(layout, "checkout", lambda: None)  # as after a non-editable install
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert layout.sources_dir() == tmp_path / "xdg" / "toremi" / "sources"
    (tmp_path / ".cache" / "sources").mkdir(parents=True)
    assert layout.sources_dir() == tmp_path / ".cache" / "sources"


def test_installed_copy_outside_a_checkout_uses_the_user_cache(tmp_path):
    """The package copied away from its checkout (like site-packages) never looks in it."""
    import shutil

    shutil.copytree(SRC / "toremi", tmp_path / "site" / "toremi")
    env = {k: v for k, v in os.environ.items() if k not in ("TOREMI_SOURCES", "PYTHONPATH")}
    env.update(PYTHONPATH=str(tmp_path / "site"), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    code = "import toremi.layout as l, toremi.corpus.sources as s; print(l.checkout()); print(s.sources_root())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", str(tmp_path / "xdg" / "toremi" / "sources")]


def test_piqa_and_resources_outside_a_checkout(tmp_path, monkeypatch):
    from toremi import layout

    monkeypatch.delenv("TOREMI_PIQA", raising=False)
    monkeypatch.setattr(layout, "checkout", lambda: None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert layout.piqa_dir() == tmp_path / "xdg" / "toremi" / "piqa"  # not a path beside the cwd
    (tmp_path.parent / "shared" / "data" / "piqa").mkdir(parents=True, exist_ok=True)
    try:
        assert layout.piqa_dir() == (tmp_path.parent / "shared" / "data" / "piqa").resolve()
    finally:
        import shutil

        shutil.rmtree(tmp_path.parent / "shared")
    monkeypatch.setenv("TOREMI_PIQA", str(tmp_path / "p"))
    assert layout.piqa_dir() == tmp_path / "p"
    res = layout.package_resources()
    assert {"stopwords_en.txt", "wikipedia_categories.txt", "fetch_sources.sh"} <= {p.name for p in res.iterdir()}


def test_an_installed_copy_runs_from_another_directory(tmp_path):
    """The package alone (as in site-packages, no checkout above it): `python -m toremi`, the
    resolved locations, the package data and the built-in demo config."""
    import shutil

    shutil.copytree(SRC / "toremi", tmp_path / "site" / "toremi",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("TOREMI_SOURCES", "TOREMI_PIQA", "PYTHONPATH")}
    env.update(PYTHONPATH=str(tmp_path / "site"), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    (tmp_path / "elsewhere").mkdir()

    def run(*args):
        out = subprocess.run([sys.executable, *args], cwd=tmp_path / "elsewhere", env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert "demo" in run("-m", "toremi", "--help")
    assert "usage: toremi demo" in run("-m", "toremi", "demo", "--help")
    where = dict(line.split(None, 1) for line in run("-m", "toremi.layout").splitlines())
    cache = tmp_path / "xdg" / "toremi"
    assert where["checkout"] == "None"
    assert where["sources"] == f"{cache / 'sources'}  (missing)" and where["piqa"] == f"{cache / 'piqa'}  (missing)"
    assert where["resources"] == str(tmp_path / "site" / "toremi" / "resources")
    code = ("import copy; from toremi.demo import DEMO; from toremi.experiment import ExperimentConfig;"
            "from toremi.config import from_dict; from toremi.annotate.keywords import load_stop_words;"
            "c = from_dict(ExperimentConfig, copy.deepcopy(DEMO)); print(len(c.methods), len(load_stop_words()) > 100)")
    assert run("-c", code).split() == ["2", "True"]


# --- the stage directories ---------------------------------------------------------------------
def test_layout_names_what_the_stages_write(tiny_corpus, tiny_tokens, tmp_path):
    """Every layout function points at a file or folder a real stage wrote."""
    from toremi import layout
    from toremi.config import load_config
    from toremi.corpus.documents import iter_shards
    from toremi.train import TrainConfig, train

    assert layout.corpus_documents(tiny_corpus).is_dir()
    assert layout.corpus_documents(tiny_corpus, "heldout") == layout.corpus_documents(tiny_corpus, "eval")
    assert set(iter_shards(tiny_corpus, "heldout")) == set(layout.corpus_documents(tiny_corpus, "heldout").glob("*/*.parquet"))
    assert layout.corpus_documents(tiny_corpus, "train", "tech").is_dir()
    with pytest.raises(ValueError, match=r"split 'val': use one of \['eval', 'heldout', 'train'\]"):
        layout.corpus_documents(tiny_corpus, "val")
    assert layout.annotation_dir(tiny_corpus) == tiny_corpus / "annotations"
    assert layout.annotation_dir(tiny_corpus, tmp_path / "a") == tmp_path / "a"
    for path in (layout.tokens_manifest(tiny_tokens), layout.tokens_index(tiny_tokens, "train"),
                 layout.tokens_index(tiny_tokens, "dev"), layout.tokens_tokenizer(tiny_tokens),
                 layout.tokens_documents(tiny_tokens), layout.tokens_packed(tiny_tokens) / "seg_len.npy"):
        assert path.exists(), path
    run = layout.experiment_run(tmp_path / "exp", "uniform", 2)
    assert run == tmp_path / "exp" / "runs" / "uniform-s2"
    cfg = load_config(TrainConfig, None, [f"tokens_dir={tiny_tokens}", f"out={run}", "steps=2", "batch_size=2",
                                          "eval_every=0", "eval_batches=1", "progress=false", "ckpt_every=1",
                                          "method.name=toremi", "method.interval=1"])
    assert train(cfg) == run
    for path in (layout.run_final_marker(run), layout.run_info(run), layout.run_weights(run),
                 layout.run_metrics(run), layout.run_config(run), layout.run_checkpoint(run, 2),
                 layout.run_final(run) / "tokenizer.json"):
        assert path.exists(), path
    assert layout.run_final_marker(run).parent == layout.run_final(run)
    assert layout.run_checkpoint(run, 2).parent == layout.run_checkpoints(run)


HAND_BUILT = re.compile(
    r'/ *(f?"(manifest\.json|run\.json|eval\.json|weights\.jsonl|metrics\.jsonl|config\.yaml|final|annotations|'
    r'topics\.json|attributes|embeddings|checkpoints|documents|eval|runs|noise\.json|documents\.parquet|'
    # annotate, prepare, the run logger, experiment, noise and report (issue: "no stage builds paths")
    r'clusters|keywords\.json|llm_cache\.jsonl|shards|prepare\.yaml|tokenizer\.spec|ranks|tb|'
    r'tokens-noisy|results\.json|results\.md|experiment\.yaml|report|report\.html|report\.md|noise_ids\.txt|'
    r'final\.sha256|corpus)"'
    r'|f"index-|f"packed-|"packed-train"|"index-(train|val)\.npz"|f"shard-|f"rank-|f"\{split\}-)'
    r'|parents\[\d\]')


def hand_built(text: str) -> list[str]:
    return [f"{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1) if HAND_BUILT.search(line)]


def test_no_stage_builds_layout_paths_by_hand():
    """Only toremi.layout joins the names of the stage directories (and guesses no repo root)."""
    src = SRC / "toremi"
    hits = [f"{p.relative_to(src)}:{hit}" for p in sorted(src.rglob("*.py")) if p.name != "layout.py"
            for hit in hand_built(p.read_text())]
    assert hits == []


def test_the_guard_catches_what_the_stages_used_to_write():
    """The lines annotate, prepare, the run logger and experiment had before they asked layout."""
    before = """
        cpath = self.out / "clusters" / "centroids.npy"
        kpath = self.out / "keywords.json"
        save_config(cfg, cfg.out / "prepare.yaml")
        out_bins = [cfg.out / "shards" / f"{split}-{k:05d}.bin" for k in ks]
        self.rank_path = run / "ranks" / f"rank-{trainer.d.rank}.jsonl"
        self.tb = SummaryWriter(str(run / "tb"))
        ncfg = {"out": str(Path(cfg.out) / "tokens-noisy")}
        atomic_write_json(out / "results.json", result)
        path = report(dirs, out / "report", title)
    """
    assert len(hand_built(before)) == 9
    assert hand_built("cpath = layout.clusters_file(self.out, 'centroids.npy')") == []
