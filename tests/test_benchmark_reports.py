"""The analysis behind RESULTS' evidence sections, on synthetic runs whose answers are known by hand:
`benchmarks/time_to_loss.py frontier` (tokens and steps to a target, saving against the fixed-batch
frontier) and `benchmarks/ln_proxy.py` (correlation, range and drift of B_simple)."""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import ln_proxy  # noqa: E402
import time_to_loss  # noqa: E402


def write_run(path, evals: list[tuple[int, float, float]], history: list[dict] | None = None,
              runtime: float | None = None) -> str:
    """A run dir: (step, tokens, eval loss) evaluations, extra gns_history rows, the Trainer's runtime."""
    os.makedirs(path, exist_ok=True)
    log = [{"step": s, "eval_loss": loss} for s, _, loss in evals]
    if runtime is not None:
        log.append({"step": evals[-1][0], "train_runtime": runtime})
    with open(os.path.join(path, "trainer_state.json"), "w") as f:
        json.dump({"log_history": log}, f)
    rows = {s: {"step": s, "gns/tokens": t} for s, t, _ in evals}
    for row in history or []:
        rows.setdefault(row["step"], {"step": row["step"]}).update(row)
    with open(os.path.join(path, "gns_history.jsonl"), "w") as f:
        for step in sorted(rows):
            f.write(json.dumps(rows[step]) + "\n")
    return str(path)


def test_frontier_saving_matches_a_hand_computation(tmp_path):
    # fixed_small: 100 tokens per step, loss 2.5 at step 30 and 1.5 at step 40 -> 2.0 at step 35, 3500 tokens
    small = write_run(tmp_path / "s", [(10, 1000, 4.0), (20, 2000, 3.0), (30, 3000, 2.5), (40, 4000, 1.5)])
    # fixed_large: 400 tokens per step, 2.2 at step 10 and 1.8 at step 15 -> step 12.5, 5000 tokens
    large = write_run(tmp_path / "l", [(5, 2000, 3.0), (10, 4000, 2.2), (15, 6000, 1.8)])
    # gns: 2.4 at step 10 (1000 tokens), 1.6 at step 30 (5000 tokens) -> step 20, 3000 tokens
    gns = write_run(tmp_path / "g", [(10, 1000, 2.4), (30, 5000, 1.6)])
    result = time_to_loss.frontier([("fixed16", small), ("fixed64", large), ("gns", gns)], 2.0, None, None)
    arms = result["arms"]
    assert arms["fixed16"]["steps_to_target"] == pytest.approx(35) and arms["fixed16"]["tokens_to_target"] == pytest.approx(3500)
    assert arms["fixed64"]["steps_to_target"] == pytest.approx(12.5) and arms["fixed64"]["tokens_to_target"] == pytest.approx(5000)
    assert arms["gns"]["steps_to_target"] == pytest.approx(20) and arms["gns"]["tokens_to_target"] == pytest.approx(3000)
    # the frontier at 20 steps, on the straight line between the fixed points in log-log axes
    f = math.log(20 / 12.5) / math.log(35 / 12.5)
    expected = 5000 * (3500 / 5000) ** f
    assert arms["gns"]["frontier_tokens_at_same_steps"] == pytest.approx(expected)
    assert arms["gns"]["token_saving_vs_frontier"] == pytest.approx(1 - 3000 / expected)
    assert "token_saving_vs_frontier" not in arms["fixed16"]


def test_final_losses_at_the_common_budget_against_the_fixed_frontier(tmp_path):
    """Every arm ends its own schedule at the same budget: its final loss is set against the fixed
    arms' final losses interpolated (log steps) at its number of steps; an arm with another budget
    gets nan rather than a comparison of unequal runs."""
    budget = random.choice([2000, 4096, 10**6])
    fixed_small = write_run(tmp_path / "s", [(10, budget / 2, 3.0), (20, budget, 2.0)])
    fixed_large = write_run(tmp_path / "l", [(2, budget / 2, 3.1), (5, budget, 2.6)])
    gns = write_run(tmp_path / "g", [(4, budget / 3, 2.9), (10, budget, 2.2)])
    longer = write_run(tmp_path / "x", [(10, 1.2 * budget, 2.1)])
    result = time_to_loss.frontier([("fixed4", fixed_large), ("fixed1", fixed_small), ("gns", gns),
                                    ("linear", longer)], 3.0, None, None)
    arms = result["arms"]
    # at 10 steps, halfway in log steps between the fixed arms' 5 (2.6) and 20 (2.0): 2.3
    assert arms["gns"]["frontier_final_loss_at_same_steps"] == pytest.approx(2.3)
    assert arms["gns"]["final_loss_vs_frontier"] == pytest.approx(-0.1)
    assert math.isnan(arms["linear"]["final_loss_vs_frontier"])
    assert "final_loss_vs_frontier" not in arms["fixed1"]


def test_frontier_cost_of_hf_gns_from_the_arm_trained_without_it(tmp_path):
    a = write_run(tmp_path / "a", [(10, 1000, 3.0), (20, 2000, 2.0)], runtime=52.5)
    b = write_run(tmp_path / "b", [(10, 4000, 2.8), (20, 8000, 2.5)], runtime=40.0)
    plain = tmp_path / "a_plain"
    plain.mkdir()
    (plain / "trainer_state.json").write_text(json.dumps({"log_history": [{"step": 20, "train_runtime": 50.0}]}))
    result = time_to_loss.frontier([("fixed1", a), ("fixed4", b), ("fixed1_nogns", str(plain))], None, None, None)
    assert set(result["arms"]) == {"fixed1", "fixed4"}  # the run without hf_gns is no arm of the frontier
    assert result["arms"]["fixed1"]["cost_of_hf_gns"] == pytest.approx(1.05)
    assert "cost_of_hf_gns" not in result["arms"]["fixed4"] and result["arms"]["fixed4"]["train_runtime"] == 40.0


def test_frontier_default_target_is_reached_by_every_arm_and_extrapolation_is_refused(tmp_path):
    a = write_run(tmp_path / "a", [(10, 1000, 3.0), (20, 2000, 2.0)])
    b = write_run(tmp_path / "b", [(10, 4000, 2.8), (20, 8000, 2.5)])
    c = write_run(tmp_path / "c", [(100, 500, 2.9), (200, 900, 2.4)])  # 200 steps: beyond every fixed arm
    result = time_to_loss.frontier([("fixed1", a), ("fixed4", b), ("linear", c)], None, None, None)
    assert result["target"] == pytest.approx(2.5)  # the highest final loss
    assert result["arms"]["fixed4"]["steps_to_target"] == pytest.approx(20)
    assert math.isnan(result["arms"]["linear"]["token_saving_vs_frontier"])


def test_ln_proxy_summary_on_a_known_ratio(tmp_path):
    """Step estimates drawn with a known ratio of tr(Sigma)/|G|^2 (whole over norm layers), drifting
    from 2 to 3 over training: the windowed view recovers each window's ratio of means exactly, the
    EMA view its own values."""
    rng = random.Random()
    n, window, diag = 40, 5, []
    for i in range(n):
        g2_ln, g2_full = rng.uniform(0.5, 2), rng.uniform(0.5, 2)
        b_ln = math.exp(rng.uniform(0, 3))  # spans up to 20x
        ratio = 2.0 + i / (n - 1)
        diag.append({"step": 10 * (i + 1), "gns/tokens": 1000.0 * (i + 1),
                     "gns/full_model_ln_step_g2": g2_ln, "gns/full_model_ln_step_trace_sigma": b_ln * g2_ln,
                     "gns/full_model_step_g2": g2_full, "gns/full_model_step_trace_sigma": ratio * b_ln * g2_full,
                     "gns/full_model_ln_b_simple": b_ln, "gns/full_model_b_simple": ratio * b_ln, "gns/b_simple": b_ln})
    diag[-1]["gns/full_model_step_g2"] = -1.0  # a negative |G|^2 estimate is averaged, not dropped
    run = write_run(tmp_path / "r", [(400, 1e6, 3.0)], diag)
    s = ln_proxy.summarize(run, window)
    windows = []
    for i in range(0, n, window):
        group = diag[i:i + window]
        ln = sum(r["gns/full_model_ln_step_trace_sigma"] for r in group) / sum(r["gns/full_model_ln_step_g2"] for r in group)
        full = sum(r["gns/full_model_step_trace_sigma"] for r in group) / sum(r["gns/full_model_step_g2"] for r in group)
        windows.append((ln, full))
    win = s["windowed"]
    assert win["points"] == n // window
    assert win["final_ratio"] == pytest.approx(windows[-1][1] / windows[-1][0])
    assert win["full_range"] == pytest.approx(max(f for _, f in windows) / min(f for _, f in windows))
    assert win["ratio_drift"] == pytest.approx(max(f / l for l, f in windows) / min(f / l for l, f in windows))
    xs, ys = [math.log(l) for l, _ in windows], [math.log(f) for _, f in windows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    r = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / math.sqrt(
        sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))
    assert win["pearson_log"] == pytest.approx(r)
    # resolved: both means of |G|^2 above twice their standard error (the last window holds a -1)
    def z(group, key):
        values = [r[f"gns/{key}_step_g2"] for r in group]
        mean = sum(values) / len(values)
        se = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
        return mean / se
    sure = [w for i, w in enumerate(windows)
            if z(diag[i * window:(i + 1) * window], "full_model") > 2 and z(diag[i * window:(i + 1) * window], "full_model_ln") > 2]
    assert s["windowed_resolved"]["points"] == len(sure) and s["windows"] == n // window
    assert s["windowed_resolved"]["final_ratio"] == pytest.approx(sure[-1][1] / sure[-1][0])
    ema = s["ema"]
    assert ema["points"] == n and ema["final_ratio"] == pytest.approx(3.0)
    assert ema["ratio_drift"] == pytest.approx(1.5) and ema["ratio_at_quarters"][-1] == pytest.approx(3.0)
    assert s["pearson_log_kernel_ema_vs_full_ema"] == pytest.approx(ema["pearson_log"])


def test_ln_proxy_without_step_estimates_reports_no_windows(tmp_path):
    diag = [{"step": i, "gns/full_model_ln_b_simple": 1.0 + i, "gns/full_model_b_simple": 2.0 + i} for i in range(1, 30)]
    s = ln_proxy.summarize(write_run(tmp_path / "old", [(29, 100, 3.0)], diag))
    assert s["windowed"]["points"] == 0 and math.isnan(s["windowed"]["pearson_log"])
    assert s["ema"]["points"] == 29


def test_critical_batch_is_the_largest_batch_that_keeps_up():
    import critical_batch

    rows = [{"batch": 32, "eval_loss": 3.000}, {"batch": 64, "eval_loss": 3.004}, {"batch": 128, "eval_loss": 3.009},
            {"batch": 256, "eval_loss": 3.050}, {"batch": 512, "eval_loss": 3.005}]  # 512 catching up again does not count
    assert critical_batch.critical_batch(rows, 0.01) == 128
    assert critical_batch.critical_batch(rows, 0.001) == 32
    assert critical_batch.critical_batch(list(reversed(rows)), 0.1) == 512


def test_critical_batch_report_reads_b_simple_at_each_checkpoint(tmp_path):
    import critical_batch

    history = [{"step": s, "gns/tokens": 1000.0 * s, "gns/b_simple": float(s)} for s in range(1, 31)]
    history[9].update({"gns/full_model_b_simple": 40.0, "gns/full_model_ln_b_simple": 9.0})
    run = write_run(tmp_path / "run", [(30, 30000, 3.0)], history)
    branch = tmp_path / "b.json"
    branch.write_text(json.dumps({"step": 12, "lr": 1e-3, "tokens": 5000, "branches": [
        {"batch": 8, "eval_loss": 2.5}, {"batch": 16, "eval_loss": 2.505}, {"batch": 32, "eval_loss": 2.6}]}))
    (row,) = critical_batch.report(run, [str(branch)], 0.01, None, None)
    assert row["critical_batch"] == 16 and row["tokens"] == 12000 and not row["at_least"]
    assert row["norm_layers_kernel"] == 12.0  # the value at the checkpoint's step
    assert row["whole_model"] == 40.0 and row["norm_layers_diagnostic"] == 9.0  # the latest diagnostic before it
    # every batch keeping up (larger batches even better per token): only a lower bound, the largest tried
    branch.write_text(json.dumps({"step": 12, "lr": 1e-3, "tokens": 5000, "branches": [
        {"batch": 8, "eval_loss": 2.5}, {"batch": 16, "eval_loss": 2.45}, {"batch": 32, "eval_loss": 2.44}]}))
    (row,) = critical_batch.report(run, [str(branch)], 0.01, None, str(tmp_path / "cb.png"))
    assert row["critical_batch"] == 32 and row["at_least"] and os.path.getsize(tmp_path / "cb.png") > 0


def test_trainer_benchmark_pairs_each_round_with_its_own_baseline():
    """The per-round ratio divides by the same round's unpatched run, whatever the order of runs;
    a crashed run or a round without a baseline gives no ratio."""
    import bench_trainer

    rng = random.Random()
    speeds = [rng.uniform(0.05, 0.15) for _ in range(5)]  # the host's speed in each round
    costs = [rng.uniform(0.9, 1.2) for _ in range(5)]
    runs = []
    for rnd, (speed, cost) in enumerate(zip(speeds, costs)):
        pair = [{"model": "m", "micro_batch": 2, "variant": "compiled", "round": rnd, "s_per_step": speed},
                {"model": "m", "micro_batch": 2, "variant": "compiled_gns", "round": rnd, "s_per_step": speed * cost}]
        runs.extend(pair[::-1] if rnd % 2 else pair)
    runs.append({"model": "m", "micro_batch": 2, "variant": "compiled_gns", "round": 5, "s_per_step": 1.0})
    runs.append({"model": "m", "micro_batch": 2, "variant": "compiled", "round": 6, "s_per_step": 1.0, "error": "x"})
    runs.append({"model": "m", "micro_batch": 2, "variant": "compiled_gns", "round": 6, "s_per_step": 1.0})
    rows = {r["variant"]: r for r in bench_trainer.summarize(runs)}
    assert rows["compiled_gns"]["round_ratios"] == pytest.approx(costs)
    assert rows["compiled_gns"]["paired_ratio"] == pytest.approx(sorted(costs)[2])
    assert "round_ratios" not in rows["compiled"]


def test_prepare_trains_the_tokenizer_on_a_prefix_and_reuses_a_folder_prepared_alike(tmp_path, capsys):
    out = str(tmp_path / "corpus")
    time_to_loss.prepare(out, max_chars=300_000, tokenizer_chars=20_000)
    record = json.load(open(os.path.join(out, "prepared.json")))
    assert record["chars"] >= 300_000 and record["tokenizer_chars"] == 20_000
    assert os.path.exists(os.path.join(out, "tokenizer", "tokenizer.json"))
    assert not os.path.exists(os.path.join(out, "tokenizer_sample.txt"))
    stamp = os.path.getmtime(os.path.join(out, "train.txt"))
    capsys.readouterr()
    time_to_loss.prepare(out, max_chars=300_000, tokenizer_chars=20_000)
    assert "(kept)" in capsys.readouterr().out and os.path.getmtime(os.path.join(out, "train.txt")) == stamp
    time_to_loss.prepare(out, max_chars=300_000, tokenizer_chars=30_000)  # other arguments: prepared anew
    assert "(kept)" not in capsys.readouterr().out
    assert json.load(open(os.path.join(out, "prepared.json")))["tokenizer_chars"] == 30_000


def test_critical_batch_branches_a_real_checkpoint_end_to_end(tmp_path):
    """train_lm writes checkpoints; `branch` continues one at two batches on equal tokens; `report`
    reads B_simple at the checkpoint's step. Tiny sizes: this checks the plumbing, not the physics."""
    import critical_batch

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    import train_lm

    corpus = tmp_path / "corpus"
    time_to_loss.prepare(str(corpus), max_chars=400_000, tokenizer_chars=100_000)
    run = tmp_path / "run"
    common = ["--dataset_name", str(corpus), "--tokenizer_name", str(corpus / "tokenizer"),
              "--cache_dir", str(tmp_path / "cache")]
    train_lm.main([*common, "--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2",
                   "--block_size", "32", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
                   "--max_steps", "6", "--save_steps", "3", "--eval_steps", "3", "--max_eval_samples", "8",
                   "--full_model_every", "3", "--max_grad_norm", "0.5", "--no_report", "--output_dir", str(run)])
    out = tmp_path / "branches"
    critical_batch.main(["branch", str(run / "checkpoint-3"), *common, "--block_size", "32", "--micro_batch", "4",
                         "--batches", "4,8", "--tokens", "1024", "--eval_blocks", "8", "--out", str(out)])
    result = json.load(open(out / "branch_3.json"))
    assert result["step"] == 3 and result["max_grad_norm"] == 0.5 and result["lr"] > 0
    assert [(b["batch"], b["steps"], b["tokens"]) for b in result["branches"]] == [(4, 8, 1024), (8, 4, 1024)]
    assert all(math.isfinite(b["eval_loss"]) and b["start_eval_loss"] == result["branches"][0]["start_eval_loss"]
               for b in result["branches"])
    assert result["lr_scaling"] == "constant" and all(b["lr"] == result["lr"] for b in result["branches"])
    (row,) = critical_batch.report(str(run), [str(out / "branch_3.json")], 10.0, None, None)
    assert row["critical_batch"] == 8  # a tolerance of 10 nats: every batch keeps up
    assert row["norm_layers_kernel"] > 0 and row["whole_model"] > 0 and row["tokens"] == 3 * 8 * 32
    # the square-root rule: the run trained at 4 x 2 = 8 sequences, so batch 4 gets lr / sqrt(2)
    scaled = tmp_path / "scaled"
    critical_batch.main(["branch", str(run / "checkpoint-3"), *common, "--block_size", "32", "--micro_batch", "4",
                         "--batches", "4,8", "--tokens", "1024", "--eval_blocks", "8", "--out", str(scaled),
                         "--lr_scaling", "sqrt"])
    result = json.load(open(scaled / "branch_3.json"))
    assert result["lr_scaling"] == "sqrt" and result["lr_reference_batch"] == 8
    lrs = {b["batch"]: b["lr"] for b in result["branches"]}
    assert lrs[8] == pytest.approx(result["lr"]) and lrs[4] == pytest.approx(result["lr"] / math.sqrt(2))
    with pytest.raises(SystemExit):
        critical_batch.main(["branch", str(run / "checkpoint-3"), *common, "--out", str(scaled), "--lr_scaling", "linear"])


def test_train_lm_resumes_a_cut_run_from_its_newest_checkpoint(tmp_path, capsys):
    """`--resume` (what lets a time-to-loss arm span several calls of the GPU machine): a run cut
    after its step-4 checkpoint, resumed, ends as the uninterrupted run (loss, batch growth, GNS)."""
    import shutil

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    import train_lm

    corpus = tmp_path / "corpus"
    time_to_loss.prepare(str(corpus), max_chars=300_000, tokenizer_chars=100_000)
    common = ["--dataset_name", str(corpus), "--tokenizer_name", str(corpus / "tokenizer"),
              "--cache_dir", str(tmp_path / "cache"), "--hidden_size", "32", "--num_hidden_layers", "1",
              "--num_attention_heads", "2", "--block_size", "16", "--per_device_train_batch_size", "2",
              "--max_steps", "8", "--save_steps", "4", "--batch_size_policy", "steps:3:4", "--no_report",
              "--no_eval_accuracy", "--max_eval_samples", "4", "--seed", str(random.randrange(1000))]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train_lm.main([*common, "--output_dir", str(whole)])
    train_lm.main([*common, "--output_dir", str(cut)])
    for path in cut.iterdir():  # as if killed after step 4's save
        if path.name != "checkpoint-4":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    capsys.readouterr()
    train_lm.main([*common, "--output_dir", str(cut), "--resume"])
    assert f"resuming from {cut / 'checkpoint-4'}" in capsys.readouterr().out

    def steps(run):
        log = json.load(open(run / "trainer_state.json"))["log_history"]
        return {row["step"]: row for row in log if "loss" in row}

    want, got = steps(whole), steps(cut)
    last = max(want)  # the policy's token budget (8 steps of 2) ends the run early once the batch grew
    assert sorted(got) == sorted(want) == list(range(1, last + 1)) and last > 4
    for step in range(5, last + 1):
        assert got[step]["loss"] == pytest.approx(want[step]["loss"], rel=1e-5)
        assert got[step]["gns/batch_size"] == want[step]["gns/batch_size"]
        # one step's |G|^2 estimate can be <= 0 on so few examples (its B_simple is then nan): compare
        # the estimates themselves, |G|^2 to the scale of tr(Sigma)
        scale = abs(want[step]["gns/step_trace_sigma"])
        assert got[step]["gns/step_trace_sigma"] == pytest.approx(want[step]["gns/step_trace_sigma"], rel=1e-4)
        assert got[step]["gns/step_g2"] == pytest.approx(want[step]["gns/step_g2"], rel=1e-4, abs=1e-4 * scale)
        assert got[step]["gns/step_b_simple"] == pytest.approx(want[step]["gns/step_b_simple"], rel=1e-4, nan_ok=True)
    assert want[last]["gns/batch_size"] == 4 and want[2]["gns/batch_size"] == 2  # the batch grew at step 3


def test_interleaved_step_pairs_abba_and_bounds_the_median():
    import interleaved_step

    order = interleaved_step.abba(3)
    assert order == ["base", "gns", "gns", "base", "base", "gns"]
    seconds = [1.0, 1.1, 2.2, 2.0, 1.0, 0.9]
    assert interleaved_step.pair_ratios(order, seconds) == pytest.approx([1.1, 1.1, 0.9])
    rng = random.Random()
    values = [rng.uniform(0.8, 1.2) for _ in range(41)]
    low, high = interleaved_step.bootstrap_median_interval(values)
    assert low <= statistics.median(values) <= high and high - low < 0.4


def test_interleaved_step_runs_both_variants_and_records_every_step(tmp_path):
    import interleaved_step

    result = interleaved_step.main(["--tiny", "--eager", "--pairs", "2", "--warmup", "1", "--out", str(tmp_path / "r.json")])
    assert result["pairs"] == 2 and len(result["seconds"]) == 4
    assert result["gns_recorded_steps"] == result["gns_steps"] == 3  # one hf_gns step in each of the 3 pairs
    assert json.load(open(tmp_path / "r.json"))["ratio_median_of_pairs"] > 0


def test_the_benchmarks_report_the_graph_breaks_of_their_runs():
    """A break in compiled code reaches the benchmarks' JSON with its reason; clearing forgets it."""
    import bench_trainer

    def layer(x):
        x = x * 2
        torch._dynamo.graph_break()
        return x + 1

    bench_trainer.clear_dynamo_counts()
    torch._dynamo.reset()
    assert torch.equal(torch.compile(layer, backend="eager")(torch.ones(3)), torch.full((3,), 3.0))
    counts = bench_trainer.dynamo_counts()
    assert counts["graph_breaks"] >= 1 and counts["unique_graphs"] >= 1
    assert any("graph_break" in reason for reason in counts["graph_break_reasons"])
    bench_trainer.clear_dynamo_counts()
    assert bench_trainer.dynamo_counts()["graph_breaks"] == 0


def _write_progress(path, start: float, seconds_per_step: float, steps: range, every: int = 50) -> str:
    """A ``.progress`` file: a mark every ``every`` steps, the first one after ``start`` seconds."""
    with open(path, "w") as f:
        for step in steps:
            if step % every == 0:
                t = start + (step - steps.start) * seconds_per_step
                f.write(f"{round(t)}s step {step}: loss 2.5, gns/b_simple 10\n")
    return str(path)


def test_pace_compares_the_same_step_window_of_two_arms_run_side_by_side(tmp_path):
    rng = random.Random()
    slow, fast = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0)
    # call 1: both from step 50, the arm with hf_gns stopped earlier; call 2: resumed from other steps
    pairs = [(_write_progress(tmp_path / "a1", 113, slow, range(50, 651)),
              _write_progress(tmp_path / "b1", 82, fast, range(50, 801))),
             (_write_progress(tmp_path / "a2", 40, slow, range(600, 1001)),
              _write_progress(tmp_path / "b2", 35, fast, range(750, 1001)))]
    result = time_to_loss.pace(pairs)
    first, second = result["pairs"]
    assert (first["from_step"], first["to_step"]) == (100, 650)  # the first marks (compilation) left out
    assert (second["from_step"], second["to_step"]) == (800, 1000)
    # marks are rounded to whole seconds, as gpu.sh writes them
    assert first["seconds_with"] == pytest.approx(550 * slow, abs=1) and first["seconds_without"] == pytest.approx(550 * fast, abs=1)
    assert result["ratio"] == pytest.approx(slow / fast, rel=0.01)
    assert result["median_ratio"] == pytest.approx(slow / fast, rel=0.03)
    lone = time_to_loss.pace([(_write_progress(tmp_path / "c", 10, 1.0, range(0, 101)),
                               _write_progress(tmp_path / "d", 10, 1.0, range(200, 301)))])
    assert lone["pairs"][0]["steps"] == 0 and math.isnan(lone["ratio"])
