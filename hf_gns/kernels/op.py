"""The Triton norm kernels as an autograd function that fills per-example gradient slots.

`triton_norm` takes tensors and a `KernelConfig`: the input, the norm's parameters, the
per-example slots of `hf_gns.slots` and where the examples are (an `ExampleSpec`). Its
backward returns dx, dweight / dbias and, as the gradient of the slots, each example's
gradient of the parameters (float32), computed by the same kernel pass. Used in eager mode
on CUDA. Under ``torch.compile`` a module called once per pass keeps its own forward and gets
the same backward kernels as one graph operator (`hf_gns.kernels.graph_op`); the other calls
(packed sequences, a module called several times per pass, CPU) trace the PyTorch
formulation (`hf_gns.torch_path`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..formulas import CastOrder, NormFormula, native_output_dtype
from ..layout import ExampleSpec
from . import triton_norm as K

_HALF = (torch.float16, torch.bfloat16)


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
    return kernel_config_for(formula, eps, x.dtype, native_output_dtype(x), weight.dtype)


def kernel_config_for(formula: NormFormula, eps: float, in_dtype: torch.dtype, native_dtype: torch.dtype,
                      weight_dtype: torch.dtype) -> KernelConfig:
    """`kernel_config` from the dtypes alone (``native_dtype``: what ``F.layer_norm`` would return)."""
    round_to = None
    if formula.cast is CastOrder.NATIVE:
        out_dtype = native_dtype
    elif formula.cast is CastOrder.CAST_THEN_SCALE:
        round_to = in_dtype if in_dtype in _HALF else None
        out_dtype = torch.promote_types(weight_dtype, in_dtype)
    elif formula.cast is CastOrder.SCALE_THEN_CAST:
        out_dtype = in_dtype
    else:  # T5: x * rsqrt(var) promotes to float32, then cast to a half weight dtype
        round_to = weight_dtype if weight_dtype in _HALF else None
        out_dtype = weight_dtype if weight_dtype in _HALF else torch.float32
    return KernelConfig(eps, formula.centered, float(formula.weight_offset), round_to, out_dtype)


@dataclass(frozen=True)
class ExampleRows:
    """How the rows of a call split into examples: equal blocks, or a table of row ranges."""

    num_examples: int
    rows_per_example: int
    items: torch.Tensor | None = None        # int32 [n_items, 2] row ranges
    item_example: torch.Tensor | None = None  # int64 [n_items] example of each item


@dataclass(frozen=True)
class TapFold:
    """Fold the per-example gradients straight into a tap's gradient (a module called once per
    pass): ``count`` examples, the weight's / bias's position in the tap layout (-1: absent) and
    the layout's width."""

    count: float
    positions: tuple[int, int]
    width: int


_TABLES: dict = {}


def _upload(values: list[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    host = torch.tensor(values, dtype=dtype)
    return host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host.to(device)


def example_rows(x: torch.Tensor, n_rows: int, spec: ExampleSpec) -> ExampleRows:
    """Rows of ``x`` (example dim already at ``spec.canonical_dim``) grouped by example."""
    if not spec.packed:
        return ExampleRows(spec.count, n_rows // spec.count)
    starts = spec.segments
    rows_per_token = n_rows // x.shape[1]
    _, tile_rows, _ = K.tile_config(x.shape[-1])
    chunk = K.chunk_rows_for(n_rows, x.device, tile_rows)
    key = (starts, rows_per_token, chunk, x.device)
    if key not in _TABLES:
        ranges, owners = [], []
        for example, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
            for start in range(a * rows_per_token, b * rows_per_token, chunk):
                ranges += [start, min(start + chunk, b * rows_per_token)]
                owners.append(example)
        if len(_TABLES) > 64:
            _TABLES.clear()
        _TABLES[key] = (_upload(ranges, x.device, torch.int32).view(-1, 2), _upload(owners, x.device, torch.int64))
    items, item_example = _TABLES[key]
    return ExampleRows(len(starts) - 1, 0, items, item_example)


class TritonNorm(torch.autograd.Function):
    """Forward and backward kernels; the backward also yields each example's parameter gradients.

    ``stats`` is either per-example slots, whose gradient is returned per example (``fold`` None;
    ``channels`` picks the slot columns out of the kernel's partials: 0 for the weight, 1 for the
    bias), or a tap, whose gradient is folded from them in the same backward (``fold`` given).
    """

    @staticmethod
    def forward(ctx, x2d, weight, bias, stats, cfg: KernelConfig, rows: ExampleRows, channels: tuple[int, ...],
                fold: TapFold | None = None):
        y, mean, rstd = K.norm_forward(x2d, weight, bias, cfg.eps, cfg.centered, cfg.offset, cfg.round_to,
                                       cfg.out_dtype)
        ctx.save_for_backward(x2d, weight, mean, rstd, bias)
        ctx.cfg, ctx.rows, ctx.channels, ctx.fold, ctx.slot_rows = cfg, rows, channels, fold, stats.shape[0]
        return y

    @staticmethod
    def backward(ctx, dy):
        x2d, weight, mean, rstd, bias = ctx.saved_tensors
        cfg, rows = ctx.cfg, ctx.rows
        dy = dy if dy.stride(-1) == 1 else dy.contiguous()
        dx, partial = K.norm_backward(dy, x2d, weight, mean, rstd, bias is not None, cfg.centered, cfg.offset,
                                      cfg.round_to, rows.rows_per_example, rows.items)
        need_dw, need_db = ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2]
        if ctx.fold is not None:  # equal chunks: the fold kernel sums each example's items itself
            fold = ctx.fold
            items = partial if rows.items is None else _per_example(partial, rows)
            dw, db, tap_grad = K.fold_examples(items, rows.num_examples, fold.count, weight, bias, need_dw, need_db,
                                               fold.positions, fold.width)
            return dx, dw, db, tap_grad, None, None, None, None
        per_example = _per_example(partial, rows)  # [examples, 1 or 2, D] float32
        grads = per_example.sum(0)
        dw = grads[0].to(weight.dtype) if need_dw else None
        db = grads[1].to(bias.dtype) if need_db else None
        chosen = per_example if ctx.channels == tuple(range(per_example.shape[1])) else per_example[:, list(ctx.channels)]
        slot_grad = chosen.reshape(chosen.shape[0], -1)
        if slot_grad.shape[0] < ctx.slot_rows:  # a packed batch's slots have one row per token
            slot_grad = torch.cat([slot_grad, slot_grad.new_zeros(ctx.slot_rows - slot_grad.shape[0], slot_grad.shape[1])])
        return dx, dw, db, slot_grad, None, None, None, None


def _per_example(partial: torch.Tensor, rows: ExampleRows) -> torch.Tensor:
    if rows.items is None:
        if partial.shape[0] == rows.num_examples:  # one work item per example
            return partial
        return partial.view(rows.num_examples, -1, *partial.shape[1:]).sum(1)
    out = partial.new_zeros(rows.num_examples, *partial.shape[1:])
    return out.index_add_(0, rows.item_example, partial)


def canonical_rows(x: torch.Tensor, spec: ExampleSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` with its example dim at ``spec.canonical_dim``, and its rows ``[rows, D]`` in that
    order (unit column stride; contiguous when the example dim was moved)."""
    moved = spec.dim != spec.canonical_dim
    xc = x.movedim(spec.dim, spec.canonical_dim) if moved else x
    x2d = xc.reshape(-1, x.shape[-1])
    if x2d.stride(-1) != 1 or (moved and not x2d.is_contiguous()):
        x2d = x2d.contiguous()
    return xc, x2d


def triton_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stats: torch.Tensor,
                cfg: KernelConfig, spec: ExampleSpec, channels: tuple[int, ...], fold: TapFold | None = None) -> torch.Tensor:
    """The norm of ``x`` (over its last dim) by the Triton kernels.

    ``stats``: per-example slots (``fold`` None), or a tap that gets the folded statistics
    (`TapFold`). ``spec.segments`` must be known on the host for a packed batch.
    """
    D = weight.shape[-1]
    if weight.dim() != 1 or x.shape[-1] != D or D > K.MAX_D:
        raise ValueError(f"unsupported shapes for the Triton norm: x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(f"the Triton kernels need CUDA tensors, got a tensor on {x.device}: patch with "
                           "kernel='torch' (or 'auto') for CPU, or set TRITON_INTERPRET=1 to interpret them")
    moved = spec.dim != spec.canonical_dim
    xc, x2d = canonical_rows(x, spec)
    rows = example_rows(xc, x2d.shape[0], spec)
    y = TritonNorm.apply(x2d, weight, bias, stats, cfg, rows, channels, fold).view(xc.shape)
    return y.movedim(spec.canonical_dim, spec.dim) if moved else y


_CONFIGS: dict = {}


def cached_config(formula: NormFormula, eps: float, x: torch.Tensor, weight: torch.Tensor) -> KernelConfig:
    """`kernel_config`, memoized on everything it reads (formula, eps, dtypes, autocast state)."""
    device_type = x.device.type
    autocast = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    key = (formula, eps, x.dtype, weight.dtype, device_type, autocast)
    cfg = _CONFIGS.get(key)
    if cfg is None:
        if len(_CONFIGS) > 256:
            _CONFIGS.clear()
        cfg = _CONFIGS[key] = kernel_config(formula, eps, x, weight)
    return cfg
