"""DoReMi over topics (Xie et al. 2023, "DoReMi: Optimizing Data Mixtures Speeds Up Language
Model Pretraining"), in three runs on the same tokens:

1. reference: ``method=uniform`` (any finished run; its ``final/`` model is the reference);
2. proxy: ``method=doremi method.doremi.reference=REF_RUN``. Group DRO: each update, the excess
   loss of topic k, λ_k = mean over its samples of max(l_i - l_ref_i, 0), drives an
   exponentiated-gradient step α ← normalise(α ⊙ exp(η λ)), smoothed with the uniform
   distribution: α ← (1 - c) α + c u. The proxy trains with α as topic loss weights (x K, mean 1);
   every record holds the running average ᾱ;
3. main: ``method=doremi method.doremi.weights_from=PROXY_RUN`` samples topics with the proxy's
   final ᾱ, fixed for the whole run: a replay of the proxy (toremi.methods.replay, field
   ``doremi_avg``, mode average, apply sampling), refused on other topics or another tokenizer.

Differences from the paper, by design: domains are topics; the excess loss is clipped per sample
(on the per-token mean), not per token; a topic absent from an update interval gets λ = 0, as a
domain absent from a batch does in the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from toremi import layout
from toremi.lazy import lazy
from toremi.methods.base import Method, register
from toremi.runs import is_finished, status
from toremi.methods.replay import ReplaySource, convert

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")  # imported when a method runs (toremi.lazy)
rules = lazy("toremi.methods.rules")


def doremi_update(alpha: Tensor, excess: Tensor, eta: float, smoothing: float,
                  present: Tensor) -> Tensor:
    """One Group-DRO step: α' = α ⊙ exp(η λ) normalised over present topics, then
    (1 - c) α' + c u with u uniform over present topics; absent-from-data topics stay 0."""
    u = present.double() / present.sum().clamp(min=1)
    logits = torch.where(present, alpha.clamp(min=1e-300).log() + eta * excess,
                         torch.full_like(alpha, -math.inf))
    return (1 - smoothing) * torch.softmax(logits, 0) + smoothing * u


@dataclass
class DoReMiOptions:
    reference: Optional[str] = None     # proxy run: the reference run dir (a finished uniform run)
    weights_from: Optional[str] = None  # main run: the proxy run dir whose averaged weights to use
    eta: float = 1.0                    # exponentiated-gradient step size (paper: 1)
    smoothing: float = 1e-3             # mix with uniform (paper: 1e-3)

    def __post_init__(self):
        if (self.reference is None) == (self.weights_from is None):
            raise ValueError(
                "doremi needs exactly one of method.doremi.reference=REF_RUN (proxy run; REF_RUN is "
                "a finished run on the same tokens, e.g. `toremi train --tokens T --out REF_RUN "
                "method=uniform`) or method.doremi.weights_from=PROXY_RUN (main run)")
        if self.eta <= 0 or not 0 <= self.smoothing <= 1:
            raise ValueError(f"need eta > 0 and 0 <= smoothing <= 1, got {self.eta}, {self.smoothing}")


@register("doremi", options=DoReMiOptions, interval=10)
class DoReMi(Method):
    """Group-DRO topic weights vs a reference model (proxy run); their average samples the main run."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        o = self.opts
        self.alpha = self.present.double() / self.present.sum().clamp(min=1)
        self.alpha_sum = torch.zeros_like(self.alpha)
        if o.reference is not None:
            ref = Path(o.reference)
            if not is_finished(ref):
                raise ValueError(f"doremi: reference run {ref} is not finished ({status(ref)}: no complete "
                                 f"{layout.run_final(ref)}); make it "
                                 f"with `toremi train --tokens <same tokens> --out {ref} method=uniform`")
            self.reference_run = str(ref)
            self.weights = self.alpha * self.num_topics
        else:
            self.uses_sampling = self.rebuilds_on_remap = True  # the proxy's average: fixed
            self.proxy = ReplaySource(o.weights_from, "doremi_avg", missing_hint=(
                " (no DoReMi averages); weights_from must be a finished proxy run "
                "(method=doremi method.doremi.reference=REF_RUN)"), what="doremi")
            avg = self.proxy.average()
            if avg.shape[0] != self.num_topics:
                raise ValueError(f"doremi: {o.weights_from} has {avg.shape[0]} topics, this data has {self.num_topics}")
            self.weights, self.probs = convert(avg, self.present, True, "sampling")

    def check_data(self, data_info: dict) -> None:
        if self.uses_sampling:  # main run: the proxy must be on these topics and this tokenizer
            self.proxy.check(data_info)

    def _update(self, step, loss_sum, count):
        if self.uses_sampling:  # main run: fixed mixture
            return
        mean_excess, seen = rules.topic_mean_loss(self.stats["excess"], count)
        lam = torch.where(seen, mean_excess, torch.zeros_like(mean_excess))
        self.alpha = doremi_update(self.alpha, lam, self.opts.eta, self.opts.smoothing, self.present)
        self.alpha_sum += self.alpha
        self.weights = self.alpha * self.num_topics  # loss multipliers with mean 1
        self._lam = lam

    def average(self) -> Tensor:
        return self.alpha_sum / max(self.updates, 1)

    def record_extra(self) -> dict:
        if self.uses_sampling:
            return {}
        return {"doremi_alpha": self.alpha.tolist(), "doremi_avg": self.average().tolist(),
                "excess": self._lam.tolist()}

    def _extra_state(self):
        return {"alpha": self.alpha.clone(), "alpha_sum": self.alpha_sum.clone()}

    def _load_extra_state(self, extra):
        self.alpha, self.alpha_sum = extra["alpha"].clone().double(), extra["alpha_sum"].clone().double()
