"""Atomic writes: a failed or interrupted step never leaves a half-written output behind."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def netcdf_chunk_cache(size: int) -> Iterator[None]:
    """Within the block, netCDF files opened or variables created get a chunk cache of
    ``size`` bytes per variable (netCDF-C's default is 64 MiB, kept while the file is open:
    a job that reads or writes each chunk once needs little of it). The old default is
    restored after."""
    import netCDF4

    old = netCDF4.get_chunk_cache()
    netCDF4.set_chunk_cache(size, old[1], old[2])
    try:
        yield
    finally:
        netCDF4.set_chunk_cache(*old)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def read_features(path: str | Path) -> list[dict[str, Any]]:
    """The features of a GeoJSON FeatureCollection file; ValueError naming the file if it is
    not one."""
    try:
        collection = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(collection, dict) or collection.get("type") != "FeatureCollection":
        raise ValueError(f"{path}: not a GeoJSON FeatureCollection")
    return list(collection.get("features") or [])
