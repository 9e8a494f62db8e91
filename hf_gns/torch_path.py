"""Per-example gradients of a norm's parameters in plain PyTorch, traced by ``torch.compile``.

The norm runs with each parameter replaced by ``parameter + slots``, where the slots (zeros,
`hf_gns.slots`) broadcast one row per example (``[B, 1, ..., D]``), or one row per token of a
packed batch, gathered from its sequence's row. The values are unchanged; autograd's
reduction over the broadcast dims makes the gradient of slot row i example i's gradient, and
the parameter's own gradient their sum. Inductor sees ordinary elementwise ops and
reductions, which it fuses with the rest of the compiled graph. Used under
``torch.compile``, on CPU, and for modules without a known formula (their own forward is
called with the expanded parameters). In eager mode `SlottedNorm.recorded` runs the module's
own forward for the outputs and this formulation only in backward, to fill the slots.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .formulas import CastOrder, NormFormula, native_output_dtype, reference_forward
from .layout import ExampleSpec
from .probe import call_with_params
from .slots import TapLayout


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


@dataclass(frozen=True, eq=False)
class SlottedNorm:
    """One patched norm with the parameters in ``layout`` fed through per-example slots."""

    formula: NormFormula | None
    eps: float | None
    module: nn.Module
    forward: Callable
    layout: TapLayout
    spec: ExampleSpec

    def __call__(self, x: torch.Tensor, slots: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The norm of ``x`` in the slotted formulation (see module doc): what ``torch.compile`` traces.
        ``slots``: one tensor of all parameters' columns, or one tensor per parameter."""
        spec = self.spec
        shape = x.shape
        xc = x.movedim(spec.dim, spec.canonical_dim) if spec.dim != spec.canonical_dim else x
        if spec.group > 1:
            xc = xc.reshape(spec.count, spec.group, *xc.shape[1:])
        params = {n: p for n, p in self.module._parameters.items() if p is not None}
        for k, name in enumerate(self.layout.names):
            column = slots[k] if isinstance(slots, tuple) else slots[:, self.layout.column_slice(k)]
            params[name] = _slotted(params[name], column, xc, spec)
        formula = self.formula
        if formula is None:  # the module's own forward broadcasts per-example parameters (checked when patched)
            y = call_with_params(self.module, self.forward, params, xc)
        elif formula.cast is CastOrder.NATIVE:  # F.layer_norm takes no per-example weight
            y = _native_layer_norm(xc, params["weight"], params.get("bias"), self.eps, formula.weight_offset)
        else:
            y = reference_forward(formula, xc, params["weight"], params.get("bias"), self.eps)
        if spec.group > 1:
            return y.reshape(shape)
        return y.movedim(spec.canonical_dim, spec.dim) if spec.dim != spec.canonical_dim else y

    def recorded(self, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """The module's own forward, exactly; the slots are filled by recomputing the slotted
        formulation in backward (eager mode)."""
        y = self.forward(x)
        device_type = x.device.type
        autocast = (device_type, torch.get_autocast_dtype(device_type)) if torch.is_autocast_enabled(device_type) else None
        return _RecomputedSlots.apply(y, x, slots, self, autocast)


class _RecomputedSlots(torch.autograd.Function):
    """Identity on ``y``; the backward recomputes the norm from its saved input with slotted
    parameters to fill the slots, so eager outputs and gradients stay the unpatched model's."""

    @staticmethod
    def forward(ctx, y, x, slots, norm: SlottedNorm, autocast):
        ctx.save_for_backward(x)
        ctx.norm, ctx.autocast, ctx.slot_shape = norm, autocast, slots.shape
        # y itself, its history extended by this node: not a view (a view made by a custom Function
        # may not be modified in place, and models do: XLM's `tensor *= mask` on a norm's output)
        ctx.mark_dirty(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        context = torch.autocast(ctx.autocast[0], dtype=ctx.autocast[1]) if ctx.autocast else contextlib.nullcontext()
        slots = torch.zeros(ctx.slot_shape, dtype=torch.float32, device=x.device, requires_grad=True)
        with torch.enable_grad(), context:
            y = ctx.norm(x.detach(), slots)
            (grad,) = torch.autograd.grad(y, slots, dy.to(y.dtype), allow_unused=True)
        return dy, None, torch.zeros_like(slots) if grad is None else grad, None, None
