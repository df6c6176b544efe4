"""Noise-aware ToReMi: a high, flat-loss topic is never emphasised in Stage 1 and is turned down in
Stage 2, while the paper's rule (unchanged) emphasises it; learnability by hand; state round trip."""

from __future__ import annotations

import math

import pytest
import torch

from toremi.methods import MethodConfig, build_method
from toremi.methods.toremi_noise import learnability, progress

D = torch.float64


def test_learnability_by_hand():
    nan = math.nan
    hist = torch.tensor([[4.0, nan, 8.0, nan], [3.5, 2.0, 8.0, nan]], dtype=D)  # oldest first
    level = torch.tensor([3.0, 1.9, 8.0, 5.0], dtype=D)
    # topic 0: (4 - 3) / (4 * 2 updates) = 0.125; topic 1: (2 - 1.9) / (2 * 1) = 0.05; topic 2: 0;
    # topic 3: no history. Mean positive slope over topics with one: 0.175 / 3; x 0.25 = 0.01458
    slope, learning = learnability(hist, level, ratio=0.25)
    assert slope.tolist() == pytest.approx([0.125, 0.05, 0.0, 0.0])
    assert learning.tolist() == [True, True, False, False]


def test_progress_by_hand():
    first = torch.tensor([8.0, 8.0, 8.3, math.nan], dtype=D)
    level = torch.tensor([4.0, 6.0, 8.4, 5.0], dtype=D)
    # progress: 0.5, 0.25, -0.012, unseen. Mean positive over the 3 seen: 0.25; x 0.25 = 0.0625
    prog, learning = progress(first, level, ratio=0.25)
    assert prog[:3].tolist() == pytest.approx([0.5, 0.25, -0.1 / 8.3])
    assert learning.tolist() == [True, True, False, False]


def plateau_run(signal: str, updates: int = 40):
    """Topic 0 learns fast then plateaus above the mean with a noisy per-update loss (the shape of
    a small, hard clean domain late in training), topic 1 keeps learning, topic 2 is noise."""
    m = build_method(MethodConfig(name="toremi-noise", interval=1, switch="fraction", switch_fraction=0.9,
                                  emphasis=False, learn_signal=signal), 3, total_steps=updates)
    g = torch.Generator().manual_seed(0)
    for u in range(1, updates + 1):
        loss = torch.tensor([5.5 + 2.5 * math.exp(-u / 3), 3 + 5 * math.exp(-u / 15), 8.3], dtype=D)
        m.update(u, (loss + 0.05 * torch.randn(3, generator=g, dtype=D)) * 10, torch.full((3,), 10.0, dtype=D))
    return m


def test_progress_signal_does_not_flag_a_clean_topic_that_plateaus():
    """The windowed slope flags the plateaued clean topic (the false positive seen on clean `code`);
    the cumulative progress flags only the noise."""
    assert plateau_run("window").noisy.tolist() == [True, False, True]
    assert plateau_run("progress").noisy.tolist() == [False, False, True]


def simulate(cfg: MethodConfig, updates: int = 20):
    """Topic 0: hard and learning (6 -> 3), topic 1: easy (2.5 -> 2), topic 2: noise (8.3, flat)."""
    m = build_method(cfg, 3, total_steps=updates)
    g = torch.Generator().manual_seed(0)
    path = []
    for u in range(1, updates + 1):
        loss = torch.tensor([3 + 3 * math.exp(-u / 6), 2 + 0.5 * math.exp(-u / 6), 8.3], dtype=D)
        loss = loss + 0.01 * torch.randn(3, generator=g, dtype=D)
        rec = m.update(u, loss * 10, torch.full((3,), 10.0, dtype=D))
        path.append(rec)
    return m, path


def test_noise_is_not_emphasised_then_turned_down():
    opts = dict(interval=1, switch="fraction", switch_fraction=0.5, alpha=0.5)
    m, path = simulate(MethodConfig(name="toremi-noise", emphasis=True, **opts))
    stage1 = [r for r in path if r["stage"] == 1]
    mean = lambda r: sum(r["weights"]) / 3
    assert max(r["weights"][2] / mean(r) for r in stage1) <= 1.0
    assert max(r["weights"][0] for r in stage1) > 1.5  # the hard, learning topic is emphasised
    assert path[-1]["weights"][2] <= 0.5 * mean(path[-1])
    assert path[-1]["diagnosis"][2] == "noisy" and stage1[-1]["diagnosis"][0] == "hard-learning"
    assert stage1[-1]["diagnosis"][1] == "easy" and stage1[0]["diagnosis"] == ["warmup"] * 3
    assert path[-1]["slope"][0] > 0 and abs(path[-1]["slope"][2]) < 0.01
    # the paper's rule, unchanged, puts the noise topic at the cap during Stage 1
    _, paper = simulate(MethodConfig(name="toremi", **opts))
    assert max(r["weights"][2] for r in paper if r["stage"] == 1) == 5.0


def test_de_emphasis_only_turns_down_the_noise_and_nothing_else():
    """emphasis=false: the noisy topic goes down from the update that flags it (in Stage 1 too),
    the hard and the easy topic stay at exactly 1 throughout."""
    opts = dict(interval=1, switch="fraction", switch_fraction=0.5, alpha=0.5)  # emphasis=False: the default
    m, path = simulate(MethodConfig(name="toremi-noise", **opts))
    assert all(r["weights"][0] == 1.0 and r["weights"][1] == 1.0 for r in path)
    flagged = next(i for i, r in enumerate(path) if r["diagnosis"][2] == "noisy")
    assert path[flagged]["stage"] == 1 and path[flagged]["weights"][2] < 1.0
    assert all(r["weights"][2] == 1.0 for r in path[:flagged])
    assert path[-1]["weights"][2] == pytest.approx(0.1)  # the paper preset's floor γ


def test_state_round_trip_continues_identically():
    cfg = MethodConfig(name="toremi-noise", interval=1, switch="fraction", switch_fraction=0.5)
    a, _ = simulate(cfg, updates=6)
    b = build_method(cfg, 3, total_steps=6)
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        m.update(7, torch.tensor([30.0, 20.0, 83.0], dtype=D), torch.full((3,), 10.0, dtype=D))
    assert torch.equal(a.topic_weights, b.topic_weights) and torch.equal(a.noisy, b.noisy)
    assert a.diagnosis() == b.diagnosis()


def test_report_diagnosis_table_from_weights_jsonl(tmp_path):
    import json

    from toremi.report import diagnosis_rows
    from toremi.runs import load_run

    _, path = simulate(MethodConfig(name="toremi-noise", interval=1, switch="fraction",
                                    switch_fraction=0.5, alpha=0.5))
    run = tmp_path / "run"
    run.mkdir()
    (run / "weights.jsonl").write_text("".join(json.dumps(r) + "\n" for r in path))
    (run / "run.json").write_text(json.dumps({"topic_names": ["hard", "easy", "noise"],
                                              "method": "toremi-noise"}))
    rows = {r[0]: r for r in diagnosis_rows(load_run(run))}
    assert rows["noise"][1] == "noisy" and float(rows["noise"][4][:-1]) <= 1.0
    assert float(rows["noise"][5][:-1]) <= 0.5 and rows["noise"][6] != "-"
    assert rows["hard"][1] in ("hard-learning", "easy") and float(rows["hard"][4][:-1]) > 1.0


def test_validation_gap_flags_text_unlike_its_clean_topic():
    """Per-token training loss far below the clean held-out loss (character shuffle) -> noisy."""
    cfg = MethodConfig(name="toremi-noise", interval=1, switch="fraction", switch_fraction=0.5,
                       val_gap=0.25, val_gap_ratio=3.0)
    m = build_method(cfg, 3, total_steps=20)
    for u in range(1, 21):
        loss = torch.tensor([5 + 2 * math.exp(-u / 6), 4 + math.exp(-u / 6), 3.0], dtype=D)
        m.on_val_topics(u, torch.tensor([5 + 2 * math.exp(-u / 6), 4 + math.exp(-u / 6), 6.0], dtype=D))
        rec = m.update(u, loss * 10, torch.full((3,), 10.0, dtype=D))
    assert rec["diagnosis"][2] == "noisy" and rec["val_gap"][2] == pytest.approx(0.5)
    assert rec["diagnosis"][:2] != ["noisy", "noisy"] and rec["weights"][2] <= 0.5 * sum(rec["weights"]) / 3
    off = build_method(MethodConfig(name="toremi-noise", interval=1, val_gap=0), 3, total_steps=20)
    off.on_val_topics(1, torch.tensor([7.0, 5.0, 6.0], dtype=D))
    for u in range(1, 8):
        off.update(u, torch.tensor([60.0, 45.0, 30.0], dtype=D) - u, torch.full((3,), 10.0, dtype=D))
    assert not off.noisy[2]
