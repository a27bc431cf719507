"""Argument parsing shared by the ``bfm`` subcommands: the config option and plain-text help."""

from __future__ import annotations

import argparse
import re

CONFIG_HELP = (
    "config file: the workflow passes results/config/<hash>.yaml (the resolved config); any "
    "config the workflow accepts works by hand, e.g. config/config.yaml"
)


def add_config_argument(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """Add ``--config FILE`` (the study's config; provenance records its hash)."""
    parser.add_argument("--config", required=required, metavar="FILE", help=CONFIG_HELP)


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain(doc: str | None) -> str:
    """A module docstring as plain text for ``--help`` (no reST roles or double backticks)."""
    text = _ROLE.sub(r"\1", doc or "")
    return text.replace("``", "")


def add_command(
    sub: argparse._SubParsersAction, name: str, doc: str | None, help_text: str
) -> argparse.ArgumentParser:
    """A subcommand parser whose ``--help`` shows ``doc`` as plain text."""
    return sub.add_parser(
        name,
        help=help_text,
        description=plain(doc),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
