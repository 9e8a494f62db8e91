"""One optimizer step of a ~125M model: unpatched vs hf_gns-patched (+ what GNSCallback does).

    python benchmarks/bench_train_step.py [--batch 8] [--seq 1024] [--json out.json]

bf16 autocast, AdamW, fp32 master weights. The patched step also gathers the statistics
and estimates GNS every step (one host sync), exactly like GNSCallback's on_step_end.
Median step time from `triton.testing.do_bench`.
"""

from __future__ import annotations

import argparse
import copy
import json

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from triton.testing import do_bench

import hf_gns


def build(name: str):
    if name == "gpt2-124m":
        cfg = GPT2Config(n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return GPT2LMHeadModel(cfg), cfg.vocab_size
    cfg = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                      num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=2048)
    return LlamaForCausalLM(cfg), cfg.vocab_size


def step_fn(model, ids, patched: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if patched:
            stats = hf_gns.gather_stats(model)
            hf_gns.estimate(stats)

    return step


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--models", default="gpt2-124m,llama-125m")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        base, vocab = build(name)
        base = base.cuda()
        ids = torch.randint(0, vocab, (args.batch, args.seq), device="cuda")
        patched = copy.deepcopy(base)
        hf_gns.patch_model(patched)
        times = {}
        for label, model, is_patched in [("unpatched", base, False), ("hf_gns", patched, True),
                                         ("unpatched_again", base, False)]:
            fn = step_fn(model, ids, is_patched)
            fn()
            times[label] = do_bench(fn, warmup=200, rep=2000, return_mode="median")
        ratio = times["hf_gns"] / min(times["unpatched"], times["unpatched_again"])
        row = {"model": name, "batch": args.batch, "seq": args.seq, **times, "ratio": ratio}
        rows.append(row)
        print(f"{name}: unpatched {times['unpatched']:.2f} ms (again {times['unpatched_again']:.2f}), "
              f"hf_gns {times['hf_gns']:.2f} ms, ratio {ratio:.3f}", flush=True)
        del base, patched
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
