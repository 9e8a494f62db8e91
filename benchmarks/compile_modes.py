"""Do the statistics survive each `torch.compile` mode? Compiled vs eager hf_gns, tiny models.

For a tiny Llama and GPT-2 (dropout off) under bf16 and fp16 autocast, three micro-batches are
accumulated eagerly and through ``torch.compile(model, mode=..., fullgraph=True)`` (after one
warm-up step, which records CUDA graphs for ``reduce-overhead``, each call then marked as a new
step with ``torch.compiler.cudagraph_mark_step_begin``, as PyTorch asks of loops that keep a
call's outputs past the next call); prints the relative difference
of sum_i ||c_i||^2 and ||sum_i c_i||^2 per parameter, or the error a mode raised. Each mode and
model first runs the same loop unpatched, as a control: an error there is the mode's, not hf_gns's.

    python benchmarks/compile_modes.py [--modes default,reduce-overhead,max-autotune-no-cudagraphs]
"""

from __future__ import annotations

import argparse
import copy

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import hf_gns


def build(kind: str) -> torch.nn.Module:
    if kind == "llama":
        config = LlamaConfig(hidden_size=192, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=256)
        return LlamaForCausalLM(config).cuda()
    config = GPT2Config(n_embd=192, n_layer=2, n_head=4, vocab_size=256, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config).cuda()


def accumulate(model, fn, batches, dtype, mark_steps: bool = False):
    for ids in batches:
        if mark_steps:  # CUDA graphs: each call's outputs may be overwritten by the next replay
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast("cuda", dtype=dtype):
            logits = fn(input_ids=ids, use_cache=False).logits
        torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids.flatten()).backward()
    return hf_gns.gather_stats(model)


def control_run(base: torch.nn.Module, mode: str, batches) -> str:
    """The same accumulation loop, twice, on the unpatched model under ``mode`` (bf16)."""
    torch._dynamo.reset()
    model = copy.deepcopy(base)
    try:
        fn = torch.compile(model, mode=None if mode == "default" else mode, fullgraph=True)
        for _ in range(2):
            for ids in batches:
                if mode == "reduce-overhead":
                    torch.compiler.cudagraph_mark_step_begin()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    logits = fn(input_ids=ids, use_cache=False).logits
                torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids.flatten()).backward()
        torch.cuda.synchronize()
    except Exception as error:
        return f"FAILED {type(error).__name__}: {str(error)[:200]}"
    return "ok"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="default,reduce-overhead,max-autotune-no-cudagraphs")
    args = ap.parse_args()
    torch.manual_seed(0)
    batches = [torch.randint(0, 256, (4, 64), device="cuda") for _ in range(3)]
    bases = {kind: build(kind) for kind in ("llama", "gpt2")}
    for mode in args.modes.split(","):
        for kind, base in bases.items():
            control = control_run(base, mode, batches)  # does the unpatched model survive this loop?
            print(f"{kind} unpatched {mode}: {control}", flush=True)
            for dtype in (torch.bfloat16, torch.float16):
                eager = copy.deepcopy(base)
                hf_gns.patch_model(eager)
                want = accumulate(eager, eager, batches, dtype)
                torch._dynamo.reset()
                model = copy.deepcopy(base)
                hf_gns.patch_model(model)
                label = f"{kind} {str(dtype).removeprefix('torch.')} {mode}"
                try:
                    fn = torch.compile(model, mode=None if mode == "default" else mode, fullgraph=True)
                    marks = mode == "reduce-overhead"
                    accumulate(model, fn, batches, dtype, marks)  # warm-up (CUDA graph recording)
                    got = accumulate(model, fn, batches, dtype, marks)
                except Exception as error:  # a mode that fails is the finding
                    print(f"{label}: FAILED {type(error).__name__}: {str(error)[:300]}", flush=True)
                    continue
                sq = max(abs(got.per_param[n].example_sq_norm_sum - w.example_sq_norm_sum) / w.example_sq_norm_sum
                         for n, w in want.per_param.items())
                batch = max(abs(got.per_param[n].batch_sq_norm - w.batch_sq_norm) / w.example_sq_norm_sum
                            for n, w in want.per_param.items())
                print(f"{label}: params {len(got.per_param)}/{len(want.per_param)} examples {got.total.num_examples} "
                      f"rel. difference sum||c_i||^2 {sq:.1e}, ||sum c_i||^2 {batch:.1e}", flush=True)


if __name__ == "__main__":
    main()
