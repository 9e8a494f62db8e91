"""The Triton backward of a patched norm as one operator of a compiled graph.

Under ``torch.compile`` a norm that runs once per forward pass keeps the model's own forward
(inductor compiles it, fused with its neighbours, exactly as without hf_gns) and gets this
backward: `FoldedBackward` is an identity on the norm's output whose backward calls
``hf_gns::norm_backward_fold``, a `torch.library.triton_op` that launches the backward kernel
(dx and per-example partial weight / bias gradients, mean and rstd recomputed from the saved
input) and the fold kernel (dweight, dbias and the tap's gradient, `hf_gns.slots.TapLayout`).
Inductor sees through a ``triton_op`` and launches both kernels from its own generated code.
Under ``TRITON_INTERPRET=1`` (CPU tests) the same body runs as an opaque custom operator,
since interpreted kernels cannot be traced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.library import custom_op, triton_op, wrap_triton

from ..formulas import NormFormula
from ..slots import TapLayout
from . import triton_norm as K
from .op import KernelConfig, canonical_rows  # noqa: F401  (canonical_rows: for hf_gns.patch)

MAX_D = K.MAX_D
_ROUND_DTYPES = {code: dtype for dtype, code in K.ROUND_CODES.items()}
_STATIC_LAUNCH_ENV = "TORCHINDUCTOR_STATIC_LAUNCH_USER_DEFINED_TRITON_KERNELS"


def launch_user_kernels_statically() -> bool:
    """Have inductor launch user-defined Triton kernels (ours) with its own static CUDA launcher,
    as it launches the kernels it generates, instead of through Triton's Python launcher: about
    16 us of host time per launch otherwise, against about 4 (H200, `benchmarks/RESULTS.md` 0**),
    which is what a host-bound compiled step pays. Inductor falls back to Triton's launcher for a
    kernel it cannot launch statically. Left alone when the user set the environment variable
    ``TORCHINDUCTOR_STATIC_LAUNCH_USER_DEFINED_TRITON_KERNELS`` (0 or 1) or the torch in use has no
    such setting. Returns whether the setting is on."""
    try:
        from torch._inductor import config as inductor_config
    except ImportError:
        return False
    if not hasattr(inductor_config, "static_launch_user_defined_triton_kernels"):
        return False
    if _STATIC_LAUNCH_ENV not in os.environ:
        inductor_config.static_launch_user_defined_triton_kernels = True
    return bool(inductor_config.static_launch_user_defined_triton_kernels)


launch_user_kernels_statically()


@dataclass(frozen=True)
class FoldPlan:
    """What the backward of one call needs besides tensors: the kernel switches, how many rows
    each example has, and where the statistics go in the tap."""

    cfg: KernelConfig
    rows_per_example: int
    count: int
    positions: tuple[int, int]  # the tap position of the weight / bias, -1: not in the tap
    width: int
    need_dw: bool
    need_db: bool


def fold_plan(cfg: KernelConfig, rows: int, count: int, layout: TapLayout) -> FoldPlan:
    """The plan of one call on ``rows`` rows (``count`` examples of equal row blocks) for the
    parameters of ``layout``, with the kernel switches ``cfg`` (`hf_gns.kernels.op.kernel_config`)."""
    return FoldPlan(cfg, rows // count, count, layout.positions, layout.width, "weight" in layout.names,
                    "bias" in layout.names)


def _backward_fold(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float,
                   centered: bool, offset: float, round_code: int, rows_per_example: int, count: int, tap_w: int,
                   tap_b: int, width: int, need_dw: bool, need_db: bool, launch) -> tuple[torch.Tensor, ...]:
    dx, partial = K.norm_backward(dy, x, weight, None, None, bias is not None, centered, offset,
                                  _ROUND_DTYPES[round_code], rows_per_example, None, eps=eps, launch=launch)
    dw, db, tap_grad = K.fold_examples(partial, count, float(count), weight, bias, need_dw, need_db, (tap_w, tap_b),
                                       width, launch=launch)
    # an operator returns fresh tensors only: an absent gradient is an empty one
    return dx, dw if dw is not None else weight.new_empty(0), db if db is not None else weight.new_empty(0), tap_grad


@triton_op("hf_gns::norm_backward_fold", mutates_args=())
def norm_backward_fold(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float,
                       centered: bool, offset: float, round_code: int, rows_per_example: int, count: int, tap_w: int,
                       tap_b: int, width: int, need_dw: bool, need_db: bool
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """dx, dweight, dbias (empty when not needed) and the tap's gradient of rows ``x`` ([rows, D])."""
    return _backward_fold(dy, x, weight, bias, eps, centered, offset, round_code, rows_per_example, count, tap_w,
                          tap_b, width, need_dw, need_db, wrap_triton)


@custom_op("hf_gns::norm_backward_fold_interpreted", mutates_args=())
def norm_backward_fold_interpreted(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                   eps: float, centered: bool, offset: float, round_code: int, rows_per_example: int,
                                   count: int, tap_w: int, tap_b: int, width: int, need_dw: bool, need_db: bool
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`norm_backward_fold` as an opaque operator, for kernels run by Triton's interpreter."""
    return _backward_fold(dy, x, weight, bias, eps, centered, offset, round_code, rows_per_example, count, tap_w,
                          tap_b, width, need_dw, need_db, K._direct)


@norm_backward_fold_interpreted.register_fake
def _(dy, x, weight, bias, eps, centered, offset, round_code, rows_per_example, count, tap_w, tap_b, width, need_dw,
      need_db):
    D = weight.shape[0]
    return (x.new_empty(x.shape), weight.new_empty(D if need_dw else 0),
            weight.new_empty(D if need_db and bias is not None else 0),
            torch.empty(width, dtype=torch.float32, device=x.device))


def _operator():
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return norm_backward_fold_interpreted if interpreted else norm_backward_fold


class FoldedBackward(torch.autograd.Function):
    """``y`` unchanged (``y`` computed from ``x2d`` without autograd by the module's own forward);
    the backward gives dx, dweight, dbias and the tap's gradient through `norm_backward_fold`."""

    @staticmethod
    def forward(ctx, y, x2d, weight, bias, tap, plan: FoldPlan):
        ctx.plan, ctx.has_bias = plan, bias is not None
        ctx.save_for_backward(x2d, weight, *((bias,) if bias is not None else ()))
        return y.clone()

    @staticmethod
    def backward(ctx, dy):
        x2d, weight, *rest = ctx.saved_tensors
        bias = rest[0] if ctx.has_bias else None
        plan, cfg = ctx.plan, ctx.plan.cfg
        dy2d = dy.reshape(x2d.shape)
        if not dy2d.is_contiguous():
            dy2d = dy2d.contiguous()
        dx, dw, db, tap_grad = _operator()(
            dy2d, x2d, weight, bias, cfg.eps, cfg.centered, cfg.offset, K.ROUND_CODES[cfg.round_to],
            plan.rows_per_example, plan.count, plan.positions[0], plan.positions[1], plan.width,
            plan.need_dw, plan.need_db)
        return (None, dx, dw if plan.need_dw else None, db if plan.need_db and ctx.has_bias else None, tap_grad,
                None)


def folded_norm(y: torch.Tensor, x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                tap: torch.Tensor, plan: FoldPlan) -> torch.Tensor:
    """``y`` (the norm of ``x2d``'s rows, any shape with those rows) with the folding backward."""
    return FoldedBackward.apply(y, x2d, weight, bias, tap, plan)
