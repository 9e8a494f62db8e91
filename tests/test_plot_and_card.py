"""Run-log loading, plots, the ``hf-gns`` CLI and the model-card section, on fake run dirs."""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")

from hf_gns.cli import main
from hf_gns.model_card import END, START, gns_section, update_model_card
from hf_gns.plot import load_run, plot_runs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEQ_LEN = 64
STEPS = 40


def batch_size_at(step: int) -> int:
    return 8 if step <= 15 else 16 if step <= 30 else 32


def tokens_at(step: int) -> int:
    return sum(batch_size_at(s) * SEQ_LEN for s in range(1, step + 1))


def callback_history(seed: int = 0, skipped: tuple[int, ...] = (7,)) -> list[dict]:
    """Rows as `GNSCallback` writes them: one per optimizer step, a doubling batch size."""
    rng = random.Random(seed)
    rows = []
    for step in range(1, STEPS + 1):
        policy = {"gns/batch_size": float(batch_size_at(step)), "gns/accumulation_steps": 1.0,
                  "gns/tokens": float(tokens_at(step))}
        if step in skipped:
            rows.append({"step": step, "gns/skipped": 1.0, **policy})
            continue
        ema = 20.0 * (1 + step / 8) * (1 + 0.01 * seed)
        row = {
            "step": step,
            "gns/b_simple": ema,
            "gns/b_simple_tokens": ema * SEQ_LEN,
            "gns/g2": 1.0 / step,
            "gns/trace_sigma": ema / step,
            "gns/step_b_simple": ema * rng.lognormvariate(0, 0.6) * (1 if rng.random() > 0.1 else -1),
            "gns/step_g2": 1.0 / step,
            "gns/step_trace_sigma": ema / step,
            "gns/examples": float(batch_size_at(step)),
            "gns/skipped": 0.0,
            **policy,
        }
        if step % 10 == 0:
            row["gns/full_model_b_simple"] = ema * 1.3
        rows.append(row)
    return rows


def write_jsonl(path, rows) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def make_trainer_run(root, history: list[dict], name: str = "run_a"):
    """A Trainer output dir: trainer_state.json (logged every 5 steps) + gns_history.jsonl."""
    run = root / name
    run.mkdir()
    by_step = {row["step"]: row for row in history}
    log = []
    for step in range(5, STEPS + 1, 5):
        entry = {"epoch": step / STEPS, "grad_norm": math.nan if step == 10 else 1.0,
                 "learning_rate": 1e-3 * (1 - step / STEPS), "loss": 5.0 - step / 20, "step": step}
        entry.update({k: v for k, v in by_step[step].items() if k != "step"})
        log.append(entry)
        if step % 20 == 0:
            log.append({"epoch": step / STEPS, "eval_loss": 4.8 - step / 25, "eval_runtime": 0.5, "step": step})
    log[1]["gns/b_simple"] = math.nan  # a NaN that the per-step history overrides
    del log[2]["loss"]  # a missing key
    log.append({"epoch": 1.0, "step": STEPS, "total_flos": 1e12, "train_loss": 4.2, "train_runtime": 10.0})
    state = {"global_step": STEPS, "log_history": log, "max_steps": STEPS, "best_metric": None}
    (run / "trainer_state.json").write_text(json.dumps(state, indent=2))
    write_jsonl(run / "gns_history.jsonl", history)
    with open(run / "gns_history.jsonl", "a") as f:
        f.write('{"step": 41, "gns/b_simp')  # a partly written last line
    return run


def make_loop_run(root, name: str = "run_b"):
    """A custom-loop run: gns_log.jsonl only (gns keys + loss every step, no eval)."""
    run = root / name
    run.mkdir()
    rows = callback_history(seed=3, skipped=())
    for row in rows:
        row["loss"] = 5.5 - row["step"] / 15
    write_jsonl(run / "gns_log.jsonl", rows)
    return run


@pytest.fixture
def runs(tmp_path):
    history = callback_history()
    return history, make_trainer_run(tmp_path, history), make_loop_run(tmp_path)


def assert_png(path) -> None:
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 8_000, (path, len(data))


# -- load_run ------------------------------------------------------------------------------


def test_load_run_merges_by_step_on_tokens(runs):
    history, run_a, _ = runs
    log = load_run(str(run_a))
    assert log.name == "run_a"
    assert log.axis == "tokens"
    assert [row["step"] for row in log.rows] == list(range(1, STEPS + 1))  # partial line ignored
    row20 = log.rows[19]
    assert row20["eval_loss"] == pytest.approx(4.8 - 20 / 25)  # from trainer_state.json
    assert row20["loss"] == pytest.approx(5.0 - 20 / 20)
    assert row20["gns/full_model_b_simple"] == pytest.approx(history[19]["gns/full_model_b_simple"])
    assert log.rows[9]["gns/b_simple"] == pytest.approx(history[9]["gns/b_simple"])  # NaN overridden
    assert math.isnan(log.rows[9]["grad_norm"])
    assert "loss" not in log.rows[14]
    assert log.rows[6]["gns/skipped"] == 1.0 and "gns/b_simple" not in log.rows[6]
    assert list(log.x()) == [float(tokens_at(s)) for s in range(1, STEPS + 1)]
    x, y = log.series("loss")
    assert list(x) == [float(tokens_at(s)) for s in (5, 10, 20, 25, 30, 35, 40)]
    assert list(y) == pytest.approx([5.0 - s / 20 for s in (5, 10, 20, 25, 30, 35, 40)])


def test_examples_and_steps_axes(tmp_path):
    run = tmp_path / "examples_only"
    run.mkdir()
    # every other step logged: each logged count stands for two steps
    write_jsonl(run / "gns_log.jsonl", [{"step": s, "gns/examples": 8.0, "gns/b_simple": 10.0, "loss": 3.0}
                                        for s in range(2, 11, 2)])
    log = load_run(str(run))
    assert log.axis == "examples"
    assert list(log.x()) == [16.0, 32.0, 48.0, 64.0, 80.0]
    assert list(log.x("steps")) == [2.0, 4.0, 6.0, 8.0, 10.0]

    bare = tmp_path / "loss_only"
    bare.mkdir()
    (bare / "trainer_state.json").write_text(json.dumps({"log_history": [
        {"step": 10, "loss": 2.0}, {"step": 20, "loss": float("nan")}, {"step": 20, "eval_loss": 1.9}]}))
    log = load_run(str(bare))
    assert log.axis == "steps"
    assert log.rows[1]["eval_loss"] == 1.9 and math.isnan(log.rows[1]["loss"])
    # no gns data at all: only the loss figure, on the step axis
    written = plot_runs([str(bare)], str(tmp_path / "plots"))
    assert [os.path.basename(p) for p in written] == ["loss.png"]
    assert_png(written[0])


def test_checkpoint_trainer_state_is_found(tmp_path):
    run = tmp_path / "ckpt_run"
    for step in (10, 20):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(
            json.dumps({"log_history": [{"step": s, "loss": 1.0} for s in range(5, step + 1, 5)]}))
    assert [row["step"] for row in load_run(str(run)).rows] == [5, 10, 15, 20]


def test_missing_or_empty_run_dir_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no training log"):
        load_run(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="not found"):
        load_run(str(tmp_path / "nope"))
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(tmp_path / "nope"), "-o", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "run directory not found" in capsys.readouterr().err


# -- plots and CLI -------------------------------------------------------------------------


def test_plot_runs_writes_pngs(runs, tmp_path):
    _, run_a, run_b = runs
    out = tmp_path / "plots"
    written = plot_runs([str(run_a), str(run_b)], str(out))
    assert [os.path.basename(p) for p in written] == ["gns.png", "batch_size.png", "loss.png"]
    for path in written:
        assert_png(path)


def test_cli_plot(runs, tmp_path, capsys):
    _, run_a, run_b = runs
    out = tmp_path / "cli_out"
    assert main(["plot", str(run_a), str(run_b), "-o", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / name) for name in ("gns.png", "batch_size.png", "loss.png")]
    for path in printed:
        assert_png(path)


def test_cli_as_module(runs, tmp_path):
    _, run_a, _ = runs
    out = tmp_path / "module_out"
    result = subprocess.run([sys.executable, "-m", "hf_gns.cli", "plot", str(run_a), "-o", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (out / "gns.png").exists() and str(out / "gns.png") in result.stdout


# -- model card ----------------------------------------------------------------------------


def table_cell(markdown: str, label: str) -> str:
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == label:
            return cells[1]
    raise AssertionError(f"no table row {label!r} in:\n{markdown}")


def number(text: str) -> float:
    return float(text.replace(",", ""))


def test_gns_section_numbers_match_history(runs):
    history = runs[0]
    md = gns_section(history, plot_path="gns.png")
    assert md.startswith("## Gradient noise scale")
    assert "McCandlish" in md and "Gray" in md and "normalization layers" in md
    assert "![Gradient noise scale during training](gns.png)" in md

    measured = [row for row in history if "gns/b_simple" in row]
    emas = [row["gns/b_simple"] for row in measured]
    assert number(table_cell(md, "Final B_simple (examples)")) == pytest.approx(emas[-1], rel=1e-3)
    assert number(table_cell(md, "Final B_simple (tokens)")) == pytest.approx(
        measured[-1]["gns/b_simple_tokens"], rel=1e-3)
    spread = [number(v) for v in table_cell(md, "B_simple min / median / max (examples)").split("/")]
    assert spread == pytest.approx([min(emas), statistics.median(emas), max(emas)], rel=1e-3)
    assert number(table_cell(md, "Optimizer steps")) == STEPS
    assert number(table_cell(md, "Tokens seen")) == tokens_at(STEPS)
    assert number(table_cell(md, "Measured steps")) == len(measured)
    assert number(table_cell(md, "Skipped measurements")) == 1

    # schedule: batch size, first step, tokens consumed before it
    schedule = [[number(c) for c in line.strip("|").split("|")]
                for line in md.splitlines() if line.startswith("| ") and line.count("|") == 4
                and line[2].isdigit()]
    assert schedule == [[8, 1, 0], [16, 16, tokens_at(15)], [32, 31, tokens_at(30)]]


def test_gns_section_needs_gns_values():
    with pytest.raises(ValueError, match="no gns"):
        gns_section([{"step": 1, "loss": 2.0}])


def test_update_model_card_creates_and_is_idempotent(runs, tmp_path):
    yaml = pytest.importorskip("yaml")
    history = runs[0]
    out = tmp_path / "model"
    path = update_model_card(str(out), history)
    first = open(path).read()
    front = yaml.safe_load(first.split("---")[1])
    assert front["library_name"] == "transformers"
    assert {"hf_gns", "gradient-noise-scale"} <= set(front["tags"])
    assert update_model_card(str(out), history) == path
    assert open(path).read() == first
    assert first.count(START) == first.count(END) == 1
    assert first.count("## Gradient noise scale") == 1


def test_update_model_card_keeps_existing_text(runs, tmp_path):
    history, run_a, _ = runs
    out = tmp_path / "model"
    out.mkdir()
    card = out / "README.md"
    card.write_text("---\nlicense: mit\ntags:\n- generated_from_trainer\n---\n\n# my-model\n\nIntro text.\n")
    update_model_card(str(out), history)
    card.write_text(card.read_text() + "\n## Citation\n\nCite us.\n")

    plots = plot_runs([str(run_a)], str(tmp_path / "plots"))  # outside the card's dir: copied in
    longer = history + [{"step": 41, "gns/b_simple": 999.0, "gns/tokens": 1e6, "gns/skipped": 0.0}]
    update_model_card(str(out), longer, plot_path=plots[0])
    text = card.read_text()
    assert text.startswith("---\nlicense: mit\ntags:\n- generated_from_trainer\n---\n\n# my-model\n\nIntro text.\n")
    assert text.rstrip().endswith("## Citation\n\nCite us.")
    assert text.count(START) == text.count(END) == text.count("## Gradient noise scale") == 1
    assert table_cell(text, "Final B_simple (examples)") == "999"
    assert table_cell(text, "Optimizer steps") == "41"
    assert "](gns.png)" in text and (out / "gns.png").exists()


def test_cli_card(runs, capsys):
    _, run_a, _ = runs
    assert main(["card", str(run_a), "--plot", "gns.png"]) == 0
    path = capsys.readouterr().out.strip()
    text = open(path).read()
    assert path == str(run_a / "README.md") and text.count(START) == 1
    assert "| Skipped measurements | 1 |" in text
