"""Forward+backward time of normalization layers: torch, torch.compile, Liger, hf_gns.

Peers: "torch" is nn.LayerNorm, or for RMSNorm transformers' LlamaRMSNorm code in eager
PyTorch; "torch_fused" is nn.RMSNorm (F.rms_norm); "compile" is torch.compile of "torch".

    python benchmarks/bench_norms.py [--rows 16384] [--dims 768,1024,...] [--json out.json]

Every variant runs ``y = norm(x); y.backward(dy)`` with fresh ``.grad`` each call
(`triton.testing.do_bench`, median: what an eager caller sees, Python and launch
overhead included) and, as "GPU-only", replayed from a CUDA graph
(`do_bench_cudagraph`, median: the kernels alone). hf_gns runs the real patched module: per-example
norms recorded into its taps (B examples of rows/B rows each; the Triton kernels in eager mode),
"off" (recording switched off: the module's own forward) and "compile" (torch.compile of the
patched module: inductor's code for the slotted formulation, against "compile" of the peer). Effective bandwidth counts 5 passes over rows x D
(read x fwd, write y, read x and dy bwd, write dx) against a measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch
import triton
from torch import nn
from triton.testing import do_bench, do_bench_cudagraph

import hf_gns
from hf_gns.stats import reset_stats


class HFLlamaRMSNorm(nn.Module):
    """transformers' LlamaRMSNorm forward, verbatim in behaviour (the eager HF baseline)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = do_bench(lambda: b.copy_(a), warmup=50, rep=300, return_mode="median")
    return 2 * a.numel() / (ms * 1e-3)


def make_module(kind: str, D: int, dtype: torch.dtype, impl: str) -> nn.Module:
    if impl == "liger":
        from liger_kernel.transformers import LigerLayerNorm, LigerRMSNorm

        m = LigerLayerNorm(D) if kind == "layernorm" else LigerRMSNorm(D)
    elif kind == "layernorm":
        m = nn.LayerNorm(D)
    elif impl == "torch_fused":
        m = nn.RMSNorm(D, eps=1e-6)
    else:
        m = HFLlamaRMSNorm(D)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m.to(device="cuda", dtype=dtype)


def time_variant(kind, rows, D, dtype, impl, examples, graph: bool = False) -> float:
    torch.manual_seed(0)
    module = make_module(kind, D, dtype, "liger" if impl == "liger" else ("torch_fused" if impl == "torch_fused" else "torch"))
    params = list(module.parameters())
    x = torch.randn(examples, rows // examples, D, device="cuda", dtype=dtype, requires_grad=True)
    dy = torch.randn_like(x)
    fn_module = module
    if impl == "compile":
        fn_module = torch.compile(module)
    if impl in ("hf_gns", "hf_gns_off", "hf_gns_compile"):
        wrapper = nn.Sequential(module)
        hf_gns.patch_model(wrapper, kernel="auto")
        fn_module = torch.compile(wrapper) if impl == "hf_gns_compile" else wrapper
        if impl == "hf_gns_off":
            hf_gns.set_recording(wrapper, False)  # the module's own forward, nothing recorded

    def step():
        x.grad = None
        for p in params:
            p.grad = None
        y = fn_module(x)
        y.backward(dy)
        if impl in ("hf_gns", "hf_gns_compile"):
            reset_stats(fn_module)

    step()
    if graph:  # GPU time alone: the step's kernels replayed from a CUDA graph, no Python
        torch.cuda.synchronize()
        return do_bench_cudagraph(step, rep=100, return_mode="median") * 1e3
    return do_bench(step, warmup=25, rep=150, return_mode="median") * 1e3  # microseconds


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--dims", default="768,1024,2048,4096,8192,16384")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--kinds", default="layernorm,rmsnorm")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    try:
        import liger_kernel  # noqa: F401
        have_liger = True
    except ImportError:
        have_liger = False
    bw = copy_bandwidth()
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
          f"copy bandwidth {bw / 1e12:.2f} TB/s, liger {'yes' if have_liger else 'no'}", flush=True)
    impls = ["torch", "torch_fused", "compile"] + (["liger"] if have_liger else []) + ["hf_gns", "hf_gns_off",
                                                                                      "hf_gns_compile"]
    results = []
    header = f"{'kind':9} {'dtype':8} {'rows x D':>12} {'floor':>6} " + " ".join(f"{i:>10}" for i in impls) + \
        "  gns/best  gns/floor  off/on  GB/s | GPU-only: gns/best gns/floor off/on"
    print(header)
    for kind in args.kinds.split(","):
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, dtype_name)
            for D in map(int, args.dims.split(",")):
                row = {"kind": kind, "dtype": dtype_name, "rows": args.rows, "D": D}
                floor_us = 5 * args.rows * D * dtype.itemsize / bw * 1e6
                row["floor_us"] = floor_us
                for impl in impls:
                    if impl == "torch_fused" and kind != "rmsnorm":
                        row[impl] = math.nan  # nn.RMSNorm (F.rms_norm); LayerNorm's fused op is "torch"
                        continue
                    try:
                        row[impl] = time_variant(kind, args.rows, D, dtype, impl, args.examples)
                    except Exception as error:  # a peer that fails at a shape is reported, not fatal
                        print(f"  {impl} failed at {kind} {dtype_name} D={D}: {error}", file=sys.stderr)
                        row[impl] = math.nan
                    torch._dynamo.reset()
                for impl in ("torch", "torch_fused", "compile", "liger", "hf_gns", "hf_gns_off", "hf_gns_compile"):
                    if math.isnan(row.get(impl, math.nan)):
                        continue
                    try:
                        row[impl + "_gpu"] = time_variant(kind, args.rows, D, dtype, impl, args.examples, graph=True)
                    except Exception as error:
                        print(f"  graph timing of {impl} failed: {error}", file=sys.stderr)
                        row[impl + "_gpu"] = math.nan
                gpu_peers = [row.get(i + "_gpu", math.nan) for i in ("torch", "torch_fused", "liger")]
                gpu_peers = [t for t in gpu_peers if not math.isnan(t)]
                row["gpu_vs_best"] = row.get("hf_gns_gpu", math.nan) / min(gpu_peers) if gpu_peers else math.nan
                row["gpu_vs_floor"] = row.get("hf_gns_gpu", math.nan) / floor_us
                row["gpu_off_vs_on"] = row.get("hf_gns_off_gpu", math.nan) / row.get("hf_gns_gpu", math.nan)
                peers = [row[i] for i in ("torch", "torch_fused", "compile", "liger") if i in row and not math.isnan(row[i])]
                best = min(peers)
                row["vs_best"] = row["hf_gns"] / best
                row["vs_floor"] = row["hf_gns"] / floor_us
                row["off_vs_on"] = row["hf_gns_off"] / row["hf_gns"]
                row["compiled_vs_compile"] = row.get("hf_gns_compile_gpu", math.nan) / row.get("compile_gpu", math.nan)
                row["gbps"] = 5 * args.rows * D * dtype.itemsize / (row["hf_gns"] * 1e-6) / 1e9
                results.append(row)
                print(f"{kind:9} {dtype_name:8} {args.rows:>6}x{D:<5} {floor_us:6.0f} "
                      + " ".join(f"{row[i]:10.1f}" for i in impls)
                      + f"  {row['vs_best']:8.2f}  {row['vs_floor']:9.2f}  {row['off_vs_on']:6.2f}  {row['gbps']:5.0f}"
                      + f" | {row['gpu_vs_best']:8.2f} {row['gpu_vs_floor']:9.2f} {row['gpu_off_vs_on']:6.2f}"
                      + f" compiled/compile {row['compiled_vs_compile']:5.2f}",
                      flush=True)
                if args.json:  # rewritten after every row, so a cut-off run keeps what it measured
                    with open(args.json, "w") as f:
                        json.dump({"copy_bandwidth": bw, "device": torch.cuda.get_device_name(),
                                   "torch": torch.__version__, "triton": triton.__version__,
                                   "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
