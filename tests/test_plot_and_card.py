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
from hf_gns.model_card import END, START, batch_schedule, gns_section, short_group_steps, update_model_card
from hf_gns.plot import draw_figures, load_run, plot_runs

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


def loop_history(micro_per_epoch: int = 33, micro: int = 4, accumulations=(8, 16, 16)) -> list[dict]:
    """Rows as `GNSLoop` logs them over one epoch per accumulation count: ``gns/batch_size`` is
    the group actually run, so every epoch ends with a short group (here 1 micro-batch: 4)."""
    rows, step, tokens = [], 0, 0.0
    for epoch, accumulation in enumerate(accumulations):
        left = micro_per_epoch
        while left:
            group = min(accumulation, left)
            left -= group
            step += 1
            tokens += group * micro * SEQ_LEN
            rows.append({"step": step, "gns/batch_size": float(group * micro), "gns/accumulation_steps": float(group),
                         "gns/tokens": tokens, "gns/examples": float(group * micro), "gns/b_simple": 50.0 + step,
                         "gns/skipped": 0.0, "loss": 3.0 - step / 100, "epoch": epoch})
    return rows


def labelled_lines(fig) -> dict[str, object]:
    """The lines of a figure's axes that carry a legend label, by label."""
    return {line.get_label(): line for line in fig.axes[0].lines if not line.get_label().startswith("_")}


def legend_texts(fig) -> dict[str, list[str]]:
    """Every legend of a figure's axes: title -> entry texts."""
    from matplotlib.legend import Legend

    legends = [child for child in fig.axes[0].get_children() if isinstance(child, Legend)]
    return {leg.get_title().get_text(): [t.get_text() for t in leg.get_texts()] for leg in legends}


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


def test_cli_plot_to_an_image_file(runs, tmp_path, capsys):
    """-o with an image suffix names files, never a directory: several figures go beside it."""
    _, run_a, run_b = runs
    target = tmp_path / "figs" / "plot.png"
    assert main(["plot", str(run_a), str(run_b), "-o", str(target)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "figs" / f"plot_{name}.png") for name in ("gns", "batch_size", "loss")]
    assert not target.exists()
    for path in printed:
        assert_png(path)

    # exactly one figure (a loss-only run): that very file, in the format of its suffix
    bare = tmp_path / "loss_only"
    bare.mkdir()
    write_jsonl(bare / "gns_log.jsonl", [{"step": s, "loss": 3.0 - s / 10} for s in range(1, 6)])
    single = tmp_path / "single.pdf"
    assert main(["plot", str(bare), "-o", str(single)]) == 0
    assert capsys.readouterr().out.split() == [str(single)]
    assert single.is_file() and single.read_bytes()[:5] == b"%PDF-"


def test_cli_plot_help_documents_the_out_rule(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "plot_gns.png" in text and ".pdf" in text and ".svg" in text and "directory" in text


def test_plots_label_axes_in_plain_words(runs, tmp_path):
    _, run_a, run_b = runs
    figures = draw_figures([load_run(str(run_a)), load_run(str(run_b))])
    assert list(figures) == ["gns", "batch_size", "loss"]
    ylabels = {"gns": "B_simple (examples)", "batch_size": "global batch (examples)",
               "loss": "training and evaluation loss"}
    for name, fig in figures.items():
        ax = fig.axes[0]
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("tokens seen", ylabels[name])
        assert legend_texts(fig)["run"] == ["run_a", "run_b"]
        texts = [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()] + sum(legend_texts(fig).values(), [])
        assert not [t for t in texts if "gns/" in t]

    for name, row, xlabel in (("by_examples", {"gns/examples": 8.0}, "examples seen"),
                              ("by_steps", {}, "optimizer steps")):
        run = tmp_path / name
        run.mkdir()
        write_jsonl(run / "gns_log.jsonl", [{"step": s, "loss": 3.0, **row} for s in range(1, 6)])
        loss = draw_figures([load_run(str(run))])["loss"]
        assert (loss.axes[0].get_xlabel(), loss.axes[0].get_ylabel()) == (xlabel, "training loss")
        assert legend_texts(loss)["run"] == [name]


def test_batch_plot_shows_the_policy_batch_not_short_last_groups(tmp_path):
    history = loop_history()
    sizes = [row["gns/batch_size"] for row in history]
    assert sizes == [32, 32, 32, 32, 4, 64, 64, 4, 64, 64, 4]  # what GNSLoop logs
    run = tmp_path / "loop_run"
    run.mkdir()
    write_jsonl(run / "gns_log.jsonl", history)
    log = load_run(str(run))
    assert len(log.rows) == len(history)  # every logged step kept

    kept = [i for i, size in enumerate(sizes) if size != 4]
    tokens = [history[i]["gns/tokens"] for i in kept]
    figures = draw_figures([log])
    line = labelled_lines(figures["batch_size"])["loop_run"]
    assert list(line.get_ydata()) == [32] * 4 + [64] * 4
    assert list(line.get_xdata()) == tokens
    dashed = [ln for ln in figures["gns"].axes[0].lines if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and min(dashed[0].get_ydata()) == 32
    # the card's schedule: no 4-example segments either
    assert batch_schedule(history) == [(32.0, 1, 0.0), (64.0, 6, history[4]["gns/tokens"])]
    assert short_group_steps(history) == {5, 8, 11}
    # a lasting decrease is real, not a short group
    lasting = [{"step": s, "gns/batch_size": b} for s, b in enumerate([64, 64, 32, 32], start=1)]
    assert short_group_steps(lasting) == set()


def test_every_logged_step_is_plotted_and_counted(tmp_path):
    """393 logged steps: 393 rows, 393 points of the loss line, 393 counted in the card."""
    history = loop_history(micro_per_epoch=131 * 8, micro=4, accumulations=(8, 8, 8))[:393]
    history[0] = {"step": 1, "gns/batch_size": 32.0, "gns/skipped": 1.0, "loss": 3.0}  # not measured
    run = tmp_path / "long_run"
    run.mkdir()
    write_jsonl(run / "gns_log.jsonl", history)
    log = load_run(str(run))
    assert [row["step"] for row in log.rows] == list(range(1, 394))
    figures = draw_figures([log])
    assert len(labelled_lines(figures["loss"])["long_run"].get_xdata()) == 393
    assert len(labelled_lines(figures["gns"])["long_run"].get_xdata()) == 392
    md = gns_section(log.rows)
    assert number(table_cell(md, "Optimizer steps")) == 393
    assert number(table_cell(md, "Measured steps")) + number(table_cell(md, "Skipped measurements")) == 393


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


def test_cli_card_keeps_plots_that_exist(runs, tmp_path, capsys):
    """Without --plot, the card links the run dir's gns.png, or the image its section links to."""
    _, run_a, _ = runs
    link = "![Gradient noise scale during training]"
    assert main(["card", str(run_a)]) == 0
    assert link not in (run_a / "README.md").read_text()  # no plot file: no dangling link

    plot_runs([str(run_a)], str(run_a))
    (run_a / "README.md").write_text("---\nlicense: mit\n---\n\n# rewritten by the Trainer\n")
    assert main(["card", str(run_a)]) == 0
    assert f"{link}(gns.png)" in (run_a / "README.md").read_text()

    plots = plot_runs([str(run_a)], str(tmp_path / "figs" / "plot.png"))
    assert main(["card", str(run_a), "--plot", plots[0]]) == 0  # copied in as plot_gns.png
    assert main(["card", str(run_a)]) == 0
    text = (run_a / "README.md").read_text()
    assert f"{link}(plot_gns.png)" in text and text.count(link) == 1
    capsys.readouterr()


def test_cli_card(runs, capsys):
    _, run_a, _ = runs
    assert main(["card", str(run_a), "--plot", "gns.png"]) == 0
    path = capsys.readouterr().out.strip()
    text = open(path).read()
    assert path == str(run_a / "README.md") and text.count(START) == 1
    assert "| Skipped measurements | 1 |" in text
