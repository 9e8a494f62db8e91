"""Helper for test_resume.py (not a test module): one HF Trainer run with a growing batch, as a
process that can be killed and resumed. Alone or under torchrun (2 gloo processes):

    python resume_worker.py DIR NAME --out OUT [--kill_at STEP] [--resume STEP]

DIR holds a saved tiny model (``model/``), the token sequences (``data.pt``) and the settings
(``config.json``). The run trains in ``DIR/OUT`` (checkpoints every step), attached with
`hf_gns.attach`, on the Trainer's own shuffled sampler. Each rank appends to
``NAME.rank<r>.jsonl`` one line per micro-batch (the step it belongs to and its token ids) and one
per logged step (loss, LR, gns/*), and at the end writes its parameters to ``NAME.rank<r>.pt``.
``--kill_at STEP`` sends SIGKILL to the process itself when that step ends (before its checkpoint);
``--resume STEP`` resumes from ``OUT/checkpoint-STEP``.
"""

import argparse
import json
import os
import signal
import warnings

import torch
from token_batches import TokenSequences, collate


def main() -> None:
    import hf_gns
    from transformers import LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    ap = argparse.ArgumentParser()
    ap.add_argument("directory")
    ap.add_argument("name")
    ap.add_argument("--out", required=True)
    ap.add_argument("--kill_at", type=int, default=None)
    ap.add_argument("--resume", type=int, default=None)
    ap.add_argument("--no_attach", action="store_true", help="GNSCallback in callbacks=[...] instead of attach")
    opts = ap.parse_args()
    rank = int(os.environ.get("RANK", 0))
    cfg = json.load(open(os.path.join(opts.directory, "config.json")))
    log = open(os.path.join(opts.directory, f"{opts.name}.rank{rank}.jsonl"), "w")

    def write(record: dict) -> None:
        log.write(json.dumps(record) + "\n")
        log.flush()

    class Recording(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                write({"micro": self.state.global_step + 1, "ids": inputs["input_ids"].tolist()})
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    class Steps(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                write({"step": state.global_step, "epoch": state.epoch, "ga": args.gradient_accumulation_steps,
                       **{k: v for k, v in logs.items() if isinstance(v, (int, float))}})

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == opts.kill_at:
                log.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    model = LlamaForCausalLM.from_pretrained(os.path.join(opts.directory, "model"))
    hf_gns.patch_model(model, kernel="torch")
    args = TrainingArguments(
        output_dir=os.path.join(opts.directory, opts.out), use_cpu=True, ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None, dataloader_drop_last=True,
        per_device_train_batch_size=cfg["micro"], gradient_accumulation_steps=1, learning_rate=cfg["lr"],
        lr_scheduler_type="linear", warmup_steps=0, max_steps=-1, num_train_epochs=cfg["epochs"], logging_steps=1, report_to="none",
        save_strategy="steps", save_steps=1, seed=0, data_seed=0, max_grad_norm=1.0, disable_tqdm=True,
        dataloader_num_workers=0)
    gns = hf_gns.GNSCallback(ema=0.9, batch_size_policy=cfg["policy"], max_tokens=1e12)
    trainer = Recording(model=model, args=args, train_dataset=TokenSequences(torch.load(os.path.join(opts.directory, "data.pt"))),
                        data_collator=collate, callbacks=[Steps()] + ([gns] if opts.no_attach else []))
    if not opts.no_attach:
        hf_gns.attach(trainer, gns)
    resume = os.path.join(args.output_dir, f"checkpoint-{opts.resume}") if opts.resume is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train(resume_from_checkpoint=resume)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
               os.path.join(opts.directory, f"{opts.name}.rank{rank}.pt"))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # no rank tears the group down while the other still uses it
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
