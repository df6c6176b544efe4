"""bench/gpu_evidence.sh --smoke: the GPU evidence script end to end on CPU, CI-sized (13 tiny
domain slices of the shipped corpus, bpe:8192, tiny model, 2 seeds, 6 methods with the controls,
3 domains scored), then its --prepare-only mode (what is carried to a GPU machine), as a real subprocess; checks that the paired results and the report come back as files."""

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_gpu_evidence_smoke(tmp_path):
    sources = Path(os.environ.get("TOREMI_SOURCES", REPO / ".cache" / "sources"))
    if not sources.exists():
        pytest.skip(f"no raw sources at {sources} (make sources)")
    env = {**os.environ, "DEST": str(tmp_path / "dest"), "WORK": str(tmp_path / "work"),
           "PYTHON": str(REPO / ".venv" / "bin" / "python")}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_evidence.sh"), "--smoke"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    dest = tmp_path / "dest"
    res = json.loads((dest / "results.json").read_text())
    assert sorted(res["paired"]["methods"]) == ["control-aa", "control-alpha0", "control-oracle-news",
                                                 "toremi-deemph", "toremi-paper"]
    assert res["paired"]["methods"]["control-alpha0"]["identical_weights"] == 2  # the negative control
    tokens = json.loads((tmp_path / "work" / "tokens" / "manifest.json").read_text())
    assert len(tokens["domain_names"]) == 13  # the whole corpus is trained on
    assert res["paired"]["domains"] == ["email", "news", "quotes"]  # smoke scores 3 short-doc domains
    for m in res["paired"]["methods"].values():
        assert m["seeds"] == [1, 2] and m["macro_nll"]["n"] == 2 and m["macro_nll"]["ci"] is not None
    assert res["regime"]["unigram"]["val_ce"] > 0
    md = (dest / "results.md").read_text()
    assert md.index("Paired Δ vs uniform") < md.index("Per-domain perplexity")
    assert (dest / "report" / "forest.png").stat().st_size > 1000
    assert [ln.split()[0] for ln in (dest / "timings.txt").read_text().splitlines()] == \
        ["corpus", "prepare", "experiment"]
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_evidence.sh"), "--prepare-only"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    carry = tmp_path / "work" / "carry"
    assert (carry / "tokens" / "manifest.json").exists() and (carry / "corpus" / "eval").is_dir()
    assert not (carry / "corpus" / "documents").exists()
