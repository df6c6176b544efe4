"""Replay: train with the topic weights another run logged, to separate *which* mixture a method
finds from *how* it finds it (e.g. a small proxy's ToReMi weights on a larger target model).

``method=replay method.replay.source=RUN_DIR`` reads RUN_DIR's ``weights.jsonl``:

- ``mode=average``: the mean of the source's logged vectors, fixed for the whole run (a field
  that is already a running average, DoReMi's ``doremi_avg``, is taken from the last record);
- ``mode=schedule``: the source's trajectory mapped onto this run's budget by fraction: at
  fraction f of this run's steps, the source record in force at fraction f of its own steps (the
  last one logged at or before f; before the source's first record, that first record, since a
  run does not log its initial weights). Updates happen every ``method.interval`` steps.

``field``: the logged vector to read, ``auto`` = ``probs`` when the source sampled, else its loss
``weights``; or any per-topic list in the records (``weights``, ``probs``, ``doremi_avg``,
``doremi_alpha``). ``apply=loss`` uses it as loss multipliers (a source's ``weights`` unchanged;
a distribution scaled to mean 1 over the present topics, DoReMi's α x K), ``apply=sampling`` as
topic sampling probabilities (normalised to sum 1, DoReMi's main-run convention p = ᾱ; loss
weights become p ∝ w). Topics absent from this run's data get 0.

The source must be on the same topics (names, in order) and tokenizer as the target tokens dir,
compared with what the source's run.json recorded; anything else is refused in one line. A source
on another annotation of the same documents is read through ``remap=MAP.json`` (``toremi remap
--old SOURCE_TOKENS --new TARGET_TOKENS --run SOURCE``): every logged vector is mapped by the
recorded matrix (a new topic's value = the document-weighted mean of its documents' old values;
a document the old side left unlabelled counts 1 for ``weights``, 1/K_old for a distribution,
which ``apply`` then renormalises). The tokenizer must still be the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

from toremi import layout
from toremi.io import read_json, read_jsonl
from toremi.lazy import lazy
from toremi.methods.base import Method, register

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")  # imported when a method runs (toremi.lazy)

RUNNING_AVERAGES = {"doremi_avg"}  # already averaged over the run: "average" takes the last one


class ReplaySource:
    """A finished (or running) run's logged per-topic vectors, by fraction of its step budget."""

    def __init__(self, run: str | Path, field: str = "auto", missing_hint: str = "", what: str = "replay"):
        self.run, self.what = Path(run), what
        path = layout.run_weights(self.run)
        recs = read_jsonl(path) if path.exists() else []
        info_path = layout.run_info(self.run)
        self.info = read_json(info_path) if info_path.exists() else {}
        if field == "auto":
            field = "probs" if recs and recs[-1].get("probs") is not None else "weights"
        recs = [r for r in recs if r.get(field) is not None]
        if not recs:
            raise ValueError(f"{what}: {path} has no records with {field!r}"
                             f"{missing_hint or '; the source must be a toremi run that logged its weights'}")
        self.field = field
        total = self.info.get("total_steps") or recs[-1]["step"]
        self.fractions = [r["step"] / total for r in recs]
        self.steps = [int(r["step"]) for r in recs]
        self.vectors = torch.tensor([r[field] for r in recs], dtype=torch.float64)

    @property
    def is_distribution(self) -> bool:
        return self.field != "weights"

    def average(self) -> Tensor:
        return self.vectors[-1] if self.field in RUNNING_AVERAGES else self.vectors.mean(0)

    def index_at(self, fraction: float) -> int:
        """The record in force at ``fraction`` of the source's budget (the first one before it)."""
        i = sum(f <= fraction + 1e-12 for f in self.fractions) - 1
        return max(i, 0)

    def remap(self, path: str | Path) -> None:
        """Carry every logged vector to the topic set of a ``toremi remap`` file (module doc)."""
        from toremi.remap import load_mapping, map_vector

        mapping = load_mapping(path)
        theirs, old = self.info.get("topic_names"), mapping["old"]["topic_names"]
        if theirs is not None and list(theirs) != list(old):
            raise ValueError(f"{self.what}: {path} maps from {len(old)} topics, but source run {self.run} was trained "
                             f"on {len(theirs)} other ones; remap with --run {self.run} and its tokens dir as --old")
        unl = 1.0 if not self.is_distribution else 1.0 / max(len(old), 1)
        self.vectors = torch.tensor([map_vector(mapping, v, unl).tolist() for v in self.vectors.tolist()],
                                    dtype=torch.float64)
        self.info = dict(self.info, topic_names=list(mapping["topic_names"]))
        self.mapped_by = mapping["path"]

    def check(self, data_info: dict) -> None:
        """Refuse a target tokens dir on other topics or another tokenizer than the source's."""
        what = self.what
        names, theirs = data_info.get("topic_names"), self.info.get("topic_names")
        if theirs is None:
            raise ValueError(f"{what}: {layout.run_info(self.run)} is missing or records no topic names; "
                             f"the source must be a toremi run dir")
        if names is not None and list(names) != list(theirs):
            added, removed = sorted(set(names) - set(theirs)), sorted(set(theirs) - set(names))
            detail = f"target adds {added}, lacks {removed}" if added or removed else "same topics, other order"
            raise ValueError(f"{what}: source run {self.run} was trained on other topics than this tokens dir "
                             f"({detail}); replay a run on the same tokens, or map it: `toremi remap` and "
                             f"method.replay.remap=FILE")
        mine, src = data_info.get("tokenizer") or {}, self.info.get("tokenizer") or {}
        if mine.get("fingerprint") and src.get("fingerprint") and mine["fingerprint"] != src["fingerprint"]:
            raise ValueError(f"{what}: source run {self.run} used another tokenizer ({src.get('name')}, "
                             f"fingerprint {src['fingerprint'][:12]}) than this tokens dir ({mine.get('name')}, "
                             f"{mine['fingerprint'][:12]}); replay a run on the same tokens")


@dataclass
class ReplayOptions:
    source: Optional[str] = None                    # the run dir whose weights.jsonl to replay
    mode: Literal["average", "schedule"] = "average"
    apply: Literal["loss", "sampling"] = "loss"
    field: str = "auto"                             # auto | weights | probs | doremi_avg | doremi_alpha
    remap: Optional[str] = None                     # a `toremi remap` file: source on another topic set

    def __post_init__(self):
        if not self.source:
            raise ValueError("replay needs method.replay.source=RUN_DIR (a run whose weights.jsonl to replay)")


@register("replay", options=ReplayOptions, interval=10)
class Replay(Method):
    """Another run's logged topic weights (average or schedule), as loss weights or sampling probs."""

    rebuilds_on_remap = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        o = self.opts
        self.src = ReplaySource(o.source, o.field)
        if o.remap:
            self.src.remap(o.remap)
        if self.src.vectors.shape[1] != self.num_topics:
            raise ValueError(f"replay: source run {o.source} has {self.src.vectors.shape[1]} topics (other topics "
                             f"than this tokens dir), this data has {self.num_topics}; replay a run on the same "
                             f"tokens, or map it: `toremi remap` and method.replay.remap=FILE")
        self.uses_sampling = o.apply == "sampling"
        self.source_step = None
        self._apply(0.0)

    def check_data(self, data_info: dict) -> None:
        self.src.check(data_info)

    def _apply(self, fraction: float) -> None:
        if self.opts.mode == "average":
            v = self.src.average()
        else:
            i = self.src.index_at(fraction)
            v, self.source_step = self.src.vectors[i], self.src.steps[i]
        self.weights, self.probs = convert(v, self.present, self.src.is_distribution, self.opts.apply)

    def _update(self, step, loss_sum, count):
        if self.opts.mode == "schedule":
            self._apply(step / max(self.total_steps, 1))  # in force from the next step on

    def record_extra(self) -> dict:
        return {} if self.source_step is None else {"replay_source_step": self.source_step}

    def _extra_state(self):
        return {"source_step": -1 if self.source_step is None else self.source_step}

    def _load_extra_state(self, extra):
        s = extra.get("source_step", -1)
        self.source_step = None if s < 0 else int(s)


def convert(v: Tensor, present: Tensor, is_distribution: bool, apply: str) -> tuple[Tensor, Tensor | None]:
    """(loss weights [K], sampling probs [K] or None) from a logged vector (see the module doc)."""
    v = torch.where(present, v.double().clamp(min=0), torch.zeros_like(v, dtype=torch.float64))
    if float(v.sum()) <= 0:
        raise ValueError("replay: the source's weights are zero on every topic this data has")
    if apply == "sampling":
        return torch.ones_like(v), v / v.sum()
    if not is_distribution:
        return v, None
    return v * present.sum() / v.sum(), None
