"""What does hf_gns cost per optimizer step in a real HF Trainer run, eager and compiled?

transformers' Trainer trains GPT-2 124M and a SmolLM2-360M-shaped Llama (both built from
configs, random token ids) in four variants: ``eager`` (unpatched), ``eager_gns``
(``hf_gns.patch_model`` + ``GNSCallback``), ``compiled`` (``torch_compile=True``) and
``compiled_gns`` (both). Seconds per optimizer step is the median of the gaps between
consecutive ``on_step_end`` calls (device synchronized) over steps ``measure_from..steps``.
Every run gets a fresh model, Trainer and Python process; variants are interleaved, rounds
repeated, and the table reports the median over rounds with gns/baseline ratios of step
time and peak memory, and how many steps actually logged a GNS value.

``--same_process`` runs every round in one process instead, the variants alternating: the
host's speed differs between processes on some machines by more than what hf_gns costs;
within one process the variants see the same host. An eager variant's model is built once
and trained again by a fresh Trainer in every round (the other variants' models wait on the CPU
meanwhile, so peak memory is the run's own); a compiled variant gets a fresh model
and compilation in every round (a compiled model handed to a second Trainer ran at eager
speed, H200, torch 2.11).

On the GPU (bf16, fused AdamW), from the repository root:

    PYTHONPATH=$PWD python benchmarks/bench_trainer.py      # or: bash benchmarks/gpu.sh trainer

Smoke test on a CPU (fp32, tiny models, a few minutes):

    python benchmarks/bench_trainer.py --tiny --micro_batch 2 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch
import transformers
from torch.utils.data import Dataset
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

import hf_gns

VARIANTS = ("eager", "eager_gns", "compiled", "compiled_gns")
# patched without GNSCallback: the kernels' share of the cost, apart from the per-step measurement
EXTRA_VARIANTS = ("eager_patched", "compiled_patched")
BASELINE = {"eager_gns": "eager", "compiled_gns": "compiled", "eager_patched": "eager", "compiled_patched": "compiled"}
FULL = {"seq": 1024, "grad_accum": 4, "steps": 20, "measure_from": 6}
TINY = {"seq": 32, "grad_accum": 2, "steps": 3, "measure_from": 2}
RESULT_MARK = "BENCH_TRAINER_RESULT "
SEED = 0


def build_model(name: str, tiny: bool) -> PreTrainedModel:
    """A freshly initialized model from its config (``tiny``: hidden 64, 2 layers)."""
    if name == "gpt2":
        cfg = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=512) if tiny else GPT2Config()
        return GPT2LMHeadModel(cfg)
    if name == "llama360m":
        shape = (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=512) if tiny else
                 dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                      num_key_value_heads=5, vocab_size=49152))
        return LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=2048, tie_word_embeddings=True))
    raise ValueError(f"unknown model {name!r}")


class RandomTokens(Dataset):
    """``n`` fixed sequences of uniform random token ids, labels = inputs."""

    def __init__(self, n: int, seq: int, vocab: int):
        generator = torch.Generator().manual_seed(SEED)
        self.ids = torch.randint(vocab, (n, seq), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class StepProfiler(TrainerCallback):
    """torch.profiler over optimizer steps ``first..first+count-1``: device kernel time against
    wall time, the top operators by device and by host time, and the host time spent in the
    other callbacks' event methods (wrapped by `time_callbacks`)."""

    def __init__(self, first: int, count: int = 2):
        self.first, self.last = first, first + count - 1
        self.profiler = None
        self.wall = 0.0
        self.callback_host: dict[str, float] = {}
        self.report: dict[str, Any] = {}

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.first:
            from torch.profiler import ProfilerActivity, profile
            StepTimer._now()
            self.callback_host.clear()
            cuda = [ProfilerActivity.CUDA] if torch.cuda.is_available() else []
            self.profiler = profile(activities=[ProfilerActivity.CPU, *cuda])
            self.profiler.__enter__()
            self.wall = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is None or state.global_step != self.last:
            return
        wall = StepTimer._now() - self.wall
        self.profiler.__exit__(None, None, None)
        averages = self.profiler.key_averages()
        steps = self.last - self.first + 1
        device_us = sum(e.self_device_time_total for e in averages)
        self.report = {
            "wall_ms_per_step": 1e3 * wall / steps,
            "kernel_ms_per_step": device_us / 1e3 / steps,
            "kernels_per_step": sum(e.count for e in averages if e.self_device_time_total > 0
                                    and e.device_type == torch.autograd.DeviceType.CUDA) / steps,
            "callback_host_ms_per_step": {k: 1e3 * v / steps for k, v in self.callback_host.items()},
            "top_device": averages.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=70),
            "top_host": averages.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70),
        }
        self.profiler = None


def time_callbacks(callbacks: list[TrainerCallback], into: dict[str, float]) -> None:
    """Add the host seconds each callback spends in its event methods to ``into`` (while profiling)."""
    for callback in callbacks:
        for event in ("on_step_begin", "on_substep_end", "on_pre_optimizer_step", "on_optimizer_step",
                      "on_step_end", "on_log"):
            method = getattr(callback, event, None)
            if method is None:
                continue

            def timed(*a, _method=method, _key=f"{type(callback).__name__}.{event}", **kw):
                start = time.perf_counter()
                try:
                    return _method(*a, **kw)
                finally:
                    into[_key] = into.get(_key, 0.0) + time.perf_counter() - start
            setattr(callback, event, timed)


class StepTimer(TrainerCallback):
    """Wall-clock time at the start of training and at every optimizer step's end; also the
    training thread's CPU time and the host's stolen CPU time (a VM's other tenants) at each step's end."""

    def __init__(self):
        self.start = math.nan
        self.stamps: list[float] = []
        self.cpu_stamps: list[float] = []
        self.steal_stamps: list[float] = []

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        self.stamps.append(self._now())
        self.cpu_stamps.append(time.thread_time())
        self.steal_stamps.append(stolen_seconds())


def stolen_seconds() -> float:
    """CPU time the hypervisor gave to others, summed over this host's CPUs (/proc/stat; NaN elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return math.nan


def step_seconds(stamps: list[float], measure_from: int) -> list[float]:
    """Durations of steps measure_from.. (step k lasts from step k-1's end to its own)."""
    return [b - a for a, b in zip(stamps[measure_from - 2:], stamps[measure_from - 1:])]


def gns_counts(log_history: list[dict[str, Any]]) -> dict[str, int]:
    """Training-step log entries with a finite GNS value, marked skipped, or neither."""
    steps = [e for e in log_history if "loss" in e]
    recorded = sum(any(math.isfinite(e.get(k, math.nan)) for k in ("gns/b_simple", "gns/step_b_simple"))
                   for e in steps)
    skipped = sum(e.get("gns/skipped") == 1.0 for e in steps)
    return {"logged_steps": len(steps), "gns_recorded": recorded, "gns_skipped": skipped}


def training_args(spec: dict[str, Any], output_dir: str) -> TrainingArguments:
    """The Trainer's settings for one run (bf16 + fused AdamW on CUDA, fp32 on CPU)."""
    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=spec["micro_batch"],
        gradient_accumulation_steps=spec["grad_accum"],
        max_steps=spec["steps"],
        bf16=cuda,
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        torch_compile=spec["variant"].startswith("compiled"),
        torch_compile_mode=spec.get("compile_mode") if spec["variant"].startswith("compiled") else None,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=SEED,
    )


_KEPT_MODELS: dict[tuple, tuple[PreTrainedModel, int]] = {}


def dynamo_counts() -> dict[str, Any]:
    """Graph breaks (with their five commonest reasons) and graphs that dynamo made in this process
    since the counters were last cleared: a break inside the layers of a compiled model shows here."""
    from torch._dynamo.utils import counters

    breaks = counters["graph_break"]
    commonest = sorted(breaks.items(), key=lambda item: -item[1])[:5]
    return {"graph_breaks": sum(breaks.values()), "graph_break_reasons": {str(k)[:300]: v for k, v in commonest},
            "unique_graphs": counters["stats"].get("unique_graphs", 0)}


def clear_dynamo_counts() -> None:
    from torch._dynamo.utils import counters

    counters.clear()


def run_one(spec: dict[str, Any], keep_model: bool = False) -> dict[str, Any]:
    """Train one (model, micro_batch, variant) from scratch; time steps, memory and GNS logging.
    ``keep_model``: train the model this variant trained before in this process, if any."""
    set_seed(SEED)
    cuda = torch.cuda.is_available()
    gns = spec["variant"].endswith("_gns")
    patched = gns or spec["variant"].endswith("_patched")
    result: dict[str, Any] = {**spec, "error": None}
    clear_dynamo_counts()
    try:
        key = (spec["model"], spec["variant"], spec["micro_batch"])
        if cuda:  # the other variants' kept models wait on the CPU: the peak memory is this run's own
            for other_key, (other, _) in _KEPT_MODELS.items():
                if other_key != key:
                    other.to("cpu")
        if keep_model and key in _KEPT_MODELS:
            model, result["patched_modules"] = _KEPT_MODELS[key]
        else:
            model = build_model(spec["model"], spec["tiny"])
            result["patched_modules"] = len(hf_gns.patch_model(model)) if patched else 0
            if keep_model:
                _KEPT_MODELS[key] = (model, result["patched_modules"])
        result["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
        n = spec["micro_batch"] * spec["grad_accum"] * spec["steps"]
        data = RandomTokens(n, spec["seq"], model.config.vocab_size)
        timer = StepTimer()
        callbacks = [hf_gns.GNSCallback(), timer] if gns else [timer]
        profiler = None
        if spec.get("profile"):
            profiler = StepProfiler(spec["steps"] - 1)  # the last two steps, left out of the timing
            time_callbacks(callbacks, profiler.callback_host)
            callbacks.append(profiler)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(model=model, args=training_args(spec, tmp), train_dataset=data, callbacks=callbacks)
            try:
                trainer.train()
            finally:
                result.update(gns_counts(trainer.state.log_history))
                result.update(dynamo_counts())
                result["steps_done"] = len(timer.stamps)
                if timer.stamps:
                    result["first_step_s"] = timer.stamps[0] - timer.start
                stamps = timer.stamps[:-2] if profiler is not None else timer.stamps
                result["step_s"] = step_seconds(stamps, spec["measure_from"])
                if result["step_s"]:
                    result["s_per_step"] = statistics.median(result["step_s"])
                    kept = len(stamps)
                    result["cpu_s_per_step"] = statistics.median(step_seconds(timer.cpu_stamps[:kept], spec["measure_from"]))
                    stolen = step_seconds(timer.steal_stamps[:kept], spec["measure_from"])
                    result["stolen_cpu_s_per_step"] = sum(stolen) / len(stolen)
                if cuda:
                    result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
                if profiler is not None:
                    result["profile"] = profiler.report
    except Exception as error:  # a crash is a result: record it and let the next run go on
        message = str(error).strip()
        result["error"] = f"{type(error).__name__}: {message.splitlines()[0] if message else ''}"
    return result


def launch(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``spec`` in a fresh interpreter (``--one``) and read back its JSON line."""
    cmd = [sys.executable, os.path.abspath(__file__), "--one", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if lines:
        return json.loads(lines[-1][len(RESULT_MARK):])
    tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
    return {**spec, "error": f"exit code {proc.returncode}, no result: {tail}"}


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in runs if r.get(key) is not None and not r.get("error")]
    return statistics.median(values) if values else math.nan


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, micro_batch, variant): medians over rounds and gns/baseline ratios."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["micro_batch"], r["variant"]), []).append(r)
    rows = {}
    for (model, mb, variant), group in groups.items():
        errors = [r["error"] for r in group if r.get("error")]
        rows[model, mb, variant] = {
            "model": model, "micro_batch": mb, "variant": variant,
            "runs": len(group), "crashed": len(errors), "first_error": errors[0] if errors else None,
            "s_per_step": median_of(group, "s_per_step"), "peak_gib": median_of(group, "peak_gib"),
            "gns": gns_cell(group) if variant in BASELINE else "",
        }
    for (model, mb, variant), row in rows.items():
        base = rows.get((model, mb, BASELINE.get(variant)))
        for key in ("s_per_step", "peak_gib"):
            row[key + "_ratio"] = row[key] / base[key] if base and base[key] else math.nan
        if variant in BASELINE:
            row["round_ratios"] = paired_ratios(groups[model, mb, variant], groups.get((model, mb, BASELINE[variant]), []))
            row["paired_ratio"] = statistics.median(row["round_ratios"]) if row["round_ratios"] else math.nan
    return list(rows.values())


def paired_ratios(runs: list[dict[str, Any]], baselines: list[dict[str, Any]]) -> list[float]:
    """s/step of each round's run over its own round's baseline (neighbours in time, so a host that
    changes speed between rounds moves both)."""
    base = {r["round"]: r.get("s_per_step") for r in baselines if not r.get("error")}
    return [r["s_per_step"] / base[r["round"]] for r in runs
            if not r.get("error") and r.get("s_per_step") and base.get(r["round"])]


def gns_cell(runs: list[dict[str, Any]]) -> str:
    """'recorded/logged (skipped)' per run, each distinct outcome once."""
    cells = [f"{r.get('gns_recorded', 0)}/{r.get('logged_steps', 0)} ({r.get('gns_skipped', 0)} skipped)" for r in runs]
    return ", ".join(dict.fromkeys(cells))


def fmt(x: float, digits: int) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The summary as a markdown table (ratios only on *_gns rows)."""
    lines = ["| model | micro-batch | variant | s/step | vs unpatched | per round (median) | peak GiB | vs unpatched | "
             "GNS recorded steps | crashes |",
             "|---|---:|---|---:|---:|---|---:|---:|---|---|"]
    for r in rows:
        gns = r["variant"] in BASELINE
        crashes = f"{r['crashed']}/{r['runs']}: {r['first_error'][:120]}" if r["crashed"] else ""
        lines.append(f"| {r['model']} | {r['micro_batch']} | {r['variant']} | {fmt(r['s_per_step'], 4)} | "
                     f"{fmt(r['s_per_step_ratio'], 3) if gns else ''} | {per_round(r) if gns else ''} | "
                     f"{fmt(r['peak_gib'], 2)} | "
                     f"{fmt(r['peak_gib_ratio'], 3) if gns else ''} | {r['gns']} | {crashes} |")
    return "\n".join(lines)


def per_round(row: dict[str, Any]) -> str:
    ratios = row.get("round_ratios") or []
    return f"{', '.join(fmt(x, 3) for x in ratios)} ({fmt(row.get('paired_ratio', math.nan), 3)})" if ratios else ""


def environment() -> dict[str, Any]:
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "python": sys.version.split()[0]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gpt2,llama360m")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--micro_batch", default="8,2", help="comma-separated micro-batch sizes, each run on every model")
    for key in FULL:
        ap.add_argument(f"--{key}", type=int, default=None, help=f"default {FULL[key]} ({TINY[key]} with --tiny)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--compile_mode", default=None,
                    help="the Trainer's torch_compile_mode for the compiled variants (default: torch's default)")
    ap.add_argument("--profile", action="store_true",
                    help="also profile steps measure_from and measure_from+1 (CUDA; slows those steps)")
    ap.add_argument("--tiny", action="store_true", help="hidden 64, 2 layers, seq 32, 3 steps (a CPU smoke test)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds allowed per run (own process only)")
    ap.add_argument("--same_process", action="store_true",
                    help="every round in this process, the variants alternating (see above)")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "bench_trainer.json"))
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for key, value in (TINY if args.tiny else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = set(args.variants.split(",")) - set(VARIANTS) - set(EXTRA_VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}")
    if not 2 <= args.measure_from <= args.steps:
        ap.error("need 2 <= --measure_from <= --steps")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one is not None:
        print(RESULT_MARK + json.dumps(run_one(json.loads(args.one))), flush=True)
        return
    common = {k: getattr(args, k) for k in ("tiny", "profile", "compile_mode", *FULL)}
    results: dict[str, Any] = {"config": vars(args), "environment": environment(), "runs": [], "summary": []}
    groups = [(model, mb) for model in args.models.split(",") for mb in map(int, args.micro_batch.split(","))]
    if args.same_process:  # one (model, micro-batch) at a time, all its rounds: no graph sees two shapes
        order = [(rnd, model, mb) for model, mb in groups for rnd in range(args.rounds)]
    else:
        order = [(rnd, model, mb) for rnd in range(args.rounds) for model, mb in groups]
    for rnd, model, mb in order:
        if args.same_process and rnd == 0:
            _KEPT_MODELS.clear()
            torch._dynamo.reset()
        variants = args.variants.split(",")
        if args.same_process and rnd % 2:  # ABBA: no variant always runs first
            variants = variants[::-1]
        for variant in variants:
            spec = {"model": model, "micro_batch": mb, "variant": variant, "round": rnd, **common}
            if args.same_process:
                compiled = variant.startswith("compiled")
                if compiled:
                    torch._dynamo.reset()
                run = run_one(spec, keep_model=not compiled)
            else:
                run = launch(spec, args.timeout)
            print(f"round {rnd} {model} mb={mb} {variant}: s/step={fmt(run.get('s_per_step', math.nan), 4)} "
                  f"cpu s/step={fmt(run.get('cpu_s_per_step', math.nan), 4)} "
                  f"stolen cpu s/step={fmt(run.get('stolen_cpu_s_per_step', math.nan), 4)} "
                  f"gns={run.get('gns_recorded', '-')}/{run.get('logged_steps', '-')} "
                  f"error={run.get('error')}", flush=True)
            report = run.pop("profile", None)
            if report:
                print(f"  profile: wall {report['wall_ms_per_step']:.1f} ms/step, kernels "
                      f"{report['kernel_ms_per_step']:.1f} ms/step ({report['kernels_per_step']:.0f} launches), "
                      f"callbacks' host ms/step {json.dumps(report['callback_host_ms_per_step'])}", flush=True)
                stem = os.path.join(os.path.dirname(os.path.abspath(args.out)), f"profile_{model}_mb{mb}_{variant}_r{rnd}")
                with open(stem + ".txt", "w") as f:
                    f.write(f"{json.dumps({k: v for k, v in report.items() if not k.startswith('top_')})}\n\n"
                            f"{report['top_device']}\n\n{report['top_host']}\n")
                run["profile"] = {k: v for k, v in report.items() if not k.startswith("top_")}
            results["runs"].append(run)
            results["summary"] = summarize(results["runs"])
            with open(args.out, "w") as f:  # after every run, so a killed job keeps its results
                json.dump(results, f, indent=1)
    print(f"\n{results['environment']}; results in {args.out}\n")
    print(markdown_table(results["summary"]))


if __name__ == "__main__":
    main()
