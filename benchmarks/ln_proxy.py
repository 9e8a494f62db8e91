"""Does the normalization layers' GNS predict the whole model's? Summarize runs of
`examples/train_lm.py --full_model_every K` (each diagnostic step measures, exactly and on the
same micro-batch, the whole model's per-example gradients and the norm layers' alone).

    python benchmarks/ln_proxy.py RUN_DIR [RUN_DIR ...] [--window 10] [--json out.json] [--plot out.png]

Two views of B_simple = tr(Sigma) / |G|^2 per run, norm layers vs whole model:

- windowed: consecutive diagnostic steps grouped ``--window`` at a time, B_simple of each group as
  the ratio of its mean tr(Sigma) to its mean |G|^2 estimate (local in training time; needs the
  step estimates ``gns/full_model*_step_g2`` / ``_step_trace_sigma`` that hf_gns logs);
- EMA: the callback's smoothed values (its decay applies per diagnostic step, so with a diagnostic
  every K steps the EMA averages over a K-times longer stretch of training than the kernel's).

For each: the Pearson correlation of log B_simple, how far the whole model's B_simple moved
(max / min), and the ratio whole / norm layers over training (at each quarter, and max / min:
its drift; a policy's ``k`` absorbs a constant ratio, not a drifting one). Also the correlation of
the kernel-measured norm-layer EMA of every optimizer step with the whole-model EMA.
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


def _ratios_view(pairs: list[tuple[float, float]]) -> dict:
    """Correlation, range and ratio drift of (norm layers, whole model) B_simple pairs."""
    pairs = [(a, b) for a, b in pairs if a > 0 and b > 0]
    full = [b for _, b in pairs]
    ratios = [b / a for a, b in pairs]
    quarters = [ratios[min(len(ratios) - 1, (q * len(ratios)) // 4)] for q in range(1, 5)] if ratios else []
    return {
        "points": len(pairs),
        "pearson_log": pearson([math.log(a) for a, _ in pairs], [math.log(b) for _, b in pairs]),
        "full_range": max(full) / min(full) if full else math.nan,
        "ratio_at_quarters": quarters,
        "ratio_drift": max(ratios) / min(ratios) if ratios else math.nan,
        "final_ratio": ratios[-1] if ratios else math.nan,
        "final_full": pairs[-1][1] if pairs else math.nan,
        "final_ln": pairs[-1][0] if pairs else math.nan,
    }


def windowed(diag: list[dict], key: str, size: int) -> list[tuple[float, float, float]]:
    """(mean tokens, B_simple, z) of each group of ``size`` consecutive diagnostic steps: B_simple as
    the ratio of the group's mean tr(Sigma) and mean |G|^2 estimates (nan when that mean is not
    positive), z as that mean |G|^2 over its standard error (how well the group resolves |G|^2)."""
    out = []
    for i in range(0, len(diag) - size + 1, size):
        group = diag[i:i + size]
        g2 = [r.get(f"gns/{key}_step_g2") for r in group]
        trace = [r.get(f"gns/{key}_step_trace_sigma") for r in group]
        if any(v is None or v != v for v in g2 + trace):
            continue
        tokens = sum(r.get("gns/tokens", r["step"]) for r in group) / size
        mean = sum(g2) / size
        spread = math.sqrt(sum((v - mean) ** 2 for v in g2) / (size - 1)) if size > 1 else math.nan
        z = mean / (spread / math.sqrt(size)) if spread and spread == spread else math.nan
        out.append((tokens, sum(trace) / sum(g2) if sum(g2) > 0 else math.nan, z))
    return out


def summarize(run_dir: str, window: int = 10) -> dict:
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "gns_history.jsonl"))]
    diag = [r for r in rows if "gns/full_model_b_simple" in r]
    ema = _ratios_view([(r["gns/full_model_ln_b_simple"], r["gns/full_model_b_simple"]) for r in diag])
    kernel = _ratios_view([(r.get("gns/b_simple", math.nan), r["gns/full_model_b_simple"]) for r in diag])
    ln_w, full_w = windowed(diag, "full_model_ln", window), windowed(diag, "full_model", window)
    win = _ratios_view([(a, b) for (_, a, _), (_, b, _) in zip(ln_w, full_w)])
    # only windows whose mean |G|^2 is above twice its standard error for both parameter sets
    resolved = _ratios_view([(a, b) for (_, a, za), (_, b, zb) in zip(ln_w, full_w) if za > 2 and zb > 2])
    return {"run": run_dir, "diagnostic_steps": len(diag), "window": window, "windowed": win,
            "windowed_resolved": resolved, "windows": len(ln_w), "ema": ema,
            "pearson_log_kernel_ema_vs_full_ema": kernel["pearson_log"]}


def _describe(view: dict) -> str:
    return (f"r(log) {view['pearson_log']:.3f} over {view['points']} points; whole-model B_simple moved "
            f"{view['full_range']:.3g}x; final whole {view['final_full']:.3g} / norms {view['final_ln']:.3g} "
            f"= {view['final_ratio']:.3g}; ratio at each quarter {[round(q, 3) for q in view['ratio_at_quarters']]} "
            f"(max/min {view['ratio_drift']:.3g})")


def plot(runs: list[str], path: str, window: int = 10) -> None:
    """One row per run: B_simple of the norm layers and of the whole model (log scale, examples)
    against tokens, and their ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 2, figsize=(11, 3.6 * len(runs)), squeeze=False)
    for row, run_dir in zip(axes, runs):
        diag = [json.loads(line) for line in open(os.path.join(run_dir, "gns_history.jsonl"))]
        diag = [r for r in diag if "gns/full_model_b_simple" in r]
        shown = [r for r in diag if r["gns/full_model_b_simple"] > 0 and r["gns/full_model_ln_b_simple"] > 0]
        has_tokens = all("gns/tokens" in r for r in diag)
        tokens = [r["gns/tokens"] / 1e6 if has_tokens else r["step"] for r in shown]
        full = [r["gns/full_model_b_simple"] for r in shown]
        ln = [r["gns/full_model_ln_b_simple"] for r in shown]
        name = os.path.basename(os.path.normpath(run_dir))
        row[0].plot(tokens, full, color="C0", alpha=0.5, label="whole model, EMA")
        row[0].plot(tokens, ln, color="C1", alpha=0.5, label="norm layers only, EMA")
        ln_w, full_w = windowed(diag, "full_model_ln", window), windowed(diag, "full_model", window)
        scale = 1e6 if has_tokens else 1
        if ln_w:
            row[0].plot([t / scale for t, _, _ in full_w], [b for _, b, _ in full_w], "o-", color="C0",
                        label=f"whole model, windows of {window} diagnostics")
            row[0].plot([t / scale for t, _, _ in ln_w], [b for _, b, _ in ln_w], "s-", color="C1",
                        label=f"norm layers, windows of {window}")
            row[1].plot([t / scale for t, _, _ in full_w], [f / n for (_, f, _), (_, n, _) in zip(full_w, ln_w)], "o-",
                        color="C2", label="windows")
            sure = [(t, f / n) for (t, f, zf), (_, n, zn) in zip(full_w, ln_w) if zf > 2 and zn > 2]
            row[1].plot([t / scale for t, _ in sure], [q for _, q in sure], "o", color="black", fillstyle="none",
                        markersize=10, label="resolved: mean |G|^2 > 2 s.e., both")
        row[0].set_yscale("log")
        row[0].set_ylabel("B_simple (examples)")
        row[0].set_title(f"{name}: B_simple, exact per-example gradients")
        row[0].legend(fontsize=8)
        row[1].plot(tokens, [f / n for f, n in zip(full, ln)], color="C2", alpha=0.5, label="EMA")
        row[1].legend(fontsize=8)
        row[1].set_ylabel("whole / norm layers")
        row[1].set_title(f"{name}: ratio whole model / norm layers")
        for ax in row:
            ax.set_xlabel("tokens trained (millions)" if has_tokens else "optimizer step")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--window", type=int, default=10, help="diagnostic steps per window (windowed view)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="PNG: B_simple (norm layers, whole model) and their ratio vs tokens")
    args = ap.parse_args(argv)
    if args.window < 1:
        ap.error(f"--window={args.window}: expected a positive number of diagnostic steps")
    out = [summarize(r, args.window) for r in args.runs]
    if args.plot:
        plot(args.runs, args.plot, args.window)
    for s in out:
        print(f"{s['run']}: {s['diagnostic_steps']} diagnostic steps")
        print(f"  windowed ({s['window']} diagnostics each, {s['windows']} windows): {_describe(s['windowed'])}")
        print(f"  resolved windows only (mean |G|^2 > 2 standard errors, both): {_describe(s['windowed_resolved'])}")
        print(f"  EMA: {_describe(s['ema'])}")
        print(f"  kernel-measured norm-layer EMA (every step) vs whole-model EMA: r(log) "
              f"{s['pearson_log_kernel_ema_vs_full_ema']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
