"""Where one training micro-batch's time goes, unpatched vs hf_gns: eager or compiled.

For each variant (``plain``, ``gns``): forward + backward of one micro-batch of random tokens
under bf16 autocast, repeated; prints the median wall time (synchronized) and the host time
until ``forward`` and ``backward`` return, then one profiled micro-batch per variant and the
difference of CUDA kernel launches per kernel name (what hf_gns adds to the step).

    python benchmarks/profile_step.py --model gpt2 --mode compiled [--micro_batch 8] [--layers 12]
"""

from __future__ import annotations

import argparse
import collections
import copy
import re
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hf_gns  # noqa: E402
from bench_trainer import build_model  # noqa: E402


def micro_batch(fn, ids: torch.Tensor) -> tuple[float, float]:
    """Host seconds until forward returns, and until backward returns."""
    start = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = fn(input_ids=ids, labels=ids).loss
    forward = time.perf_counter()
    loss.backward()
    return forward - start, time.perf_counter() - forward


def kernel_counts(fn, ids: torch.Tensor) -> collections.Counter:
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        micro_batch(fn, ids)
        torch.cuda.synchronize()
    counts = collections.Counter()
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            counts[re.sub(r"_\d+$", "", event.name)[:110]] += 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2", choices=("gpt2", "llama360m"))
    ap.add_argument("--mode", default="compiled", choices=("eager", "compiled"))
    ap.add_argument("--micro_batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=None, help="keep only the first N blocks (faster compiles)")
    ap.add_argument("--iters", type=int, default=8)
    args = ap.parse_args()
    torch.manual_seed(0)
    base = build_model(args.model, False).cuda()
    if args.layers is not None:
        blocks = base.transformer.h if args.model == "gpt2" else base.model.layers
        del blocks[args.layers:]
    ids = torch.randint(0, base.config.vocab_size, (args.micro_batch, args.seq), device="cuda")
    variants = {}
    for name in ("plain", "gns"):
        model = copy.deepcopy(base)
        if name == "gns":
            hf_gns.patch_model(model)
        variants[name] = (torch.compile(model) if args.mode == "compiled" else model, model)
    for name, (fn, model) in variants.items():
        walls, forwards, backwards = [], [], []
        for i in range(args.iters + 3):
            torch.cuda.synchronize()
            start = time.perf_counter()
            forward, backward = micro_batch(fn, ids)
            torch.cuda.synchronize()
            if i >= 3:
                walls.append(time.perf_counter() - start)
                forwards.append(forward)
                backwards.append(backward)
            model.zero_grad(set_to_none=True)
        hf_gns.reset_stats(model)
        print(f"{args.model} {args.mode} mb={args.micro_batch} {name}: wall {1e3 * statistics.median(walls):.1f} ms, "
              f"host fwd {1e3 * statistics.median(forwards):.1f} ms, host bwd {1e3 * statistics.median(backwards):.1f} ms",
              flush=True)
    counts = {name: kernel_counts(fn, ids) for name, (fn, _) in variants.items()}
    print(f"CUDA kernels per micro-batch: plain {sum(counts['plain'].values())}, gns {sum(counts['gns'].values())}")
    diff = {k: counts["gns"][k] - counts["plain"][k] for k in set(counts["gns"]) | set(counts["plain"])}
    for kernel, delta in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:30]:
        if delta:
            print(f"{delta:+6d}  {kernel}")


if __name__ == "__main__":
    main()
