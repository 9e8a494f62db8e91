"""Does the normalization layers' GNS predict the whole model's? Summarize runs of
`examples/train_lm.py --full_model_every K` (each diagnostic step measures, exactly and on the
same micro-batch, the whole model's per-example gradients and the norm layers' alone).

    python benchmarks/ln_proxy.py RUN_DIR [RUN_DIR ...] [--json out.json]

Reports, per run, the Pearson correlation of log B_simple (EMA-smoothed, norm layers vs whole
model, over the diagnostic steps), the ratio whole/norm at the end, and the same for the
kernel-measured norm-layer B_simple of the full optimizer step.
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
    return {
        "run": run_dir, "diagnostic_steps": len(diag), "positive_pairs": len(pairs),
        "pearson_log_ln_vs_full": pearson(ln_x, full_y),
        "pearson_log_kernel_ln_vs_full": pearson(k_x, k_full),
        "final_full_over_ln": pairs[-1][1] / pairs[-1][0] if pairs else math.nan,
        "final_full_over_kernel_ln": k_pairs[-1][1] / k_pairs[-1][0] if k_pairs else math.nan,
        "final_full_b_simple": pairs[-1][1] if pairs else math.nan,
        "final_ln_b_simple": pairs[-1][0] if pairs else math.nan,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    out = [summarize(r) for r in args.runs]
    for s in out:
        print(f"{s['run']}: {s['diagnostic_steps']} diagnostic steps ({s['positive_pairs']} with both > 0); "
              f"Pearson r of log B_simple, norm layers vs whole model: {s['pearson_log_ln_vs_full']:.3f} "
              f"(kernel-measured step EMA vs whole: {s['pearson_log_kernel_ln_vs_full']:.3f}); "
              f"final B_simple whole {s['final_full_b_simple']:.3g}, norms {s['final_ln_b_simple']:.3g}, "
              f"ratio {s['final_full_over_ln']:.3g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
