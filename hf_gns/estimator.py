"""Unbiased gradient-noise-scale estimators (McCandlish et al. 2018, App. A) and their EMA.

With B_small = 1 and B_big = B, from per-example contributions c_i:
    |G_small|^2 = B * sum_i ||c_i||^2,      |G_big|^2 = ||sum_i c_i||^2
    |G|^2    ~ (B |G_big|^2 - |G_small|^2) / (B - 1)
    tr Sigma ~ (|G_small|^2 - |G_big|^2) / (1 - 1/B)
    B_simple = tr Sigma / |G|^2   (in examples)
Per-step values can be negative; they are averaged, never clamped, before the ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .stats import GradientStats, ParamStats


class NotEstimable(ValueError):
    """The statistics cannot give an estimate (batch of 1, non-finite values, nothing recorded)."""


@dataclass(frozen=True)
class GNSEstimate:
    """One step's estimates. ``b_simple`` is NaN when ``g2`` is not positive."""

    g2: float
    trace_sigma: float
    num_examples: int

    @property
    def b_simple(self) -> float:
        return self.trace_sigma / self.g2 if self.g2 > 0 else math.nan


def estimate_record(record: ParamStats, scale: float = 1.0) -> GNSEstimate:
    """Estimate from one record; ``scale`` divides every c_i (e.g. an fp16 loss scale)."""
    batch = record.num_examples
    if batch < 2:
        raise NotEstimable(f"need at least 2 examples, got {batch}")
    if not record.finite:
        raise NotEstimable("non-finite gradient statistics")
    factor = 1.0 / (scale * scale)
    small = batch * record.example_sq_norm_sum * factor
    big = record.batch_sq_norm * factor
    g2 = (batch * big - small) / (batch - 1)
    trace = (small - big) / (1.0 - 1.0 / batch)
    return GNSEstimate(g2=g2, trace_sigma=trace, num_examples=batch)


def estimate(stats: GradientStats | ParamStats, scale: float = 1.0) -> GNSEstimate:
    """|G|^2, tr(Sigma) and B_simple of all patched parameters together (or of one record)."""
    record = stats.total if isinstance(stats, GradientStats) else stats
    return estimate_record(record, scale)


def estimate_per_param(stats: GradientStats, scale: float = 1.0) -> dict[str, GNSEstimate]:
    """Estimates for each parameter that has at least two finite examples."""
    out = {}
    for name, record in stats.per_param.items():
        try:
            out[name] = estimate_record(record, scale)
        except NotEstimable:
            continue
    return out


class EMA:
    """Bias-corrected exponential moving average (first value is returned as is)."""

    def __init__(self, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.value = 0.0
        self.weight = 0.0

    def update(self, x: float) -> float:
        self.value = self.decay * self.value + (1.0 - self.decay) * x
        self.weight = self.decay * self.weight + (1.0 - self.decay)
        return self.get()

    def get(self) -> float:
        return self.value / self.weight if self.weight > 0 else math.nan

    def state_dict(self) -> dict:
        return {"value": self.value, "weight": self.weight}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.weight = float(state["value"]), float(state["weight"])


class GNSTracker:
    """Separate EMAs of |G|^2 and tr(Sigma); B_simple is the ratio of the smoothed values."""

    def __init__(self, decay: float = 0.99) -> None:
        self.g2 = EMA(decay)
        self.trace_sigma = EMA(decay)
        self.steps = 0

    def update(self, est: GNSEstimate) -> None:
        self.g2.update(est.g2)
        self.trace_sigma.update(est.trace_sigma)
        self.steps += 1

    @property
    def b_simple(self) -> float:
        g2 = self.g2.get()
        return self.trace_sigma.get() / g2 if g2 > 0 else math.nan

    def state_dict(self) -> dict:
        return {"g2": self.g2.state_dict(), "trace_sigma": self.trace_sigma.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.g2.load_state_dict(state["g2"])
        self.trace_sigma.load_state_dict(state["trace_sigma"])
        self.steps = int(state["steps"])
