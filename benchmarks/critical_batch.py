"""The critical batch measured directly, against B_simple, at checkpoints of a training run.

    python benchmarks/critical_batch.py branch CHECKPOINT [CHECKPOINT ...] --dataset_name D --tokenizer_name T \
        --batches 32,64,128,256,512 --tokens 5e6 [--micro_batch 32] [--block_size 512] --out DIR
    python benchmarks/critical_batch.py report RUN_DIR DIR/branch_*.json [--tolerance 0.01] \
        [--json out.json] [--plot out.png]

`branch` continues a Trainer checkpoint of `examples/train_lm.py` (its weights and AdamW state, at the
learning rate the run had there, held constant, or ``--lr``, scaled per batch with ``--lr_scaling sqrt``,
and the run's gradient clipping) once per batch size, each branch on the same tokens in
the same order (a fixed permutation of the training blocks) and the same token budget, and evaluates
each on the same validation blocks. `report` takes, per checkpoint, the critical batch as the largest
batch whose loss after the budget is within ``--tolerance`` nats of the smallest batch's (more
tokens per step no longer buys less progress per token below it), and sets it beside the run's
B_simple at that step: the norm layers' (kernel, every step) and, when the run measured it
(``--full_model_every``), the whole model's. B_simple is in examples (sequences of the run's block).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from figures import finish_plot  # noqa: E402


def _positive_batches(text: str, micro_batch: int) -> list[int]:
    batches = sorted({int(b) for b in text.split(",") if b.strip()})
    bad = [b for b in batches if b < micro_batch or b % micro_batch]
    if not batches or bad:
        raise SystemExit(f"--batches={text!r}: expected multiples of --micro_batch={micro_batch}")
    return batches


LR_SCALINGS = ("constant", "sqrt")


def scaled_lr(lr: float, batch: int, reference: int, scaling: str) -> float:
    """A branch's LR: the run's ``lr`` (``constant``), or ``lr * sqrt(batch / reference)`` (``sqrt``:
    the square-root rule for Adam, which keeps the noise of the updates the same at every batch;
    Malladi et al., 2022), ``reference`` being the batch the run trained at."""
    if scaling == "constant":
        return lr
    if scaling == "sqrt":
        return lr * math.sqrt(batch / reference)
    raise ValueError(f"lr_scaling={scaling!r}: expected one of {LR_SCALINGS}")


def branch(args: argparse.Namespace) -> list[dict]:
    """Branches from every checkpoint in ``args.checkpoints``; one model (compiled once) reloaded
    with each checkpoint's weights and AdamW state for every branch. Writes ``OUT/branch_STEP.json``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
    from transformers.trainer_utils import IntervalStrategy
    from corpus import group_texts, load_text_dataset

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name)
    raw = load_text_dataset(args.dataset_name, None, cache_dir=os.path.join(args.cache_dir, "datasets"))
    blocks = group_texts(raw, tokenizer, args.block_size, num_proc=args.preprocessing_num_workers)
    train = blocks["train"].shuffle(seed=args.data_seed).with_format("torch")
    evals = blocks["validation"].shuffle(seed=0).select(range(min(args.eval_blocks, len(blocks["validation"]))))
    evals = evals.with_format("torch")
    budget_blocks = int(args.tokens // args.block_size)
    if budget_blocks > len(train):
        raise SystemExit(f"--tokens={args.tokens:g}: more than the {len(train) * args.block_size} training tokens")
    batches = _positive_batches(args.batches, args.micro_batch)
    budget_blocks -= budget_blocks % batches[-1]  # a whole number of steps at every batch: the same tokens in all
    if budget_blocks == 0:
        raise SystemExit(f"--tokens={args.tokens:g}: less than one step of the largest batch ({batches[-1]} x {args.block_size})")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    model = AutoModelForCausalLM.from_pretrained(args.checkpoints[0], dtype=torch.float32).to(device)
    step_fn = torch.compile(model) if args.compile else model

    def evaluate() -> float:
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad(), autocast:
            for i in range(0, len(evals), args.micro_batch):
                ids = evals[i:i + args.micro_batch]["input_ids"].to(device)
                total += step_fn(input_ids=ids, labels=ids).loss.float().item() * ids.shape[0]
                count += ids.shape[0]
        model.train()
        return total / count

    results = []
    for ckpt in args.checkpoints:
        state = json.load(open(os.path.join(ckpt, "trainer_state.json")))
        real_step = ((state.get("stateful_callbacks") or {}).get("hf_gns") or {}).get("global_step", state["global_step"])
        base_args = torch.load(os.path.join(ckpt, "training_args.bin"), weights_only=False)
        # only its optimizer settings are used: no evaluation, logging or compilation of its own
        base_args.eval_strategy, base_args.save_strategy = IntervalStrategy.NO, IntervalStrategy.NO
        base_args.report_to, base_args.torch_compile, base_args.load_best_model_at_end = [], False, False
        lr = args.lr if args.lr is not None else torch.load(os.path.join(ckpt, "scheduler.pt"), weights_only=False)["_last_lr"][0]
        if not lr > 0:
            raise SystemExit(f"{ckpt}: the run's learning rate there is {lr} (the end of its schedule?): branches "
                             "would not train; pick an earlier checkpoint or give --lr")
        weights = {k: v.to(device) for k, v in AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).state_dict().items()}
        optimizer_state = torch.load(os.path.join(ckpt, "optimizer.pt"), map_location=device, weights_only=False)
        clip = float(base_args.max_grad_norm or 0.0)  # the run's clipping (the Trainer clips before its step)
        reference = args.lr_reference_batch or base_args.per_device_train_batch_size * base_args.gradient_accumulation_steps
        result = {"checkpoint": ckpt, "step": real_step, "lr": lr, "max_grad_norm": clip,
                  "lr_scaling": args.lr_scaling, "lr_reference_batch": reference,
                  "tokens": budget_blocks * args.block_size, "block_size": args.block_size,
                  "micro_batch": args.micro_batch, "branches": []}
        start_loss = None
        for batch in batches:
            torch.manual_seed(args.data_seed)
            model.load_state_dict(weights)
            optimizer = Trainer(model=model, args=base_args).create_optimizer()  # the run's parameter groups
            optimizer.load_state_dict(optimizer_state)
            branch_lr = scaled_lr(lr, batch, reference, args.lr_scaling)
            for group in optimizer.param_groups:
                group["lr"] = branch_lr
            if start_loss is None:
                start_loss = evaluate()
            accum, steps = batch // args.micro_batch, budget_blocks // batch
            begin = time.time()
            for step in range(steps):
                for k in range(accum):
                    first = (step * accum + k) * args.micro_batch
                    ids = train[first:first + args.micro_batch]["input_ids"].to(device)
                    with autocast:
                        loss = step_fn(input_ids=ids, labels=ids).loss / accum
                    loss.backward()
                if clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            row = {"batch": batch, "lr": branch_lr, "steps": steps, "tokens": steps * batch * args.block_size,
                   "seconds": time.time() - begin, "start_eval_loss": start_loss, "eval_loss": evaluate()}
            print(json.dumps({"step": real_step, **row}), flush=True)
            result["branches"].append(row)
            del optimizer
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"branch_{real_step}.json"), "w") as f:
            json.dump(result, f, indent=1)
        results.append(result)
    return results


def critical_batch(branches: list[dict], tolerance: float) -> float:
    """The largest batch whose loss after the budget is within ``tolerance`` of the smallest batch's."""
    rows = sorted(branches, key=lambda r: r["batch"])
    reference = rows[0]["eval_loss"]
    keeping_up = [r["batch"] for r in rows if r["eval_loss"] <= reference + tolerance]
    # the largest batch of the unbroken run of batches that keep up (a larger one that catches up
    # again after one that fell behind does not count)
    best = rows[0]["batch"]
    for r in rows:
        if r["batch"] not in keeping_up:
            break
        best = r["batch"]
    return float(best)


def b_simple_at(run_dir: str, step: int) -> dict:
    """The run's B_simple (examples) at ``step``: norm layers (kernel) and whole model (diagnostic)."""
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "gns_history.jsonl"))]
    upto = [r for r in rows if r["step"] <= step]
    kernel = next((r["gns/b_simple"] for r in reversed(upto) if r.get("gns/b_simple", -1) > 0), math.nan)
    full = next((r["gns/full_model_b_simple"] for r in reversed(upto) if r.get("gns/full_model_b_simple", -1) > 0), math.nan)
    ln = next((r["gns/full_model_ln_b_simple"] for r in reversed(upto) if r.get("gns/full_model_ln_b_simple", -1) > 0),
              math.nan)
    tokens = next((r["gns/tokens"] for r in reversed(upto) if "gns/tokens" in r), math.nan)
    return {"norm_layers_kernel": kernel, "whole_model": full, "norm_layers_diagnostic": ln, "tokens": tokens}


def report(run_dir: str, branch_files: list[str], tolerance: float, out: str | None, plot_path: str | None) -> list[dict]:
    rows = []
    for path in branch_files:
        data = json.load(open(path))
        critical = critical_batch(data["branches"], tolerance)
        rows.append({"step": data["step"], "lr": data["lr"], "lr_scaling": data.get("lr_scaling", "constant"),
                     "branch_tokens": data["tokens"],
                     "losses": {r["batch"]: r["eval_loss"] for r in data["branches"]},
                     "critical_batch": critical,
                     # every batch tried kept up: the critical batch is at least the largest one (a lower bound)
                     "at_least": critical == max(r["batch"] for r in data["branches"]),
                     **b_simple_at(run_dir, data["step"])})
    rows.sort(key=lambda r: r["step"])
    scalings = sorted({r["lr_scaling"] for r in rows})
    print(f"tolerance {tolerance} nats; batches and B_simple in sequences; branch LR: {', '.join(scalings)}")
    print(f"{'step':>6s} {'tokens':>10s} {'critical batch':>15s} {'B_simple norms':>15s} {'B_simple whole':>15s}  losses by batch")
    for r in rows:
        crit = (">= " if r["at_least"] else "") + f"{r['critical_batch']:.0f}"
        print(f"{r['step']:6d} {r['tokens']:10.3g} {crit:>15s} {r['norm_layers_kernel']:15.3g} "
              f"{r['whole_model']:15.3g}  " + ", ".join(f"{b}: {l:.4f}" for b, l in sorted(r["losses"].items())))
    if out:
        with open(out, "w") as f:
            json.dump({"tolerance": tolerance, "checkpoints": rows}, f, indent=1)
    if plot_path:
        plot(rows, tolerance, plot_path)
    return rows


def plot(rows: list[dict], tolerance: float, path: str) -> None:
    """Critical batch and B_simple against tokens trained at each checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    tokens = [r["tokens"] / 1e6 for r in rows]
    ax.plot(tokens, [r["critical_batch"] for r in rows], "o-", color="black",
            label=f"critical batch, direct (loss within {tolerance} nats of the smallest batch)")
    bounds = [(t, r["critical_batch"]) for t, r in zip(tokens, rows) if r.get("at_least")]
    if bounds:  # every batch tried kept up there: a lower bound
        ax.plot([t for t, _ in bounds], [c for _, c in bounds], "^", color="black", markersize=12,
                fillstyle="none", label="lower bound (the largest batch tried kept up)")
    ax.plot(tokens, [r["norm_layers_kernel"] for r in rows], "s--", label="B_simple, norm layers (hf_gns)")
    if any(r["whole_model"] == r["whole_model"] for r in rows):
        ax.plot(tokens, [r["whole_model"] for r in rows], "^--", label="B_simple, whole model (diagnostic)")
    ax.set_yscale("log")
    ax.set_xlabel("tokens trained at the checkpoint (millions)")
    ax.set_ylabel("batch (sequences)")
    finish_plot(fig, ax, path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("branch")
    b.add_argument("checkpoints", nargs="+")
    b.add_argument("--dataset_name", required=True)
    b.add_argument("--tokenizer_name", required=True)
    b.add_argument("--cache_dir", default="/tmp/cache")
    b.add_argument("--block_size", type=int, default=512)
    b.add_argument("--batches", default="32,64,128,256,512", help="global batches in sequences (multiples of --micro_batch)")
    b.add_argument("--micro_batch", type=int, default=32)
    b.add_argument("--tokens", type=float, default=5e6, help="token budget of every branch")
    b.add_argument("--eval_blocks", type=int, default=512)
    b.add_argument("--data_seed", type=int, default=1234)
    b.add_argument("--preprocessing_num_workers", type=int, default=None)
    b.add_argument("--lr", type=float, default=None, help="constant LR of the branches (default: the run's LR there)")
    b.add_argument("--lr_scaling", default="constant", choices=LR_SCALINGS,
                   help="the LR of a branch at batch B: the same for all (constant), or times sqrt(B / reference batch)")
    b.add_argument("--lr_reference_batch", type=int, default=None,
                   help="the batch the LR belongs to (default: the run's per-device batch x accumulation steps)")
    b.add_argument("--bf16", action="store_true")
    b.add_argument("--compile", action="store_true")
    b.add_argument("--out", required=True, help="folder for branch_STEP.json, one per checkpoint")
    r = sub.add_parser("report")
    r.add_argument("run_dir")
    r.add_argument("branches", nargs="+")
    r.add_argument("--tolerance", type=float, default=0.01, help="nats")
    r.add_argument("--json", default=None)
    r.add_argument("--plot", default=None)
    args = ap.parse_args(argv)
    if args.cmd == "branch":
        for name in ("block_size", "micro_batch", "eval_blocks"):
            if getattr(args, name) < 1:
                ap.error(f"--{name}={getattr(args, name)}: expected a positive integer")
        if not args.tokens > 0:
            ap.error(f"--tokens={args.tokens}: expected a positive token budget")
        _positive_batches(args.batches, args.micro_batch)
        if args.lr_reference_batch is not None and args.lr_reference_batch < 1:
            ap.error(f"--lr_reference_batch={args.lr_reference_batch}: expected a positive batch (sequences)")
        branch(args)
    else:
        if not args.tolerance >= 0:
            ap.error(f"--tolerance={args.tolerance}: expected a non-negative loss difference in nats")
        report(args.run_dir, args.branches, args.tolerance, args.json, args.plot)


if __name__ == "__main__":
    main()
