"""The ``bfm`` command line: one subcommand per pipeline step.

Each step module provides ``register(subparsers)``, which adds its subcommand(s) with
``set_defaults(func=...)``; ``func(args)`` returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from bfm import __version__

# Modules that contribute subcommands, in the order --help lists them.
COMMAND_MODULES = (
    "bfm.sources.commands",
    "bfm.tiles",
    "bfm.batches",
    "bfm.stats_cli",
    "bfm.train",
    "bfm.evaluate",
    "bfm.report",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bfm",
        description="Biodiversity Foundation Model pipeline: sources -> tiles -> batches -> "
        "statistics -> training -> evaluation -> report. Usually run by Snakemake "
        "(see README.md); every step can also be run by hand.",
    )
    parser.add_argument("--version", action="version", version=f"bfm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(title="steps", metavar="STEP")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        # Bad input: one clear line naming the file/field and the rule, no traceback.
        logging.getLogger("bfm").error("%s", err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
