"""A "Gradient noise scale" section for a Hugging Face model card (``README.md``)."""

from __future__ import annotations

import math
import os
import re
import shutil
import statistics
from collections import Counter
from typing import Any, Iterable

from .validation import is_finite_number

START = "<!-- hf_gns:start -->"
END = "<!-- hf_gns:end -->"
FRONT_MATTER = "---\nlibrary_name: transformers\ntags:\n- hf_gns\n- gradient-noise-scale\n---\n"


def fmt_number(value: float | None) -> str:
    """4 significant digits below 1000, else a rounded integer with thousands separators."""
    if not is_finite_number(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def fmt_count(value: float) -> str:
    return f"{int(round(value)):,}"


def _rows(history: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((r for r in history if is_finite_number(r.get("step"))), key=lambda r: r["step"])


def _values(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if is_finite_number(r.get(key))]


def short_group_steps(history: Iterable[dict[str, Any]]) -> set[float]:
    """Steps whose ``gns/batch_size`` is the short last accumulation group of an epoch.

    A custom loop (`hf_gns.GNSLoop`) logs the size of the group it actually ran, and the
    data of an epoch can run out mid-group. Batch-size policies never shrink the batch and
    the next epoch starts with a full group, so such a step is a one-row dip: smaller than
    the logged batch before it and than the one after it (or the last row). A lasting
    decrease is not a dip and is kept.
    """
    sized = [(row["step"], float(row["gns/batch_size"])) for row in _rows(history)
             if is_finite_number(row.get("gns/batch_size"))]
    short: set[float] = set()
    for i in range(1, len(sized)):
        step, size = sized[i]
        after = sized[i + 1][1] if i + 1 < len(sized) else math.inf
        if size < sized[i - 1][1] and size < after:
            short.add(step)
    return short


def policy_batch_sizes(history: Iterable[dict[str, Any]]) -> list[tuple[float, float]]:
    """(step, global batch of the policy) of every row with ``gns/batch_size``, less the
    short last groups of epochs (`short_group_steps`)."""
    rows = _rows(history)
    short = short_group_steps(rows)
    return [(row["step"], float(row["gns/batch_size"])) for row in rows
            if is_finite_number(row.get("gns/batch_size")) and row["step"] not in short]


def batch_schedule(history: Iterable[dict[str, Any]]) -> list[tuple[float, int, float]]:
    """(batch size, first step, tokens seen before that step) of each run of equal policy batch
    (`policy_batch_sizes`: an epoch's short last group starts no segment)."""
    rows = _rows(history)
    sizes = dict(policy_batch_sizes(rows))
    segments: list[tuple[float, int, float]] = []
    tokens = 0.0
    for row in rows:
        size = sizes.get(row["step"])
        if size is not None and (not segments or size != segments[-1][0]):
            segments.append((size, int(row["step"]), tokens))
        if is_finite_number(row.get("gns/tokens")):
            tokens = float(row["gns/tokens"])
    return segments


def gns_section(history: list[dict[str, Any]], *, plot_path: str | None = None) -> str:
    """Markdown "## Gradient noise scale" section summarising a run's ``gns/*`` log rows.

    ``history`` is a list of per-step dicts (`GNSCallback.history`, the Trainer's
    ``log_history`` or `hf_gns.plot.RunLog.rows`). Raises ValueError if it has no ``gns/*`` keys.
    """
    rows = _rows(history)
    if not any(k.startswith("gns/") for r in rows for k in r):
        raise ValueError("history has no gns/* values to summarise")
    ema = _values(rows, "gns/b_simple")
    ema_tokens = _values(rows, "gns/b_simple_tokens")
    tokens = _values(rows, "gns/tokens")
    measured = [r for r in rows if r.get("gns/skipped") == 0.0]
    skipped = sum(1 for v in _values(rows, "gns/skipped") if v > 0)
    lines = [
        "## Gradient noise scale",
        "",
        "The simple gradient noise scale `B_simple = tr(Σ) / |G|²` (McCandlish et al., 2018), the "
        "batch size around which larger batches stop paying off, was measured live during training "
        "from per-example gradient norms of the normalization layers only (Gray et al., 2024), "
        "with |G|² and tr(Σ) smoothed by exponential moving averages. It is given in examples and "
        "in tokens (examples × tokens per example).",
        "",
        "| Quantity | Value |",
        "|---|---|",
        f"| Final B_simple (examples) | {fmt_number(ema[-1] if ema else None)} |",
        f"| Final B_simple (tokens) | {fmt_number(ema_tokens[-1] if ema_tokens else None)} |",
    ]
    if ema:
        spread = " / ".join(fmt_number(v) for v in (min(ema), statistics.median(ema), max(ema)))
        lines.append(f"| B_simple min / median / max (examples) | {spread} |")
    lines += [
        f"| Optimizer steps | {fmt_count(rows[-1]['step'])} |",
        f"| Tokens seen | {fmt_count(max(tokens)) if tokens else 'not logged'} |",
        f"| Measured steps | {fmt_count(len(measured))} |",
        f"| Skipped measurements | {fmt_count(skipped)} |",
    ]
    schedule = batch_schedule(rows)
    examples = _values(rows, "gns/examples")
    if not schedule and examples:
        common = Counter(examples).most_common(1)[0][0]
        lines.append(f"| Batch size (examples per step) | {fmt_count(common)} (fixed) |")
    if schedule:
        with_tokens = bool(tokens)
        lines += ["", "Batch-size schedule:", ""]
        lines += ["| Batch size (examples) | From step | Tokens seen before |" if with_tokens else
                  "| Batch size (examples) | From step |",
                  "|---|---|---|" if with_tokens else "|---|---|"]
        for size, step, before in schedule:
            cells = [fmt_count(size), fmt_count(step)] + ([fmt_count(before)] if with_tokens else [])
            lines.append("| " + " | ".join(cells) + " |")
    if plot_path:
        lines += ["", f"![Gradient noise scale during training]({plot_path.replace(os.sep, '/')})"]
    lines += [
        "",
        "References: S. McCandlish et al., *An Empirical Model of Large-Batch Training*, "
        "arXiv:1812.06162 (2018); G. Gray et al., *Normalization Layer Per-Example Gradients are "
        "Sufficient to Predict Gradient Noise Scale in Transformers*, NeurIPS 2024, arXiv:2411.00999.",
    ]
    return "\n".join(lines) + "\n"


def _card_plot_path(output_dir: str, plot_path: str) -> str:
    """``plot_path`` as seen from the card; an existing image outside ``output_dir`` is copied in."""
    if not os.path.exists(plot_path):
        return plot_path  # taken as relative to the card already
    out = os.path.abspath(output_dir)
    src = os.path.abspath(plot_path)
    if os.path.commonpath([out, src]) != out:
        dst = os.path.join(out, os.path.basename(src))
        shutil.copyfile(src, dst)
        src = dst
    return os.path.relpath(src, out)


IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
DEFAULT_PLOT = "gns.png"


def _section_images(card_path: str) -> list[str]:
    """Image links inside the hf_gns section of the card at ``card_path`` (none if no card)."""
    if not os.path.isfile(card_path):
        return []
    with open(card_path, encoding="utf-8") as f:
        text = f.read()
    start, end = text.find(START), text.find(END)
    if start < 0:
        return []
    return IMAGE_LINK.findall(text[start:end] if end > start else text[start:])


def existing_plot(output_dir: str) -> str | None:
    """The plot a refreshed card should keep embedding when none is given, relative to the card.

    The image the card's GNS section links to now, if that file exists, else ``gns.png`` of
    ``output_dir`` if it is there (e.g. after ``Trainer.create_model_card`` rewrote the card).
    """
    links = _section_images(os.path.join(output_dir, "README.md")) + [DEFAULT_PLOT]
    local = [link for link in links if "://" not in link]
    return next((link for link in local if os.path.isfile(os.path.join(output_dir, link))), None)


def update_model_card(output_dir: str, history: list[dict[str, Any]], plot_path: str | None = None) -> str:
    """Write the GNS section into ``output_dir/README.md``; returns the card's path.

    The section sits between ``<!-- hf_gns:start -->`` and ``<!-- hf_gns:end -->``: it replaces
    a previous one in place, or is appended; other card text is kept. A missing card is created
    with minimal front matter. Calling it again with the same history leaves the same file.
    """
    os.makedirs(output_dir, exist_ok=True)
    if plot_path:
        plot_path = _card_plot_path(output_dir, plot_path)
    block = f"{START}\n{gns_section(history, plot_path=plot_path)}{END}\n"
    path = os.path.join(output_dir, "README.md")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    else:
        text = f"{FRONT_MATTER}\n# {os.path.basename(os.path.abspath(output_dir))}\n"
    pattern = re.compile(re.escape(START) + r".*?(" + re.escape(END) + r"\n?|\Z)", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path
