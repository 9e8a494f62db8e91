"""Registers and spills per thread of the norm kernels (Triton's compiled-kernel report), per D.

    python benchmarks/kernel_resources.py [--dims 4096,8192,16384]

Compiles each kernel as `hf_gns` launches it (its own tile and warp choices) and prints what the
compiler reports: registers per thread and spilled bytes. No timing.
"""

from __future__ import annotations

import argparse

import torch

from hf_gns.kernels import triton_norm as K


def report(kernel_fn, *args, **kwargs):
    compiled = kernel_fn(*args, **kwargs)
    compiled._init_handles()
    return compiled.n_regs, compiled.n_spills


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", default="4096,8192,16384")
    args = ap.parse_args(argv)
    rows = 4096
    for centered, has_bias, name in ((True, True, "LayerNorm"), (False, False, "RMSNorm")):
        for dtype in (torch.bfloat16, torch.float32):
            for D in map(int, args.dims.split(",")):
                x = torch.randn(rows, D, device="cuda", dtype=dtype)
                w = torch.randn(D, device="cuda")
                b = torch.randn(D, device="cuda") if has_bias else None
                block_d, tile_rows, warps = K.tile_config(D)
                y = torch.empty_like(x)
                mean = torch.empty(rows, device="cuda")
                rstd = torch.empty(rows, device="cuda")
                fwd = report(lambda *a, **k: K._norm_fwd_kernel[(rows // tile_rows,)](*a, **k),
                             x, w, b if b is not None else w, y, mean, rstd, rows, D, x.stride(0), y.stride(0), 1e-5,
                             CENTERED=centered, HAS_BIAS=has_bias, OFFSET=0.0, ROUND=0, ROWS=tile_rows,
                             BLOCK_D=block_d, num_warps=warps)
                separate_bias = has_bias and D >= K.SEPARATE_BIAS_FROM  # as norm_backward decides
                bwd_warps = K.backward_warps(block_d, centered and not separate_bias, x.element_size())
                dx = torch.empty_like(x)
                partial = torch.empty(8, 2 if has_bias else 1, D, device="cuda")
                bwd = report(lambda *a, **k: K._norm_bwd_kernel[(8,)](*a, **k),
                             x, x, w, mean, rstd, dx, partial, rstd, D, x.stride(0), x.stride(0), dx.stride(0),
                             partial.stride(0), rows // 8, 1, rows // 8, CENTERED=centered,
                             HAS_BIAS=has_bias and not separate_bias, OFFSET=0.0, ROUND=0,
                             USE_TABLE=False, ROWS=tile_rows, BLOCK_D=block_d, num_warps=bwd_warps)
                print(f"{name:9} {str(dtype)[6:]:8} D={D:5d}: forward {warps:2d} warps, {fwd[0]:3d} regs, "
                      f"{fwd[1]:6d} B spilled | backward {bwd_warps:2d} warps, {bwd[0]:3d} regs, {bwd[1]:6d} B spilled",
                      flush=True)


if __name__ == "__main__":
    main()
