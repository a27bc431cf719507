"""Synthetic batch sequences and statistics for the model/data/train/evaluate tests.

Every field is a smooth spatial pattern plus a linear trend in time: at time index k,
``value = base + scale * (pattern(lat, lon) + trend * k)``. Consecutive batches share their
overlapping time exactly, and a model learns the next step from the trend (a constant
change per step in normalised units), so the loss has something easy to learn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bfm.batch import GROUPS, Batch, write_batch
from bfm.grid import Grid
from bfm.stats import batch_moments, merge_all, save_stats
from bfm.timeaxis import format_t0, offset

GRID = Grid(lat_min=44.0, lat_max=48.0, lon_min=0.0, lon_max=6.0, res=0.5)  # 9 x 13
DEMO_GRID = Grid(lat_min=44.0, lat_max=56.0, lon_min=0.0, lon_max=20.0, res=0.5)  # 25 x 41
LEVELS = (500, 850, 1000)
SPECIES = (2435240, 5219173)
EUROPE_LEVELS = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)
PROVENANCE = {"bfm_version": "test", "git_commit": "test", "config_hash": "test"}
BASE = {"t2m": (280.0, 5.0), "msl": (101000.0, 500.0), "u10": (0.0, 3.0), "v10": (1.0, 3.0),
        "z": (50000.0, 2000.0), "lsm": (0.5, 0.4), "slt": (3.0, 1.0), "t": (250.0, 10.0),
        "u": (5.0, 8.0), "v": (0.0, 8.0), "q": (0.005, 0.002), "occurrence": (0.5, 0.3)}

# value(var, k, lat, lon, channel) -> field (lat, lon)
ValueFn = Callable[[str, int, np.ndarray, np.ndarray, int], np.ndarray]


def trend_values(trend: float = 0.5) -> ValueFn:
    def value(var: str, k: int, lat: np.ndarray, lon: np.ndarray, ch: int) -> np.ndarray:
        base, scale = BASE[var]
        pattern = np.sin(np.deg2rad(lat * 7 + ch * 20))[:, None] * np.cos(np.deg2rad(lon * 11))
        # Continuous fields trend; occurrence keeps its spatial pattern (counts do not drift).
        drift = 0.0 if var == "occurrence" else trend * k
        return base + scale * (pattern + drift + 0.1 * ch)

    return value


def make_batch(t0: pd.Timestamp, k: int, grid: Grid, levels: Sequence[int],
               species: Sequence[int], value: ValueFn, step: str = "1D") -> Batch:
    """Batch (t_k, t_k+1) of every group in GROUPS."""
    lat, lon = grid.latitudes, grid.longitudes
    groups: dict[str, dict[str, np.ndarray]] = {}
    for g, spec in GROUPS.items():
        n = {"level": len(levels), "species": len(species)}.get(spec.kind, 0)
        groups[g] = {}
        for var in spec.variables:
            if spec.kind == "static":
                arr = value(var, 0, lat, lon, 0)
            elif spec.kind == "time":
                arr = np.stack([value(var, k + i, lat, lon, 0) for i in (0, 1)])
            else:
                arr = np.stack([np.stack([value(var, k + i, lat, lon, c) for c in range(n)])
                                for i in (0, 1)])
            groups[g][var] = arr.astype(np.float32)
    t1 = t0 + offset(step)
    return Batch(times=(t0, t1), step=step, grid=grid, levels=np.array(levels, np.int64),
                 species=np.array(species, np.int64), groups=groups)


def write_sequence(directory: Path, n_batches: int, *, grid: Grid = GRID,
                   levels: Sequence[int] = LEVELS, species: Sequence[int] = SPECIES,
                   value: ValueFn | None = None, start: str = "2010-01-01", step: str = "1D",
                   skip: Sequence[int] = (),
                   edit: Callable[[int, Batch], None] | None = None) -> list[Path]:
    """Write batches k = 0..n_batches-1 (those not in ``skip``) as <t0>.h5; their paths.

    ``edit(k, batch)`` may change a batch's arrays in place before it is written.
    """
    value = value or trend_values()
    paths = []
    t = pd.Timestamp(start)
    for k in range(n_batches):
        if k not in skip:
            batch = make_batch(t, k, grid, levels, species, value, step)
            if edit is not None:
                edit(k, batch)
            paths.append(write_batch(batch, directory / f"{format_t0(t)}.h5", PROVENANCE))
        t = t + offset(step)
    return paths


def write_stats(batches: Sequence[Batch] | Sequence[Path], path: Path) -> Path:
    """Statistics over the batches' times (each time once), bfm-stats/1."""
    from bfm.batch import read_batch

    loaded = [b if isinstance(b, Batch) else read_batch(b) for b in batches]
    parts = [batch_moments(b, first_only=i < len(loaded) - 1) for i, b in enumerate(loaded)]
    return save_stats(merge_all(parts), path, {"batches": [b.source for b in loaded],
                                               "provenance": PROVENANCE})
