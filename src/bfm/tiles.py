"""(being written)"""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Adds no subcommand yet."""
