"""Shared fixtures: the repository root, the workflow command, batch files on a small grid.
Mock data itself lives in bfm.testing (shared with the benchmarks)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from bfm.contracts.batch import write_batch
from bfm.contracts.grid import Grid
from bfm.testing import GRID, PROVENANCE, ROOT, mock_batch, random_values

__all__ = ["ROOT", "demo_workdir", "snakemake_cmd"]

# DeepSpeed on CPU everywhere, one thread per process (2-core machine, parallel subprocesses).
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Workflow rules call `bfm`; make this interpreter's scripts (the venv's bin) win on PATH.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")


def demo_workdir(workdir: Path) -> Path:
    """A working directory for the workflow: copies of config/ and resources/."""
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
    return GRID


@pytest.fixture
def make_batch_file(tmp_path: Path, small_grid: Grid) -> Callable[..., Path]:
    """Write a batch of random values (every catalogue group) under tmp_path/batches."""

    def make(t0: str, seed: int = 0, **kwargs) -> Path:
        batch = mock_batch(t0, small_grid, value=random_values(seed), **kwargs)
        name = pd.Timestamp(t0).strftime("%Y%m%dT%H") + ".h5"
        return write_batch(batch, tmp_path / "batches" / name, PROVENANCE)

    return make
