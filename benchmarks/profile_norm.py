"""Where the time of one patched norm's forward+backward goes (torch.profiler, CPU and CUDA).

    python benchmarks/profile_norm.py [--rows 16384] [--dims 768,8192] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from triton.testing import do_bench

import hf_gns


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--dims", default="768,8192")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--cprofile", action="store_true", help="also print a Python-level profile")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    for D in map(int, args.dims.split(",")):
        model = nn.Sequential(nn.LayerNorm(D)).to("cuda", dtype)
        hf_gns.patch_model(model, kernel="triton")
        x = torch.randn(args.examples, args.rows // args.examples, D, device="cuda", dtype=dtype, requires_grad=True)
        dy = torch.randn_like(x)

        def step():
            x.grad = None
            for p in model.parameters():
                p.grad = None
            model(x).backward(dy)
            hf_gns.reset_stats(model)

        for _ in range(20):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                step()
            torch.cuda.synchronize()
        print(f"==== LayerNorm {args.rows}x{D} {args.dtype}: 20 steps")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=8))
        print("do_bench median us:", do_bench(step, warmup=25, rep=200, return_mode="median") * 1e3)
        if args.cprofile:
            import cProfile
            import pstats

            torch.cuda.synchronize()
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(200):
                step()
            torch.cuda.synchronize()
            profiler.disable()
            print(f"==== cProfile, 200 steps, LayerNorm {args.rows}x{D}")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
