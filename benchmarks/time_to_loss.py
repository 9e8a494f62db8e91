"""Tokens (and optimizer steps) to reach a target validation loss, per run.

    python benchmarks/time_to_loss.py prepare OUT_DIR [--max_chars N]   # corpus + tokenizer
    python benchmarks/time_to_loss.py report REF_RUN RUN [RUN ...] [--json out.json]

`prepare` writes a larger offline corpus than the example's default (every ``.py`` file under
the installed site-packages, sorted; every 50th file held out for validation) and trains the
BPE tokenizer on it. `report` takes the final validation loss of REF_RUN (the fixed large-batch
run) as the target and finds, by linear interpolation of each run's eval curve against tokens,
the tokens and optimizer steps it needed to reach it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import site
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))


def prepare(out_dir: str, max_chars: int) -> None:
    from corpus import train_bpe_tokenizer

    roots = sorted({p for p in site.getsitepackages() if os.path.isdir(p)})
    files = sorted(os.path.join(d, f) for root in roots for d, _, fs in os.walk(root) for f in fs if f.endswith(".py"))
    os.makedirs(out_dir, exist_ok=True)
    written = 0
    with open(os.path.join(out_dir, "train.txt"), "w") as train, open(os.path.join(out_dir, "validation.txt"), "w") as val:
        for i, path in enumerate(files):
            try:
                text = open(path, encoding="utf-8").read()
            except (UnicodeDecodeError, OSError):
                continue
            (val if i % 50 == 0 else train).write(text + "\n")
            written += len(text)
            if written >= max_chars:
                break
    train_bpe_tokenizer([os.path.join(out_dir, "train.txt")], 4096, os.path.join(out_dir, "tokenizer"))
    print(f"corpus: {written / 1e6:.1f}M characters from {i + 1} files -> {out_dir}")


def eval_curve(run_dir: str) -> list[tuple[float, int, float]]:
    """(tokens consumed, optimizer step, eval loss) at every evaluation of a run."""
    state = json.load(open(os.path.join(run_dir, "trainer_state.json")))
    tokens_at = {}
    for line in open(os.path.join(run_dir, "gns_history.jsonl")):
        row = json.loads(line)
        tokens_at[row["step"]] = row.get("gns/tokens")
    curve = []
    for row in state["log_history"]:
        if "eval_loss" in row and tokens_at.get(row["step"]) is not None:
            curve.append((tokens_at[row["step"]], row["step"], row["eval_loss"]))
    if not curve:
        raise SystemExit(f"{run_dir}: no eval_loss with gns/tokens (run with --eval_steps and a batch_size_policy)")
    return sorted(curve)


def reach(curve, target: float) -> tuple[float, float]:
    """Tokens and steps at which the eval loss first reaches ``target`` (interpolated)."""
    for (t0, s0, l0), (t1, s1, l1) in zip(curve, curve[1:]):
        if l1 <= target < l0 or l0 <= target:
            if l0 <= target:
                return t0, s0
            f = (l0 - target) / (l0 - l1)
            return t0 + f * (t1 - t0), s0 + f * (s1 - s0)
    return math.nan, math.nan


def report(ref: str, runs: list[str], out: str | None) -> None:
    target = eval_curve(ref)[-1][2]
    rows = []
    for run in [ref] + runs:
        curve = eval_curve(run)
        tokens, steps = reach(curve, target)
        rows.append({"run": run, "final_eval_loss": curve[-1][2], "tokens_to_target": tokens, "steps_to_target": steps,
                     "total_tokens": curve[-1][0], "total_steps": curve[-1][1]})
    ref_tokens = rows[0]["tokens_to_target"]
    print(f"target: final eval loss of {ref} = {target:.4f}")
    print(f"{'run':40s} {'final loss':>10s} {'tokens to target':>17s} {'vs ref':>7s} {'steps to target':>16s}")
    for r in rows:
        r["token_saving"] = 1 - r["tokens_to_target"] / ref_tokens if ref_tokens else math.nan
        print(f"{r['run']:40s} {r['final_eval_loss']:10.4f} {r['tokens_to_target']:17.4g} {r['token_saving']:+7.1%} "
              f"{r['steps_to_target']:16.1f}")
    if out:
        json.dump({"target": target, "runs": rows}, open(out, "w"), indent=1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("out_dir")
    p.add_argument("--max_chars", type=int, default=40_000_000)
    r = sub.add_parser("report")
    r.add_argument("ref")
    r.add_argument("runs", nargs="*")
    r.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args.out_dir, args.max_chars)
    else:
        report(args.ref, args.runs, args.json)


if __name__ == "__main__":
    main()
