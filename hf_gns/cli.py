"""``hf-gns`` command line: plot runs' gradient noise scale, write it into a model card.

    hf-gns plot RUN_DIR [RUN_DIR ...] -o OUT
    hf-gns card RUN_DIR [--plot PATH]
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-gns", description="Gradient noise scale logs of hf_gns runs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    plot = sub.add_parser(
        "plot",
        help="plot B_simple, batch size and loss of one or more runs",
        description="Write gns.png, batch_size.png and loss.png (those with data), runs overlaid.",
    )
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                      help="output dir of a run (trainer_state.json, gns_history.jsonl or gns_log.jsonl)")
    plot.add_argument("-o", "--out", default=None, metavar="OUT",
                      help="directory for the PNGs (default: the first RUN_DIR)")
    card = sub.add_parser(
        "card",
        help="add or refresh the gradient-noise-scale section of RUN_DIR/README.md",
    )
    card.add_argument("run_dir", metavar="RUN_DIR")
    card.add_argument("--plot", default=None, metavar="PATH", help="image to embed (e.g. gns.png)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hf-gns``; returns the exit status (bad input exits via SystemExit(2))."""
    parser = _parser()
    args = parser.parse_args(argv)
    from .plot import RunLogError, load_run, plot_runs

    try:
        if args.command == "plot":
            paths = plot_runs(args.run_dirs, args.out or args.run_dirs[0])
            if not paths:
                print("hf-gns: no gns/*, batch size or loss values to plot", file=sys.stderr)
                return 1
            for path in paths:
                print(path)
        else:
            from .model_card import update_model_card

            print(update_model_card(args.run_dir, load_run(args.run_dir).rows, plot_path=args.plot))
    except RunLogError as error:
        parser.error(str(error))
    except ValueError as error:  # e.g. a run without any gns/* values for the card
        print(f"hf-gns: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
