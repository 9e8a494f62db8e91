"""Does GNS stay right under DDP and FSDP2, eager and compiled? One HF Trainer run per launch.

A Llama built from a config (seeded, so every launch starts from the same weights) learns a
synthetic language (each sequence counts up from a random start with a random stride, modulo
the vocabulary), so that B_simple is finite from the first steps. `hf_gns.GNSCallback` with the
linear batch policy runs through the Trainer's own ``fsdp`` / ``torch_compile`` arguments. Rank 0
writes per step: loss, B_simple (EMA and this step's), examples measured, accumulation steps.

    torchrun --nproc_per_node 2 benchmarks/distributed_trainer.py --mode ddp --compile --out ddp_compiled.json
    torchrun --nproc_per_node 2 benchmarks/distributed_trainer.py --mode fsdp2 --out fsdp2.json
    python benchmarks/distributed_trainer.py --compare ddp.json fsdp2.json ddp_compiled.json fsdp2_compiled.json

``--compare`` prints, per run, the steps with GNS recorded and the largest relative difference of
the step-wise B_simple and the loss from the first run's, and the batch sizes the policy chose.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile

import torch
from torch.utils.data import Dataset


class CountingSequences(Dataset):
    """``n`` sequences ``(start + stride * t) % vocab``: a language a small model learns fast."""

    def __init__(self, n: int, seq: int, vocab: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(vocab, (n, 1), generator=g)
        stride = torch.randint(1, 8, (n, 1), generator=g)
        self.ids = (start + stride * torch.arange(seq)) % vocab

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def train(args: argparse.Namespace) -> None:
    import hf_gns
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments, set_seed

    set_seed(0)
    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=4 * args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=512, max_position_embeddings=512)
    model = LlamaForCausalLM(config)
    hf_gns.patch_model(model)
    cuda = torch.cuda.is_available()
    fsdp = {}
    if args.mode == "fsdp2":
        fsdp = dict(fsdp="full_shard auto_wrap",
                    fsdp_config={"fsdp_version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]})
    with tempfile.TemporaryDirectory() as tmp:
        training = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=1,
            max_steps=args.steps, learning_rate=1e-3, warmup_steps=5, logging_steps=1, report_to=[],
            save_strategy="no", bf16=cuda, use_cpu=not cuda, torch_compile=args.compile, seed=0,
            dataloader_num_workers=0, disable_tqdm=True, **fsdp)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        data = CountingSequences(args.micro_batch * world * 8 * args.steps, args.seq, config.vocab_size)
        callback = hf_gns.GNSCallback(batch_size_policy=args.policy)
        trainer = Trainer(model=model, args=training, train_dataset=data, callbacks=[callback])
        trainer.train()
        if trainer.is_world_process_zero():
            keys = ("loss", "gns/b_simple", "gns/step_b_simple", "gns/examples", "gns/skipped",
                    "gns/accumulation_steps", "gns/batch_size")
            steps = [{k: e.get(k) for k in ("step", *keys)} for e in trainer.state.log_history if "loss" in e]
            with open(args.out, "w") as f:
                json.dump({"mode": args.mode, "compile": args.compile, "world": world, "steps": steps}, f, indent=1)


def compare(paths: list[str]) -> None:
    runs = [json.load(open(p)) for p in paths]
    reference = runs[0]["steps"]
    for path, run in zip(paths, runs):
        steps = run["steps"]
        recorded = sum(math.isfinite(s.get("gns/step_b_simple") or math.nan) for s in steps)
        pairs = [(s, r) for s, r in zip(steps, reference)]

        def worst(key: str) -> float:
            diffs = [abs(s[key] - r[key]) / abs(r[key]) for s, r in pairs
                     if s.get(key) is not None and r.get(key) and math.isfinite(s[key]) and math.isfinite(r[key])]
            return max(diffs) if diffs else math.nan

        batches = sorted({int(s["gns/batch_size"]) for s in steps if s.get("gns/batch_size")})
        print(f"{path}: {run['mode']}{' compiled' if run['compile'] else ''} x{run['world']}: "
              f"{len(steps)} steps, GNS recorded {recorded}, examples {steps[0].get('gns/examples')}, "
              f"batch sizes {batches}, final B_simple EMA {steps[-1].get('gns/b_simple')}, vs {paths[0]}: "
              f"max rel. diff step B_simple {worst('gns/step_b_simple'):.2e}, loss {worst('loss'):.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("ddp", "fsdp2"), default="ddp")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--policy", default="linear:16:64")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--micro_batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--out", default="distributed_trainer.json")
    ap.add_argument("--compare", nargs="+", default=None, metavar="JSON")
    args = ap.parse_args()
    if args.compare:
        compare(args.compare)
    else:
        train(args)


if __name__ == "__main__":
    main()
