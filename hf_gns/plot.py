"""Read the ``gns/*`` logs of finished (or running) training runs and plot them.

A run directory may hold any of ``trainer_state.json`` (the Trainer's ``log_history``; the
newest ``checkpoint-*`` copy is used when the run dir has none), ``gns_history.jsonl``
(written by `GNSCallback`) and ``gns_log.jsonl`` (custom loops). Their rows are merged by
optimizer step; on a conflict the JSON-lines files win, being written every step.
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from .model_card import policy_batch_sizes
from .validation import is_finite_number

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TRAINER_STATE = "trainer_state.json"
JSONL_FILES = ("gns_history.jsonl", "gns_log.jsonl")
AXES = ("tokens", "examples", "steps")
AXIS_LABELS = {
    "tokens": "tokens seen",
    "examples": "examples seen",
    "steps": "optimizer steps",
}
FIGURES = ("gns", "batch_size", "loss")
IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


class RunLogError(ValueError):
    """A run directory has nothing that can be read as a training log."""


@dataclass
class RunLog:
    """One run's log rows merged by optimizer step, sorted by step.

    ``rows`` hold only numeric values (NaN kept); ``axis`` is the best x axis of this run.
    """

    name: str
    path: str
    rows: list[dict[str, float]]
    sources: list[str] = field(default_factory=list)

    @property
    def steps(self) -> np.ndarray:
        return np.array([row["step"] for row in self.rows], dtype=float)

    def has(self, key: str) -> bool:
        """Whether ``key`` has at least one finite value."""
        return any(is_finite_number(row.get(key)) for row in self.rows)

    @property
    def axis(self) -> str:
        if self.has("gns/tokens"):
            return "tokens"
        if self.has("gns/examples") or self.has("gns/batch_size"):
            return "examples"
        return "steps"

    def x(self, axis: str | None = None) -> np.ndarray:
        """The x coordinate of every row on ``axis`` (default: this run's own axis)."""
        axis = axis or self.axis
        steps = self.steps
        if axis == "steps":
            return steps
        if axis == "tokens":
            known = [(row["step"], row["gns/tokens"]) for row in self.rows if is_finite_number(row.get("gns/tokens"))]
        elif axis == "examples":
            known, total, prev = [], 0.0, 0.0
            for row in self.rows:
                per_step = row.get("gns/examples")
                per_step = per_step if is_finite_number(per_step) else row.get("gns/batch_size")
                if is_finite_number(per_step):
                    # a logged value stands for every step since the previous one
                    total += per_step * (row["step"] - prev)
                    prev = row["step"]
                    known.append((row["step"], total))
        else:
            raise ValueError(f"unknown axis {axis!r}; expected one of {AXES}")
        if not known:
            raise ValueError(f"run {self.name!r} has no data for the {axis} axis")
        return _interp(steps, known)

    def series(self, key: str, axis: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the rows where ``key`` is finite."""
        xs = self.x(axis)
        keep = [i for i, row in enumerate(self.rows) if is_finite_number(row.get(key))]
        return xs[keep], np.array([self.rows[i][key] for i in keep], dtype=float)

    def batch_series(self, axis: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(x, global batch of the policy): ``gns/batch_size`` less the short last accumulation
        group of an epoch (see `hf_gns.model_card.short_group_steps`)."""
        sizes = dict(policy_batch_sizes(self.rows))
        keep = [i for i, row in enumerate(self.rows) if row["step"] in sizes]
        return self.x(axis)[keep], np.array([sizes[self.rows[i]["step"]] for i in keep], dtype=float)


def _interp(steps: np.ndarray, known: list[tuple[float, float]]) -> np.ndarray:
    """Piecewise-linear x(step) through ``known`` and (0, 0); the last slope beyond the end."""
    ks = np.array([k for k, _ in known], dtype=float)
    kx = np.array([v for _, v in known], dtype=float)
    if ks[0] > 0:
        ks, kx = np.concatenate([[0.0], ks]), np.concatenate([[0.0], kx])
    out = np.interp(steps, ks, kx)
    if len(ks) >= 2 and ks[-1] > ks[-2]:
        slope = (kx[-1] - kx[-2]) / (ks[-1] - ks[-2])
        beyond = steps > ks[-1]
        out[beyond] = kx[-1] + slope * (steps[beyond] - ks[-1])
    return out


def _numeric(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _trainer_state_path(run_dir: str) -> str | None:
    path = os.path.join(run_dir, TRAINER_STATE)
    if os.path.isfile(path):
        return path
    checkpoints = glob.glob(os.path.join(run_dir, "checkpoint-*", TRAINER_STATE))
    numbered = [(int(m.group(1)), p) for p in checkpoints if (m := re.search(r"checkpoint-(\d+)", p))]
    return max(numbered)[1] if numbered else None


def _read_rows(path: str) -> list[dict[str, Any]]:
    if path.endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        rows = data.get("log_history", []) if isinstance(data, dict) else []
    else:
        rows = []
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # blank or partly written line
    return [row for row in rows if isinstance(row, dict) and is_finite_number(row.get("step"))]


def run_name(run_dir: str) -> str:
    """The legend name of a run: its directory's base name."""
    return os.path.basename(os.path.normpath(os.path.abspath(run_dir)))


def load_run(run_dir: str, name: str | None = None) -> RunLog:
    """Read and merge every log file of ``run_dir`` (a directory, or one of its log files).

    Raises `RunLogError` (a ValueError) if nothing readable with logged steps is found.
    """
    if os.path.isfile(run_dir):
        run_dir = os.path.dirname(os.path.abspath(run_dir))
    if not os.path.isdir(run_dir):
        raise RunLogError(f"run directory not found: {run_dir}")
    paths = [_trainer_state_path(run_dir)] + [os.path.join(run_dir, n) for n in JSONL_FILES]
    paths = [p for p in paths if p is not None and os.path.isfile(p)]
    if not paths:
        raise RunLogError(
            f"no training log in {run_dir}: expected {TRAINER_STATE}, "
            f"checkpoint-*/{TRAINER_STATE} or one of {', '.join(JSONL_FILES)}"
        )
    merged: dict[int, dict[str, float]] = {}
    for path in paths:
        try:
            rows = _read_rows(path)
        except (OSError, json.JSONDecodeError) as error:
            raise RunLogError(f"cannot read {path}: {error}") from error
        for row in rows:
            step = int(row["step"])
            merged.setdefault(step, {}).update(_numeric(row))
            merged[step]["step"] = float(step)
    if not merged:
        raise RunLogError(f"no logged steps in {', '.join(paths)}")
    return RunLog(name or run_name(run_dir), run_dir, [merged[s] for s in sorted(merged)], paths)


def merge_rows(name: str, path: str, *histories: Iterable[dict[str, Any]]) -> RunLog:
    """A `RunLog` from in-memory log rows (e.g. ``state.log_history`` and `GNSCallback.history`),
    merged by optimizer step; later histories win on a conflict."""
    merged: dict[int, dict[str, float]] = {}
    for history in histories:
        for row in history:
            if isinstance(row, dict) and is_finite_number(row.get("step")):
                step = int(row["step"])
                merged.setdefault(step, {}).update(_numeric(row))
                merged[step]["step"] = float(step)
    if not merged:
        raise RunLogError(f"no logged steps for {name}")
    return RunLog(name, path, [merged[s] for s in sorted(merged)], ["memory"])


def common_axis(runs: Sequence[RunLog]) -> str:
    """The best x axis every run has: tokens, else examples, else steps."""
    return max((run.axis for run in runs), key=AXES.index)


def _unique_names(run_dirs: Sequence[str]) -> list[str]:
    names = [run_name(d) for d in run_dirs]
    if len(set(names)) == len(names):
        return names
    parts = [os.path.normpath(os.path.abspath(d)).split(os.sep) for d in run_dirs]
    return [os.path.join(*p[-2:]) for p in parts]


# -- figures -------------------------------------------------------------------------------


def _figure(title: str, xlabel: str, ylabel: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=13)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    return fig, ax


def _finish(fig: Figure, ax, axis: str, style_handles: list | None = None) -> Figure:
    """Tick format and legends (runs by name; line styles apart); returns ``fig``."""
    from matplotlib.ticker import EngFormatter

    if axis != "steps":
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    legend = ax.legend(title="run", loc="best", fontsize=9)
    if style_handles:
        ax.add_artist(legend)
        ax.legend(handles=style_handles, loc="lower right", fontsize=8, framealpha=0.8)
    return fig


def _positive(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = y > 0
    return x[keep], y[keep]


def _plot_gns(runs: Sequence[RunLog], axis: str) -> Figure | None:
    if not any(run.has("gns/b_simple") or run.has("gns/step_b_simple") for run in runs):
        return None
    from matplotlib.lines import Line2D

    fig, ax = _figure("Gradient noise scale B_simple", AXIS_LABELS[axis], "B_simple (examples)")
    ax.set_yscale("log")
    shown: list[np.ndarray] = []
    styles = {"EMA": False, "step": False, "full": False, "batch": False}
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        x, y = _positive(*run.series("gns/b_simple", axis))
        ax.plot(x, y, color=color, lw=2, label=run.name)
        styles["EMA"] = styles["EMA"] or bool(len(y))
        shown.append(y)
        x, y = _positive(*run.series("gns/step_b_simple", axis))
        if len(y):
            styles["step"] = True
            ax.scatter(x, y, s=10, color=color, alpha=0.3, lw=0)
            if len(y) >= 10:
                shown.append(np.percentile(y, [2, 98]))
        x, y = _positive(*run.series("gns/full_model_b_simple", axis))
        if len(y):
            styles["full"] = True
            ax.scatter(x, y, s=45, marker="D", facecolor=color, edgecolor="black", zorder=5)
            shown.append(y)
        x, y = _positive(*run.batch_series(axis))
        if len(y):
            styles["batch"] = True
            ax.plot(x, y, color=color, lw=1, ls="--", drawstyle="steps-pre", alpha=0.8)
            shown.append(y)
    values = np.concatenate([v for v in shown if len(v)]) if any(len(v) for v in shown) else np.array([])
    if len(values):
        ax.set_ylim(values.min() / 1.5, values.max() * 1.5)
    handles = [
        Line2D([], [], color="gray", lw=2, label="B_simple (EMA)"),
        Line2D([], [], color="gray", marker="o", ls="", ms=3, alpha=0.4, label="per-step estimate"),
        Line2D([], [], color="gray", marker="D", ls="", mec="black", label="whole-model diagnostic"),
        Line2D([], [], color="gray", lw=1, ls="--", label="global batch size"),
    ]
    keys = ["EMA", "step", "full", "batch"]
    return _finish(fig, ax, axis, [h for h, k in zip(handles, keys) if styles[k]])


def _plot_batch_size(runs: Sequence[RunLog], axis: str) -> Figure | None:
    if not any(run.has("gns/batch_size") for run in runs):
        return None
    fig, ax = _figure("Global batch size", AXIS_LABELS[axis], "global batch (examples)")
    top = bottom = None
    for i, run in enumerate(runs):
        x, y = run.batch_series(axis)
        if len(y):
            # a value logged at a step's end held since the previous step's end
            ax.plot(x, y, color=f"C{i % 10}", lw=2, drawstyle="steps-pre", label=run.name)
            top = y.max() if top is None else max(top, y.max())
            bottom = y.min() if bottom is None else min(bottom, y.min())
    if bottom and bottom > 0 and top / bottom >= 4:
        from matplotlib.ticker import ScalarFormatter

        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_formatter(ScalarFormatter())
    return _finish(fig, ax, axis)


def _running_mean(y: np.ndarray, width: int) -> np.ndarray:
    """Mean of each value and the up to ``width - 1`` before it: one point per logged step."""
    sums = np.concatenate([[0.0], np.cumsum(y)])
    ends = np.arange(1, len(y) + 1)
    counts = np.minimum(ends, width)
    return (sums[ends] - sums[ends - counts]) / counts


def _plot_loss(runs: Sequence[RunLog], axis: str) -> Figure | None:
    if not any(run.has("loss") or run.has("eval_loss") for run in runs):
        return None
    from matplotlib.lines import Line2D

    fig, ax = _figure("Loss", AXIS_LABELS[axis], "training loss")
    has_eval = False
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        x, y = run.series("loss", axis)
        if len(y) > 200:  # per-step losses: faint raw values plus a running mean
            ax.plot(x, y, color=color, lw=0.6, alpha=0.25)
            y = _running_mean(y, max(len(y) // 50, 2))
        ax.plot(x, y, color=color, lw=1.8, label=run.name)
        x, y = run.series("eval_loss", axis)
        if len(y):
            has_eval = True
            ax.plot(x, y, color=color, lw=1.2, ls="--", marker="o", ms=5)
    handles = [Line2D([], [], color="gray", lw=1.8, label="training loss")]
    if has_eval:
        ax.set_ylabel("training and evaluation loss")
        handles.append(Line2D([], [], color="gray", lw=1.2, ls="--", marker="o", label="evaluation loss"))
    return _finish(fig, ax, axis, handles)


def draw_figures(runs: Sequence[RunLog]) -> dict[str, Figure]:
    """The figures that have data, by name in `FIGURES` order (``gns``, ``batch_size``, ``loss``),
    every run overlaid in its own colour on the best axis they all have. Needs matplotlib."""
    if not runs:
        raise ValueError("draw_figures needs at least one run")
    axis = common_axis(runs)
    drawn = {name: draw(runs, axis) for name, draw in zip(FIGURES, (_plot_gns, _plot_batch_size, _plot_loss))}
    return {name: fig for name, fig in drawn.items() if fig is not None}


def is_image_path(out: str) -> bool:
    """Whether ``out`` names an image file (by its suffix) rather than a directory; an existing
    directory is always a directory."""
    return os.path.splitext(out)[1].lower() in IMAGE_SUFFIXES and not os.path.isdir(out)


def figure_paths(out: str, names: Sequence[str]) -> list[str]:
    """Where the figures ``names`` are written for the output ``out``.

    A directory gets ``<name>.png`` each. An image file ``stem.ext`` (`IMAGE_SUFFIXES`) is the
    one figure's file; several go beside it as ``stem_<name>.ext``.
    """
    if not is_image_path(out):
        return [os.path.join(out, f"{name}.png") for name in names]
    if len(names) == 1:
        return [out]
    stem, ext = os.path.splitext(out)
    return [f"{stem}_{name}{ext}" for name in names]


def _load_runs(items: Sequence[str | RunLog]) -> list[RunLog]:
    dirs = [item for item in items if not isinstance(item, RunLog)]
    names = iter(_unique_names(dirs))
    return [item if isinstance(item, RunLog) else load_run(item, next(names)) for item in items]


def plot_runs(run_dirs: Iterable[str | RunLog], out: str) -> list[str]:
    """Plot B_simple, the global batch and the loss (those with data) of runs overlaid.

    ``out`` is a directory (``gns.png``, ``batch_size.png``, ``loss.png``) or an image file
    (see `figure_paths`: ``plot.png`` becomes ``plot_gns.png``, ... or, for one figure, itself).
    Every run is named after its directory. Returns the paths written. Needs matplotlib
    (``pip install hf_gns[plot]``).
    """
    items = list(run_dirs)
    if not items:
        raise ValueError("plot_runs needs at least one run directory")
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:  # pragma: no cover
        raise ImportError("plotting needs matplotlib: pip install 'hf_gns[plot]'") from error
    figures = draw_figures(_load_runs(items))
    paths = figure_paths(out, list(figures))
    folder = os.path.dirname(out) if is_image_path(out) else out
    if folder:
        os.makedirs(folder, exist_ok=True)
    for fig, path in zip(figures.values(), paths):
        fig.savefig(path)
    return paths
