"""The ``livesight`` command line.

Each subcommand lives in its own module of :mod:`app.cli` and exposes
``add_parser(subparsers)``, which registers the subcommand and sets
``func=run`` on it. Command modules import only :mod:`argparse` at module
level; heavy libraries are imported inside ``run`` so ``livesight --help``
stays fast and nothing runs at import time.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: Subcommand modules, in the order ``--help`` lists them.
COMMAND_MODULES = (
    "app.cli.probe",
    "app.cli.ask",
    "app.cli.serve",
    "app.cli.client",
    "app.cli.bench",
    "app.cli.samples",
    "app.cli.eval",
    "app.cli.calibrate",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livesight",
        description="LiveSight: a streaming video assistant that remembers what it has seen.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
