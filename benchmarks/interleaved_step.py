"""hf_gns's cost per optimizer step with the host's speed taken out: two models, alternating steps.

Where the step is host-bound (small micro-batches), the host's own speed moves between runs by more
than hf_gns costs (RESULTS 0*****: the same ATen calls took 0.7-1.6x the host time from one run to
the next), so whole-run ratios (`bench_trainer.py`) cannot resolve a 2% cost there. This script
keeps both variants in one process, compiled and warm, and alternates them every optimizer step in
ABBA order: a slow phase of the host hits both alike. Each step is what the Trainer does for one
optimizer step: ``accum`` micro-batches of forward + backward under bf16 autocast (``--dtype``),
gradient clipping at 1.0, fused AdamW (on CUDA), zeroed gradients; the hf_gns variant is the patched
model plus the per-step statistics of `GNSCallback` (`GNSMeter.start` after the step, the previous
step resolved). The device is synchronized at the end of every step for both variants.

It reports, per variant, the median seconds per step and the training thread's CPU seconds per
step, and the ratio hf_gns / unpatched as the median over adjacent pairs (A B and B A) with a
bootstrap 95% interval of that median. Both models live on the device at once, so peak memory is
not compared here (`bench_trainer.py` does).

    PYTHONPATH=$PWD python benchmarks/interleaved_step.py --model gpt2 --micro_batch 2 --pairs 100
    python benchmarks/interleaved_step.py --tiny --pairs 4          # a CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hf_gns  # noqa: E402
from hf_gns.measure import GNSMeter  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def pair_ratios(order: list[str], seconds: list[float], base: str = "base", test: str = "gns") -> list[float]:
    """test / base for each adjacent pair of steps (0-1, 2-3, ...) holding one of each variant."""
    ratios = []
    for i in range(0, len(order) - 1, 2):
        pair = {order[i]: seconds[i], order[i + 1]: seconds[i + 1]}
        if set(pair) == {base, test}:
            ratios.append(pair[test] / pair[base])
    return ratios


def bootstrap_median_interval(values: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A percentile-bootstrap 95% interval of the median of ``values``."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def abba(pairs: int) -> list[str]:
    """``pairs`` pairs in the order base gns, gns base, base gns, ..."""
    return [v for i in range(pairs) for v in (("base", "gns") if i % 2 == 0 else ("gns", "base"))]


class Variant:
    """One model, its optimizer and, for hf_gns, its per-step measurement."""

    def __init__(self, name: str, model: torch.nn.Module, compile_model: bool, device: torch.device) -> None:
        self.name = name
        self.model = model.to(device).train()
        # as the Trainer does (TrainingArguments.use_cache, default False): the modelling code then takes
        # the Trainer's path, with no KV cache built in each training forward
        self.model.config.use_cache = False
        fused = device.type == "cuda"
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.0, fused=fused)
        self.forward = torch.compile(self.model) if compile_model else self.model
        self.meter = GNSMeter() if name == "gns" else None
        self.steps = 0
        self.recorded = 0

    def step(self, batches: list[torch.Tensor], autocast_dtype: torch.dtype | None) -> None:
        device_type = batches[0].device.type
        for ids in batches:
            with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                loss = self.forward(input_ids=ids, labels=ids).loss / len(batches)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.meter is not None:
            self.meter.start(self.model, self.steps)
            self._count(self.meter.resolve(self.steps - 1))
        self.steps += 1

    def finish(self) -> None:
        """Resolve the last step's statistics (read one step late, as `GNSCallback` does)."""
        if self.meter is not None:
            self._count(self.meter.resolve(self.steps - 1))

    def _count(self, record: dict | None) -> None:
        if record is not None and not record.get("gns/skipped", 0) and "gns/b_simple" in record:
            self.recorded += 1


def run(args: argparse.Namespace) -> dict:
    from bench_trainer import build_model, clear_dynamo_counts, dynamo_counts  # the Trainer benchmark's models

    clear_dynamo_counts()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    base_model = build_model(args.model, args.tiny)
    gns_model = build_model(args.model, args.tiny)
    gns_model.load_state_dict(base_model.state_dict())
    hf_gns.patch_model(gns_model)
    variants = {"base": Variant("base", base_model, not args.eager, device),
                "gns": Variant("gns", gns_model, not args.eager, device)}
    vocab = base_model.config.vocab_size
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(vocab, (args.micro_batch, args.seq), generator=generator).to(device)
               for _ in range(args.accum)]
    autocast_dtype = DTYPES[args.dtype] if device.type == "cuda" else None

    def timed(variant: Variant) -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.thread_time()
        variant.step(batches, autocast_dtype)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - wall, time.thread_time() - cpu

    warm_begin = time.perf_counter()
    for name in abba(args.warmup):
        timed(variants[name])
    warm_seconds = time.perf_counter() - warm_begin
    order = abba(args.pairs)
    seconds, cpu_seconds = [], []
    for name in order:
        wall, cpu = timed(variants[name])
        seconds.append(wall)
        cpu_seconds.append(cpu)
    gns = variants["gns"]
    gns.finish()
    ratios = pair_ratios(order, seconds)
    low, high = bootstrap_median_interval(ratios)
    per_variant = {}
    for name in ("base", "gns"):
        own = [s for s, v in zip(seconds, order) if v == name]
        own_cpu = [s for s, v in zip(cpu_seconds, order) if v == name]
        per_variant[name] = {"s_per_step": statistics.median(own), "cpu_s_per_step": statistics.median(own_cpu)}
    return {
        "config": vars(args),
        "environment": {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"},
        "warmup_seconds": warm_seconds,
        "variants": per_variant,
        "ratio_median_of_pairs": statistics.median(ratios),
        "ratio_interval_95": [low, high],
        "ratio_of_medians": per_variant["gns"]["s_per_step"] / per_variant["base"]["s_per_step"],
        "cpu_ratio_of_medians": per_variant["gns"]["cpu_s_per_step"] / per_variant["base"]["cpu_s_per_step"],
        "pairs": len(ratios),
        **dynamo_counts(),
        "gns_recorded_steps": gns.recorded,
        "gns_steps": gns.steps,
        "order": order,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gpt2", choices=["gpt2", "llama360m"])
    ap.add_argument("--micro_batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 1024; 32 with --tiny)")
    ap.add_argument("--accum", type=int, default=4, help="micro-batches per optimizer step")
    ap.add_argument("--pairs", type=int, default=100, help="timed pairs of steps (one per variant)")
    ap.add_argument("--warmup", type=int, default=4, help="untimed pairs first (compilation)")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="autocast dtype on CUDA (CPU: fp32)")
    ap.add_argument("--eager", action="store_true", help="do not compile")
    ap.add_argument("--tiny", action="store_true", help="hidden 64, 2 layers (a CPU smoke test)")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "interleaved_step.json"))
    args = ap.parse_args(argv)
    for name in ("micro_batch", "accum", "pairs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name}={getattr(args, name)}: expected a positive integer")
    if args.warmup < 1:
        ap.error(f"--warmup={args.warmup}: expected at least 1 (the first steps compile)")
    if args.seq is None:
        args.seq = 32 if args.tiny else 1024
    elif args.seq < 1:
        ap.error(f"--seq={args.seq}: expected a positive integer")
    result = run(args)
    v = result["variants"]
    low, high = result["ratio_interval_95"]
    print(f"{args.model} mb={args.micro_batch} seq={args.seq} accum={args.accum} "
          f"{'eager' if args.eager else 'compiled'}: s/step unpatched {v['base']['s_per_step']:.4f}, "
          f"hf_gns {v['gns']['s_per_step']:.4f}; hf_gns / unpatched, median of {result['pairs']} pairs "
          f"{result['ratio_median_of_pairs']:.4f} (95% interval {low:.4f}-{high:.4f}), ratio of medians "
          f"{result['ratio_of_medians']:.4f}, CPU {result['cpu_ratio_of_medians']:.4f}; "
          f"GNS recorded on {result['gns_recorded_steps']} of {result['gns_steps']} steps; "
          f"{result['graph_breaks']} graph breaks")
    for reason, count in result["graph_break_reasons"].items():
        print(f"  graph break x{count}: {reason}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
