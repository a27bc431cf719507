"""Compare the arrays of two workflow runs: raw files, tiles, batches, statistics, the loss
trajectory and the scores. Prints one line per kind of artefact: how many files match to
the bit and which differ (and by how much).

    python benchmarks/compare_runs.py RUN_DIR_A RUN_DIR_B

Attributes (provenance, hashes, history) are not compared: only data values.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

H5_SKIP = {"REFERENCE_LIST", "DIMENSION_LIST"}


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    if a.dtype.kind not in "fiu":
        return 0.0 if np.array_equal(a, b) else float("inf")
    with np.errstate(invalid="ignore"):
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    same_nan = np.isnan(a.astype(np.float64)) == np.isnan(b.astype(np.float64))
    return float(np.nanmax(d, initial=0.0)) if same_nan.all() else float("inf")


def netcdf_arrays(path: Path) -> dict[str, np.ndarray]:
    with xr.open_dataset(path) as ds:
        return {k: ds[k].values for k in ds.variables}


def h5_arrays(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path) as f:
        f.visititems(
            lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None
        )
    return out


def zip_members(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as z:
        return {n: np.frombuffer(z.read(n), dtype=np.uint8) for n in z.namelist()}


def stats_arrays(path: Path) -> dict[str, np.ndarray]:
    doc = json.loads(path.read_text())
    return {
        f"{k}/{f}": np.array([np.nan if x is None else x for x in v[f]], dtype=np.float64)
        for k, v in doc["variables"].items()
        for f in ("count", "mean", "std", "min", "max")
    }


def jsonl_arrays(path: Path, drop: set[str]) -> dict[str, np.ndarray]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    keys = sorted({k for r in rows for k in r} - drop)
    out = {}
    for k in keys:
        values = [r.get(k) for r in rows]
        if all(isinstance(v, int | float) or v is None for v in values):
            out[k] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        else:
            out[k] = np.array([str(v) for v in values])
    return out


KINDS = {
    "raw netCDF": ("results/raw/**/*.nc", netcdf_arrays),
    "raw zip": ("results/raw/**/*.zip", zip_members),
    "tiles": ("results/tiles/**/*.nc", netcdf_arrays),
    "batches": ("results/batches/*.h5", h5_arrays),
    "statistics": ("results/stats/stats.json", stats_arrays),
    "loss trajectory": (
        "results/models/*/metrics.jsonl",
        lambda p: jsonl_arrays(p, {"seconds", "samples_per_s"}),
    ),
    "scores": ("results/eval/*/scores.jsonl", lambda p: jsonl_arrays(p, set())),
}


def compare(a: Path, b: Path) -> int:
    differ = 0
    for kind, (pattern, read) in KINDS.items():
        files = sorted(p.relative_to(a) for p in a.glob(pattern))
        other = sorted(p.relative_to(b) for p in b.glob(pattern))
        if files != other:
            print(f"{kind}: file lists differ ({len(files)} vs {len(other)})")
            differ += 1
            continue
        bad = []
        for rel in files:
            x, y = read(a / rel), read(b / rel)
            if x.keys() != y.keys():
                bad.append(f"{rel} (arrays {sorted(set(x) ^ set(y))})")
                continue
            worst = {k: _max_diff(x[k], y[k]) for k in x}
            worst = {k: v for k, v in worst.items() if v != 0.0}
            if worst:
                bad.append(f"{rel} {worst}")
        status = "bit-identical" if not bad else f"{len(bad)} differ: {bad[:3]}"
        print(f"{kind}: {len(files)} file(s), {status}")
        differ += bool(bad)
    return 1 if differ else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(compare(Path(sys.argv[1]), Path(sys.argv[2])))
