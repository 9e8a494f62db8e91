"""``hf-gns`` command line: plot runs' gradient noise scale, write it into a model card.

    hf-gns plot RUN_DIR [RUN_DIR ...] [-o OUT_DIR | -o FILE.png]
    hf-gns card RUN_DIR [--plot PATH]
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

OUT_HELP = (
    "where the figures go (default: the first RUN_DIR). A path without an image suffix is a "
    "directory that gets gns.png, batch_size.png and loss.png. A path ending in .png, .pdf, .svg "
    "or .jpg/.jpeg is a file: with one figure to draw it is that file, with several they go beside it "
    "as NAME_gns.EXT, NAME_batch_size.EXT and NAME_loss.EXT (e.g. -o plot.png writes plot_gns.png, "
    "plot_batch_size.png, plot_loss.png). An existing directory is always used as a directory."
)
PLOT_HELP = (
    "image to embed, relative to RUN_DIR or a file that is copied in (default: the image the card's "
    "section links to now if that file exists, else RUN_DIR/gns.png if it exists, else none)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-gns", description="Gradient noise scale logs of hf_gns runs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    plot = sub.add_parser(
        "plot",
        help="plot B_simple, batch size and loss of one or more runs",
        description="Draw B_simple, the global batch and the loss (those with data), runs overlaid.",
    )
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                      help="output dir of a run (trainer_state.json, gns_history.jsonl or gns_log.jsonl)")
    plot.add_argument("-o", "--out", default=None, metavar="OUT", help=OUT_HELP)
    card = sub.add_parser(
        "card",
        help="add or refresh the gradient-noise-scale section of RUN_DIR/README.md",
    )
    card.add_argument("run_dir", metavar="RUN_DIR")
    card.add_argument("--plot", default=None, metavar="PATH", help=PLOT_HELP)
    return parser


def _plot(run_dirs: Sequence[str], out: str | None) -> int:
    """``hf-gns plot``: print the files written; 1 if there was nothing to draw."""
    from .plot import plot_runs

    paths = plot_runs(run_dirs, out or run_dirs[0])
    if not paths:
        print("hf-gns: no gns/*, batch size or loss values to plot", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


def _card(run_dir: str, plot: str | None) -> int:
    """``hf-gns card``: refresh the card's section, keeping an existing plot when none is given."""
    from .model_card import existing_plot, update_model_card
    from .plot import load_run

    rows = load_run(run_dir).rows
    print(update_model_card(run_dir, rows, plot_path=plot or existing_plot(run_dir)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hf-gns``; returns the exit status (bad input exits via SystemExit(2))."""
    parser = _parser()
    args = parser.parse_args(argv)
    from .plot import RunLogError

    try:
        if args.command == "plot":
            return _plot(args.run_dirs, args.out)
        return _card(args.run_dir, args.plot)
    except RunLogError as error:
        parser.error(str(error))
    except ValueError as error:  # e.g. a run without any gns/* values for the card
        print(f"hf-gns: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
