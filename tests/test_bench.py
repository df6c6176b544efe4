"""bench/ scripts: the inputs they pick (the scripts themselves are too slow for the suite)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scale_units_measure_a_corpus_of_the_given_sizes(tmp_path):
    """``scale.py all --sizes 20000 80000`` made corpus-20000 and corpus-80000 only: the units step
    reads one of those (not corpus-50000) and the tokens of a run on it."""
    scale = _load("scale")
    for n in (80000, 20000):
        (tmp_path / f"corpus-{n}" / "documents").mkdir(parents=True)
    tok = tmp_path / "run-ray-20000" / "tok"
    tok.mkdir(parents=True)
    np.savez(tok / "index-train.npz", offset=np.zeros(3))
    assert scale.units_inputs(tmp_path) == (20000, tmp_path / "corpus-20000", tok)
    assert scale.units_inputs(tmp_path, 80000) == (80000, tmp_path / "corpus-80000", None)
    with pytest.raises(SystemExit, match="corpus-50000"):
        scale.units_inputs(tmp_path, 50000)
    with pytest.raises(SystemExit, match="no corpus"):
        scale.units_inputs(tmp_path / "nothing")
