"""The method registry, ``MethodConfig`` and the ``Method`` base class.

A method is one module in ``toremi/methods/`` that registers itself::

    @register("mymethod", options=MyOptions, interval=50)
    class MyMethod(Method): ...

Every module of the package is imported by ``toremi.methods``, so a new file joins on its own: no
name list, ``Literal``, CLI help or trainer edit. Its options dataclass holds the options that
belong to it (``method.mymethod.x=...``, or flat ``method.x=...`` as before); the engine options
every method shares (interval, loss normalisation, unlabelled weight, statistic unit) live in
``MethodConfig``.

A method is a small stateful object. Once per update interval the ``Reweighter`` hands it per-topic
statistics already summed over ranks and micro-batches (``loss_sum`` [K], ``count`` [K], float64);
the method updates ``topic_weights`` (loss multipliers, [K]) and/or ``sampling_probs`` ([K] or
None). Optional hooks: per-topic validation loss (``on_val_topics``), per-topic losses of a
frozen reference model (``reference_run`` set -> ``self.stats["ref_loss"]``/``["excess"]``), and
statistics of its own (``statistics``: name -> per-unit values of a step's ``Observation``,
toremi.train.objective), summed per topic on the device and handed over as ``self.stats[name]``.
A method that needs a new per-topic statistic is therefore one file (plus its test).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from toremi.config import ConfigError, _coerce, from_dict, to_dict
from toremi.lazy import lazy

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")  # imported when a method runs (toremi.lazy)
rules = lazy("toremi.methods.rules")


@dataclass
class MethodInfo:
    name: str
    cls: type
    options: type | None  # dataclass of the method's own options, or None
    interval: int         # default update interval (optimizer steps)
    summary: str


REGISTRY: dict[str, MethodInfo] = {}


def register(name: str, options: type | None = None, interval: int = 100):
    """Class decorator: make ``cls`` available as ``method.name=<name>``."""
    def deco(cls):
        old = REGISTRY.get(name)
        if old is not None and old.cls.__qualname__ != cls.__qualname__:
            raise ValueError(f"method {name!r} is registered twice ({old.cls.__module__}, {cls.__module__})")
        REGISTRY[name] = MethodInfo(name, cls, options, interval, (cls.__doc__ or "").strip().split("\n")[0])
        return cls
    return deco


_NOT_METHODS = {"base", "rules"}


def load_methods() -> None:
    """Import every method module of this package (each registers its method on import); the
    package runs it, and so does ``method_info`` for a caller that imported only this module."""
    import importlib
    import pkgutil

    package = __name__.rpartition(".")[0]
    for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if mod.name not in _NOT_METHODS and not mod.name.startswith("_"):
            importlib.import_module(f"{package}.{mod.name}")


def method_info(name: str) -> MethodInfo:
    load_methods()
    if name not in REGISTRY:
        raise ConfigError(f"method.name={name!r}: unknown method; registered: {sorted(REGISTRY)}")
    return REGISTRY[name]


def _option_names(info: MethodInfo) -> dict[str, str]:
    """Accepted key -> field name: the fields of the method's options dataclass."""
    if info.options is None:
        return {}
    return {f.name: f.name for f in dataclasses.fields(info.options)}


COMMON = ("name", "interval", "loss_norm", "unlabelled_weight", "stat_unit")


@dataclass(init=False)
class MethodConfig:
    """Engine options shared by every method, plus ``options``: the chosen method's own dataclass.

    loss_norm: ``weighted_mean`` (default) trains on Σ s_i l_i / Σ s_i over the *global* batch, so
    the weights move emphasis between topics without changing the step size. ``mean`` (authors)
    uses Σ s_i l_i / N: the gradient scales with the mean weight, i.e. the effective learning rate
    is multiplied by mean(s), which confounds reweighting with a learning-rate change.
    stat_unit: a topic's loss is mean NLL per target token (the paper), or per UTF-8 byte of the
    targets. Per byte does not reward text that breaks into many cheap tokens (character-shuffled
    noise, whose per-token loss is LOW), so noise stays visible.
    Unset (None) values come from the method (its default interval, or its preset).
    """

    name: str = "uniform"
    interval: Optional[int] = None        # optimizer steps between updates (stats all-reduce)
    loss_norm: Optional[Literal["weighted_mean", "mean"]] = None
    unlabelled_weight: float = 1.0        # weight of samples with no topic (authors: 0)
    stat_unit: Literal["token", "byte"] = "token"
    opts: Any = None                      # the method's options dataclass (YAML: method.<name>)

    def __init__(self, name: str = "uniform", interval: Optional[int] = None, loss_norm: Optional[str] = None,
                 unlabelled_weight: float = 1.0, stat_unit: str = "token", opts: Any = None, **flat):
        info = method_info(name)
        data = to_dict(opts) if dataclasses.is_dataclass(opts) else dict(opts or {})
        accepted = _option_names(info)
        for key, value in flat.items():  # flat keys: method.alpha=... for method.toremi.alpha=...
            if key not in accepted:
                owners = sorted(n for n, i in REGISTRY.items() if key in _option_names(i))
                if owners:
                    raise ConfigError(f"method.{key} is an option of method {' / '.join(owners)}, not of "
                                      f"method.name={name!r}")
                raise ConfigError(f"unknown config key method.{key}; valid keys: "
                                  f"{['method.' + k for k in COMMON]}, options of method {name!r}: "
                                  f"{sorted(accepted) or 'none'}")
            data[accepted[key]] = value
        if info.options is None and data:
            raise ConfigError(f"method {name!r} takes no options, got {sorted(data)}")
        self.name = name
        self.opts = from_dict(info.options, data, prefix=f"method.{name}.") if info.options else None
        defaults = self.opts.common_defaults() if hasattr(self.opts, "common_defaults") else {}
        hints = typing.get_type_hints(MethodConfig)
        given = dict(interval=interval, loss_norm=loss_norm, unlabelled_weight=unlabelled_weight,
                     stat_unit=stat_unit)
        for key, value in given.items():
            setattr(self, key, None if value is None else _coerce(value, hints[key], f"method.{key}"))
        self.interval = self.interval or defaults.get("interval") or info.interval
        self.loss_norm = self.loss_norm or defaults.get("loss_norm") or "weighted_mean"
        if self.interval < 1:
            raise ConfigError(f"method.interval must be >= 1, got {self.interval}")
        if self.unlabelled_weight < 0:
            raise ConfigError("method.unlabelled_weight must be >= 0")

    @classmethod
    def from_config_dict(cls, data: dict, prefix: str = "method.") -> "MethodConfig":
        """YAML/CLI: ``{name, interval, ..., <name>: {options}}``; flat option keys also work."""
        data = dict(data)
        name = data.pop("name", "uniform")
        method_info(name)
        common = {k: data.pop(k) for k in COMMON[1:] if k in data}
        section = data.pop(name, None)
        section = dict(data.pop("options", None) or {}, **(section or {}))
        for key, value in data.items():
            if key in REGISTRY and isinstance(value, dict):
                raise ConfigError(f"{prefix}{key}: these are options of method {key!r}, but "
                                  f"{prefix}name is {name!r}")
        return cls(name=name, opts=section, **common, **data)

    def to_config_dict(self) -> dict:
        out = {k: getattr(self, k) for k in COMMON}
        if self.opts is not None:
            out[self.name] = to_dict(self.opts)
        return out

    def options(self) -> dict:
        """Flat record of every option the run used (run.json, checkpoint compatibility)."""
        return {**{k: getattr(self, k) for k in COMMON}, **(to_dict(self.opts) if self.opts else {})}


class Method:
    """Base: uniform weights, natural sampling; subclasses override ``_update``."""

    uses_sampling = False
    reference_run: str | None = None  # set -> the Reweighter feeds reference-model losses
    # True: weights/probs are a function of the data and the options (not learned), so a resume on
    # a re-annotated tokens dir keeps the state built on the new data instead of mapping the old
    rebuilds_on_remap = False
    # name -> fn(obs) giving one value per unit (sample / document piece) of a step's Observation
    # (toremi.train.objective); summed per topic over the interval, read as self.stats[name]
    statistics: dict = {}

    def __init__(self, cfg: MethodConfig, num_topics: int, total_steps: int,
                 topic_counts: Tensor | None = None):
        self.cfg, self.opts = cfg, cfg.opts
        self.num_topics, self.total_steps = num_topics, total_steps
        counts = torch.ones(num_topics, dtype=torch.float64) if topic_counts is None else topic_counts
        self.present = torch.as_tensor(counts, dtype=torch.float64) > 0
        self.topic_counts = torch.as_tensor(counts, dtype=torch.float64)
        self.weights = torch.ones(num_topics, dtype=torch.float64)
        self.probs: Tensor | None = None
        self.stage = 1
        self.updates = 0
        self.stats: dict[str, Tensor] = {}

    @property
    def topic_weights(self) -> Tensor:
        """Loss multipliers [K] (float64); all ones for sampling-based methods."""
        return self.weights

    @property
    def sampling_probs(self) -> Tensor | None:
        return self.probs

    def update(self, step: int, loss_sum: Tensor, count: Tensor, **stats: Tensor) -> dict:
        """Read one interval's statistics, update, and return the weights.jsonl record.
        ``stats`` holds extra per-topic sums (e.g. ``ref_loss``, ``excess``) in ``self.stats``."""
        loss_sum, count = loss_sum.detach().cpu().double(), count.detach().cpu().double()
        self.stats = {k: v.detach().cpu().double() for k, v in stats.items()}
        self._update(step, loss_sum, count)
        self.updates += 1
        mean, seen = rules.topic_mean_loss(loss_sum, count)
        probs = self.sampling_probs
        rec = {"step": step, "stage": self.stage, "weights": self.weights.tolist(),
               "probs": None if probs is None else probs.tolist(),
               "topic_loss": [float(x) if s else None for x, s in zip(mean.tolist(), seen.tolist())],
               "topic_count": count.tolist()}
        rec.update(self.record_extra())
        return rec

    def _update(self, step: int, loss_sum: Tensor, count: Tensor) -> None:
        pass

    def record_extra(self) -> dict:
        """Extra fields for this update's weights.jsonl record (diagnosis, averages...)."""
        return {}

    def check_data(self, data_info: dict) -> None:
        """The target data (``topic_names``, ``tokenizer`` of the tokens manifest), before training:
        a method that reads another run (replay) refuses data that run was not trained on."""

    def on_eval(self, step: int, val_loss: float) -> None:
        """Called after each evaluation (used by the plateau stage switch)."""

    def on_val_topics(self, step: int, topic_loss: Tensor) -> None:
        """Per-topic validation loss [K] (NaN where the dev split has no such topic), each eval."""

    def state_dict(self) -> dict:
        return {"weights": self.weights.clone(), "probs": None if self.probs is None else self.probs.clone(),
                "stage": self.stage, "updates": self.updates, "extra": self._extra_state()}

    def load_state_dict(self, sd: dict) -> None:
        if sd["weights"].shape != self.weights.shape:
            raise ValueError(f"method state has {sd['weights'].shape[0]} topics, the data has "
                             f"{self.num_topics}")
        self.weights = sd["weights"].clone().double()
        self.probs = None if sd["probs"] is None else sd["probs"].clone().double()
        self.stage, self.updates = int(sd["stage"]), int(sd["updates"])
        self._load_extra_state(sd.get("extra", {}))

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, extra: dict) -> None:
        pass
