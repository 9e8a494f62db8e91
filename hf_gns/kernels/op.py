"""The Triton norm as a PyTorch op.

``hf_gns::norm_fwd`` / ``hf_gns::norm_bwd`` are `torch.library` custom ops with autograd,
so ``torch.compile`` traces through them without a graph break. In eager mode, when
statistics are being recorded, `_RecordingNorm` runs the same ops and hands the
per-example gradient vectors of the backward to the module's accumulators.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from ..formulas import CastOrder, NormFormula
from ..probe import NormPlan
from . import triton_norm as K

_HALF = (torch.float16, torch.bfloat16)


@torch.library.custom_op("hf_gns::norm_fwd", mutates_args=())
def norm_fwd(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], eps: float,
    centered: bool, offset: float, round_to: Optional[torch.dtype], out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return K.norm_forward(x, weight, bias, eps, centered, offset, round_to, out_dtype)


@norm_fwd.register_fake
def _(x, weight, bias, eps, centered, offset, round_to, out_dtype):
    rows = x.shape[0]
    return (x.new_empty(x.shape, dtype=out_dtype), x.new_empty(rows if centered else 0, dtype=torch.float32),
            x.new_empty(rows, dtype=torch.float32))


@torch.library.custom_op("hf_gns::norm_bwd", mutates_args=())
def norm_bwd(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
    has_bias: bool, centered: bool, offset: float, round_to: Optional[torch.dtype],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, partial = K.norm_backward(dy.contiguous(), x, weight, mean, rstd, has_bias, centered, offset,
                                  round_to, x.shape[0], None)
    sums = partial.sum(0)
    return dx, sums[0], sums[1] if has_bias else sums.new_empty(0)


@norm_bwd.register_fake
def _(dy, x, weight, mean, rstd, has_bias, centered, offset, round_to):
    d = x.shape[1]
    return x.new_empty(x.shape), x.new_empty(d, dtype=torch.float32), x.new_empty(d if has_bias else 0,
                                                                                  dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, weight, bias, eps, centered, offset, round_to, out_dtype = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.config = (bias is not None, centered, offset, round_to, bias.dtype if bias is not None else None)


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    has_bias, centered, offset, round_to, bias_dtype = ctx.config
    dx, dw, db = norm_bwd(dy, x, weight, mean, rstd, has_bias, centered, offset, round_to)
    return dx, dw.to(weight.dtype), (db.to(bias_dtype) if has_bias else None), None, None, None, None, None


norm_fwd.register_autograd(_backward, setup_context=_setup_context)


@dataclass(frozen=True)
class KernelConfig:
    """The switches of one call, derived from a formula and the call's dtypes."""

    eps: float
    centered: bool
    offset: float
    round_to: torch.dtype | None
    out_dtype: torch.dtype


def kernel_config(formula: NormFormula, eps: float, x: torch.Tensor, weight: torch.Tensor) -> KernelConfig:
    """Output dtype and rounding that reproduce the modelling code's casting order."""
    in_dtype = x.dtype
    round_to = None
    if formula.cast is CastOrder.NATIVE:
        out_dtype = in_dtype
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):  # F.layer_norm autocasts
            out_dtype = torch.float32 if device_type == "cuda" else torch.get_autocast_dtype(device_type)
    elif formula.cast is CastOrder.CAST_THEN_SCALE:
        round_to = in_dtype if in_dtype in _HALF else None
        out_dtype = torch.promote_types(weight.dtype, in_dtype)
    elif formula.cast is CastOrder.SCALE_THEN_CAST:
        out_dtype = in_dtype
    else:  # T5: x * rsqrt(var) promotes to float32, then cast to a half weight dtype
        round_to = weight.dtype if weight.dtype in _HALF else None
        out_dtype = weight.dtype if weight.dtype in _HALF else torch.float32
    return KernelConfig(eps, formula.centered, float(formula.weight_offset), round_to, out_dtype)


@dataclass(frozen=True)
class ExampleRows:
    """How the rows of a call split into examples: equal blocks, or a table of row ranges."""

    num_examples: int
    rows_per_example: int
    items: torch.Tensor | None = None        # int32 [n_items, 2] row ranges
    item_example: torch.Tensor | None = None  # int64 [n_items] example of each item


def example_rows(x: torch.Tensor, n_rows: int, spec, layout) -> ExampleRows:
    """Rows of ``x`` (example dim already at ``spec.canonical_dim``) grouped by example."""
    if spec.segments is None:
        return ExampleRows(spec.count, n_rows // spec.count)
    segments = spec.segments
    rows_per_token = n_rows // x.shape[1]
    _, tile_rows, _ = K.tile_config(x.shape[-1])
    chunk = K.chunk_rows_for(n_rows, x.device, tile_rows)
    ranges, owners = [], []
    for example, (a, b) in enumerate(zip(segments[:-1], segments[1:])):
        for start in range(a * rows_per_token, b * rows_per_token, chunk):
            ranges += [start, min(start + chunk, b * rows_per_token)]
            owners.append(example)
    key = f"items:{rows_per_token}:{chunk}"
    items = layout.device_tensor(key, ranges, x.device).view(-1, 2)
    item_example = layout.device_tensor(key + ":owner", owners, x.device).long()
    return ExampleRows(len(segments) - 1, 0, items, item_example)


class _NormFunction(torch.autograd.Function):
    """Eager autograd around the kernels; with ``rows`` it hands per-example vectors to ``sink``."""

    @staticmethod
    def forward(ctx, x2d, weight, bias, cfg: KernelConfig, rows: ExampleRows | None, sink: Callable | None):
        y, mean, rstd = K.norm_forward(x2d, weight, bias, cfg.eps, cfg.centered, cfg.offset, cfg.round_to,
                                       cfg.out_dtype)
        ctx.save_for_backward(x2d, weight, mean, rstd)
        ctx.cfg, ctx.rows, ctx.sink = cfg, rows, sink
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return y

    @staticmethod
    def backward(ctx, dy):
        x2d, weight, mean, rstd = ctx.saved_tensors
        cfg, rows = ctx.cfg, ctx.rows
        has_bias = ctx.bias_dtype is not None
        per_row_block = rows.rows_per_example if rows is not None else x2d.shape[0]
        dy = dy if dy.stride(-1) == 1 else dy.contiguous()
        dx, partial = K.norm_backward(dy, x2d, weight, mean, rstd, has_bias, cfg.centered, cfg.offset,
                                      cfg.round_to, per_row_block, rows.items if rows else None)
        per_example = partial if rows is None else _per_example(partial, rows)  # [examples, 1 or 2, D]
        grads = per_example.sum(0)
        if weight.dtype == torch.float32 and ctx.bias_dtype in (None, torch.float32):
            # the very view objects the statistics keep are returned: autograd sees them referenced
            # and copies instead of adopting them as .grad (later micro-batches are added into
            # .grad in place, which must not reach the kept sums)
            dw, db = grads[0], grads[1] if has_bias else None
            kept = (dw, db)
        else:
            kept = (grads[0], grads[1] if has_bias else None)
            low = grads.to(weight.dtype)
            dw = low[0]
            db = (low[1] if ctx.bias_dtype == weight.dtype else grads[1].to(ctx.bias_dtype)) if has_bias else None
        if rows is not None:
            ctx.sink(per_example, kept)
        return dx, dw, db, None, None, None


def _per_example(partial: torch.Tensor, rows: ExampleRows) -> torch.Tensor:
    if rows.items is None:
        if partial.shape[0] == rows.num_examples:  # one work item per example
            return partial
        return partial.view(rows.num_examples, -1, *partial.shape[1:]).sum(1)
    out = partial.new_zeros(rows.num_examples, *partial.shape[1:])
    return out.index_add_(0, rows.item_example, partial)


def triton_norm(module: nn.Module, plan: NormPlan, x: torch.Tensor, sink: Callable | None = None,
                spec=None) -> torch.Tensor:
    """Run ``module``'s normalization (``plan.formula``) through the Triton kernels.

    With ``sink`` and ``spec`` (an `ExampleSpec`), each backward hands
    ``sink(per_example, sums)`` the per-example gradients ``[examples, 1 or 2, D]`` (weight,
    then bias, float32) and their sums over examples (a tuple of float32 ``[D]``, None for a
    missing bias).
    """
    params = module._parameters
    weight = params["weight"]
    bias = params.get("bias") if plan.formula.has_bias else None
    D = weight.shape[-1]
    if weight.dim() != 1 or x.shape[-1] != D or D > K.MAX_D:
        raise ValueError(f"unsupported shapes for the Triton norm: x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    cfg = _cached_config(plan, x, weight)
    if torch.compiler.is_compiling():
        x2d = x.reshape(-1, D)
        if x2d.stride(-1) != 1:
            x2d = x2d.contiguous()
        y, _, _ = norm_fwd(x2d, weight, bias, cfg.eps, cfg.centered, cfg.offset, cfg.round_to, cfg.out_dtype)
        return y.view(x.shape)
    recording = sink is not None and spec is not None
    moved = recording and spec.dim != spec.canonical_dim
    xc = x.movedim(spec.dim, spec.canonical_dim) if moved else x
    x2d = xc.reshape(-1, D)
    if x2d.stride(-1) != 1 or (moved and not x2d.is_contiguous()):
        x2d = x2d.contiguous()
    rows = example_rows(xc, x2d.shape[0], spec, sink.layout) if recording else None
    y = _NormFunction.apply(x2d, weight, bias, cfg, rows, sink if recording else None)
    y = y.view(xc.shape)
    return y.movedim(spec.canonical_dim, spec.dim) if moved else y


_CONFIGS: dict = {}


def _cached_config(plan: NormPlan, x: torch.Tensor, weight: torch.Tensor) -> KernelConfig:
    """`kernel_config`, memoized on everything it reads (formula, eps, dtypes, autocast state)."""
    device_type = x.device.type
    autocast = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    key = (plan.formula, plan.eps, x.dtype, weight.dtype, device_type, autocast)
    cfg = _CONFIGS.get(key)
    if cfg is None:
        if len(_CONFIGS) > 256:
            _CONFIGS.clear()
        cfg = _CONFIGS[key] = kernel_config(plan.formula, plan.eps, x, weight)
    return cfg
