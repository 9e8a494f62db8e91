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


def _lead_shape(x: torch.Tensor, param: torch.Tensor, packed: bool) -> tuple[int, ...]:
    """Leading shape that broadcasts a parameter per example (or per token when packed)."""
    if packed:
        return (1, x.shape[1]) + (1,) * (x.dim() - 2 - param.dim())
    return (x.shape[0],) + (1,) * (x.dim() - 1 - param.dim())


def segment_sum(per_token: torch.Tensor, segment_starts: list[int]) -> torch.Tensor:
    """Sum rows of ``per_token`` ([N, ...]) within each segment: [S, ...]."""
    lengths = torch.tensor(
        [b - a for a, b in zip(segment_starts[:-1], segment_starts[1:])], device=per_token.device
    )
    ids = torch.repeat_interleave(torch.arange(len(lengths), device=per_token.device), lengths)
    out = per_token.new_zeros((len(lengths),) + per_token.shape[1:])
    return out.index_add_(0, ids, per_token)


def per_example_grads(
    plan: NormPlan,
    module: nn.Module,
    forward: Callable,
    x: torch.Tensor,
    dy: torch.Tensor,
    segments: list[int] | None = None,
    autocast: tuple[str, torch.dtype] | None = None,
) -> dict[str, torch.Tensor]:
    """Each example's gradient of each trainable parameter: ``{name: [S, *param.shape]}`` float32.

    ``segments`` lists packed-sequence boundaries along dim 1 (see `ExampleLayout`);
    ``autocast`` is the (device_type, dtype) active in the forward, if any.
    """
    packed = segments is not None
    params = {n: module._parameters[n] for n in plan.param_names}
    x = x.detach()
    if plan.formula is not None and plan.formula.cast is CastOrder.NATIVE and dy.dtype != x.dtype:
        x = x.to(dy.dtype)  # F.layer_norm under autocast computed in float32
        autocast = None
    ctx = torch.autocast(autocast[0], dtype=autocast[1]) if autocast else contextlib.nullcontext()
    with torch.enable_grad(), ctx:
        expanded = {}
        for n, p in params.items():
            lead = _lead_shape(x, p, packed)
            view = p.detach().reshape((1,) * len(lead) + tuple(p.shape))
            expanded[n] = view.expand(lead + tuple(p.shape)).requires_grad_()
        if plan.formula is not None:
            y = reference_forward(plan.formula, x, expanded["weight"], expanded.get("bias"), plan.eps)
        else:
            y = call_with_params(module, forward, expanded, x)
        grads = torch.autograd.grad(y, list(expanded.values()), dy.to(y.dtype), allow_unused=True)
    out = {}
    for (n, p), g in zip(params.items(), grads):
        rows = x.shape[1] if packed else x.shape[0]
        if g is None:
            g = torch.zeros((rows,) + tuple(p.shape), device=p.device)
        g = g.reshape((rows,) + tuple(p.shape)).to(torch.float32)
        out[n] = segment_sum(g, segments) if packed else g
    return out
