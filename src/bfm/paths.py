"""Where the pipeline's files live under results/ (no third-party imports: the Snakefile
and every SLURM job step import this when they parse the workflow)."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path("results")
RAW = RESULTS / "raw"
TILES = RESULTS / "tiles"
BATCHES = RESULTS / "batches"


def tile_path(root: str | Path, modality: str, period: str) -> Path:
    """``<root>/<modality>/<period>.nc``; a static modality's one tile has period ``static``."""
    return Path(root) / modality / f"{period}.nc"


def raw_path(root: str | Path, source: str, name: str) -> Path:
    """``<root>/<source>/<name>``: a raw file as a source names it (``Source.raw_names``)."""
    return Path(root) / source / name


def batch_path(root: str | Path, t0: str) -> Path:
    """``<root>/<t0>.h5`` with t0 written ``YYYYMMDDTHH``."""
    return Path(root) / f"{t0}.h5"


def batch_list_path(root: str | Path, period: str, split: str) -> Path:
    """``<root>/lists/<period>.<split>.txt``: the batches of a split starting in a month."""
    return Path(root) / "lists" / f"{period}.{split}.txt"
