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

Why a shape is slow, instead of the peer comparison:

    python benchmarks/bench_norms.py --warps 8,16,32 [--dims 8192,16384]   # launch configurations
    python benchmarks/bench_norms.py --resources [--dims 4096,8192,16384]   # registers and spills

``--warps``: GPU time (CUDA graphs) of hf_gns's forward and backward kernels alone per
``num_warps``, against 2 (forward) and 3 (backward) passes at the copy bandwidth;
`backward_warps` in hf_gns/kernels/triton_norm.py takes its wide-row choice from this table.
``--fold``: GPU time of the fold kernel alone (per-item partials -> dweight, dbias, per-example
sums and squares) for the partials a backward of ``--fold_shapes`` leaves (examples x rows per
example x D, two channels for LayerNorm, one for RMSNorm), per tiling: the default of
`fold_tiling` against ``--fold_tilings`` (examples,items,columns per load; the first of them is
the previous default, 1 example x 32 items x 64 columns).
``--resources``: each kernel compiled as hf_gns launches it (its own tile and warp choices)
and what the compiler reports, registers per thread and spilled bytes; no timing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys

import torch
import triton
from torch import nn
from triton.testing import do_bench, do_bench_cudagraph

import hf_gns
from hf_gns.kernels import triton_norm as K
from hf_gns.stats import reset_stats

# (name, centered, has_bias) of the two kernel formulas, for --warps and --resources
FORMULAS = (("LayerNorm", True, True), ("RMSNorm", False, False))


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


def launch_configs(formulas, rows: int, dims: list[int], dtypes: list[torch.dtype], warps_list: list[int]) -> None:
    """--warps: forward and backward kernel GPU time per num_warps, against their pass floors."""
    base_tile, base_warps = K.tile_config, K.backward_warps
    bw = copy_bandwidth()
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s")
    for name, centered, has_bias in formulas:
        for dtype in dtypes:
            for D in dims:
                x = torch.randn(rows, D, device="cuda", dtype=dtype)
                dy = torch.randn_like(x)
                w = torch.randn(D, device="cuda")
                b = torch.randn(D, device="cuda") if has_bias else None
                floor_fwd = 2 * x.numel() * x.element_size() / bw * 1e6
                floor_bwd = 3 * x.numel() * x.element_size() / bw * 1e6
                y, mean, rstd = K.norm_forward(x, w, b, 1e-5, centered, 0.0, None, dtype)
                try:
                    for warps in warps_list:
                        K.tile_config = lambda d, _w=warps: (base_tile(d)[0], base_tile(d)[1], _w)
                        fwd = do_bench_cudagraph(lambda: K.norm_forward(x, w, b, 1e-5, centered, 0.0, None, dtype),
                                                 rep=50) * 1e3
                        K.backward_warps = lambda bd, c, size, _w=warps: _w
                        bwd = do_bench_cudagraph(lambda: K.norm_backward(dy, x, w, mean, rstd, has_bias, centered, 0.0,
                                                                         None, rows // 8, None), rep=50) * 1e3
                        print(f"{name:9} {str(dtype)[6:]:8} D={D:5d} warps={warps:2d}: fwd {fwd:7.1f} us "
                              f"({fwd / floor_fwd:4.2f}x) | bwd {bwd:7.1f} us ({bwd / floor_bwd:4.2f}x)", flush=True)
                finally:
                    K.tile_config, K.backward_warps = base_tile, base_warps


def fold_tilings(shapes: list[tuple[int, int, int]], tilings: list[tuple[int, int, int]]) -> None:
    """--fold: the fold kernel's GPU time per tiling, for the partials of each backward shape."""
    default_tiling = K.fold_tiling
    for examples, rows_per_example, D in shapes:
        rows = K.tile_config(D)[1]
        chunk = min(K.chunk_rows_for(examples * rows_per_example, torch.device("cuda"), rows), rows_per_example)
        per_example = triton.cdiv(rows_per_example, chunk)
        for channels in (2, 1):
            partial = torch.randn(examples * per_example, channels, D, device="cuda")
            w = torch.randn(D, device="cuda")
            b = torch.randn(D, device="cuda") if channels == 2 else None
            width = 1 + 2 * channels * D
            positions = (0, 1) if channels == 2 else (0, -1)
            cells = []
            for tiling in [None] + tilings:
                try:
                    if tiling is not None:
                        K.fold_tiling = lambda *args, _t=tiling: _t
                    shown = default_tiling(examples, per_example, D, partial.device) if tiling is None else tiling
                    us = do_bench_cudagraph(lambda: K.fold_examples(partial, examples, float(examples), w, b, True,
                                                                    True, positions, width), rep=50) * 1e3
                finally:
                    K.fold_tiling = default_tiling
                cells.append(f"{'x'.join(map(str, shown))}{'*' if tiling is None else ''} {us:6.1f} us")
            print(f"{examples} x {rows_per_example} rows, D={D}, {channels} channel(s), {per_example} items per "
                  f"example: " + " | ".join(cells), flush=True)


def _registers(kernel, grid, *args, **kwargs) -> tuple[int, int]:
    compiled = kernel[grid](*args, **kwargs)
    compiled._init_handles()
    return compiled.n_regs, compiled.n_spills


def kernel_resources(formulas, dims: list[int], dtypes: list[torch.dtype]) -> None:
    """--resources: registers and spilled bytes per thread of the forward and backward kernels."""
    rows = 4096
    for name, centered, has_bias in formulas:
        for dtype in dtypes:
            for D in dims:
                x = torch.randn(rows, D, device="cuda", dtype=dtype)
                w = torch.randn(D, device="cuda")
                b = torch.randn(D, device="cuda") if has_bias else None
                block_d, tile_rows, warps = K.tile_config(D)
                y = torch.empty_like(x)
                mean = torch.empty(rows, device="cuda")
                rstd = torch.empty(rows, device="cuda")
                fwd = _registers(K._norm_fwd_kernel, (rows // tile_rows,),
                                 x, w, b if b is not None else w, y, mean, rstd, rows, D, x.stride(0), y.stride(0), 1e-5,
                                 CENTERED=centered, HAS_BIAS=has_bias, OFFSET=0.0, ROUND=0, ROWS=tile_rows,
                                 BLOCK_D=block_d, num_warps=warps)
                separate_bias = has_bias and D >= K.SEPARATE_BIAS_FROM  # as norm_backward decides
                bwd_warps = K.backward_warps(block_d, centered and not separate_bias, x.element_size())
                dx = torch.empty_like(x)
                partial = torch.empty(8, 2 if has_bias else 1, D, device="cuda")
                bwd = _registers(K._norm_bwd_kernel, (8,),
                                 x, x, w, mean, rstd, dx, partial, rstd, D, x.stride(0), x.stride(0), dx.stride(0),
                                 partial.stride(0), rows // 8, 1, rows // 8, CENTERED=centered,
                                 HAS_BIAS=has_bias and not separate_bias, OFFSET=0.0, ROUND=0,
                                 USE_TABLE=False, ROWS=tile_rows, BLOCK_D=block_d, num_warps=bwd_warps)
                print(f"{name:9} {str(dtype)[6:]:8} D={D:5d}: forward {warps:2d} warps, {fwd[0]:3d} regs, "
                      f"{fwd[1]:6d} B spilled | backward {bwd_warps:2d} warps, {bwd[0]:3d} regs, {bwd[1]:6d} B spilled",
                      flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--dims", default="768,1024,2048,4096,8192,16384")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--kinds", default="layernorm,rmsnorm")
    ap.add_argument("--json", default=None)
    ap.add_argument("--warps", default=None, metavar="8,16,32",
                    help="instead: time hf_gns's kernels alone per num_warps (e.g. with --dims 8192,16384)")
    ap.add_argument("--resources", action="store_true",
                    help="instead: registers and spilled bytes per kernel as hf_gns compiles it, no timing")
    ap.add_argument("--fold", action="store_true", help="instead: the fold kernel's GPU time per tiling")
    ap.add_argument("--fold_shapes", default="2x1024x768,8x1024x768,2x1024x960,8x1024x960,4x2048x4096,64x128x768")
    ap.add_argument("--fold_tilings", default="1x32x64,1x64x16,2x128x16")
    args = ap.parse_args(argv)
    if args.fold:
        fold_tilings([tuple(map(int, s.split("x"))) for s in args.fold_shapes.split(",")],
                     [tuple(map(int, s.split("x"))) for s in args.fold_tilings.split(",")])
        return
    dims = [int(d) for d in args.dims.split(",")]
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    formulas = [f for f in FORMULAS if f[0].lower() in args.kinds.split(",")]
    if args.warps:
        launch_configs(formulas, args.rows, dims, dtypes, [int(w) for w in args.warps.split(",")])
        return
    if args.resources:
        kernel_resources(formulas, dims, dtypes)
        return
    have_liger = importlib.util.find_spec("liger_kernel") is not None
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
