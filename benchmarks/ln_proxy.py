"""Does the normalization layers' GNS predict the whole model's? Summarize runs of
`examples/train_lm.py --full_model_every K` (each diagnostic step measures, exactly and on the
same micro-batch, the whole model's per-example gradients and the norm layers' alone).

    python benchmarks/ln_proxy.py RUN_DIR [RUN_DIR ...] [--json out.json]

Reports, per run, the Pearson correlation of log B_simple (EMA-smoothed, norm layers vs whole
model, over the diagnostic steps), how far the whole model's B_simple moved (max / min), the
ratio whole/norm at the end and its drift over training (the ratio at each quarter of the
diagnostic steps), and the same correlation for the kernel-measured norm-layer B_simple of the
full optimizer step. ``--plot out.png`` draws both B_simple series and their ratio against tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import os


def pearson(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 3:
        return math.nan
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def summarize(run_dir: str) -> dict:
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "gns_history.jsonl"))]
    diag = [r for r in rows if "gns/full_model_b_simple" in r]

    def series(key_a: str, key_b: str):
        pairs = [(r[key_a], r[key_b]) for r in diag if r.get(key_a, -1) > 0 and r.get(key_b, -1) > 0]
        return [math.log(a) for a, _ in pairs], [math.log(b) for _, b in pairs], pairs

    ln_x, full_y, pairs = series("gns/full_model_ln_b_simple", "gns/full_model_b_simple")
    k_x, k_full, k_pairs = series("gns/b_simple", "gns/full_model_b_simple")
    full = [b for _, b in pairs]
    ratios = [b / a for a, b in pairs]
    quarters = [ratios[min(len(ratios) - 1, (q * len(ratios)) // 4)] for q in range(1, 5)] if ratios else []
    return {
        "run": run_dir, "diagnostic_steps": len(diag), "positive_pairs": len(pairs),
        "full_b_simple_range": max(full) / min(full) if full else math.nan,
        "full_over_ln_at_quarters": quarters,
        "full_over_ln_drift": max(ratios) / min(ratios) if ratios else math.nan,
        "pearson_log_ln_vs_full": pearson(ln_x, full_y),
        "pearson_log_kernel_ln_vs_full": pearson(k_x, k_full),
        "final_full_over_ln": pairs[-1][1] / pairs[-1][0] if pairs else math.nan,
        "final_full_over_kernel_ln": k_pairs[-1][1] / k_pairs[-1][0] if k_pairs else math.nan,
        "final_full_b_simple": pairs[-1][1] if pairs else math.nan,
        "final_ln_b_simple": pairs[-1][0] if pairs else math.nan,
    }


def plot(runs: list[str], path: str) -> None:
    """One row per run: B_simple of the norm layers and of the whole model (log scale, examples)
    against tokens, and their ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 2, figsize=(11, 3.6 * len(runs)), squeeze=False)
    for row, run_dir in zip(axes, runs):
        diag = [json.loads(line) for line in open(os.path.join(run_dir, "gns_history.jsonl"))]
        diag = [r for r in diag if r.get("gns/full_model_b_simple", -1) > 0 and r.get("gns/full_model_ln_b_simple", -1) > 0]
        has_tokens = all("gns/tokens" in r for r in diag)
        tokens = [r["gns/tokens"] / 1e6 if has_tokens else r["step"] for r in diag]
        full = [r["gns/full_model_b_simple"] for r in diag]
        ln = [r["gns/full_model_ln_b_simple"] for r in diag]
        name = os.path.basename(os.path.normpath(run_dir))
        row[0].plot(tokens, full, label="whole model")
        row[0].plot(tokens, ln, label="norm layers only")
        row[0].set_yscale("log")
        row[0].set_ylabel("B_simple (examples)")
        row[0].set_title(f"{name}: B_simple (EMA), exact per-example gradients")
        row[0].legend()
        row[1].plot(tokens, [f / n for f, n in zip(full, ln)])
        row[1].set_ylabel("whole / norm layers")
        row[1].set_title(f"{name}: ratio")
        for ax in row:
            ax.set_xlabel("tokens trained (millions)" if has_tokens else "optimizer step")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="PNG: B_simple (norm layers, whole model) and their ratio vs tokens")
    args = ap.parse_args(argv)
    out = [summarize(r) for r in args.runs]
    if args.plot:
        plot(args.runs, args.plot)
    for s in out:
        print(f"{s['run']}: {s['diagnostic_steps']} diagnostic steps ({s['positive_pairs']} with both > 0); "
              f"Pearson r of log B_simple, norm layers vs whole model: {s['pearson_log_ln_vs_full']:.3f} "
              f"(kernel-measured step EMA vs whole: {s['pearson_log_kernel_ln_vs_full']:.3f}); "
              f"final B_simple whole {s['final_full_b_simple']:.3g}, norms {s['final_ln_b_simple']:.3g}, "
              f"ratio {s['final_full_over_ln']:.3g}; whole-model B_simple moved {s['full_b_simple_range']:.3g}x; "
              f"ratio whole/norms at each quarter {[round(q, 3) for q in s['full_over_ln_at_quarters']]} "
              f"(max/min {s['full_over_ln_drift']:.3g})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
