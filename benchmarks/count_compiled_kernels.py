"""How much does patching add to a torch.compile'd model's graphs? Counts, unpatched vs patched:
dynamo graphs and graph breaks (`torch._dynamo.explain`), and the kernels inductor generates for
a few forward + backward passes of a small model (C++ kernels on CPU, Triton kernels on a GPU).

    python benchmarks/count_compiled_kernels.py [--models gpt2,llama] [--layers 2] [--device cpu]

A proxy for the launch cost of the patched compiled step: on a host-bound step every extra
kernel costs a launch. Kernel fusion differs between the CPU and GPU backends, so only a count
taken on the GPU says what the GPU runs.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch._dynamo
import torch._inductor.metrics as inductor_metrics
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import hf_gns


def build(kind: str, layers: int) -> torch.nn.Module:
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=layers, n_head=4, vocab_size=128, bos_token_id=0,
                                          eos_token_id=0))
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                                            num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                            bos_token_id=0, eos_token_id=0, pad_token_id=0))
    raise SystemExit(f"--models: unknown model {kind!r} (gpt2, llama)")


def count(model: torch.nn.Module, ids: torch.Tensor, passes: int = 2) -> dict:
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(input_ids=ids, labels=ids)
    torch._dynamo.reset()
    inductor_metrics.reset()
    compiled = torch.compile(model)
    for _ in range(passes):
        compiled(input_ids=ids, labels=ids).loss.backward()
    return {"graphs": explained.graph_count, "graph_breaks": explained.graph_break_count,
            "kernels": inductor_metrics.generated_kernel_count}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="gpt2,llama")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.layers < 1:
        ap.error(f"--layers={args.layers}: expected a positive number of layers")
    torch.manual_seed(0)
    ids = torch.randint(0, 128, (4, 16), device=args.device)
    for kind in args.models.split(","):
        base = build(kind, args.layers).to(args.device).train()
        plain = count(copy.deepcopy(base), ids)
        patched_model = copy.deepcopy(base)
        norms = len(hf_gns.patch_model(patched_model))
        patched = count(patched_model, ids)
        extra = patched["kernels"] - plain["kernels"]
        print(f"{kind}, {args.layers} layers, {norms} patched norms, {args.device}: graphs {plain['graphs']} -> "
              f"{patched['graphs']}, graph breaks {plain['graph_breaks']} -> {patched['graph_breaks']}, inductor "
              f"kernels {plain['kernels']} -> {patched['kernels']} ({extra:+d}, {extra / max(norms, 1):+.1f} per norm)")


if __name__ == "__main__":
    main()
