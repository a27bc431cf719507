"""Where the pipeline's files live under results/ (no third-party imports: the Snakefile
and every SLURM job step import this when they parse the workflow)."""

from __future__ import annotations

from pathlib import Path


def tile_path(root: str | Path, modality: str, period: str | None = None) -> Path:
    """``<root>/<modality>/<period>.nc`` (``static.nc`` for era5_static)."""
    return Path(root) / modality / (f"{period}.nc" if period else "static.nc")
