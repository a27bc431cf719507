"""bfm batch: assemble one bfm-batch/1 file from the tiles of the months it touches.

Give every modality of the study its tiles with --tile MODALITY=PATH (repeat it, or join the
paths of one modality with commas): the tiles of the months of t0 and t0 + step, and the one
'static' tile of a static modality. The grid, step and the modalities come from --config;
a tile built under other settings than the config implies (its settings_hash) is refused,
so a batch never mixes stale tiles into a new study.

Pure part: assemble() turns opened tile datasets into a Batch. I/O part: build_batch() opens
exactly the tiles it is given and writes the batch atomically.

bfm batches: every batch that starts in one month, in one job (the workflow's rule
``batches``). Each tile is opened once for the whole month (``TileReader``); a batch reads
only its two time slices, each slice is read once (a batch's t1 is the next one's t0), and a
batch at the month's end reads its second time from the next month's tile. The batches are
written by one ``BatchWriter`` (``bfm.contracts.batch_io``): the files ``bfm batch`` writes,
for a third of the CPU time. A batch already there, built under the same settings and newer
than every tile it reads, is kept (a failed job's rerun resumes; ``--force`` rebuilds). At the
end the job writes the month's list of batches per split (train, eval), one path a line: the
lists are its declared outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from bfm.cliutil import add_command, add_config_argument
from bfm.contracts import catalogue
from bfm.contracts.batch import Batch, batch_attrs, write_batch
from bfm.contracts.batch_io import BatchWriter
from bfm.contracts.catalogue import DimsKind
from bfm.contracts.grid import Grid
from bfm.contracts.tile import SPECIES_KEY, open_tile
from bfm.contracts.timeaxis import next_time, parse_t0
from bfm.fileio import write_text_atomic
from bfm.provenance import provenance
from bfm.workflow import Plan, load_plan

log = logging.getLogger(__name__)


def _select_times(ds: xr.Dataset, times: Sequence[pd.Timestamp], what: str) -> xr.Dataset:
    have = pd.DatetimeIndex(ds["time"].values)
    if list(have) == list(times):
        return ds  # a TileReader's slices already: no copy
    missing = [str(t) for t in times if t not in have]
    if missing:
        raise ValueError(f"{what}: tiles lack time(s) {missing} (have {have.min()}..{have.max()})")
    return ds.sel(time=list(times))


def _check_grid(ds: xr.Dataset, grid: Grid, what: str) -> None:
    lat, lon = ds["latitude"].values, ds["longitude"].values
    if lat.shape != (grid.n_lat,) or not np.allclose(lat, grid.latitudes):
        raise ValueError(f"{what}: latitude {lat.shape} does not match the grid {grid}")
    if lon.shape != (grid.n_lon,) or not np.allclose(lon, grid.longitudes):
        raise ValueError(f"{what}: longitude {lon.shape} does not match the grid {grid}")


def assemble(t0: pd.Timestamp, step: str, grid: Grid, tiles: Mapping[str, xr.Dataset]) -> Batch:
    """Build the batch (t0, t0 + step) from tile datasets keyed by modality.

    Periodic tiles must already be concatenated along time; a static tile has no time.
    """
    times = (pd.Timestamp(t0), next_time(t0, step))
    groups: dict[str, dict[str, np.ndarray]] = {}
    levels = np.zeros(0, np.int64)
    species = np.zeros(0, np.int64)
    for name in (m.name for m in catalogue.modalities() if m.name in tiles):
        spec, ds = catalogue.modality(name), tiles[name]
        _check_grid(ds, grid, name)
        if spec.periodic:
            ds = _select_times(ds, times, name)
        if spec.kind == DimsKind.LEVEL:
            levels = ds["level"].values.astype(np.int64)
        if spec.kind == DimsKind.SPECIES:
            species = ds[SPECIES_KEY].values.astype(np.int64)
        missing = [v for v in spec.variable_names if v not in ds]
        if missing:
            raise ValueError(f"{name}: tile lacks variable(s) {missing}")
        groups[spec.group] = {
            v: np.ascontiguousarray(ds[v].values, dtype=np.float32) for v in spec.variable_names
        }
    return Batch(times=times, step=step, grid=grid, levels=levels, species=species, groups=groups)


class TileReader:
    """The tiles of one modality, opened once: any time's slice, each read from disk once
    while it is one of the last two asked for (consecutive batches share a time)."""

    def __init__(self, modality: str, paths: Sequence[str | Path], plan: Plan) -> None:
        self.modality = catalogue.modality(modality)
        self.paths = [Path(p) for p in sorted(paths)]
        self.datasets: list[xr.Dataset] = []
        try:
            for path in self.paths:
                self.datasets.append(_open_checked(modality, path, plan))
        except BaseException:
            self.close()
            raise
        self.where: dict[pd.Timestamp, tuple[int, int]] = {}
        if self.modality.periodic:
            for k, ds in enumerate(self.datasets):
                for i, t in enumerate(pd.DatetimeIndex(ds["time"].values)):
                    self.where.setdefault(t, (k, i))
        else:  # a static tile is read once, whole
            self.datasets = [ds.load() for ds in self.datasets]
        self._recent: dict[pd.Timestamp, xr.Dataset] = {}
        self.reads = 0  # time slices read from disk

    def at(self, times: Sequence[pd.Timestamp]) -> xr.Dataset:
        """The tile at ``times`` (periodic; a static tile as it is)."""
        if not self.modality.periodic:
            return self.datasets[0]
        missing = [str(t) for t in times if t not in self.where]
        if missing:
            have = sorted(self.where)
            raise ValueError(f"{self.modality.name}: tiles {[str(p) for p in self.paths]} lack "
                             f"time(s) {missing} (have {have[0]}..{have[-1]})")  # fmt: skip
        slices = []
        for t in times:
            if t not in self._recent:
                k, i = self.where[t]
                self._recent[t] = self.datasets[k].isel(time=[i]).load()
                self.reads += 1
            slices.append(self._recent[t])
        for t in [t for t in self._recent if t not in times]:
            del self._recent[t]
        return slices[0] if len(slices) == 1 else _concat_times(slices)

    def close(self) -> None:
        for ds in self.datasets:
            ds.close()


def _concat_times(slices: Sequence[xr.Dataset]) -> xr.Dataset:
    """A periodic tile's slices joined along time, one ``np.concatenate`` per variable with a
    time axis (a variable without one, the other coordinates and the attributes are the
    first slice's): xarray's concat (alignment, index checks) cost more than the copy."""
    first = slices[0]
    data = {
        v: (a.dims, np.concatenate([s[v].values for s in slices], axis=a.get_axis_num("time")))
        if "time" in a.dims
        else a
        for v, a in first.data_vars.items()
    }
    coords = {c: a for c, a in first.coords.items() if "time" not in a.dims}
    coords["time"] = np.concatenate([s["time"].values for s in slices])
    return xr.Dataset(data, coords=coords, attrs=first.attrs)


@contextlib.contextmanager
def open_readers(tile_paths: Mapping[str, Sequence[str | Path]], plan: Plan
                 ) -> Iterator[dict[str, TileReader]]:  # fmt: skip
    """A ``TileReader`` per modality of ``tile_paths``, all closed on leaving."""
    with contextlib.ExitStack() as stack:
        readers = {}
        for modality, paths in tile_paths.items():
            readers[modality] = TileReader(modality, paths, plan)
            stack.callback(readers[modality].close)
        yield readers


def _open_checked(modality: str, path: str | Path, plan: Plan) -> xr.Dataset:
    ds = open_tile(path, modality)
    expected = plan.tile_settings_hash(catalogue.modality(modality))
    if ds.attrs["settings_hash"] != expected:
        ds.close()
        raise ValueError(
            f"{path}: built under other settings than the config implies for "
            f"{modality} (settings_hash {ds.attrs['settings_hash'][:12]}, expected "
            f"{expected[:12]}): rerun the workflow, which rebuilds it"
        )
    return ds


def _check_modalities(tile_paths: Mapping[str, Sequence[str | Path]], plan: Plan) -> None:
    wanted = {m.name for m in plan.modalities}
    missing, extra = sorted(wanted - set(tile_paths)), sorted(set(tile_paths) - wanted)
    if missing or extra:
        raise ValueError(
            f"--tile: the study's modalities are {sorted(wanted)}; missing "
            f"{missing}, not in the study {extra}"
        )


def _up_to_date(path: Path, newest_tile: float, settings_hash: str) -> bool:
    """``path`` exists, was built under ``settings_hash`` and is newer than every tile (the
    newest tile's mtime: ``newest_tile``)."""
    try:
        if path.stat().st_mtime < newest_tile:
            return False
        return batch_attrs(path)[1] == settings_hash
    except (OSError, ValueError):
        return False


def build_month(
    period: str,
    tile_paths: Mapping[str, Sequence[str | Path]],
    plan: Plan,
    out_dir: str | Path,
    lists: Mapping[str, str | Path],
    force: bool = False,
) -> dict[str, int]:
    """Every batch starting in ``period`` (the plan's), then the lists per split of ``lists``
    (split -> path). Counts of built and kept batches, and of time slices read per
    periodic modality (``slices``: each at most once)."""
    names = plan.month_batches(period)
    if not names:
        raise ValueError(f"--period: no batch of the study starts in {period!r}")
    _check_modalities(tile_paths, plan)
    out_dir = Path(out_dir)
    settings = plan.batch_settings()
    prov = provenance(plan.config, settings)
    counts = {"built": 0, "kept": 0, "slices": 0}
    writer = BatchWriter(prov)  # one layout for the month: h5netcdf's bookkeeping done once
    began = time.perf_counter()
    with open_readers(tile_paths, plan) as readers:  # they refuse missing and stale tiles
        newest_tile = max(p.stat().st_mtime for r in readers.values() for p in r.paths)
        for k, t0 in enumerate(names, 1):
            out = out_dir / f"{t0}.h5"
            if not force and _up_to_date(out, newest_tile, prov["settings_hash"]):
                counts["kept"] += 1
                continue
            start = parse_t0(t0)
            times = [start, next_time(start, plan.step)]
            batch = assemble(start, plan.step, plan.grid,
                             {m: r.at(times) for m, r in readers.items()})  # fmt: skip
            writer.write(batch, out)
            counts["built"] += 1
            log.info("[%d/%d] wrote %s (%.1f MB)", k, len(names), out,
                     os.path.getsize(out) / 1e6)  # fmt: skip
        periodic = [r for r in readers.values() if r.modality.periodic]
        counts["slices"] = max((r.reads for r in periodic), default=0)
    for split, path in lists.items():
        text = "".join(f"{out_dir / t0}.h5\n" for t0 in plan.month_batches(period, split))
        write_text_atomic(path, text)
    seconds = time.perf_counter() - began
    log.info("%s: %d batches built, %d kept (up to date), %.2f s per batch built", period,
             counts["built"], counts["kept"], seconds / max(counts["built"], 1))  # fmt: skip
    return counts


def build_batch(
    t0: str, tile_paths: Mapping[str, Sequence[str | Path]], out: str | Path, plan: Plan
) -> Path:
    start = parse_t0(t0)
    _check_modalities(tile_paths, plan)
    times = [start, next_time(start, plan.step)]
    with open_readers(tile_paths, plan) as readers:  # only the batch's two time slices are read
        batch = assemble(start, plan.step, plan.grid, {m: r.at(times) for m, r in readers.items()})
    path = write_batch(batch, out, provenance(plan.config, plan.batch_settings()))
    log.info("wrote %s (%s .. %s)", path, *batch.times)
    return path


def parse_tile_args(values: Sequence[str]) -> dict[str, list[str]]:
    """``["era5_surface=a.nc,b.nc", "era5_static=s.nc"]`` -> {modality: [paths]}."""
    out: dict[str, list[str]] = {}
    for value in values:
        modality, sep, paths = value.partition("=")
        if not sep or not modality or not paths:
            raise ValueError(f"--tile: expected MODALITY=PATH[,PATH...], got {value!r}")
        catalogue.modality(modality)  # names the known ones when unknown
        out.setdefault(modality, []).extend(p for p in paths.split(",") if p)
    return out


def _add_tile_argument(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--tile", action="append", required=True, metavar="MODALITY=PATH",
                   help=help_text)  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    plan = load_plan(args.config)
    assert plan is not None  # --config is required
    build_batch(args.t0, parse_tile_args(args.tile), args.out, plan)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "batch", __doc__, "assemble one bfm-batch/1 HDF5 file from tiles")
    p.add_argument("--t0", required=True, help="first time of the batch, YYYYMMDDTHH")
    _add_tile_argument(p, "tile(s) of one modality; repeat for every modality of the study")
    add_config_argument(p)
    p.add_argument("--out", required=True, help="output batch file (.h5)")
    p.set_defaults(func=_run)


def _run_month(args: argparse.Namespace) -> int:
    plan = load_plan(args.config)
    assert plan is not None  # --config is required
    lists = {s: p for s, p in (("train", args.train_list), ("eval", args.eval_list),
                               ("all", args.all_list)) if p}  # fmt: skip
    build_month(args.period, parse_tile_args(args.tile), plan, args.out_dir, lists, args.force)
    return 0


def register_month(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "batches", __doc__, "assemble every batch that starts in one month")
    p.add_argument("--period", required=True, help="the month, YYYY-MM")
    _add_tile_argument(p, "tile(s) of one modality (the month's and the next month's); repeat "
                       "for every modality of the study")  # fmt: skip
    add_config_argument(p)
    p.add_argument("--out-dir", default="results/batches", help="default: results/batches")
    for split in ("train", "eval", "all"):
        p.add_argument(f"--{split}-list", default=None, metavar="FILE",
                       help=f"write the month's {split} batches here, one path a line")  # fmt: skip
    p.add_argument("--force", action="store_true", help="rebuild batches that are up to date")
    p.set_defaults(func=_run_month)
