"""GPU time of the norm kernels alone at wide rows, per launch configuration (CUDA graphs).

    python benchmarks/tune_wide.py [--rows 16384] [--dims 8192,16384]

For each norm and D: forward and backward kernel times for num_warps in (8, 16, 32), against
2 (forward) and 3 (backward) passes at the measured copy bandwidth. `backward_warps` in
hf_gns/kernels/triton_norm.py takes its wide-row choice from this table.
"""

from __future__ import annotations

import argparse

import torch
from triton.testing import do_bench_cudagraph

from hf_gns.kernels import triton_norm as K


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--dims", default="8192,16384")
    args = ap.parse_args(argv)
    base_tile, base_warps = K.tile_config, K.backward_warps
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    c = torch.empty_like(a)
    bw = 2 * a.numel() / (do_bench_cudagraph(lambda: c.copy_(a), rep=100) * 1e-3)
    del a, c
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s")
    for centered, has_bias, name in ((True, True, "LayerNorm"), (False, False, "RMSNorm")):
        for dtype in (torch.bfloat16, torch.float32):
            for D in map(int, args.dims.split(",")):
                x = torch.randn(args.rows, D, device="cuda", dtype=dtype)
                dy = torch.randn_like(x)
                w = torch.randn(D, device="cuda")
                b = torch.randn(D, device="cuda") if has_bias else None
                floor_fwd = 2 * x.numel() * x.element_size() / bw * 1e6
                floor_bwd = 3 * x.numel() * x.element_size() / bw * 1e6
                y, mean, rstd = K.norm_forward(x, w, b, 1e-5, centered, 0.0, None, dtype)
                for warps in (8, 16, 32):
                    K.tile_config = lambda d, _w=warps: (base_tile(d)[0], base_tile(d)[1], _w)
                    fwd = do_bench_cudagraph(lambda: K.norm_forward(x, w, b, 1e-5, centered, 0.0, None, dtype), rep=50) * 1e3
                    K.backward_warps = lambda bd, c, size, _w=warps: _w
                    bwd = do_bench_cudagraph(lambda: K.norm_backward(dy, x, w, mean, rstd, has_bias, centered, 0.0,
                                                                     None, args.rows // 8, None), rep=50) * 1e3
                    print(f"{name:9} {str(dtype)[6:]:8} D={D:5d} warps={warps:2d}: fwd {fwd:7.1f} us "
                          f"({fwd / floor_fwd:4.2f}x) | bwd {bwd:7.1f} us ({bwd / floor_bwd:4.2f}x)", flush=True)
                K.tile_config, K.backward_warps = base_tile, base_warps


if __name__ == "__main__":
    main()
