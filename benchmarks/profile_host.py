"""Where the host (CPU) time of one patched norm's forward+backward goes: cProfile.

    python benchmarks/profile_host.py [--D 768] [--rows 1024] [--steps 300]

Runs the real patched module (recording on) with the GPU far from saturated, so the
figures are Python and launch costs. Also times a bare launch of the forward kernel.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch
from torch import nn

import hf_gns
from hf_gns.kernels import triton_norm as K


def host_us(fn, n: int = 300) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / n * 1e6


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--D", type=int, default=768)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args(argv)
    D, rows = args.D, args.rows
    model = nn.Sequential(nn.LayerNorm(D)).cuda()
    hf_gns.patch_model(model, kernel="triton")
    x = torch.randn(8, rows // 8, D, device="cuda", requires_grad=True)
    dy = torch.randn_like(x)
    x2 = x.detach().reshape(-1, D)
    norm = model[0]
    y, mean, rstd = K.norm_forward(x2, norm.weight, norm.bias, 1e-5, True, 0.0, None, torch.float32)
    block_d, tile_rows, warps = K.tile_config(D)
    grid = (triton_cdiv := (rows + tile_rows - 1) // tile_rows,)

    def bare_fwd():
        K._norm_fwd_kernel[grid](x2, norm.weight, norm.bias, y, mean, rstd, rows, D, x2.stride(0), y.stride(0), 1e-5,
                                 CENTERED=True, HAS_BIAS=True, OFFSET=0.0, ROUND=0, ROWS=tile_rows, BLOCK_D=block_d,
                                 num_warps=warps)

    def step():
        model(x).backward(dy)
        hf_gns.reset_stats(model)

    print(f"bare forward kernel launch: {host_us(bare_fwd):.1f} us ({triton_cdiv} programs)")
    print(f"torch.empty: {host_us(lambda: torch.empty(rows, D, device='cuda')):.1f} us")
    print(f"torch LayerNorm fwd+bwd: {host_us(lambda: nn.functional.layer_norm(x, (D,), norm.weight, norm.bias).backward(dy)):.1f} us")
    print(f"patched fwd+bwd (recording): {host_us(step):.1f} us")
    hf_gns.set_recording(model, False)
    print(f"patched fwd+bwd (off): {host_us(lambda: model(x).backward(dy)):.1f} us")
    hf_gns.set_recording(model, True)
    torch.cuda.synchronize()
    profiler = cProfile.Profile()
    # backward on this thread, so that cProfile sees the autograd Function's backward too
    with torch.autograd.set_multithreading_enabled(False):
        print(f"patched fwd+bwd (recording), backward on the calling thread: {host_us(step):.1f} us")
        profiler.enable()
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
        profiler.disable()
    stats = pstats.Stats(profiler)
    print(f"==== cProfile, {args.steps} steps (recording): by own time")
    stats.sort_stats("tottime").print_stats(30)
    print("==== by cumulative time")
    stats.sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
