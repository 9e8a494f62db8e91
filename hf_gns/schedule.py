"""Batch-size policies: the global batch (in examples) to train with, given tokens and GNS.

A policy only proposes a target; `hf_gns.batch_control` turns it into a gradient
accumulation count and applies it where that is safe. Policies are plain data, so they
can be saved with a checkpoint and written as a string on a command line:

    "gns"                      follow the measured B_simple (defaults below)
    "gns:k=2,min=16,max=512,warmup=1e6,min_steps=50"
    "linear:16:120"            linear in tokens from 16 to 120 over the token budget
    "linear:16:120:5e8"        ... over 5e8 tokens
    "steps:0:16,1e8:32,2e8:64" from 1e8 tokens on 32, from 2e8 on 64 (Megatron style)
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GNSPolicy:
    """Target batch = clamp(k * B_simple, min_batch, max_batch) once ``warmup_tokens`` have passed
    and at least ``min_steps`` steps were measured (the first EMA values are noisy, and the
    batch never shrinks back).

    ``min_batch`` defaults to the starting batch. McCandlish et al. (2018) put the
    compute/time-optimal batch near B_simple, so k = 1 is the default.
    """

    k: float = 1.0
    min_batch: int | None = None
    max_batch: int | None = None
    warmup_tokens: float = 0.0
    min_steps: int = 50

    def target(self, tokens: float, b_simple: float, start_batch: int, budget: float | None,
               measured_steps: int | None = None) -> int | None:
        if measured_steps is not None and measured_steps < self.min_steps:
            return None
        if tokens < self.warmup_tokens or not math.isfinite(b_simple) or b_simple <= 0:
            return None
        low = self.min_batch if self.min_batch is not None else start_batch
        target = self.k * b_simple
        if self.max_batch is not None:
            target = min(target, self.max_batch)
        return max(low, int(round(target)))


@dataclass(frozen=True)
class LinearSchedule:
    """Batch grows linearly in tokens from ``start`` to ``end`` over ``tokens`` (default: the budget)."""

    start: int
    end: int
    tokens: float | None = None

    def target(self, tokens: float, b_simple: float, start_batch: int, budget: float | None,
               measured_steps: int | None = None) -> int | None:
        span = self.tokens if self.tokens is not None else budget
        if not span:
            raise ValueError("LinearSchedule needs `tokens` or a token budget (max_tokens / max_steps)")
        fraction = min(max(tokens / span, 0.0), 1.0)
        return int(round(self.start + (self.end - self.start) * fraction))


@dataclass(frozen=True)
class StepSchedule:
    """Piecewise-constant batch: ``points`` are (tokens, batch) pairs, each batch from its token count on."""

    points: tuple[tuple[float, int], ...]

    def target(self, tokens: float, b_simple: float, start_batch: int, budget: float | None,
               measured_steps: int | None = None) -> int | None:
        chosen = None
        for at, batch in sorted(self.points):
            if tokens >= at:
                chosen = batch
        return chosen


Policy = GNSPolicy | LinearSchedule | StepSchedule


def make_policy(spec) -> Policy:
    """A policy from a policy object or its string form (see the module docstring)."""
    if isinstance(spec, (GNSPolicy, LinearSchedule, StepSchedule)):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"batch_size must be a policy or a string, got {type(spec).__name__}")
    kind, _, rest = spec.partition(":")
    try:
        if kind == "gns":
            names = {"k": "k", "min": "min_batch", "max": "max_batch", "warmup": "warmup_tokens",
                     "min_steps": "min_steps"}
            kwargs = {}
            for item in filter(None, rest.split(",")):
                key, _, value = item.partition("=")
                field = names[key.strip()]
                kwargs[field] = float(value) if field in ("k", "warmup_tokens") else int(float(value))
            return GNSPolicy(**kwargs)
        if kind == "linear":
            parts = rest.split(":")
            return LinearSchedule(int(parts[0]), int(parts[1]), float(parts[2]) if len(parts) > 2 else None)
        if kind == "steps":
            points = []
            for item in rest.split(","):
                at, batch = item.split(":")
                points.append((float(at), int(float(batch))))
            return StepSchedule(tuple(points))
    except (KeyError, ValueError, IndexError) as error:
        raise ValueError(f"cannot read batch-size policy {spec!r}: {error}") from None
    raise ValueError(f"unknown batch-size policy {spec!r}: use 'gns[:k=..,min=..,max=..,warmup=..]', "
                     "'linear:START:END[:TOKENS]' or 'steps:TOKENS:BATCH,...'")


def accumulation_for(target_batch: int, micro_batch: int, current: int) -> int:
    """The accumulation count for ``target_batch``: a multiple of ``current``, never below it.

    Multiples of the current count keep every change reachable at a group boundary.
    """
    wanted = max(1, int(round(target_batch / micro_batch)))
    factor = max(1, int(round(wanted / current)))
    return current * factor
