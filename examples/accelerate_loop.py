"""A custom `accelerate` training loop whose batch size follows the gradient noise scale.

    python examples/accelerate_loop.py                          # CPU, offline corpus, tiny Llama
    accelerate launch examples/accelerate_loop.py --batch_size_policy gns:max=256
    accelerate launch --num_processes 2 examples/accelerate_loop.py

The loop accumulates gradients itself in groups sized by `hf_gns.GNSLoop` (see its
docstring), normalizes every micro-batch's loss by the tokens of its whole group, and
counts its LR schedule and budget in tokens. Logs go to ``OUTPUT_DIR/gns_log.jsonl``
(plot them with ``hf-gns plot OUTPUT_DIR``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, LlamaConfig, default_data_collator, get_cosine_schedule_with_warmup, set_seed

import hf_gns
from corpus import default_corpus_files, group_texts, load_text_dataset, train_bpe_tokenizer


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="runs/accelerate_loop")
    p.add_argument("--cache_dir", default=os.path.join(os.path.expanduser("~"), ".cache", "hf_gns"))
    p.add_argument("--max_train_chars", type=int, default=1_000_000)
    p.add_argument("--block_size", type=int, default=128)
    p.add_argument("--hidden_size", type=int, default=128)
    p.add_argument("--num_hidden_layers", type=int, default=4)
    p.add_argument("--micro_batch_size", type=int, default=4, help="sequences per micro-batch per process")
    p.add_argument("--accumulation_steps", type=int, default=2, help="micro-batches per step at the start")
    p.add_argument("--batch_size_policy", default="gns:max=64", help="'none', 'gns[:...]', 'linear:A:B', 'steps:...'")
    p.add_argument("--max_tokens", type=float, default=400_000)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--lr_scaling", default="none", choices=["none", "sqrt", "linear"])
    p.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"])
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    set_seed(args.seed)
    corpus_dir = os.path.join(args.cache_dir, "corpus", f"py{sys.version_info.major}.{sys.version_info.minor}-{args.max_train_chars}")
    with accelerator.main_process_first():
        files = default_corpus_files(corpus_dir, args.max_train_chars)
        tokenizer = train_bpe_tokenizer([files[0]], 4096, os.path.join(corpus_dir, "bpe-4096"))
        data = group_texts(load_text_dataset(None, files, os.path.join(args.cache_dir, "datasets")), tokenizer,
                           args.block_size)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.hidden_size, intermediate_size=4 * args.hidden_size,
                         num_hidden_layers=args.num_hidden_layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=args.block_size, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config)
    hf_gns.patch_model(model)

    loader = DataLoader(data["train"], batch_size=args.micro_batch_size, shuffle=True, drop_last=True,
                        collate_fn=default_data_collator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.1)
    tokens_per_step0 = args.micro_batch_size * args.accumulation_steps * args.block_size * accelerator.num_processes
    total_steps0 = math.ceil(args.max_tokens / tokens_per_step0)  # steps at the starting batch
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, total_steps0 // 10), total_steps0)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    policy = None if args.batch_size_policy == "none" else args.batch_size_policy  # the CLI's 'off'
    loop = hf_gns.GNSLoop(accelerator, model, batch_size_policy=policy,
                          accumulation_steps=args.accumulation_steps, max_tokens=args.max_tokens,
                          lr_scaling=args.lr_scaling)
    loop.set_prepared_model(model)
    loop.wrap_scheduler(scheduler, total_steps=total_steps0)  # the schedule spans max_tokens

    os.makedirs(args.output_dir, exist_ok=True)
    log_path = os.path.join(args.output_dir, "gns_log.jsonl")
    log_file = open(log_path, "w") if accelerator.is_main_process else None
    start, epoch = time.time(), 0
    model.train()
    while not loop.done:
        for group in loop.groups(loader):
            num_items = loop.num_items(group)
            loss_sum = 0.0
            for batch, sync in loop.micro_batches(group):
                with sync:
                    loss = model(**batch, num_items_in_batch=num_items).loss
                    accelerator.backward(loss)
                loss_sum = loss_sum + loss.detach()
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            logs = loop.step()
            if log_file is not None and logs:
                record = {**logs, "loss": float(loss_sum), "learning_rate": scheduler.get_last_lr()[0], "epoch": epoch}
                log_file.write(json.dumps(record) + "\n")
                if loop.steps % 10 == 0:
                    accelerator.print(f"step {loop.steps:4d} | tokens {loop.clock.tokens:9.0f} | loss {float(loss_sum):.3f} "
                                      f"| batch {loop.batch_size} | B_simple {logs.get('gns/b_simple', float('nan')):.1f}")
            if loop.done:
                break
        epoch += 1
    final = loop.finish()
    if log_file is not None:
        log_file.close()
    accelerator.print(f"done: {loop.steps} steps, {loop.clock.tokens:.0f} tokens, final batch {loop.batch_size}, "
                      f"B_simple {final.get('gns/b_simple', float('nan')):.1f}, {time.time() - start:.0f}s; log: {log_path}")


if __name__ == "__main__":
    main()
