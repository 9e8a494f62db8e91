"""CPU time per training step, unpatched vs hf_gns (torch.profiler), and Triton launch cost.

    python benchmarks/profile_train_step.py [--model llama-125m]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import triton
import triton.language as tl
from torch.profiler import ProfilerActivity, profile

import hf_gns
from bench_train_step import build, step_fn


@triton.jit
def _noop(X, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(X + offs, tl.load(X + offs, mask=offs < n), mask=offs < n)


def launch_cost_us() -> float:
    x = torch.zeros(1024, device="cuda")
    for _ in range(10):
        _noop[(1,)](x, 1024, BLOCK=1024)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(2000):
        _noop[(1,)](x, 1024, BLOCK=1024)
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / 2000 * 1e6


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-125m")
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args(argv)
    print(f"triton {triton.__version__}: host time per launch of a no-op kernel {launch_cost_us():.1f} us")
    torch.manual_seed(0)
    base, vocab = build(args.model)
    base = base.cuda()
    ids = torch.randint(0, vocab, (8, 1024), device="cuda")
    patched = copy.deepcopy(base)
    hf_gns.patch_model(patched)
    for label, model, variant in [("unpatched", base, "unpatched"), ("hf_gns", patched, "hf_gns")]:
        fn = step_fn(model, ids, variant)
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            fn()
        host = (time.perf_counter() - start) / args.steps * 1e3
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / args.steps * 1e3
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                fn()
            torch.cuda.synchronize()
        events = prof.key_averages()
        gpu_ms = sum(e.self_device_time_total for e in events) / 1e3 / args.steps
        print(f"==== {label}: host time to enqueue a step {host:.1f} ms, wall {wall:.1f} ms, GPU busy {gpu_ms:.1f} ms")
        print(events.table(sort_by="self_cpu_time_total", row_limit=18))


if __name__ == "__main__":
    main()
