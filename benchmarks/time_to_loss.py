"""Tokens (and optimizer steps) to reach a target validation loss, per run.

    python benchmarks/time_to_loss.py prepare OUT_DIR [--max_chars N]   # corpus + tokenizer
    python benchmarks/time_to_loss.py report REF_RUN RUN [RUN ...] [--json out.json]
    python benchmarks/time_to_loss.py frontier ARM=RUN [ARM=RUN ...] [--target LOSS] [--json J] [--plot P]
    python benchmarks/time_to_loss.py pace WITH.progress WITHOUT.progress [...]  # cost of hf_gns, same window

`prepare` writes a larger offline corpus than the example's default (every ``.py`` file under
the installed site-packages, sorted; every 50th file held out for validation) and trains the
BPE tokenizer on its first ``--tokenizer_chars`` characters; a folder prepared with the same
arguments is reused. `report` takes the final validation loss of REF_RUN (the fixed large-batch
run) as the target and finds, by linear interpolation of each run's eval curve against tokens,
the tokens and optimizer steps it needed to reach it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import site
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from figures import finish_plot  # noqa: E402


def prepare(out_dir: str, max_chars: int, tokenizer_chars: int) -> None:
    """Write the corpus and train the tokenizer on its first ``tokenizer_chars`` characters of
    training text. A directory already prepared with the same arguments is kept as it is."""
    from corpus import train_bpe_tokenizer

    done = os.path.join(out_dir, "prepared.json")
    wanted = {"max_chars": max_chars, "tokenizer_chars": tokenizer_chars}
    if os.path.exists(done):
        record = json.load(open(done))
        if {k: record.get(k) for k in wanted} == wanted:
            print(f"corpus: {record['chars'] / 1e6:.1f}M characters from {record['files']} files -> {out_dir} (kept)")
            return
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
    sample = os.path.join(out_dir, "tokenizer_sample.txt")
    with open(os.path.join(out_dir, "train.txt")) as train, open(sample, "w") as out:
        out.write(train.read(tokenizer_chars))
    tokenizer_dir = os.path.join(out_dir, "tokenizer")
    if os.path.exists(tokenizer_dir):  # never reuse a tokenizer trained on another corpus
        import shutil
        shutil.rmtree(tokenizer_dir)
    train_bpe_tokenizer([sample], 4096, tokenizer_dir)
    os.remove(sample)
    json.dump({**wanted, "chars": written, "files": i + 1}, open(done, "w"))
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


def _log_interp(x: float, xs: list[float], ys: list[float]) -> float:
    """y at x on the piecewise-linear curve through (log xs, log ys); nan outside [min xs, max xs]."""
    return math.exp(_interp_log_x(x, xs, [math.log(y) for y in ys]))


def train_runtime(run_dir: str) -> float:
    """Seconds the Trainer reported for the run's training loop (``train_runtime``), nan if absent."""
    state = json.load(open(os.path.join(run_dir, "trainer_state.json")))
    return next((row["train_runtime"] for row in reversed(state["log_history"]) if "train_runtime" in row), math.nan)


def _final_loss_against_frontier(rows: dict, budget_tolerance: float = 0.02) -> None:
    """The other view of the same runs, free of where each arm's LR schedule stands at the target:
    every arm spends the same token budget and ends its own schedule there, so its final eval loss
    is set against the fixed arms' final losses interpolated at its number of optimizer steps (linear
    in loss, log in steps). Negative ``final_loss_vs_frontier``: lower loss than a fixed batch reaching
    the end in as many steps. Arms whose budget differs from the fixed arms' by more than
    ``budget_tolerance`` get nan."""
    fixed = [(r["total_steps"], r["final_eval_loss"], r["total_tokens"]) for n, r in rows.items() if n.startswith("fixed")]
    if not fixed:
        return
    budget = statistics.median(t for _, _, t in fixed)
    same_budget = [(s, loss) for s, loss, t in fixed if abs(t / budget - 1) <= budget_tolerance]
    for name, r in rows.items():
        if name.startswith("fixed"):
            continue
        at_steps = math.nan
        if abs(r["total_tokens"] / budget - 1) <= budget_tolerance:
            at_steps = _interp_log_x(r["total_steps"], [s for s, _ in same_budget], [loss for _, loss in same_budget])
        r["frontier_final_loss_at_same_steps"] = at_steps
        r["final_loss_vs_frontier"] = r["final_eval_loss"] - at_steps


def _interp_log_x(x: float, xs: list[float], ys: list[float]) -> float:
    """y at x on the piecewise-linear curve through (log xs, ys); nan outside [min xs, max xs] (at
    equal xs, the lower y)."""
    pts = sorted(zip(xs, ys))
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            f = 0.0 if x1 == x0 else (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + f * (y1 - y0)
    return math.nan


def frontier(arms: list[tuple[str, str]], target: float | None, out: str | None, plot_path: str | None) -> dict:
    """Tokens and optimizer steps to a common target loss for every arm, and each schedule's token
    saving against the fixed-batch frontier at the same number of steps.

    ``arms``: (name, run dir); names starting with ``fixed`` form the frontier. The target is
    ``target``, else the highest final eval loss of all arms (the loss every arm reached). An arm
    named ``NAME_nogns`` is NAME trained without hf_gns: it enters only the cost, NAME's training
    time over its own.
    """
    baselines = {name[: -len("_nogns")]: run for name, run in arms if name.endswith("_nogns")}
    arms = [(name, run) for name, run in arms if not name.endswith("_nogns")]
    curves = {name: eval_curve(run) for name, run in arms}
    if target is None:
        target = max(c[-1][2] for c in curves.values())
    rows = {}
    for name, run in arms:
        tokens, steps = reach(curves[name], target)
        rows[name] = {"run": run, "tokens_to_target": tokens, "steps_to_target": steps,
                      "final_eval_loss": curves[name][-1][2], "total_tokens": curves[name][-1][0],
                      "total_steps": curves[name][-1][1]}
    fixed = [(r["steps_to_target"], r["tokens_to_target"]) for n, r in rows.items()
             if n.startswith("fixed") and not math.isnan(r["steps_to_target"])]
    for name, r in rows.items():
        if name.startswith("fixed") or math.isnan(r["steps_to_target"]):
            continue
        at_steps = _log_interp(r["steps_to_target"], [s for s, _ in fixed], [t for _, t in fixed])
        r["frontier_tokens_at_same_steps"] = at_steps
        r["token_saving_vs_frontier"] = 1 - r["tokens_to_target"] / at_steps if at_steps == at_steps else math.nan
    _final_loss_against_frontier(rows)
    for name, run in arms:
        rows[name]["train_runtime"] = train_runtime(run)
        if name in baselines:
            rows[name]["train_runtime_without_hf_gns"] = train_runtime(baselines[name])
            rows[name]["cost_of_hf_gns"] = rows[name]["train_runtime"] / rows[name]["train_runtime_without_hf_gns"]
    print(f"target eval loss {target:.4f}")
    print(f"{'arm':12s} {'final loss':>10s} {'tokens to target':>17s} {'steps to target':>16s} {'saving vs fixed frontier':>25s}")
    for name, r in rows.items():
        saving = r.get("token_saving_vs_frontier")
        print(f"{name:12s} {r['final_eval_loss']:10.4f} {r['tokens_to_target']:17.4g} {r['steps_to_target']:16.1f} "
              f"{'' if saving is None else f'{saving:+.1%}':>25s}")
    for name, r in rows.items():
        if "final_loss_vs_frontier" in r:
            print(f"{name}: final eval loss {r['final_eval_loss']:.4f} after {r['total_steps']} steps and "
                  f"{r['total_tokens'] / 1e6:.1f}M tokens; fixed batches at the same steps: "
                  f"{r['frontier_final_loss_at_same_steps']:.4f} ({r['final_loss_vs_frontier']:+.4f})")
    for name, r in rows.items():
        if "cost_of_hf_gns" in r:
            print(f"{name}: training {r['train_runtime']:.1f} s with hf_gns, {r['train_runtime_without_hf_gns']:.1f} s "
                  f"without: {r['cost_of_hf_gns']:.3f}x")
    result = {"target": target, "arms": rows}
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
    if plot_path:
        plot_frontier(rows, target, plot_path)
    return result


def plot_frontier(rows: dict, target: float, path: str) -> None:
    """Left: tokens vs optimizer steps to the target, one point per arm, the fixed arms joined.
    Right: final eval loss vs optimizer steps at the common token budget (each arm at the end of its
    own LR schedule), the fixed arms joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, end) = plt.subplots(1, 2, figsize=(12, 4.8))
    fixed = sorted((r["steps_to_target"], r["tokens_to_target"], n) for n, r in rows.items()
                   if n.startswith("fixed") and not math.isnan(r["steps_to_target"]))
    ax.plot([s for s, _, _ in fixed], [t / 1e6 for _, t, _ in fixed], "o-", color="gray", label="fixed batch (frontier)")
    for s, t, n in fixed:
        ax.annotate(n, (s, t / 1e6), textcoords="offset points", xytext=(5, 5), fontsize=8)
    finals = sorted((r["total_steps"], r["final_eval_loss"], n) for n, r in rows.items() if n.startswith("fixed"))
    end.plot([s for s, _, _ in finals], [loss for _, loss, _ in finals], "o-", color="gray", label="fixed batch (frontier)")
    for s, loss, n in finals:
        end.annotate(n, (s, loss), textcoords="offset points", xytext=(5, 5), fontsize=8)
    for name, marker in (("linear", "s"), ("gns", "*")):
        for n, r in rows.items():
            if n.startswith(name):
                if not math.isnan(r["steps_to_target"]):
                    ax.plot(r["steps_to_target"], r["tokens_to_target"] / 1e6, marker, markersize=11, label=n)
                end.plot(r["total_steps"], r["final_eval_loss"], marker, markersize=11, label=n)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer steps to target (parallel time)")
    ax.set_ylabel("tokens to target, millions (compute)")
    ax.set_title(f"to eval loss {target:.3f}: lower-left is better")
    budget = statistics.median(r["total_tokens"] for r in rows.values()) / 1e6
    end.set_xscale("log")
    end.set_xlabel("optimizer steps in the whole run (parallel time)")
    end.set_ylabel("final eval loss, nats per token")
    end.set_title(f"after {budget:.0f}M tokens each: lower-left is better")
    end.grid(alpha=0.3, which="both")
    end.legend(fontsize=8)
    finish_plot(fig, ax, path)


def progress_marks(path: str) -> dict[int, float]:
    """Step -> seconds since the run's start, from a ``.progress`` file of ``benchmarks/gpu.sh``
    (lines ``"113s step 50: loss ..."``)."""
    marks = {}
    with open(path) as f:
        for line in f:
            head, _, _ = line.partition(":")
            parts = head.split()
            if len(parts) == 3 and parts[0].endswith("s") and parts[1] == "step":
                marks[int(parts[2])] = float(parts[0][:-1])
    return marks


def pace(pairs: list[tuple[str, str]]) -> dict:
    """The cost of hf_gns over whole runs: for each pair of ``.progress`` files of two arms that ran
    side by side (the same arm with and without hf_gns, started together, sharing the machine), the
    seconds each spent between the same two step marks: the first mark they share after their
    first one (which holds compilation and set-up) and the last one they share. Summed over
    the pairs (one per call of a run resumed across calls): seconds with / without. Since arms that
    share a machine slow each other down at different steps, also the ratio of the medians of the
    seconds per step between consecutive marks (after the first mark), over all pairs."""
    rows, with_total, without_total = [], 0.0, 0.0
    per_step: dict[str, list[float]] = {"with": [], "without": []}
    for with_path, without_path in pairs:
        a, b = progress_marks(with_path), progress_marks(without_path)
        for side, marks in (("with", a), ("without", b)):
            steps = sorted(marks)
            per_step[side] += [(marks[s1] - marks[s0]) / (s1 - s0) for s0, s1 in zip(steps, steps[1:])]
        shared = sorted(set(a) & set(b) - {min(a, default=None), min(b, default=None)})
        if len(shared) < 2:
            rows.append({"with": with_path, "without": without_path, "steps": 0})
            continue
        first, last = shared[0], shared[-1]
        seconds_with, seconds_without = a[last] - a[first], b[last] - b[first]
        with_total += seconds_with
        without_total += seconds_without
        rows.append({"with": with_path, "without": without_path, "from_step": first, "to_step": last,
                     "steps": last - first, "seconds_with": seconds_with, "seconds_without": seconds_without,
                     "startup_with": a[min(a)], "startup_without": b[min(b)], "first_mark": [min(a), min(b)]})
    ratio = with_total / without_total if without_total > 0 else math.nan
    medians = {side: statistics.median(v) if v else math.nan for side, v in per_step.items()}
    median_ratio = medians["with"] / medians["without"] if medians["without"] > 0 else math.nan
    for r in rows:
        if r["steps"]:
            print(f"steps {r['from_step']}-{r['to_step']}: {r['seconds_with']:.0f} s with hf_gns, "
                  f"{r['seconds_without']:.0f} s without; first marks (steps {r['first_mark'][0]}/{r['first_mark'][1]}) "
                  f"at {r['startup_with']:.0f} / {r['startup_without']:.0f} s")
        else:
            print(f"{r['with']} / {r['without']}: fewer than two shared step marks")
    print(f"hf_gns / without over the shared windows: {ratio:.3f}; median seconds per step between marks "
          f"{medians['with']:.4f} / {medians['without']:.4f} = {median_ratio:.3f} "
          f"({len(per_step['with'])} / {len(per_step['without'])} intervals)")
    return {"pairs": rows, "seconds_with": with_total, "seconds_without": without_total, "ratio": ratio,
            "median_seconds_per_step": medians, "median_ratio": median_ratio}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("out_dir")
    p.add_argument("--max_chars", type=int, default=40_000_000)
    p.add_argument("--tokenizer_chars", type=int, default=50_000_000,
                   help="characters of training text the BPE tokenizer is trained on (a prefix of the corpus)")
    r = sub.add_parser("report")
    r.add_argument("ref")
    r.add_argument("runs", nargs="*")
    r.add_argument("--json", default=None)
    f = sub.add_parser("frontier")
    f.add_argument("arms", nargs="+", help="NAME=RUN_DIR; names starting with 'fixed' form the frontier")
    f.add_argument("--target", type=float, default=None, help="eval loss (default: the highest final loss of all arms)")
    f.add_argument("--json", default=None)
    f.add_argument("--plot", default=None)
    c = sub.add_parser("pace", help="the cost of hf_gns from two arms run side by side")
    c.add_argument("progress", nargs="+", help="WITH.progress WITHOUT.progress, one pair per call")
    c.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.cmd == "pace":
        if len(args.progress) % 2:
            ap.error(f"progress: {len(args.progress)} files given; expected pairs WITH WITHOUT")
        result = pace(list(zip(args.progress[::2], args.progress[1::2])))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    elif args.cmd == "prepare":
        prepare(args.out_dir, args.max_chars, args.tokenizer_chars)
    elif args.cmd == "report":
        report(args.ref, args.runs, args.json)
    else:
        arms = []
        for arg in args.arms:
            name, sep, run = arg.partition("=")
            if not sep or not name or not run:
                ap.error(f"arm {arg!r}: expected NAME=RUN_DIR")
            arms.append((name, run))
        frontier(arms, args.target, args.json, args.plot)


if __name__ == "__main__":
    main()
