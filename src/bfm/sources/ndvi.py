"""NDVI from the Copernicus Global Land Service (CLMS): dekadal composites onto the grid.

Products (``bfm.sources.ndvi_download``): 1 km V3 for the dekads up to 2020-06-21, 300 m V2
after. A dekad starts on day 1, 11 or 21 of a month and ends where the next one starts
(``[1, 11)``, ``[11, 21)``, ``[21, 1 of the next month)``: 8 to 11 days).

Raw files: one per dekad, ``<product>/<YYYYMMDD>.nc`` (``ndvi_1km_v3/20100111.nc``,
``ndvi_300m_v2/20200701.nc``), the native file of that dekad under our name. A tile reads the
dekads that overlap any of its steps' intervals ``[t, t + step)`` (``raw_names``), so a step
that straddled a dekad boundary, even into the previous month, would read both dekads. In
``file`` mode ``user_file`` looks for ``<path>/<product>/<YYYYMMDD>.nc``, else for the native
file name of that date (newest version) in ``<path>``, ``<path>/<product>`` or the VITO
layout ``<path>/<YYYY>/<YYYYMMDD>/``.

Options (``sources.ndvi.options``):

- ``manifest_url``: a mapping product -> listing URL (``ndvi_1km_v3``, ``ndvi_300m_v2``;
  default: the VITO ``..._netcdf_latest.txt`` manifests); a product left out keeps its default;
- ``sample_coarsening`` (int, default 4): the sample's pixels are this many native pixels
  wide: 1/28 deg for 1 km and 1/84 deg for 300 m by default (1 = the true pixel size).

Download (``service = "clms"``): see ``bfm.sources.ndvi_download`` (the listing, newest
version, malformed lines, credentials from ``CLMS_USER`` / ``CLMS_PASSWORD``). Sample: a
deterministic file per dekad and seed in the native layout on the pixel grid of the product
(pixel centres on multiples of the pixel size, as the global files), cropped to the study grid
plus a margin of max(0.05 deg, 2 pixels): a smooth spatial pattern plus a seasonal cycle
(peak in July in the north) and noise; sea (DN 254) where a smooth field is high, DN 252 on a
band beside it, and per dekad about 3 % DN 255, 1 % DN 253 and 0.5 % DN 251 over land; NOBS.

Open: the files' raw DN are decoded explicitly: ``DN * scale_factor + add_offset`` for DN
0..250 and missing for the flags 251..255 (xarray's own decoding would mask only the
_FillValue 255 and turn sea into 0.936). float32 attributes are read as the 7-digit decimals
they were written from. Lazy: nothing is read until ``to_tile`` asks for a block of rows of one
dekad; only the pixels over the grid are read.

Tile (``to_tile``), two steps:

1. per dekad, conservative aggregation of the valid pixels: a cell's ``ndvi`` is the mean of
   its valid pixels weighted by their overlap area with the cell (on the sphere: sin(lat) x
   lon), ``ndvi_valid_fraction`` the valid share of the cell's area; a cell without a valid
   pixel has ndvi missing and fraction 0 (its pixels exist but are all flagged). The pixels
   must cover the grid. Decoded values outside the catalogue range are set missing and
   counted (``n_out_of_range``); more than 1 % of a dekad's values refuses it (a wrong scale).
2. the dekad rule (``DEKAD_RULE``, the tile's ``time_rule``): partial means are the rule here,
   so ``n_incomplete`` is 0 and the valid fraction says how much of the cell-time was seen.
   The fraction is missing only for a step no dekad overlaps, which a written tile never has:
   a dekad a step needs but the files lack refuses the tile.

Cost: a dekad is read in blocks of about ``BLOCK_PIXELS`` pixels aligned to the file's row
chunks; Europe at 0.25 deg from true 1 km pixels (4295 x 8999 per dekad) takes ~2 s per
dekad on 2 cores and ~0.4 GB (about 25 million pixels a second).
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from bfm.contracts.catalogue import Modality, Variable
from bfm.contracts.grid import Grid
from bfm.sources import ndvi_download as wire
from bfm.sources.base import Source, Study, register

if TYPE_CHECKING:
    import xarray as xr

    from bfm.sources.http import Service, Sleep

DEKAD_RULE = (
    "dekads are [day 1, 11), [11, 21), [21, 1 of the next month); the value at t is the mean of "
    "the valid pixel-time in [t, t + step): each dekad overlapping the interval weighs the "
    "length of the overlap times the cell's valid fraction in that dekad; ndvi_valid_fraction "
    "is the overlap-length-weighted mean of the dekads' valid fractions; 6h and 1D steps take "
    "the dekad that holds them, 1MS the weighted mean of its 3 dekads; a cell without a valid "
    "pixel is missing (fraction 0), a step no dekad overlaps is missing; a dekad a step needs "
    "that the files lack refuses the tile"
)
BLOCK_PIXELS = 1 << 22  # pixels read at once (rows of one dekad): ~32 MB as float64


# --- the dekad calendar ---------------------------------------------------------------------
def dekad_of(t: pd.Timestamp) -> pd.Timestamp:
    """The start of the dekad holding ``t``."""
    t = pd.Timestamp(t)
    return t.normalize().replace(day=1 if t.day < 11 else 11 if t.day < 21 else 21)


def dekads_overlapping(starts: Sequence[pd.Timestamp], ends: Sequence[pd.Timestamp]) -> list:
    """The dekad starts whose dekad overlaps some interval ``[starts[k], ends[k])``."""
    found: set[pd.Timestamp] = set()
    for lo, hi in zip(starts, ends, strict=True):
        d = dekad_of(lo)
        while d < hi:
            found.add(d)
            d = wire.dekad_end(d)
    return sorted(found)


def dekad_weights(starts: Sequence[pd.Timestamp], ends: Sequence[pd.Timestamp],
                  dekads: Sequence[pd.Timestamp]) -> np.ndarray:  # fmt: skip
    """Overlap in days of each interval ``[starts[k], ends[k])`` with each dekad, (K, D)."""
    out = np.zeros((len(starts), len(dekads)))
    for k, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
        for d, start in enumerate(dekads):
            overlap = min(hi, wire.dekad_end(start)) - max(lo, pd.Timestamp(start))
            out[k, d] = max(overlap.total_seconds(), 0.0) / 86400.0
    return out


def step_intervals(study: Study, period: str) -> tuple[pd.DatetimeIndex, pd.DatetimeIndex]:
    from bfm.contracts import timeaxis

    times = study.times_in(period)
    return times, times + timeaxis.offset(study.step)


# --- raw names ------------------------------------------------------------------------------
def raw_name(date: pd.Timestamp) -> str:
    return f"{wire.product_of(date).key}/{date:%Y%m%d}.nc"


def parse_raw_name(name: str) -> tuple[wire.Product, pd.Timestamp]:
    """``ndvi_1km_v3/20100111.nc`` -> (the 1 km product, 2010-01-11)."""
    folder, _, file = name.partition("/")
    date = wire._dekad_date(file.removesuffix(".nc")) if file.endswith(".nc") else None
    if folder not in wire.PRODUCTS or date is None or wire.product_of(date).key != folder:
        raise ValueError(f"ndvi: raw file {name!r} is not <product>/<YYYYMMDD>.nc with a dekad "
                         "start (1, 11, 21) of that product (ndvi_1km_v3 up to 2020-06-21, "
                         "ndvi_300m_v2 after)")  # fmt: skip
    return wire.PRODUCTS[folder], date


# --- options --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    """``sources.ndvi.options`` (the module docstring)."""

    manifest_url: dict[str, str] = field(default_factory=dict)
    sample_coarsening: int = 4

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Options:
        where = "config: sources.ndvi.options"
        unknown = sorted(set(raw) - {"manifest_url", "sample_coarsening"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown} (known: manifest_url, "
                             "sample_coarsening)")  # fmt: skip
        urls = raw.get("manifest_url", {}) or {}
        bad = sorted(set(urls) - set(wire.PRODUCTS)) if isinstance(urls, Mapping) else ["?"]
        if bad:
            raise ValueError(f"{where}.manifest_url: must map products {sorted(wire.PRODUCTS)} to "
                             f"URLs (got keys {bad})")  # fmt: skip
        coarsening = raw.get("sample_coarsening", 4)
        if not isinstance(coarsening, int) or isinstance(coarsening, bool) or coarsening < 1:
            raise ValueError(f"{where}.sample_coarsening: must be an integer >= 1, "
                             f"got {coarsening!r}")  # fmt: skip
        merged = {k: str(urls.get(k, p.manifest_url)) for k, p in wire.PRODUCTS.items()}
        for key, url in merged.items():
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{where}.manifest_url.{key}: not an absolute http(s) URL")
            if "@" in parts.netloc:
                raise ValueError(f"{where}.manifest_url.{key}: carries user info; put the "
                                 "credentials in CLMS_USER / CLMS_PASSWORD")  # fmt: skip
        return cls(merged, coarsening)


# --- sample content -----------------------------------------------------------------------
def sample_axes(grid: Grid, product: wire.Product, coarsening: int) -> tuple[np.ndarray, ...]:
    """Pixel-centre latitudes (descending) and longitudes of the sample crop of ``grid``."""
    res = coarsening / product.pixels_per_degree
    margin = max(0.05, 2 * res)
    lat_e, lon_e = grid.lat_edges(), grid.lon_edges()
    top = min(np.floor((lat_e[0] + margin) / res), np.floor((90 - res / 2) / res))
    bottom = max(np.ceil((lat_e[-1] - margin) / res), np.ceil((-90 + res / 2) / res))
    left, right = np.ceil((lon_e[0] - margin) / res), np.floor((lon_e[-1] + margin) / res)
    lat = np.arange(top, bottom - 1, -1) * coarsening / product.pixels_per_degree
    lon = np.arange(left, right + 1) * coarsening / product.pixels_per_degree
    return lat, lon


def sample_fields(lat: np.ndarray, lon: np.ndarray, date: pd.Timestamp,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Synthetic DN (uint8, flags included) and NOBS of one dekad (see the module doc)."""
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, 4)
    rng = np.random.default_rng([seed, date.toordinal()])
    la, lo = lat[:, None], lon[None, :]
    base = 0.45 + 0.2 * np.sin(np.deg2rad(7 * la) + phase[0]) * np.cos(
        np.deg2rad(5 * lo) + phase[1]
    )
    day = (date + pd.Timedelta(days=5)).dayofyear
    season = 0.2 * np.sin(2 * np.pi * (day - 105) / 365.25) * np.where(la >= 0, 1.0, -1.0)
    shape = (len(lat), len(lon))
    value = base + season + rng.normal(0.0, 0.02, shape)
    dn = np.rint((np.clip(value, -0.08, 0.92) - wire.OFFSET) / wire.SCALE)
    dn = np.clip(dn, 0, wire.MAX_DN).astype(np.uint8)
    sea = np.sin(np.deg2rad(50 * la) + phase[2]) * np.sin(np.deg2rad(40 * lo) + phase[3])
    u = rng.random(shape)
    for flag, where in (
        (255, u < 0.03),
        (253, (u >= 0.03) & (u < 0.04)),
        (251, (u >= 0.04) & (u < 0.045)),
        (252, sea > 0.62),
        (254, sea > 0.7),
    ):
        dn[where] = flag
    nobs = np.where(dn > wire.MAX_DN, 0, rng.integers(1, 13, shape)).astype(np.uint8)
    return dn, nobs


# --- to_tile: pixels onto the grid per dekad, dekads onto the steps ---------------------------
def _overlap(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """Overlap length of every dst and src interval (edges monotonic, either way), (nd, ns)."""
    d_lo, d_hi = np.minimum(dst[:-1], dst[1:])[:, None], np.maximum(dst[:-1], dst[1:])[:, None]
    s_lo, s_hi = np.minimum(src[:-1], src[1:])[None], np.maximum(src[:-1], src[1:])[None]
    return np.clip(np.minimum(d_hi, s_hi) - np.maximum(d_lo, s_lo), 0.0, None)


def cell_integrals(values: np.ndarray, x0: float, width: float,
                   cell_edges: np.ndarray) -> np.ndarray:  # fmt: skip
    """Integral over each cell of the pixelwise-constant ``values`` along the last axis.

    Pixel i is [x0 + i * width, x0 + (i + 1) * width); ``cell_edges`` (m + 1) ascending, inside
    the pixels. Exact for any pixel and cell sizes: the running integral at a cell edge is the
    sum of the whole pixels before it plus the covered part of the pixel holding it; the cells'
    integrals are its differences. (..., n) -> (..., m).
    """
    n = values.shape[-1]
    running = np.cumsum(values, axis=-1)
    u = np.clip((np.asarray(cell_edges) - x0) / width, 0, n)  # edges in pixel units
    pos = np.minimum(np.floor(u).astype(np.int64), n - 1)
    at = running[..., pos] - (1 - (u - pos)) * values[..., pos]
    return width * np.diff(at, axis=-1)


def row_blocks(rows: slice, n_cols: int, chunk_rows: int) -> list[slice]:
    """Blocks of about ``BLOCK_PIXELS`` pixels, aligned to the file's chunks of rows (each
    chunk is then decompressed once)."""
    per = max(1, BLOCK_PIXELS // n_cols)
    if chunk_rows:
        per = max(chunk_rows, per // chunk_rows * chunk_rows)
    out, start = [], rows.start
    while start < rows.stop:
        stop = min((start // per + 1) * per if chunk_rows else start + per, rows.stop)
        out.append(slice(start, stop))
        start = stop
    return out


def _crop(centres: np.ndarray, res: float, lo: float, hi: float, what: str,
          where: str) -> slice:  # fmt: skip
    """The pixels overlapping [lo, hi]; they must cover it."""
    a, b = centres - res / 2, centres + res / 2
    idx = np.flatnonzero((np.minimum(a, b) < hi) & (np.maximum(a, b) > lo))
    eps = 1e-9
    if (
        not idx.size
        or min(a[idx].min(), b[idx].min()) > lo + eps
        or max(a[idx].max(), b[idx].max()) < hi - eps
    ):
        raise ValueError(f"{where}: the pixels' {what} ({centres.min()} .. {centres.max()}) do "
                         f"not cover the grid's {what} edges {lo} .. {hi}")  # fmt: skip
    return slice(int(idx[0]), int(idx[-1]) + 1)


def aggregate_dekad(pixels: xr.DataArray, grid: Grid, var: Variable, where: str,
                    chunk_rows: int = 0) -> tuple[np.ndarray, np.ndarray, int]:  # fmt: skip
    """One dekad's (lat, lon) decoded pixels -> (cell mean of the valid pixels, valid area
    fraction, count of values outside ``var``'s range, set missing). Reads blocks of rows."""
    from bfm.contracts import tile as contract

    lat, lon = pixels["latitude"].values, pixels["longitude"].values
    res = abs(float(lat[0] - lat[-1])) / (len(lat) - 1)
    lat_e, lon_e = grid.lat_edges(), grid.lon_edges()
    rows = _crop(lat, res, lat_e[-1], lat_e[0], "latitudes", where)
    cols = _crop(lon, res, lon_e[0], lon_e[-1], "longitudes", where)
    px_lat = np.concatenate([lat[rows] + res / 2, [lat[rows][-1] - res / 2]])
    w_lat = _overlap(np.sin(np.deg2rad(lat_e)), np.sin(np.deg2rad(np.clip(px_lat, -90, 90))))
    x0 = float(lon[cols][0]) - res / 2
    num, den = np.zeros(grid.shape), np.zeros(grid.shape)
    lo, hi = var.valid_range
    n_bad = n_seen = 0
    for block in row_blocks(rows, cols.stop - cols.start, chunk_rows):
        x = np.asarray(pixels[block, cols].values, dtype=np.float64)
        finite = np.isfinite(x)
        with np.errstate(invalid="ignore"):
            bad = finite & ((x < lo) | (x > hi))
        ok = finite & ~bad
        n_bad, n_seen = n_bad + int(bad.sum()), n_seen + int(finite.sum())
        w = w_lat[:, block.start - rows.start : block.stop - rows.start]
        num += w @ cell_integrals(np.where(ok, x, 0.0), x0, res, lon_e)
        den += w @ cell_integrals(ok.astype(np.float64), x0, res, lon_e)
    if n_bad > contract.MAX_OUT_OF_RANGE * max(n_seen, 1):
        raise ValueError(f"{where}: variable {var.name!r}: {n_bad} of {n_seen} values lie "
                         f"outside its valid range [{lo}, {hi}]: a wrong scale_factor/add_offset "
                         "or an undeclared flag?")  # fmt: skip
    area = w_lat.sum(axis=1)[:, None] * np.diff(lon_e)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(den > 0, num / den, np.nan)
    return mean, np.clip(den / area, 0.0, 1.0), n_bad


def float32_within(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float32 values inside [lo, hi] (the bounds as float32 may lie just outside)."""
    top, bottom = np.float32(hi), np.float32(lo)  # compared as float64 below
    top = np.nextafter(top, np.float32(-np.inf)) if float(top) > hi else top
    bottom = np.nextafter(bottom, np.float32(np.inf)) if float(bottom) < lo else bottom
    return np.clip(np.clip(values, lo, hi).astype(np.float32), bottom, top)


def tile_values(native: xr.Dataset, modality: Modality, grid: Grid, starts: pd.DatetimeIndex,
                ends: pd.DatetimeIndex, where: str) -> tuple[dict[str, Any], int]:  # fmt: skip
    """ndvi and ndvi_valid_fraction (K, lat, lon) by the dekad rule; the out-of-range count."""
    dekads = pd.DatetimeIndex(native["time"].values)
    lacking = [d for d in dekads_overlapping(starts, ends) if d not in dekads]
    if lacking:
        raise ValueError(f"{where}: time: dekad {lacking[0]:%Y-%m-%d} is missing (needed for "
                         f"the steps {starts[0]} .. {starts[-1]})")  # fmt: skip
    weights = dekad_weights(starts, ends, dekads)
    ndvi_var = modality.variable("ndvi")
    num = np.zeros((len(starts), *grid.shape))
    valid, n_bad = np.zeros_like(num), 0
    paths = native.encoding.get("files") or [where] * len(dekads)
    for d in np.flatnonzero(weights.sum(axis=0) > 0):
        chunk_rows = int(native["ndvi"].encoding.get("chunk_rows", 0))
        mean, frac, bad = aggregate_dekad(native["ndvi"][d], grid, ndvi_var, paths[d], chunk_rows)
        n_bad += bad
        w = weights[:, d][:, None, None]
        num += w * frac * np.nan_to_num(mean)
        valid += w * frac
    total = weights.sum(axis=1)[:, None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        ndvi = np.where(valid > 0, num / valid, np.nan)
        fraction = np.where(total > 0, valid / np.where(total > 0, total, 1.0), np.nan)
    fraction = np.broadcast_to(fraction, num.shape)
    out = {"ndvi": ndvi, "ndvi_valid_fraction": fraction}
    ranges = {v.name: v.valid_range for v in modality.variables}
    return {k: float32_within(v, *ranges[k]) for k, v in out.items()}, n_bad


# --- the source -----------------------------------------------------------------------------
class NDVI(Source):
    """CLMS NDVI: raw files ``<product>/<YYYYMMDD>.nc``, one per dekad (module docstring)."""

    name = "ndvi"
    licence = wire.LICENCE
    citation = wire.CITATION
    service = "clms"

    def __init__(self, sleep: Sleep = time.sleep, http: Service | None = None) -> None:
        self.sleep = sleep  # the Client's sleep between retries (tests pass a no-op)
        self.http = http

    def raw_names(self, modality: Modality, period: str, study: Study) -> list[str]:
        starts, ends = step_intervals(study, period)
        return [raw_name(d) for d in dekads_overlapping(starts, ends)]

    def raw_settings(self, name: str, study: Study) -> dict[str, Any]:
        # A downloaded dekad is the global file: it depends on its listing only (changing the
        # grid or the sample settings must not fetch 1 GB again); a sample on grid and seed.
        settings = study.settings(self.name)
        mode, options = settings["mode"], Options.parse(study.options(self.name))
        product, _ = parse_raw_name(name)
        if mode == "download":
            return {"mode": mode, "manifest_url": options.manifest_url[product.key]}
        if mode == "sample":
            return {"mode": mode, "grid": study.grid_settings(),
                    "seed": int(settings.get("seed", 0)),
                    "sample_coarsening": options.sample_coarsening}  # fmt: skip
        return {"mode": mode, "path": settings.get("path")}

    def user_file(self, path: str, name: str) -> str:
        root = path.rstrip("/")
        own = f"{root}/{name}"
        if os.path.exists(own):
            return own
        product, date = parse_raw_name(name)
        pattern = product.file_pattern()
        found = []
        for folder in (root, f"{root}/{product.key}", f"{root}/{date:%Y}/{date:%Y%m%d}"):
            for candidate in glob.glob(f"{folder}/{product.prefix}_{date:%Y%m%d}0000_*.nc"):
                match = pattern.fullmatch(os.path.basename(candidate))
                if match:
                    found.append((tuple(int(v) for v in match["version"].split(".")), candidate))
        return max(found)[1] if found else own

    def sample(self, name: str, out: Path, study: Study) -> Path:
        from bfm.fileio import atomic_path
        from bfm.sources import manifest

        product, date = parse_raw_name(name)
        seed = int(study.settings(self.name).get("seed", 0))
        coarsening = Options.parse(study.options(self.name)).sample_coarsening
        lat, lon = sample_axes(study.grid, product, coarsening)
        dn, nobs = sample_fields(lat, lon, date, seed)
        with atomic_path(out) as tmp:
            wire.write_native(tmp, product, date, dn, lat, lon, nobs)
        request = {
            "product": product.key,
            "dekad": f"{date:%Y-%m-%d}",
            "file": product.native_name(date, wire.SAMPLE_VERSION[product.key]),
            "pixel_size": f"{coarsening}/{product.pixels_per_degree} deg",
            "crop": [float(lat[0]), float(lon[0]), float(lat[-1]), float(lon[-1])],
        }
        manifest.write_manifest(out, source=self.name, request=request,
                                url=f"sample:ndvi?seed={seed}", licence=self.licence,
                                citation=self.citation)  # fmt: skip
        return out

    def download(self, name: str, out: Path, study: Study) -> Path:
        from bfm.sources.http import Client
        from bfm.sources.http import Service as HttpService

        product, date = parse_raw_name(name)
        options = Options.parse(study.options(self.name))
        client = Client(self.http or HttpService("clms"), sleep=self.sleep)
        return wire.download(
            name, product, date, Path(out), options.manifest_url[product.key], client
        )

    def open(self, files: Sequence[str | Path], modality: Modality, study: Study) -> xr.Dataset:
        return wire.open_dekads(files)

    def to_tile(self, native: xr.Dataset, modality: Modality, study: Study, period: str,
                prov: Mapping[str, str]) -> xr.Dataset:  # fmt: skip
        import xarray as xr

        from bfm import __version__
        from bfm.contracts import tile as contract

        where = str(native.encoding.get("source", "<ndvi dataset>"))
        starts, ends = step_intervals(study, period)
        if len(starts) == 0:
            raise ValueError(f"{where}: time: no step of the window falls in period {period}")
        values, n_bad = tile_values(native, modality, study.grid, starts, ends, where)
        counts = {"ndvi": n_bad, "ndvi_valid_fraction": 0}
        ds = xr.Dataset(
            {k: xr.Variable(modality.tile_dims, v, {"n_out_of_range": counts[k],
                                                     "n_incomplete": 0})
             for k, v in values.items()},
            coords={"time": starts},
        )  # fmt: skip
        attrs = {
            "source": f"{native.attrs.get('products', 'CLMS NDVI')} (dekad files: "
            f"{native.attrs.get('files', '?')})",
            "licence": self.licence,
            "citation": self.citation,
            "history": f"bfm {__version__} tile {modality.name}: valid pixels (DN 0..250; flags "
            f"251..255 missing) averaged per cell by overlap area "
            f"({float(native.attrs.get('pixel_size', 0)):.6g} -> {study.grid.res} deg); "
            f"dekads onto the {study.step} steps by the dekad rule (time_rule)",
            "step": study.step,
            "time_rule": DEKAD_RULE,
        }
        return contract.finish(ds, modality, study.grid, period, attrs, prov, "time: mean")


register(NDVI())
