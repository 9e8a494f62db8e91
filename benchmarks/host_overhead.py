"""Host (CPU) time of each layer of one patched norm call, GPU work excluded.

    python benchmarks/host_overhead.py [--D 768]

Each piece is timed by wall clock over many calls with the GPU far from saturated, so
the figure is what Python and the launches cost the CPU.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import hf_gns
from profile_host import host_us  # noqa: E402 (same folder)
from hf_gns.kernels import op
from hf_gns.kernels import triton_norm as K


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--D", type=int, default=768)
    ap.add_argument("--rows", type=int, default=1024)
    args = ap.parse_args(argv)
    D, rows = args.D, args.rows
    module = nn.Sequential(nn.LayerNorm(D)).cuda()
    norm = module[0]
    hf_gns.patch_model(module, kernel="triton")
    state = norm.__dict__["_hf_gns"]
    x = torch.randn(8, rows // 8, D, device="cuda", requires_grad=True)
    x2 = x.detach().reshape(-1, D)
    dy = torch.randn_like(x)
    y, mean, rstd = K.norm_forward(x2, norm.weight, norm.bias, 1e-5, True, 0.0, None, torch.float32)
    cfg = op.kernel_config(state.plan.formula, 1e-5, x, norm.weight)
    rows_ = op.ExampleRows(8, rows // 8)
    results = {
        "empty x3": host_us(lambda: [torch.empty(rows, D, device="cuda") for _ in range(3)]),
        "kernel_config": host_us(lambda: op.kernel_config(state.plan.formula, 1e-5, x, norm.weight)),
        "K.norm_forward": host_us(lambda: K.norm_forward(x2, norm.weight, norm.bias, 1e-5, True, 0.0, None,
                                                         torch.float32)),
        "K.norm_backward": host_us(lambda: K.norm_backward(dy.reshape(-1, D), x2, norm.weight, mean, rstd, True,
                                                           True, 0.0, None, rows // 8, None)),
        "torch LayerNorm fwd+bwd": host_us(lambda: nn.functional.layer_norm(x, (D,), norm.weight, norm.bias)
                                           .backward(dy)),
        "_NormFunction fwd+bwd, no sink": host_us(lambda: op._NormFunction.apply(x2.requires_grad_(), norm.weight,
                                                                                 norm.bias, cfg, None, None)
                                                  .backward(dy.reshape(-1, D))),
        "_NormFunction fwd+bwd, sink": host_us(lambda: op._NormFunction.apply(
            x2.requires_grad_(), norm.weight, norm.bias, cfg, rows_, lambda pe, s: None).backward(dy.reshape(-1, D))),
        "patched module fwd+bwd (recording)": host_us(lambda: (module(x).backward(dy), hf_gns.reset_stats(module))),
    }
    hf_gns.set_recording(module, False)
    results["patched module fwd+bwd (off)"] = host_us(lambda: module(x).backward(dy))
    hf_gns.set_recording(module, True)
    results["gather_stats_async"] = host_us(lambda: (module(x).backward(dy), hf_gns.gather_stats_async(module))) \
        - results["patched module fwd+bwd (recording)"]
    for k, v in results.items():
        print(f"{k:40s} {v:8.1f} us")


if __name__ == "__main__":
    main()
