"""The `btcxr` command-line program: a thin argparse front over the library's functions."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from btcxr import __version__
from btcxr.commands.common import add_verbosity, deprecated_flags
from btcxr.engine.lock import released_on_exit
from btcxr.errors import BtcxrError
from btcxr.logs import setup_logging

# Subcommand name -> module in btcxr.commands, in the order of the pipeline.
COMMANDS = ["synth", "prepare", "pretrain", "probe", "finetune", "evaluate", "predict", "explain", "browse",
            "export", "reproduce", "replicate", "demo", "configs"]

log = logging.getLogger("btcxr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="btcxr",
        description="BarlowTwins-CXR: pre-train, fine-tune, evaluate and explain chest X-ray detectors.",
        epilog="Run `btcxr COMMAND --help` for the options and examples of each command.",
    )
    parser.add_argument("--version", action="version", version=f"btcxr {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1, default=0,
                           help="debug logging")
    verbosity.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1,
                           help="warnings and errors only, no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"btcxr.commands.{name}")
        except ModuleNotFoundError as exc:  # a command not built yet must not break the others
            if exc.name != f"btcxr.commands.{name}":
                raise
            continue
        module.register(sub)
    for command in sub.choices.values():
        add_verbosity(command)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, parsed (argparse's usage error and exit 2 when it does not parse); runs nothing."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may stand on either side of options (`--config F a=1 --out X b=2`).
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    setup_logging(args.verbosity)
    for warning in deprecated_flags(args):
        log.warning("%s", warning)
    try:
        with released_on_exit():  # run folders this command locked are given back when it ends
            result = args.func(args)
    except BtcxrError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
