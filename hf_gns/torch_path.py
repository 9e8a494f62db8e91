"""Per-example gradients of a norm's parameters in plain PyTorch, traced by ``torch.compile``.

The norm runs with each parameter replaced by ``parameter + slots``, where the slots (zeros,
`hf_gns.slots`) broadcast one row per example (``[B, 1, ..., D]``), or one row per token of a
packed batch, gathered from its sequence's row. The values are unchanged; autograd's
reduction over the broadcast dims makes the gradient of slot row i example i's gradient, and
the parameter's own gradient their sum. Inductor sees ordinary elementwise ops and
reductions, which it fuses with the rest of the compiled graph. Used under
``torch.compile``, on CPU, and for modules without a known formula (their own forward is
called with the expanded parameters). In eager mode `recorded_forward` runs the module's own
forward for the outputs and this formulation only in backward, to fill the slots.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .formulas import CastOrder, NormFormula, reference_forward
from .layout import ExampleSpec
from .probe import call_with_params
from .slots import TapLayout


def native_output_dtype(x: torch.Tensor) -> torch.dtype:
    """The output dtype of ``F.layer_norm`` on ``x`` in the current autocast state."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.float32 if device_type == "cuda" else torch.get_autocast_dtype(device_type)
    return x.dtype


def _native_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float,
                       offset: float = 0.0) -> torch.Tensor:
    """``F.layer_norm`` with broadcast (per-example) weight and bias, same output dtype."""
    out_dtype = native_output_dtype(x)
    if offset:
        weight = weight + offset
    with torch.autocast(x.device.type, enabled=False):
        normed = F.layer_norm(x.float(), x.shape[-1:], None, None, eps)
        y = normed * weight.float() if bias is None else torch.addcmul(bias.float(), normed, weight.float())
    return y.to(out_dtype)


def _slotted(param: torch.Tensor, column: torch.Tensor, x: torch.Tensor, spec: ExampleSpec) -> torch.Tensor:
    """``param`` plus its slot column, broadcast per example (or per packed token) against ``x``."""
    if spec.packed:
        per_row = column.index_select(0, spec.segment_ids)
        lead = (1, x.shape[1]) + (1,) * (x.dim() - 2 - param.dim())
    else:
        per_row = column
        lead = (x.shape[0],) + (1,) * (x.dim() - 1 - param.dim())
    return param + per_row.reshape(lead + tuple(param.shape)).to(param.dtype)


def slotted_forward(
    formula: NormFormula | None,
    eps: float | None,
    module: nn.Module,
    forward: Callable,
    x: torch.Tensor,
    slots: torch.Tensor,
    layout: TapLayout,
    spec: ExampleSpec,
) -> torch.Tensor:
    """The norm of ``x`` with the parameters in ``layout`` fed through ``slots`` (see module doc)."""
    shape = x.shape
    xc = x.movedim(spec.dim, spec.canonical_dim) if spec.dim != spec.canonical_dim else x
    if spec.group > 1:
        xc = xc.reshape(spec.count, spec.group, *xc.shape[1:])
    params = {n: p for n, p in module._parameters.items() if p is not None}
    for k, name in enumerate(layout.names):
        params[name] = _slotted(params[name], slots[:, layout.column_slice(k)], xc, spec)
    if formula is None:  # the module's own forward broadcasts per-example parameters (checked when patched)
        y = call_with_params(module, forward, params, xc)
    elif formula.cast is CastOrder.NATIVE:  # F.layer_norm takes no per-example weight
        y = _native_layer_norm(xc, params["weight"], params.get("bias"), eps, formula.weight_offset)
    else:
        y = reference_forward(formula, xc, params["weight"], params.get("bias"), eps)
    if spec.group > 1:
        y = y.reshape(shape)
    elif spec.dim != spec.canonical_dim:
        y = y.movedim(spec.canonical_dim, spec.dim)
    return y


class _RecomputedSlots(torch.autograd.Function):
    """Identity on ``y``; the backward recomputes the norm from its saved input with slotted
    parameters to fill the slots, so eager outputs and gradients stay the unpatched model's."""

    @staticmethod
    def forward(ctx, y, x, slots, recompute, autocast):
        ctx.save_for_backward(x)
        ctx.recompute, ctx.autocast, ctx.slot_shape = recompute, autocast, slots.shape
        return y.view_as(y)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        context = torch.autocast(ctx.autocast[0], dtype=ctx.autocast[1]) if ctx.autocast else contextlib.nullcontext()
        slots = torch.zeros(ctx.slot_shape, dtype=torch.float32, device=x.device, requires_grad=True)
        with torch.enable_grad(), context:
            y = ctx.recompute(x.detach(), slots)
            (grad,) = torch.autograd.grad(y, slots, dy.to(y.dtype), allow_unused=True)
        return dy, None, torch.zeros_like(slots) if grad is None else grad, None, None


def recorded_forward(
    formula: NormFormula | None,
    eps: float | None,
    module: nn.Module,
    forward: Callable,
    x: torch.Tensor,
    slots: torch.Tensor,
    layout: TapLayout,
    spec: ExampleSpec,
) -> torch.Tensor:
    """The module's own forward, exactly; the slots are filled by a recomputation in backward
    (eager mode). Under ``torch.compile`` use `slotted_forward`, which inductor can fuse."""
    y = forward(x)
    device_type = x.device.type
    autocast = (device_type, torch.get_autocast_dtype(device_type)) if torch.is_autocast_enabled(device_type) else None
    recompute = functools.partial(_recompute, formula, eps, module, forward, layout, spec)
    return _RecomputedSlots.apply(y, x, slots, recompute, autocast)


def _recompute(formula, eps, module, forward, layout, spec, x, slots):
    return slotted_forward(formula, eps, module, forward, x, slots, layout, spec)


def segment_sum(per_token: torch.Tensor, segment_starts: list[int]) -> torch.Tensor:
    """Sum rows of ``per_token`` ([N, ...]) within each segment: [S, ...]."""
    lengths = torch.tensor([b - a for a, b in zip(segment_starts[:-1], segment_starts[1:])])
    ids = torch.repeat_interleave(torch.arange(len(lengths)), lengths).to(per_token.device)
    out = per_token.new_zeros((len(lengths),) + per_token.shape[1:])
    return out.index_add_(0, ids, per_token)
