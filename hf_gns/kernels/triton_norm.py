"""Triton kernels: LayerNorm / RMSNorm forward and backward with per-example weight gradients.

Rows are the flattened leading dims of the input (``[rows, D]``). The backward kernel runs
one program per *work item*, a contiguous run of rows that never crosses an example
boundary; it writes dx and the item's partial sums of dweight (= sum dy * normed) and
dbias (= sum dy) to its own row of a small ``[items, D]`` float32 buffer. No atomics: the
per-example vectors are a sum over each example's items, and dweight is their sum.

Every formula of `hf_gns.formulas` maps to three switches: CENTERED (LayerNorm vs RMSNorm),
OFFSET (Gemma's ``1 + w``) and ROUND (0: none; 1/2: the normalized value is rounded to
bfloat16/float16 before it meets the weight, as Llama's ``weight * normed.to(dtype)`` does).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

ROUND_CODES = {None: 0, torch.bfloat16: 1, torch.float16: 2}
MAX_D = 65536


@triton.jit
def _round(v, ROUND: tl.constexpr):
    if ROUND == 1:
        v = v.to(tl.bfloat16).to(tl.float32)
    elif ROUND == 2:
        v = v.to(tl.float16).to(tl.float32)
    return v


@triton.jit
def _norm_fwd_kernel(
    X, W, B, Y, MEAN, RSTD,
    n_rows, D, stride_x, stride_y, eps,
    CENTERED: tl.constexpr, HAS_BIAS: tl.constexpr, OFFSET: tl.constexpr, ROUND: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    col_ok = cols < D
    mask = row_ok[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)
    x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if CENTERED:
        mean = tl.sum(x, axis=1) / D
        x = tl.where(mask, x - mean[:, None], 0.0)
        tl.store(MEAN + rows, mean, mask=row_ok)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / D + eps)
    tl.store(RSTD + rows, rstd, mask=row_ok)
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32) + OFFSET
    y = _round(x * rstd[:, None], ROUND) * w[None, :]
    if HAS_BIAS:
        y += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows64[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _norm_bwd_kernel(
    DY, X, W, MEAN, RSTD, DX, PARTIAL, ITEMS,
    D, stride_dy, stride_x, stride_dx, stride_partial, rows_per_example, chunks_per_example, chunk_rows,
    EPS: tl.constexpr, CENTERED: tl.constexpr, HAS_BIAS: tl.constexpr, OFFSET: tl.constexpr, ROUND: tl.constexpr,
    USE_TABLE: tl.constexpr, RECOMPUTE: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    if USE_TABLE:
        start = tl.load(ITEMS + 2 * pid)
        end = tl.load(ITEMS + 2 * pid + 1)
    else:
        example = pid // chunks_per_example
        start = example * rows_per_example + (pid % chunks_per_example) * chunk_rows
        end = tl.minimum(start + chunk_rows, (example + 1) * rows_per_example)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32) + OFFSET
    acc_w = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_D], dtype=tl.float32)
    for first in range(start, end, ROWS):
        rows = first + tl.arange(0, ROWS)
        row_ok = rows < end
        mask = row_ok[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)
        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if RECOMPUTE:  # mean and rstd from the rows themselves, as the forward kernel computes them
            if CENTERED:
                mean = tl.sum(x, axis=1) / D
                x = tl.where(mask, x - mean[:, None], 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / D + EPS)
        else:
            rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
            if CENTERED:
                mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
                x = tl.where(mask, x - mean[:, None], 0.0)
        normed = x * rstd[:, None]
        acc_w += tl.sum(dy * _round(normed, ROUND), axis=0)
        if HAS_BIAS:
            acc_b += tl.sum(dy, axis=0)
        dn = dy * w[None, :]
        proj = tl.sum(dn * normed, axis=1) / D
        dx = dn - normed * proj[:, None]
        if CENTERED:
            dx -= (tl.sum(dn, axis=1) / D)[:, None]
        dx = dx * rstd[:, None]
        tl.store(DX + rows64[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
    # PARTIAL is [items, 1 or 2, D]: the item's dweight partial, then its dbias partial
    out = PARTIAL + pid.to(tl.int64) * stride_partial + cols
    tl.store(out, acc_w, mask=col_ok)
    if HAS_BIAS:
        tl.store(out + D, acc_b, mask=col_ok)


@triton.jit
def _fold_kernel(
    PARTIAL, DW, DB, OUT,
    D, n_examples, items_per_example, count,
    HAS_BIAS: tl.constexpr, CHANNELS: tl.constexpr, WRITE_DW: tl.constexpr, WRITE_DB: tl.constexpr,
    TAP_W: tl.constexpr, TAP_B: tl.constexpr, N_NAMES: tl.constexpr,
    EXAMPLES: tl.constexpr, ITEMS: tl.constexpr, BLOCK: tl.constexpr,
):
    """Fold per-item partial gradients ``[examples * items_per_example, 1 or 2, D]`` (float32,
    contiguous, each example's items adjacent) of one column block into a tap's gradient
    (`TapLayout`): c_i = the sum of example i's items, then sum_i c_i and sum_i c_i**2 of the
    block's columns (and the count, from program 0), and DW / DB. Each load is a tile of
    EXAMPLES examples x ITEMS items x BLOCK columns. TAP_W / TAP_B: the tap position of the
    weight / bias (-1: not in the tap)."""
    pid = tl.program_id(0)
    cols = pid * BLOCK + tl.arange(0, BLOCK)
    col_ok = cols < D
    example_lanes = tl.arange(0, EXAMPLES)
    item_lanes = tl.arange(0, ITEMS)
    sum_w = tl.zeros([BLOCK], dtype=tl.float32)
    sq_w = tl.zeros([BLOCK], dtype=tl.float32)
    sum_b = tl.zeros([BLOCK], dtype=tl.float32)
    sq_b = tl.zeros([BLOCK], dtype=tl.float32)
    for first_example in range(0, n_examples, EXAMPLES):
        examples = first_example + example_lanes
        example_ok = examples < n_examples
        c_w = tl.zeros([EXAMPLES, BLOCK], dtype=tl.float32)
        c_b = tl.zeros([EXAMPLES, BLOCK], dtype=tl.float32)
        for first_item in range(0, items_per_example, ITEMS):
            items = first_item + item_lanes
            rows = examples.to(tl.int64)[:, None] * items_per_example + items[None, :]
            row_ok = example_ok[:, None] & (items < items_per_example)[None, :]
            offsets = rows[:, :, None] * (CHANNELS * D) + cols[None, None, :]
            mask = row_ok[:, :, None] & col_ok[None, None, :]
            c_w += tl.sum(tl.load(PARTIAL + offsets, mask=mask, other=0.0), axis=1)
            if HAS_BIAS:
                c_b += tl.sum(tl.load(PARTIAL + offsets + D, mask=mask, other=0.0), axis=1)
        sum_w += tl.sum(c_w, axis=0)
        sq_w += tl.sum(c_w * c_w, axis=0)
        if HAS_BIAS:
            sum_b += tl.sum(c_b, axis=0)
            sq_b += tl.sum(c_b * c_b, axis=0)
    if WRITE_DW:
        tl.store(DW + cols, sum_w.to(DW.dtype.element_ty), mask=col_ok)
    if WRITE_DB:
        tl.store(DB + cols, sum_b.to(DB.dtype.element_ty), mask=col_ok)
    sums = OUT + 1 + cols
    squares = sums + N_NAMES * D
    if TAP_W >= 0:
        tl.store(sums + TAP_W * D, sum_w, mask=col_ok)
        tl.store(squares + TAP_W * D, sq_w, mask=col_ok)
    if TAP_B >= 0:
        tl.store(sums + TAP_B * D, sum_b, mask=col_ok)
        tl.store(squares + TAP_B * D, sq_b, mask=col_ok)
    if pid == 0:
        tl.store(OUT, count)


def _empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Output allocation (tests replace it to poison outputs the kernels must overwrite)."""
    return torch.empty(shape, dtype=dtype, device=device)


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def num_programs_target(device: torch.device) -> int:
    """About four programs per streaming multiprocessor."""
    return 4 * (_num_sms(device.index or 0) if device.type == "cuda" else 8)


def tile_config(D: int) -> tuple[int, int, int]:
    """(BLOCK_D, ROWS per tile, num_warps) for a row length ``D``."""
    block_d = triton.next_power_of_2(D)
    rows = max(1, min(16, 4096 // block_d))
    # past 8192 columns each thread would hold too many row values: more warps, no spills
    num_warps = 4 if block_d <= 1024 else 8 if block_d <= 4096 else 16 if block_d <= 8192 else 32
    return block_d, rows, num_warps


def backward_warps(block_d: int, centered: bool, itemsize: int) -> int:
    """Warps per backward program: as the forward, except for rows of 16384 columns and more,
    where 8 warps beat 32 (H100, `benchmarks/bench_norms.py --warps`: LayerNorm bf16 -17%, RMSNorm bf16 -27%)
    but a float32 LayerNorm needs all 32."""
    if block_d >= 16384 and not (centered and itemsize == 4):
        return 8
    return tile_config(block_d)[2]


def norm_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float,
    centered: bool, offset: float, round_to: torch.dtype | None, out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x``: [rows, D] with unit column stride. Returns y, mean (empty if not centered), rstd."""
    n_rows, D = x.shape
    block_d, rows, num_warps = tile_config(D)
    y = _empty((n_rows, D), out_dtype, x.device)
    rstd = _empty(n_rows, torch.float32, x.device)
    mean = _empty(n_rows if centered else 0, torch.float32, x.device)
    grid = (triton.cdiv(n_rows, rows),)
    _norm_fwd_kernel[grid](
        x, weight, bias if bias is not None else weight, y, mean if centered else rstd, rstd,
        n_rows, D, x.stride(0), y.stride(0), eps,
        CENTERED=centered, HAS_BIAS=bias is not None, OFFSET=offset, ROUND=ROUND_CODES[round_to],
        ROWS=rows, BLOCK_D=block_d, num_warps=num_warps,
    )
    return y, mean, rstd


#: Rows at least this wide take the bias gradient out of the backward kernel (one extra read of dy)
#: so that the kernel carries two row-wide arrays instead of three and does not spill registers.
SEPARATE_BIAS_FROM = 16384


def chunk_rows_for(n_rows: int, device: torch.device, rows: int) -> int:
    """Rows per work item: enough items to fill the GPU, a multiple of the tile height."""
    chunk = triton.cdiv(n_rows, num_programs_target(device))
    return max(rows, triton.cdiv(chunk, rows) * rows)


def _direct(kernel):
    return kernel


def norm_backward(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor | None, rstd: torch.Tensor | None,
    has_bias: bool, centered: bool, offset: float, round_to: torch.dtype | None,
    rows_per_example: int, items: torch.Tensor | None, eps: float = 0.0, launch=_direct,
) -> tuple[torch.Tensor, torch.Tensor]:
    """dx and the per-item partial sums ``[items, 1 or 2, D]`` (float32) of dweight (and dbias).

    ``rstd`` None: the kernel recomputes mean and rstd from ``x`` (with ``eps``, a compile-time
    constant: a float argument would reach the kernel as float64 from inductor's launcher), as
    the forward kernel does. ``launch`` wraps each kernel before its launch (``torch.library.wrap_triton``
    inside a compiled graph's operator).

    Items are either ``items`` (an int32 ``[n, 2]`` table of row ranges) or every example of
    ``rows_per_example`` rows cut into equal chunks, in example order; the caller maps items
    to examples. For rows of `SEPARATE_BIAS_FROM` columns or more (equal chunks only), each
    example's dbias is summed outside the kernel and stored with the example's first item.
    """
    n_rows, D = x.shape
    block_d, rows, num_warps = tile_config(D)
    dx = _empty((n_rows, D), x.dtype, x.device)
    if items is not None:
        n_items, chunk, per_example = items.shape[0], 0, 1
    else:
        chunk = min(chunk_rows_for(n_rows, x.device, rows), rows_per_example)
        per_example = triton.cdiv(rows_per_example, chunk)
        n_items = (n_rows // rows_per_example) * per_example
    partial = _empty((n_items, 2 if has_bias else 1, D), torch.float32, x.device)
    separate_bias = has_bias and items is None and D >= SEPARATE_BIAS_FROM
    recompute = rstd is None
    stats = x if recompute else rstd  # a pointer the kernel does not read when it recomputes
    if n_items:
        launch(_norm_bwd_kernel)[(n_items,)](
            dy, x, weight, mean if centered and not recompute else stats, stats, dx, partial,
            items if items is not None else stats,
            D, dy.stride(0), x.stride(0), dx.stride(0), partial.stride(0), rows_per_example, per_example, chunk,
            EPS=float(eps) if recompute else 0.0, CENTERED=centered, HAS_BIAS=has_bias and not separate_bias, OFFSET=offset,
            ROUND=ROUND_CODES[round_to], USE_TABLE=items is not None, RECOMPUTE=recompute, ROWS=rows, BLOCK_D=block_d,
            num_warps=backward_warps(block_d, centered and not separate_bias, x.element_size()),
        )
    if separate_bias and n_items:
        examples = n_rows // rows_per_example
        partial[:, 1].zero_()
        partial[::per_example, 1] = dy.reshape(examples, rows_per_example, D).sum(1, dtype=torch.float32)
    return dx, partial


#: `fold_examples` loads tiles of up to FOLD_LOAD elements: examples x items x columns. A program
#: owns a block of columns, as narrow as FOLD_MIN_BLOCK when that gives each streaming
#: multiprocessor a program (GPT-2: 768 columns -> 96 programs of 8), and a tile holds as many
#: whole examples as fit. The two kernels before gave a program 64 columns, so 12 programs for
#: GPT-2, each a chain of dependent loads; GPT-2 at 2 x 1024 tokens, kernel alone on the H200:
#: 15.0 us for the second of them, 3.2 us for this one (`benchmarks/RESULTS.md` 0**).
FOLD_LOAD = 4096
FOLD_MIN_BLOCK = 8
FOLD_MAX_BLOCK = 64


def _floor_power_of_2(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def fold_tiling(n_examples: int, items_per_example: int, D: int, device: torch.device) -> tuple[int, int, int]:
    """(examples, items, columns) of one `fold_examples` tile, for a grid of ``cdiv(D, columns)``."""
    processors = num_programs_target(device) // 4
    block = min(FOLD_MAX_BLOCK, max(FOLD_MIN_BLOCK, _floor_power_of_2(D // processors)))
    items = min(triton.next_power_of_2(items_per_example), FOLD_LOAD // block)
    examples = min(triton.next_power_of_2(n_examples), max(1, FOLD_LOAD // (block * items)))
    return examples, items, block


def fold_examples(
    partial: torch.Tensor, n_examples: int, count: float, weight: torch.Tensor, bias: torch.Tensor | None,
    need_dw: bool, need_db: bool, tap_positions: tuple[int, int], width: int, launch=_direct,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """dweight, dbias and a tap's gradient from per-item partial gradients ``[examples * k, 1 or 2,
    D]`` (float32; each example's k items adjacent; channel 0 the weight's, 1 the bias's), in one
    launch: each example's gradient is the sum of its items.

    ``tap_positions`` = (k of the weight, k of the bias) in the tap's layout, -1 for a
    parameter not in it; ``width`` is the layout's width.
    """
    partial = partial.contiguous()
    n_items, channels, D = partial.shape
    if n_examples <= 0 or n_items % n_examples:
        raise ValueError(f"{n_items} work items do not split into {n_examples} examples")
    dw = _empty(D, weight.dtype, weight.device) if need_dw else None
    db = _empty(D, bias.dtype, bias.device) if need_db and bias is not None else None
    out = _empty(width, torch.float32, partial.device)
    n_names = sum(1 for k in tap_positions if k >= 0)
    examples, items, block = fold_tiling(n_examples, n_items // n_examples, D, partial.device)
    launch(_fold_kernel)[(triton.cdiv(D, block),)](
        partial, dw if dw is not None else out, db if db is not None else out, out,
        D, n_examples, n_items // n_examples, float(count),
        HAS_BIAS=channels == 2, CHANNELS=channels, WRITE_DW=dw is not None, WRITE_DB=db is not None,
        TAP_W=tap_positions[0], TAP_B=tap_positions[1], N_NAMES=n_names,
        EXAMPLES=examples, ITEMS=items, BLOCK=block, num_warps=4,
    )
    return dw, db, out
