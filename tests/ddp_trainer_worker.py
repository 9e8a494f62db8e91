"""Helper for test_batch_control.py (not a test module): an HF Trainer run with a batch-size policy
under 2 gloo processes on CPU, launched by torchrun:

    python -m torch.distributed.run --nproc_per_node 2 ddp_trainer_worker.py <dir> <run> [<run> ...]

<dir> holds a saved tiny model (`model/`) and, per run name, `<run>.json` (Trainer settings and the
policy) and `<run>.pt` (a list of 1-D token tensors). Each rank writes `<run>.rank<r>.json`: per
optimizer step the accumulation count after the step, the loss, LR and gns/* values logged, and
a digest of the parameters at the end.
"""

import hashlib
import json
import os
import sys
import warnings

import torch
from token_batches import TokenSequences, collate


def digest(model) -> dict:
    h = hashlib.sha256()
    total = 0.0
    for name, p in sorted(model.named_parameters()):
        data = p.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(data.numpy().tobytes())
        total += float(data.double().pow(2).sum())
    return {"sha256": h.hexdigest(), "sq_norm": total}


def run(directory: str, name: str, rank: int) -> None:
    import hf_gns
    from transformers import LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    class Recorder(TrainerCallback):
        def __init__(self):
            self.ga = {}

        def on_step_end(self, args, state, control, **kwargs):
            self.ga[state.global_step] = args.gradient_accumulation_steps

    with open(os.path.join(directory, f"{name}.json")) as f:
        cfg = json.load(f)
    seqs = torch.load(os.path.join(directory, f"{name}.pt"))
    model = LlamaForCausalLM.from_pretrained(os.path.join(directory, "model"))
    model.train()
    hf_gns.patch_model(model, kernel="torch")
    args = TrainingArguments(
        output_dir=os.path.join(directory, f"out_{name}"), use_cpu=True, ddp_backend="gloo",
        dataloader_drop_last=True, per_device_train_batch_size=cfg["micro"], gradient_accumulation_steps=1,
        learning_rate=cfg["lr"], lr_scheduler_type=cfg["schedule"], warmup_steps=0,
        max_steps=cfg["max_steps"], num_train_epochs=cfg.get("epochs", 1), logging_steps=1, report_to="none",
        save_strategy="no", seed=0, data_seed=0, max_grad_norm=1.0, disable_tqdm=True, dataloader_num_workers=0,
    )
    gns = hf_gns.GNSCallback(ema=0.9, batch_size_policy=cfg["policy"], max_tokens=cfg.get("max_tokens"))
    rec = Recorder()
    trainer = Trainer(model=model, args=args, train_dataset=TokenSequences(seqs), data_collator=collate,
                      callbacks=[gns, rec])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    keys = ("loss", "learning_rate", "gns/b_simple", "gns/g2", "gns/trace_sigma", "gns/tokens",
            "gns/accumulation_steps", "gns/examples")
    steps = [{"step": e["step"], "ga_after": rec.ga[e["step"]], **{k: e.get(k) for k in keys}}
             for e in trainer.state.log_history if "loss" in e]
    out = {"rank": rank, "world": args.world_size, "steps": steps, "changes": gns.control.changes,
           "max_steps": trainer.state.max_steps, "global_step": trainer.state.global_step,
           "params": digest(model)}
    with open(os.path.join(directory, f"{name}.rank{rank}.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    torch.set_num_threads(1)
    directory, names = sys.argv[1], sys.argv[2:]
    rank = int(os.environ["RANK"])
    for name in names:
        run(directory, name, rank)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # no rank tears the group down while the other still uses it
        torch.distributed.destroy_process_group()
