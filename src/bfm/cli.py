"""The bfm command line: one subcommand per pipeline step.

Each step's module provides a register function (``register`` unless COMMANDS names another)
that adds its subcommand with ``set_defaults(func=...)``; ``func(args)`` returns an exit
code. See docs/architecture.md for the pipeline and its layers.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time

from bfm import __version__

# Subcommand -> ("module[:register function]", one-line help). Only the module of the command
# being run is imported, so `bfm batch` does not pay for importing torch and deepspeed.
COMMANDS: dict[str, tuple[str, str]] = {
    "sample": ("bfm.pipeline.raw:register_sample", "write a synthetic raw file of a source"),
    "download": ("bfm.pipeline.raw:register_download", "download a raw file of a source"),
    "combine": ("bfm.pipeline.raw:register_combine", "combine other sources' raw files"),
    "tile": ("bfm.pipeline.tiles", "regrid raw source files into a CF NetCDF tile"),
    "batch": ("bfm.pipeline.batches", "assemble one bfm-batch/1 HDF5 file from tiles"),
    "batches": ("bfm.pipeline.batches:register_month", "assemble every batch of one month"),
    "stats": ("bfm.pipeline.stats", "normalisation statistics over training batches"),
    "climatology": ("bfm.evaluation.climatology", "per-cell day-of-year climatology of training"),
    "species": ("bfm.pipeline.species", "the species table of the study"),
    "train": ("bfm.training.loop", "pre-train the BFM with DeepSpeed"),
    "evaluate": ("bfm.evaluation.evaluate", "score a trained model on held-out batches"),
    "predict": ("bfm.evaluation.predict", "roll a trained model out into a CF forecast file"),
    "species-glm": ("bfm.evaluation.species_glm", "Poisson GLM baseline of the species scores"),
    "finetune": ("bfm.evaluation.sdm", "species distribution models on the BFM vs GLM, MaxEnt"),
    "report": ("bfm.report", "figures and tables for the Snakemake report"),
    "bench": ("bfm.bench", "benchmarks: dag, tiles, batches, loader, model, rules"),
}


def command_module(name: str) -> tuple[str, str]:
    """The module that registers subcommand ``name`` and its register function."""
    module, _, function = COMMANDS[name][0].partition(":")
    return module, function or "register"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the module of ``command`` is imported (all when None, none when "")."""
    parser = argparse.ArgumentParser(
        prog="bfm",
        description="Biodiversity Foundation Model pipeline: sources -> tiles -> batches -> "
        "statistics -> training -> evaluation -> report. Usually run by Snakemake "
        "(see README.md); every step can also be run by hand: bfm STEP --help. "
        "@FILE anywhere on the line stands for the arguments FILE lists, one per line (the "
        "workflow passes the month lists of batches, results/batches/lists/, so).",
        fromfile_prefix_chars="@",
    )
    parser.add_argument("--version", action="version", version=f"bfm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(title="steps", metavar="STEP")
    for name, (_, help_text) in COMMANDS.items():
        if command is None or name == command:
            module, function = command_module(name)
            getattr(importlib.import_module(module), function)(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def _command_of(argv: list[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_of(argv)
    parser = build_parser(command or "")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    began = time.perf_counter()
    try:
        code = int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        # Bad input: one clear line naming the file/field and the rule, no traceback.
        logging.getLogger("bfm").error("%s", err)
        return 1
    # Every job's log ends with what it cost (the Snellius profile's resources are sized from
    # these lines, and bfm bench reads them).
    logging.getLogger("bfm").info(
        "bfm %s: %.1f s, %.1f CPU s, peak memory %.2f GiB", command, time.perf_counter() - began,
        time.process_time(), peak_memory() / 2**30)  # fmt: skip
    return code


def peak_memory() -> int:
    """This process's peak resident memory in bytes (VmHWM: from its exec on, unlike
    ru_maxrss, which counts a forked child's parent pages too); 0 where /proc is missing."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
