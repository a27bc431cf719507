"""Peak memory and wall time of `bfm tile era5_atmospheric` on a full Europe month.

Writes a synthetic ERA5 atmospheric month in the new-CDS layout on the study grid (34..72 N,
-30..50 E at 0.25 deg: 153 x 321 cells, 13 pressure levels, 124 six-hourly times: 1.6 GB of
float32) one day at a time, so that writing it needs one day in memory, then runs

    bfm tile era5_atmospheric --period YYYY-MM --input <file> --config <cfg> --out <tile>

in a subprocess (step 1D) and reports its wall time and peak resident memory (the child's
``ru_maxrss``). Target: peak RSS <= 2 GiB. Run by hand from the repository root, in the venv:

    python benchmarks/tile_memory.py [--workdir DIR] [--period 2010-01] [--step 1D] [--keep]

The month file is reused when it exists in --workdir (delete it to rewrite it). Measured on
2 cores (2010-01, step 1D; the sample month takes ~1 min to write, 0.83 GiB on disk):

- whole-array tiling (era5.open loaded the file): peak RSS 4.57 GiB, wall 85 s;
- streamed (lazy open, blocks of native times): peak RSS 0.96 GiB, wall 27 s; the tile is
  bit-identical. With step 6h the whole tile was in memory (1.6 GB of float32): 2.02 GiB;
- written one variable at a time (``contract.write_tile_parts``) with 16 MiB netCDF chunk
  caches (``bfm tile``): peak RSS 0.49 GiB at 1D, 0.67 GiB at 6h (one variable of the month
  in memory, 317 MB); the same file, byte for byte.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import netCDF4
import numpy as np
import yaml

from bfm.contracts.catalogue import DEFAULT_LEVELS
from bfm.sources import era5
from bfm.testing import EUROPE_GRID, demo_config

GIB = 1 << 30


def write_month(path: Path, period: str, seed: int = 1) -> Path:
    """The sample atmospheric month of ``period`` on the Europe grid, written day by day."""
    times = era5.month_times(period)
    days = [times[k : k + 4] for k in range(0, len(times), 4)]
    tmp = path.with_name(path.name + ".tmp")
    first = era5.sample_dataset("atmospheric", EUROPE_GRID, period, DEFAULT_LEVELS, seed, days[0])
    first.to_netcdf(
        tmp,
        format="NETCDF4",
        engine="netcdf4",
        unlimited_dims=["valid_time"],
        encoding=era5.netcdf_encoding(first),
    )
    with netCDF4.Dataset(tmp, "a") as nc:
        for day in days[1:]:
            ds = era5.sample_dataset("atmospheric", EUROPE_GRID, period, DEFAULT_LEVELS, seed, day)
            n, k = len(nc.dimensions["valid_time"]), len(day)
            nc["valid_time"][n : n + k] = ds["valid_time"].values
            nc["expver"][n : n + k] = ds["expver"].values
            for name in ds.data_vars:
                nc[name][n : n + k] = ds[name].values
    tmp.replace(path)
    return path


def config_file(workdir: Path, period: str, step: str) -> Path:
    # The window: this month (training) and the next (held out); only this month is tiled.
    month = np.datetime64(period, "M")
    held_out = str((month + 1).astype("datetime64[D]"))
    end = str((month + 2).astype("datetime64[D]") - 1)
    cfg = demo_config(grid=EUROPE_GRID.to_dict(), levels=list(DEFAULT_LEVELS))
    cfg["time"].update(start=f"{period}-01", end=end, step=step, eval_start=held_out)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_tile(raw: Path, cfg: Path, tile: Path, period: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in GiB) of one `bfm tile` subprocess."""
    command = [
        sys.executable,
        "-m",
        "bfm.cli",
        "tile",
        "era5_atmospheric",
        "--period",
        period,
        "--input",
        str(raw),
        "--config",
        str(cfg),
        "--out",
        str(tile),
    ]
    print("$", " ".join(command), flush=True)
    began = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - began
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    return wall, peak_kib * 1024 / GIB


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, help="where the month and the tile go (default: tmp)")
    p.add_argument("--period", default="2010-01", help="the month (YYYY-MM)")
    p.add_argument("--step", default="1D", help="model step (6h, 1D, 1MS)")
    p.add_argument("--keep", action="store_true", help="keep the tile")
    args = p.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bfm-tile-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    raw = workdir / f"atmospheric-{args.period}.nc"
    if not raw.exists():
        began = time.perf_counter()
        write_month(raw, args.period)
        sampler = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
        print(
            f"wrote {raw} ({raw.stat().st_size / GIB:.2f} GiB on disk) in "
            f"{time.perf_counter() - began:.0f} s; sampler peak RSS {sampler:.2f} GiB"
        )
    tile = workdir / f"era5_atmospheric-{args.period}.nc"
    wall, peak = run_tile(raw, config_file(workdir, args.period, args.step), tile, args.period)
    verdict = "meets" if peak <= 2.0 else "misses"
    print(
        f"bfm tile era5_atmospheric {args.period} (step {args.step}, 153 x 321 x 13 levels): "
        f"wall {wall:.1f} s, peak RSS {peak:.2f} GiB ({verdict} the 2 GiB target)"
    )
    if not args.keep:
        tile.unlink(missing_ok=True)
        tile.with_name(tile.name + ".qc.json").unlink(missing_ok=True)
    return 0 if peak <= 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
