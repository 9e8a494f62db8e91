"""Per-example gradients of a norm's parameters with plain PyTorch autograd.

The module's own forward runs unchanged (so outputs and ``.grad`` are bit-identical to an
unpatched model); a hook on its output receives ``dy`` and recomputes the norm with the
parameters expanded per example (``[B, 1, ..., D]``), so that autograd's reduction over
the broadcast dims yields each example's gradient. Used on CPU, as the fallback for
modules without a known formula, and as the oracle for the Triton kernels.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from .formulas import CastOrder, reference_forward
from .probe import NormPlan, call_with_params
from .recorder import ExampleSpec


def _lead_shape(x: torch.Tensor, param: torch.Tensor, packed: bool) -> tuple[int, ...]:
    """Leading shape that broadcasts a parameter per entry of dim 0 (per token of dim 1 if packed)."""
    if packed:
        return (1, x.shape[1]) + (1,) * (x.dim() - 2 - param.dim())
    return (x.shape[0],) + (1,) * (x.dim() - 1 - param.dim())


def segment_sum(per_token: torch.Tensor, segment_starts: list[int]) -> torch.Tensor:
    """Sum rows of ``per_token`` ([N, ...]) within each segment: [S, ...]."""
    lengths = torch.tensor([b - a for a, b in zip(segment_starts[:-1], segment_starts[1:])])
    ids = torch.repeat_interleave(torch.arange(len(lengths)), lengths).to(per_token.device)
    out = per_token.new_zeros((len(lengths),) + per_token.shape[1:])
    return out.index_add_(0, ids, per_token)


def per_example_grads(
    plan: NormPlan,
    module: nn.Module,
    forward: Callable,
    x: torch.Tensor,
    dy: torch.Tensor,
    spec: ExampleSpec,
    trainable: list[str],
    autocast: tuple[str, torch.dtype] | None = None,
) -> dict[str, torch.Tensor]:
    """Each example's gradient of each parameter in ``trainable``: ``{name: [S, *shape]}`` float32.

    ``x`` and ``dy`` have the example dimension where ``spec.canonical_dim`` says (dim 0, or
    dim 1 of a packed batch); ``autocast`` is the (device_type, dtype) of the forward, if any.
    """
    packed = spec.segments is not None
    x = x.detach()
    if plan.formula is not None and plan.formula.cast is CastOrder.NATIVE and dy.dtype != x.dtype:
        x = x.to(dy.dtype)  # F.layer_norm under autocast computed in float32
        autocast = None
    ctx = torch.autocast(autocast[0], dtype=autocast[1]) if autocast else contextlib.nullcontext()
    params = {n: p.detach() for n, p in module._parameters.items() if p is not None}
    with torch.enable_grad(), ctx:
        expanded = {}
        for n in trainable:
            p = params[n]
            lead = _lead_shape(x, p, packed)
            view = p.reshape((1,) * len(lead) + tuple(p.shape))
            expanded[n] = view.expand(lead + tuple(p.shape)).requires_grad_()
        call_params = {**params, **expanded}
        if plan.formula is not None:
            y = reference_forward(plan.formula, x, call_params["weight"], call_params.get("bias"), plan.eps)
        else:
            y = call_with_params(module, forward, call_params, x)
        grads = torch.autograd.grad(y, list(expanded.values()), dy.to(y.dtype), allow_unused=True)
    rows = x.shape[1] if packed else x.shape[0]
    out = {}
    for n, g in zip(expanded, grads):
        shape = tuple(params[n].shape)
        g = torch.zeros((rows,) + shape, device=x.device) if g is None else g.reshape((rows,) + shape).float()
        if packed:
            g = segment_sum(g, spec.segments)
        elif spec.group > 1:
            g = g.reshape((spec.count, spec.group) + shape).sum(1)
        out[n] = g
    return out
