"""Shared fixtures: the repository root, synthetic batches on a small grid."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bfm.batch import GROUPS, Batch, write_batch
from bfm.grid import Grid

ROOT = Path(__file__).resolve().parents[1]
LEVELS = np.array([50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000])
SPECIES = np.array([2435240, 5219173, 2433433])
PROV = {"bfm_version": "test", "git_commit": "test", "config_hash": "test"}

# DeepSpeed on CPU everywhere, one thread per process (2-core machine, parallel subprocesses).
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def demo_workdir(workdir: Path) -> Path:
    """A working directory for the workflow: copies of config/ and resources/."""
    import shutil

    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("config", "resources"):
        shutil.copytree(ROOT / name, workdir / name)
    return workdir


def snakemake_cmd(workdir: Path) -> list[str]:
    """``python -m snakemake`` on this repository's workflow, working in ``workdir``."""
    snakefile = ROOT / "workflow/Snakefile"
    return [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir)]


@pytest.fixture
def small_grid() -> Grid:
    return Grid(lat_min=44.0, lat_max=48.0, lon_min=0.0, lon_max=6.0, res=0.5)  # 9 x 13


def synthetic_batch(grid: Grid, t0: str, step: str = "1D", seed: int = 0) -> Batch:
    """A batch with the real group layout and random but finite values."""
    rng = np.random.default_rng(seed)
    h, w = grid.shape
    t = pd.Timestamp(t0)
    times = (t, t + pd.tseries.frequencies.to_offset(step))

    def field(*shape: int) -> np.ndarray:
        return rng.normal(size=shape).astype(np.float32)

    groups = {
        "surface": {v: field(2, h, w) for v in GROUPS["surface"].variables},
        "static": {v: field(h, w) for v in GROUPS["static"].variables},
        "atmospheric": {v: field(2, len(LEVELS), h, w) for v in GROUPS["atmospheric"].variables},
        "species": {"occurrence": rng.poisson(0.3, (2, len(SPECIES), h, w)).astype(np.float32)},
    }
    return Batch(times=times, step=step, grid=grid, levels=LEVELS, species=SPECIES, groups=groups)


@pytest.fixture
def make_batch_file(tmp_path: Path, small_grid: Grid) -> Callable[..., Path]:
    def make(t0: str, seed: int = 0, **kwargs) -> Path:
        batch = synthetic_batch(small_grid, t0, seed=seed, **kwargs)
        name = pd.Timestamp(t0).strftime("%Y%m%dT%H") + ".h5"
        return write_batch(batch, tmp_path / "batches" / name, PROV)

    return make


# Workflow rules call `bfm`; make this interpreter's scripts (the venv's bin) win on PATH.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
