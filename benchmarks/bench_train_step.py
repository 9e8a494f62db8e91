"""One optimizer step of a ~125M model: unpatched vs hf_gns-patched (+ what GNSCallback does).

    python benchmarks/bench_train_step.py [--batch 8] [--seq 1024] [--json out.json]

bf16 autocast, AdamW, fp32 master weights. The patched step also gathers the statistics
and estimates GNS every step (one host sync), exactly like GNSCallback's on_step_end.
Median step time from `triton.testing.do_bench`, in interleaved rounds (median of rounds).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics

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


VARIANTS = {
    "unpatched": "the model as built",
    "kernels_only": "patched, recording off: the Triton norm kernels alone",
    "recording": "patched, per-example norms recorded, statistics never read",
    "gather_sync": "recording + gather_stats + estimate every step (one blocking host sync)",
    "hf_gns": "recording + GNSCallback's pattern: async gather, read one step later",
}


def step_fn(model, ids, variant: str):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    in_flight = []
    if variant != "unpatched":
        hf_gns.set_recording(model, variant != "kernels_only")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if variant == "recording":
            hf_gns.reset_stats(model)
        elif variant == "gather_sync":
            hf_gns.estimate(hf_gns.gather_stats(model))
        elif variant == "hf_gns":
            in_flight.append(hf_gns.gather_stats_async(model))
            if len(in_flight) > 1:
                hf_gns.estimate(in_flight.pop(0).result())

    return step


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--models", default="gpt2-124m,llama-125m")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    assert variants[0] == "unpatched", "the first variant is the baseline: unpatched"
    print("variants:\n" + "\n".join(f"  {k}: {VARIANTS[k]}" for k in variants))
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        base, vocab = build(name)
        base = base.cuda()
        ids = torch.randint(0, vocab, (args.batch, args.seq), device="cuda")
        patched = copy.deepcopy(base)
        hf_gns.patch_model(patched)
        samples: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.rounds):  # interleaved rounds: drift hits every variant alike
            for variant in variants:
                model = base if variant == "unpatched" else patched
                fn = step_fn(model, ids, variant)
                fn()
                samples[variant].append(do_bench(fn, warmup=100, rep=600, return_mode="median"))
        times = {v: statistics.median(t) for v, t in samples.items()}
        base_ms = times["unpatched"]
        row = {"model": name, "batch": args.batch, "seq": args.seq, **times, "samples": samples,
               **{f"ratio_{k}": v / base_ms for k, v in times.items() if not k.startswith("unpatched")}}
        rows.append(row)
        print(f"{name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in times.items())
              + "; " + ", ".join(f"{k[6:]}/unpatched {v:.3f}" for k, v in row.items() if k.startswith("ratio_")),
              flush=True)
        del base, patched
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
