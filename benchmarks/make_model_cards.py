"""Write the model cards of the evidence runs into model_cards/ from their run directories.

    python benchmarks/make_model_cards.py RUNS_DIR [--out model_cards]

RUNS_DIR holds the unpacked archives of `bash benchmarks/gpu.sh ln_proxy` (ln_llama, ln_gpt2) and
`bash benchmarks/gpu.sh time_to_loss` (ttl_<arm>_<seed>), plus the report JSONs ttl_<seed>.json. Each
card is a header written here (what was trained, how, the outcome) followed by the
"Gradient noise scale" section that `hf_gns.model_card` writes for any run.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re

from hf_gns.model_card import update_model_card
from hf_gns.plot import load_run

LN_RUN = {
    "llama": ("Llama", "8.39M"),
    "gpt2": ("GPT-2", "7.42M"),
}
ARMS = {
    "fixed": "fixed global batch 256 (the reference)",
    "linear": "batch linear in tokens from 64 to 256 over the budget (`linear:64:256`, the paper's schedule)",
    "gns": "GNS-driven batch, clamp(B_simple, 64, 256), only growing (`gns:min=64,max=256`)",
    "small": "fixed global batch 64 (context)",
}
LN_RUN_LARGE = {
    "llama": ("Llama", "119.56M", "hidden 768, 12 layers, 12 heads, MLP 3072"),
    "gpt2": ("GPT-2", "92.13M", "the GPT-2 124M shape, hidden 768, 12 layers, 12 heads, with a smaller vocabulary"),
}
FRONT_MATTER = "---\nlibrary_name: transformers\ntags:\n- hf_gns\n- gradient-noise-scale\n---\n"
TTL_COMMAND = ("python examples/train_lm.py --dataset_name /tmp/ttl_corpus --tokenizer_name /tmp/ttl_corpus/tokenizer "
               "--hidden_size 96 --num_hidden_layers 2 --num_attention_heads 4 --block_size 128 "
               "--per_device_train_batch_size 64 --learning_rate 3e-3 --warmup_steps 0.05 --bf16 ... "
               "(exact commands: `bash benchmarks/gpu.sh time_to_loss`)")


def _write(out_dir: str, header: str, run_dir: str, plot: str | None) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "README.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(header)
    return update_model_card(out_dir, load_run(run_dir).rows, plot_path=plot)


def _ln_runs(runs: str, models: dict):
    """(key, its description, run dir, eval losses) of every LN-proxy run ``ln_<key>`` present in ``runs``."""
    for key, described in models.items():
        run_dir = os.path.join(runs, f"ln_{key}")
        if os.path.isdir(run_dir):
            state = json.load(open(os.path.join(run_dir, "trainer_state.json")))
            yield key, described, run_dir, [h["eval_loss"] for h in state["log_history"] if "eval_loss" in h]


def ln_cards(runs: str, out: str) -> None:
    for key, (family, params), run_dir, evals in _ln_runs(runs, LN_RUN):
        name = f"ln-proxy-{key}"
        header = FRONT_MATTER + f"""
# {name}: a {params}-parameter {family} trained with hf_gns

A {family}-style causal LM ({params} parameters, hidden 256, 4 layers, 4 heads, context 256), built
from a config and trained from scratch with the Hugging Face Trainer on the offline default corpus
(CPython 3.12's documentation topics and standard library source, byte-level BPE of 8192 tokens),
1000 steps of 16 sequences, AdamW at 1e-3 with cosine decay, bf16 autocast, on one H100.
`GNSCallback(full_model_every=10)` measured, every 10th step and on the same micro-batch, the exact
per-example gradients of the whole model and of the normalization layers alone (one backward per
example), to check that the norm layers' gradient noise scale predicts the whole model's.

Final validation loss: {evals[-1]:.4f}. Command: `bash benchmarks/gpu.sh ln_proxy`; figures:
`benchmarks/RESULTS.md` (LN proxy).

![Loss](loss.png)

"""
        print(_write(os.path.join(out, name), header, run_dir, "gns.png"))


def ln_large_cards(runs: str, out: str, label: str) -> None:
    """Cards of `SCALE=large bash benchmarks/gpu.sh ln_proxy` runs (ln_llama, ln_gpt2 under ``runs``)."""
    for key, (family, params, shape), run_dir, evals in _ln_runs(runs, LN_RUN_LARGE):
        name = f"ln-proxy-large-{key}{label}"
        every = next(json.loads(line)["step"] for line in open(os.path.join(run_dir, "gns_history.jsonl"))
                     if "gns/full_model_b_simple" in line)
        header = FRONT_MATTER + f"""
# {name}: a {params}-parameter {family} trained with hf_gns

A {family}-style causal LM ({params} parameters; {shape}; context 1024, BPE vocabulary of 4096),
built from a config and trained from scratch with the Hugging Face Trainer under `torch_compile=True`
on 150M characters of Python source (the `.py` files of the GPU machine's site-packages, sorted, every
50th file held out), 5000 steps of 8 sequences (41M tokens, under one epoch), AdamW at 6e-4 with 5%
warm-up and cosine decay, bf16 autocast, on one H200. `GNSCallback(full_model_every={every})` measured
every {every} steps, on that step's micro-batch, the exact per-example gradients of the whole model and of
the normalization layers alone (one backward per example), to check that the norm layers' gradient
noise scale predicts the whole model's.

Final validation loss: {evals[-1]:.4f}. Command: `SCALE=large CHARS=150000000 STEPS=5000 bash
benchmarks/gpu.sh ln_proxy`; figures: `benchmarks/RESULTS.md` (5b).

![Loss](loss.png)

"""
        print(_write(os.path.join(out, name), header, run_dir, "gns.png"))


def ttl_cards(runs: str, out: str) -> None:
    for report in sorted(glob.glob(os.path.join(runs, "ttl_*.json"))):
        seed = re.search(r"ttl_(\d+)\.json", report).group(1)
        data = json.load(open(report))
        for row in data["runs"]:
            arm = re.search(r"ttl_([a-z]+)_\d+$", row["run"]).group(1)
            run_dir = os.path.join(runs, f"ttl_{arm}_{seed}")
            name = f"ttl-{arm}-seed{seed}"
            header = FRONT_MATTER + f"""
# {name}: time to loss with {ARMS[arm]}

A 1.08M-parameter Llama (hidden 96, 2 layers, context 128) trained from scratch on 16M tokens (about
15 tokens per parameter) of Python source (every `.py` file of the GPU machine's site-packages, sorted,
40M characters, every 50th file held out), BPE of 4096 tokens, AdamW at 3e-3 with 5% warm-up and cosine
decay counted in tokens, bf16, seed {seed}, one H100. Batch: {ARMS[arm]}.

| | |
|---|---|
| final validation loss | {row['final_eval_loss']:.4f} |
| tokens to reach the fixed-256 run's final loss ({data['target']:.4f}) | {row['tokens_to_target']:,.0f} ({row['token_saving']:+.1%} vs the reference) |
| optimizer steps to reach it | {row['steps_to_target']:.0f} (of {row['total_steps']}) |

Command: {TTL_COMMAND}. All arms and plots: `model_cards/time-to-loss/`.

"""
            print(_write(os.path.join(out, "time-to-loss", name), header, run_dir, f"../gns_seed{seed}.png"))


ARMS_LARGE = {
    "fixed32": "fixed global batch 32 (`steps:0:32`)",
    "fixed128": "fixed global batch 128 (`steps:0:128`)",
    "fixed512": "fixed global batch 512 (`steps:0:512`)",
    "linear": "batch linear in tokens from 32 to 512 over the budget (`linear:32:512`, the paper's schedule)",
    "gns": "GNS-driven batch, clamp(B_simple, 32, 512), only growing (`gns:min=32,max=512`)",
}
TTL_LARGE_SETUP = """A 10.49M-parameter Llama (hidden 256, 8 layers, 4 heads, context 512, BPE vocabulary of 4096) trained
from scratch with the Hugging Face Trainer under `torch_compile=True` on 210M tokens (20 per parameter,
Chinchilla-optimal; 1.8 epochs of the 116.6M training tokens of the GPU machine's site-packages Python
source, 387.4M characters, every 50th file held out), AdamW at 2e-3 with 5% warm-up and cosine decay
counted in tokens, micro-batches of 32 sequences, bf16, seed {seed}, all arms of a seed sharing one H200."""


def ttl_large_cards(runs: str, seed: int, out: str, full_every: int = 100) -> None:
    """Cards of `bash benchmarks/gpu.sh time_to_loss_large` (runs ttl_<arm>_<seed> and the report
    ttl_frontier_<seed>.json under ``runs``), this seed's section ``seed<seed>.md`` and the overview
    ``out/time-to-loss-large/README.md`` made of every seed's section. ``full_every``: the FULL_EVERY
    the run was made with (the whole-model measurements of fixed128)."""
    from hf_gns.plot import plot_runs

    data = json.load(open(os.path.join(runs, f"ttl_frontier_{seed}.json")))
    folder = os.path.join(out, "time-to-loss-large")
    os.makedirs(folder, exist_ok=True)
    arms = [a for a in ARMS_LARGE if a in data["arms"]]
    plots = plot_runs([os.path.join(runs, f"ttl_{a}_{seed}") for a in arms], os.path.join(folder, f"seed{seed}.png"))
    table = ["| arm | policy | final eval loss | steps | tokens to target | steps to target | vs fixed frontier at the same steps: tokens / final loss |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for arm in arms:
        r = data["arms"][arm]
        versus = ""
        if "token_saving_vs_frontier" in r:
            versus = f"{-r['token_saving_vs_frontier']:+.1%} / {r['final_loss_vs_frontier']:+.4f}"
        table.append(f"| {arm} | {ARMS_LARGE[arm]} | {r['final_eval_loss']:.4f} | {r['total_steps']} | "
                     f"{r['tokens_to_target'] / 1e6:.1f}M | {r['steps_to_target']:.0f} | {versus} |")
        run_dir = os.path.join(runs, f"ttl_{arm}_{seed}")
        header = FRONT_MATTER + f"""
# ttl-large-{arm}-seed{seed}: time to loss with {ARMS_LARGE[arm]}

{TTL_LARGE_SETUP.format(seed=seed)} Batch: {ARMS_LARGE[arm]}.

Final validation loss {r['final_eval_loss']:.4f} after {r['total_steps']} optimizer steps; the common
target {data['target']:.4f} (the highest final loss of the five arms) after {r['tokens_to_target'] / 1e6:.1f}M
tokens and {r['steps_to_target']:.0f} steps. Command: `SEED={seed} CONCURRENT=1 CB_ARM=fixed128 FULL_EVERY={full_every}
bash benchmarks/gpu.sh time_to_loss_large`; all arms: `model_cards/time-to-loss-large/`; discussion:
`benchmarks/RESULTS.md`.

"""
        print(_write(os.path.join(folder, f"ttl-large-{arm}-seed{seed}"), header, run_dir, None))
    figures = " ".join(f"![]({os.path.basename(p)})" for p in plots)
    section = f"""## Seed {seed}

Target: eval loss {data['target']:.4f}, the highest final loss of all arms. "vs fixed frontier": the
arm's tokens to the target against the fixed arms' interpolated at the same number of optimizer steps
(log-log; negative = fewer tokens), and its final loss against the fixed arms' final losses interpolated
at its number of steps (all arms spend the same 210M tokens; negative = lower loss).

{chr(10).join(table)}

![frontier](frontier_seed{seed}.png)

{figures}

One card per run, with its "Gradient noise scale" section as `GNSCallback` writes it:
`ttl-large-{{{",".join(arms)}}}-seed{seed}/README.md`.
"""
    with open(os.path.join(folder, f"seed{seed}.md"), "w", encoding="utf-8") as f:
        f.write(section)
    sections = sorted((name for name in os.listdir(folder) if name.startswith("seed") and name.endswith(".md")),
                      key=lambda name: int(name[4:-3]) if name[4:-3].isdigit() else math.inf)
    overview = f"""# Time to loss at a Chinchilla-optimal scale: GNS-driven batch vs fixed batches and the linear schedule

{TTL_LARGE_SETUP.format(seed=", ".join(name[4:-3] for name in sections))}

Setup, commands and discussion: `benchmarks/RESULTS.md`.

""" + "\n".join(open(os.path.join(folder, name), encoding="utf-8").read() for name in sections)
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(overview)
    print(os.path.join(folder, "README.md"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("--out", default="model_cards")
    ap.add_argument("--ln_large", default=None, help="label of the large LN-proxy runs in RUNS_DIR (their cards only)")
    ap.add_argument("--ttl_large", type=int, default=None, metavar="SEED",
                    help="cards of the Chinchilla-sized time-to-loss runs of SEED in RUNS_DIR (those only)")
    ap.add_argument("--full_every", type=int, default=100,
                    help="with --ttl_large: the FULL_EVERY those runs were made with (named in their cards)")
    args = ap.parse_args(argv)
    if args.ttl_large is not None:
        ttl_large_cards(args.runs, args.ttl_large, args.out, args.full_every)
        return
    if args.ln_large is not None:
        ln_large_cards(args.runs, args.out, args.ln_large)
        return
    ln_cards(args.runs, args.out)
    ttl_cards(args.runs, args.out)


if __name__ == "__main__":
    main()
