"""Decide, for one module, how its per-example gradients can be taken.

A module is matched against the known formulas by running its own forward on random
probe inputs (float32 and bfloat16, two input scales so that eps matters; autocast off)
and comparing bit for bit with `reference_forward`. A module that matches none is still
supported when its forward, called with its parameters expanded per example, reproduces
the per-example outputs (the generic path). Anything else is reported, never patched silently.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from .formulas import KNOWN_FORMULAS, NormFormula, reference_forward

EPS_ATTRIBUTES = ("eps", "variance_epsilon", "epsilon", "layer_norm_eps", "norm_eps")
_NORM_NAME = re.compile(r"Norm")
_NOT_PER_EXAMPLE = re.compile(r"BatchNorm|GroupNorm|InstanceNorm|SpatialNorm|MeanVarianceNorm|ConvNorm")


@dataclass(frozen=True)
class NormPlan:
    """How a module is patched: a known formula (fast kernels) or the generic path."""

    formula: NormFormula | None
    eps: float | None
    param_names: tuple[str, ...]

    @property
    def generic(self) -> bool:
        return self.formula is None


class Unsupported(Exception):
    """The module looks like a normalization layer but cannot be patched exactly."""


def is_norm_candidate(module: nn.Module) -> bool:
    """Leaf modules that look like LayerNorm / RMSNorm layers."""
    if any(True for _ in module.children()):
        return False
    if isinstance(module, nn.LayerNorm) or isinstance(module, getattr(nn, "RMSNorm", ())):
        return True
    name = type(module).__name__
    return bool(_NORM_NAME.search(name)) and not _NOT_PER_EXAMPLE.search(name)


def other_norm_kind(module: nn.Module) -> str | None:
    """For a leaf normalization module that is not a LayerNorm / RMSNorm but has trainable
    parameters (batch, group, instance norms, ...), what it is and why it is left out; else None."""
    if any(True for _ in module.children()) or is_norm_candidate(module):
        return None
    if not any(p.requires_grad for p in module.parameters(recurse=False)):
        return None
    name = type(module).__name__
    if isinstance(module, nn.modules.batchnorm._BatchNorm) or "BatchNorm" in name:
        return f"{name} (mixes the examples of a batch in training mode: no per-example gradient)"
    if _NORM_NAME.search(name):
        return f"{name} (not a LayerNorm / RMSNorm)"
    return None


def find_eps(module: nn.Module) -> float | None:
    for attr in EPS_ATTRIBUTES:
        value = getattr(module, attr, None)
        if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
            return float(value)
    return None


def _autocast_off() -> contextlib.ExitStack:
    """Probe the module's own arithmetic: a forward that casts under autocast (Nemotron) must not."""
    stack = contextlib.ExitStack()
    for device_type in ("cpu", "cuda"):
        if torch.is_autocast_enabled(device_type):
            stack.enter_context(torch.autocast(device_type, enabled=False))
    return stack


def _affine_params(module: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in module.named_parameters(recurse=False)}


def _probe_cases(shape: torch.Size, generator: torch.Generator):
    """(input, param dtype) pairs that separate the known casting orders."""
    for scale in (1.0, 1e-3):
        x = torch.randn((2, 3, *shape), generator=generator) * scale
        yield x, torch.float32
        yield x.to(torch.bfloat16), torch.float32
        yield x.to(torch.bfloat16), torch.bfloat16


def _probe_params(params: dict[str, nn.Parameter], dtype: torch.dtype, generator: torch.Generator):
    return {n: (torch.randn(p.shape, generator=generator) + 1.0).to(dtype) for n, p in params.items()}


def call_with_params(module: nn.Module, forward, params: dict, x: torch.Tensor) -> torch.Tensor:
    """Run ``forward(x)`` (default: the module itself) with its parameters replaced by ``params``."""
    if forward is None:
        return functional_call(module, params, (x,))
    saved = {n: module._parameters[n] for n in params}
    try:
        for n, t in params.items():
            module._parameters[n] = t
        return forward(x)
    finally:
        for n, t in saved.items():
            module._parameters[n] = t


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to summation order: same shape and dtype, and at most a rare last-bit difference.

    Casting orders differ from each other in a large share of elements (a bfloat16 rounding
    before or after the weight); a different reduction order inside a fused kernel flips
    the last bit of a few elements only.
    """
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    a64, b64 = a.double(), b.double()
    diff = (a64 - b64).abs()
    eps = torch.finfo(a.dtype).eps
    # near-zero outputs (bias cancelling the scaled value) carry the rounding of their terms
    scale = b64.abs() + b64.abs().mean()
    return bool(diff.le(2 * eps * scale).all()) and diff.gt(eps * b64.abs()).double().mean().item() <= 0.01


def match_formula(module: nn.Module, forward=None) -> NormFormula | None:
    """The known formula that reproduces ``module``'s forward bit for bit in every probed dtype mix
    it accepts (one of them with bfloat16 inputs), if any."""
    params = _affine_params(module)
    eps = find_eps(module)
    if "weight" not in params or set(params) - {"weight", "bias"} or eps is None:
        return None
    has_bias = "bias" in params
    candidates = [f for f in KNOWN_FORMULAS if f.has_bias == has_bias]
    generator = torch.Generator().manual_seed(0)
    cases = []
    with torch.no_grad(), _autocast_off():
        for x, dtype in _probe_cases(params["weight"].shape, generator):
            p = _probe_params(params, dtype, generator)
            try:
                out = call_with_params(module, forward, p, x)
            except Exception:
                if x.dtype == torch.float32:
                    return None
                continue  # a dtype mix the module rejects (float32-pinned parameters) is no evidence
            cases.append((x, p, out))
        if all(x.dtype == torch.float32 for x, _, _ in cases):
            return None  # float32 alone cannot tell the casting orders apart
        for formula in candidates:
            if all(
                _same(reference_forward(formula, x, p["weight"], p.get("bias"), eps), out)
                for x, p, out in cases
            ):
                return formula
    return None


def check_generic(module: nn.Module, forward=None) -> None:
    """Raise `Unsupported` unless per-example expanded parameters reproduce the forward."""
    params = _affine_params(module)
    if not params:
        raise Unsupported("no affine parameters: nothing to record")
    shape = next(iter(params.values())).shape
    generator = torch.Generator().manual_seed(1)
    x = torch.randn((3, 2, *shape), generator=generator)
    per_example = {n: torch.randn((3, *p.shape), generator=generator) + 1.0 for n, p in params.items()}
    with torch.no_grad(), _autocast_off():
        try:
            expanded = {n: per_example[n].reshape(3, *([1] * (x.dim() - 1 - p.dim())), *p.shape)
                        for n, p in params.items()}
            batched = call_with_params(module, forward, expanded, x)
            rows = [call_with_params(module, forward, {n: t[i] for n, t in per_example.items()}, x[i : i + 1])
                    for i in range(3)]
        except Exception as error:  # the forward does not accept per-example parameters
            raise Unsupported(f"forward does not broadcast per-example parameters ({error})") from None
    single = torch.cat(rows)
    if batched.shape != single.shape or not torch.allclose(batched, single, rtol=1e-5, atol=1e-6):
        raise Unsupported("forward with per-example parameters does not reproduce per-example outputs")


def plan_for(module: nn.Module, forward=None) -> NormPlan:
    """The patch plan for ``module`` or `Unsupported` with the reason."""
    params = _affine_params(module)
    names = tuple(params)
    if not params:
        raise Unsupported("no affine parameters: nothing to record")
    formula = match_formula(module, forward)
    if formula is not None:
        return NormPlan(formula=formula, eps=find_eps(module), param_names=names)
    check_generic(module, forward)
    return NormPlan(formula=None, eps=None, param_names=names)
