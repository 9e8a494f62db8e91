"""Batch-size policies: the global batch (in examples) to train with, given tokens and GNS.

A policy only proposes a target; `hf_gns.batch_control` turns it into a gradient
accumulation count and applies it where that is safe. Policies are plain data, so they
can be saved with a checkpoint and written as a string on a command line:

    "gns"                      follow the measured B_simple (defaults below)
    "gns:k=2,min=16,max=512,warmup=1e6,min_steps=50"
                               (the field names min_batch, max_batch, warmup_tokens work too)
    "linear:16:120"            linear in tokens from 16 to 120 over the token budget
    "linear:16:120:5e8"        ... over 5e8 tokens
    "steps:0:16,1e8:32,2e8:64" from 1e8 tokens on 32, from 2e8 on 64 (Megatron style)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

from .validation import check_int, check_number, check_positive_int, check_type, fail


@runtime_checkable
class BatchSizePolicy(Protocol):
    """What a batch-size policy is (write your own with this one method).

    ``target`` returns the global batch in examples to train with from now on, or None to keep
    the current one. It gets the tokens consumed so far, the smoothed B_simple (``nan`` until it
    is known), the starting global batch, the token budget (None when unknown) and the number of
    measured steps. The batch only grows: a target at or below the current batch changes nothing.
    """

    def target(self, tokens: float, b_simple: float, start_batch: int, budget: float | None,
               measured_steps: int | None = None) -> int | None: ...


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

    def __post_init__(self) -> None:
        check_number("GNSPolicy.k", self.k)
        check_positive_int("GNSPolicy.min_batch", self.min_batch, optional=True)
        check_positive_int("GNSPolicy.max_batch", self.max_batch, optional=True)
        if self.min_batch is not None and self.max_batch is not None and self.min_batch > self.max_batch:
            fail("GNSPolicy.min_batch", self.min_batch, f"<= max_batch ({self.max_batch})")
        check_number("GNSPolicy.warmup_tokens", self.warmup_tokens, strict=False)
        check_int("GNSPolicy.min_steps", self.min_steps, 0)

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

    def __post_init__(self) -> None:
        check_positive_int("LinearSchedule.start", self.start)
        check_positive_int("LinearSchedule.end", self.end)
        if self.end < self.start:
            fail("LinearSchedule.end", self.end, f">= start ({self.start})",
                 "the batch can only grow: gradient accumulation never drops below its starting count")
        check_number("LinearSchedule.tokens", self.tokens, optional=True)

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

    def __post_init__(self) -> None:
        if not isinstance(self.points, (tuple, list)) or not self.points:
            fail("StepSchedule.points", self.points, "a non-empty tuple of (tokens, batch) pairs")
        for i, point in enumerate(self.points):
            check_type(f"StepSchedule.points[{i}]", point, (tuple, list), "a (tokens, batch) pair")
            if len(point) != 2:
                fail(f"StepSchedule.points[{i}]", point, "a (tokens, batch) pair")
            check_number(f"StepSchedule.points[{i}] tokens", point[0], strict=False)
            check_positive_int(f"StepSchedule.points[{i}] batch", point[1])
        batches = [batch for _, batch in sorted(self.points)]
        if batches != sorted(batches):
            fail("StepSchedule.points", self.points, "pairs whose batch never decreases as tokens grow",
                 "the batch can only grow: gradient accumulation never drops below its starting count")

    def target(self, tokens: float, b_simple: float, start_batch: int, budget: float | None,
               measured_steps: int | None = None) -> int | None:
        chosen = None
        for at, batch in sorted(self.points):
            if tokens >= at:
                chosen = batch
        return chosen



#: What a policy is doing, logged as ``gns/policy_state`` (a number, so every integration plots it).
POLICY_STATES = {"warming_up": 0.0, "waiting_for_gns": 1.0, "holding": 2.0, "growing": 3.0}


def policy_state(policy: BatchSizePolicy, target: int | None, batch: int, tokens: float, b_simple: float,
                 measured_steps: int) -> tuple[str, str]:
    """(state, why) of ``policy`` at the current step: one of `POLICY_STATES` and a sentence."""
    if isinstance(policy, GNSPolicy):
        if measured_steps < policy.min_steps:
            return "warming_up", f"{measured_steps} of min_steps={policy.min_steps} measured steps"
        if tokens < policy.warmup_tokens:
            return "warming_up", f"{tokens:.4g} of warmup_tokens={policy.warmup_tokens:.4g} tokens"
        if not math.isfinite(b_simple) or b_simple <= 0:
            return "waiting_for_gns", f"B_simple is {b_simple:.4g} (its EMA of |G|^2 is not positive yet)"
    if target is None or target <= batch:
        return "holding", f"target batch {target} <= batch {batch}"
    return "growing", f"target batch {target} > batch {batch}"


# string keys of GNSPolicy: the short aliases and every field name
GNS_KEYS = {"k": "k", "min": "min_batch", "max": "max_batch", "warmup": "warmup_tokens",
            **{f.name: f.name for f in fields(GNSPolicy)}}


FORMS = {
    "gns": "gns[:KEY=VALUE,...] with keys " + ", ".join(GNS_KEYS),
    "linear": "linear:START:END[:TOKENS]",
    "steps": "steps:TOKENS:BATCH[,TOKENS:BATCH...]",
}


def make_policy(spec: BatchSizePolicy | str, name: str = "batch_size_policy") -> BatchSizePolicy:
    """A policy from a policy object (returned as is) or its string form (see the module docstring):
    the one place where policy strings are parsed. ``name`` is the argument named in errors."""
    if isinstance(spec, str) and spec.strip().lower() == "none":
        raise ValueError(f"{name}={spec!r}: pass None to measure without a batch-size policy")
    if not isinstance(spec, str):
        if isinstance(spec, BatchSizePolicy) and callable(spec.target):
            return spec
        raise TypeError(f"{name} must be a batch-size policy (an object with a target(...) method, such as "
                        f"hf_gns.GNSPolicy(max_batch=256)) or its string form, got {type(spec).__name__}")
    kind, _, rest = spec.partition(":")
    if kind not in FORMS:
        raise ValueError(f"{name}: unknown batch-size policy {kind!r} in {spec!r}; the policies are "
                         + "; ".join(f"{name!r} ({form})" for name, form in FORMS.items()))
    try:
        if kind == "gns":
            return _parse_gns(rest)
        if kind == "linear":
            return _parse_linear(rest)
        return _parse_steps(rest)
    except ValueError as error:
        raise ValueError(f"{name} {spec!r}: {error}") from None


def _parse_gns(rest: str) -> GNSPolicy:
    kwargs: dict[str, float | int] = {}
    for item in filter(None, rest.split(",")):
        key, equals, value = (part.strip() for part in item.partition("="))
        if not equals:
            fail("gns option", item, f"KEY=VALUE ({FORMS['gns']})")
        if key not in GNS_KEYS:
            fail("gns key", key, "one of " + ", ".join(GNS_KEYS))
        field = GNS_KEYS[key]
        if field in kwargs:
            fail("gns key", key, f"given once (it sets {field}, already set to {kwargs[field]!r})")
        kwargs[field] = _number(key, value) if field in ("k", "warmup_tokens") else _integer(key, value)
    return GNSPolicy(**kwargs)


def _parse_linear(rest: str) -> LinearSchedule:
    parts = rest.split(":")
    if len(parts) not in (2, 3):
        fail("linear policy", "linear:" + rest, f"of the form {FORMS['linear']}")
    tokens = _number("TOKENS", parts[2]) if len(parts) == 3 else None
    return LinearSchedule(_integer("START", parts[0]), _integer("END", parts[1]), tokens)


def _parse_steps(rest: str) -> StepSchedule:
    points = []
    for item in rest.split(","):
        parts = item.split(":")
        if len(parts) != 2:
            fail("steps point", item, f"TOKENS:BATCH ({FORMS['steps']})")
        points.append((_number("TOKENS", parts[0]), _integer("BATCH", parts[1])))
    return StepSchedule(tuple(points))


def _number(name: str, text: str) -> float:
    """``text`` as a float; a ValueError naming ``name`` when it is not a number."""
    try:
        return float(text)
    except ValueError:
        fail(name, text, "a number")


def _integer(name: str, text: str) -> int:
    """``text`` as an int (``1e3`` is fine, ``16.5`` is not)."""
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number.is_integer()):
        fail(name, text, "an integer")
    return int(number)


def accumulation_for(target_batch: int, micro_batch: int, current: int) -> int:
    """The accumulation count for ``target_batch``: a multiple of ``current``, never below it.

    Multiples of the current count keep every change reachable at a group boundary.
    """
    wanted = max(1, int(round(target_batch / micro_batch)))
    factor = max(1, int(round(wanted / current)))
    return current * factor
