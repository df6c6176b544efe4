"""The training loop's extension points: callbacks, and per-topic statistics a method declares.

Why: a new method or a new concern around the step should be one file; these tests show the
seams work end to end (a statistic reaches ``Method.update`` from unpacked and packed steps; a user
callback sees every hook in order and its state travels in checkpoints).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toremi.config import load_config
from toremi.io import read_jsonl
from toremi.methods import MethodConfig
from toremi.methods.base import REGISTRY, Method, register
from toremi.train import TrainConfig, checkpoint
from toremi.train.callbacks import Callback
from toremi.train.distributed import Dist
from toremi.train.objective import BadSteps
from toremi.train.trainer import Trainer


@pytest.fixture
def sq_method():
    """A method (registered for this test only) that asks for Σ loss² per topic and logs it."""

    @register("sq-test", interval=2)
    class SqMethod(Method):
        """Test method: records the per-topic sum of squared unit losses."""
        statistics = {"loss_sq": lambda obs: obs.unit_loss().double() ** 2}

        def record_extra(self) -> dict:
            return {"loss_sq": self.stats["loss_sq"].tolist()}

    yield "sq-test"
    del REGISTRY["sq-test"]


def test_declared_statistic_unpacked_matches_hand_sum(sq_method):
    from toremi.train.reweighter import Reweighter

    rw = Reweighter(3, MethodConfig(name=sq_method, interval=1))
    l = torch.tensor([1.0, 2.0, 3.0, 4.0])
    topics = torch.tensor([[0, -1], [0, 2], [1, -1], [2, -1]])
    valid = torch.tensor([True, True, True, False])  # sample 3 does not count
    rw.observe(l, torch.ones(4), valid, topics)
    rec = rw.step()
    assert rec["loss_sq"] == [1.0 + 4.0, 9.0, 4.0]
    assert rw.method.stats["loss_sq"].tolist() == [5.0, 9.0, 4.0]


def test_declared_statistic_packed_is_per_piece(sq_method, tiny_tokens):
    from toremi.data.loader import Batch
    from toremi.data.shards import TokenDataset
    from toremi.train import segments
    from toremi.train.reweighter import Reweighter

    ds = TokenDataset(tiny_tokens)
    assert ds.packed
    b = Batch(**ds.gather(np.linspace(0, len(ds) - 1, 6).astype(np.int64)))
    ce = torch.where(b.seg_ids >= 0, torch.rand(b.labels.shape), 0.0)
    rw = Reweighter(ds.num_topics, MethodConfig(name=sq_method, interval=1))
    rw.observe_packed([ce], [b], torch.tensor(True))
    seg_loss, seg_n = segments.segment_stats(ce, b.seg_ids, b.seg_topics.shape[0])
    want = torch.zeros(ds.num_topics, dtype=torch.float64)
    for j in range(len(seg_n)):  # hand sum: (mean loss of the piece)² to each topic of its document
        if seg_n[j] > 0:
            for k in b.seg_topics[j].tolist():
                if k >= 0:
                    want[k] += (float(seg_loss[j]) / float(seg_n[j])) ** 2
    assert want.sum() > 0
    assert rw.step()["loss_sq"] == pytest.approx(want.tolist(), rel=1e-9)


class Recorder(Callback):
    """Records the hooks it sees; its state (a counter) must survive a resume."""
    state_key = "recorder"

    def __init__(self):
        self.events, self.steps = [], 0

    def on_train_start(self, t):
        self.events.append(("start", t.step))

    def on_step_end(self, t):
        self.steps += 1

    def on_update(self, t, record):
        self.events.append(("update", record["step"]))

    def on_log(self, t, record):
        assert "loss" in record and "topic_loss" in record
        self.events.append(("log", record["step"]))

    def on_eval(self, t, record):
        self.events.append(("eval", record["step"]))

    def on_train_end(self, t):
        self.events.append(("end", t.step))

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, sd):
        self.steps = sd["steps"]


def _cfg(tokens, out, *extra) -> TrainConfig:
    return load_config(TrainConfig, None, [f"tokens_dir={tokens}", f"out={out}", "steps=6", "batch_size=2",
                                           "log_every=3", "eval_every=6", "eval_batches=1", "progress=false",
                                           "method.name=toremi", "method.interval=2", *extra])


def test_user_callback_sees_hooks_in_order_and_resumes(tiny_tokens, tmp_path):
    run = tmp_path / "run"
    rec = Recorder()
    Trainer(_cfg(tiny_tokens, run, "stop_at_step=4"), Dist(), callbacks=[rec]).run()
    assert rec.events == [("start", 0), ("update", 2), ("log", 3), ("update", 4), ("end", 4)]
    state = checkpoint.load_state(checkpoint.latest(run) / "train_state.pt")
    assert state["recorder"] == {"steps": 4}
    rec2 = Recorder()
    Trainer(_cfg(tiny_tokens, run), Dist(), callbacks=[rec2]).run()
    assert rec2.steps == 6  # 4 restored + 2 run
    assert rec2.events == [("start", 4), ("update", 6), ("log", 6), ("eval", 6), ("end", 6)]
    assert [r["step"] for r in read_jsonl(run / "weights.jsonl")] == [2, 4, 6]


def test_named_slots_update_in_place_and_refuse_unknown_names():
    b = BadSteps()
    b.skipped += 1.0
    b.run = (b.run + 1) * 1.0
    b.max_run = torch.maximum(b.max_run, b.run)
    assert b.tensor.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(AttributeError, match="no slot 'runs'"):
        b.runs = 0
