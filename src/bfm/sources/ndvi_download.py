"""CLMS NDVI as the service serves it: the products, their file names and netCDF layout (the
writer, the sample's synthetic content and the DN decoding), the product listing (manifest)
and the downloader. ``bfm.sources.ndvi`` is the source built on it.

Products (``PRODUCTS``; the dekad's start date picks one, see ``product_of``):

- ``ndvi_1km_v3``: 1 km (1/112 deg) V3, dekads up to 2020-06-21,
  ``c_gls_NDVI_<YYYYMMDD>0000_GLOBE_<VGT|PROBAV>_V3.0.<n>.nc``;
- ``ndvi_300m_v2``: 300 m (1/336 deg) V2, dekads from 2020-07-01,
  ``c_gls_NDVI300_<YYYYMMDD>0000_GLOBE_OLCI_V2.0.<n>.nc``.

Native file: netCDF4, dims ``(time=1, lat, lon)``, pixel-centre ``lat`` descending and ``lon``
ascending (float64), ``NDVI`` uint8 with ``scale_factor`` 0.004, ``add_offset`` -0.08,
``_FillValue`` 255; DN 0..250 are values (-0.08 .. 0.92), DN 251..255 are flags (254 sea, 255
missing, the others other flags) and never values; ``NOBS`` uint8 (observations); ``crs``.

Listing: the product's manifest, plain text, one absolute URL per line. Lines whose file name
is a dekad file of the product are entries; a date listed in several processing versions
keeps the newest (highest ``V<major>.<minor>.<patch>`` of the product's major version; on a
tie the first listed). Other absolute URLs (other products) are ignored, and so are blank
lines and ``#`` comments. Anything else (not an absolute http(s) URL, or a product file name
with an impossible or non-dekad date) is *malformed*: skipped, counted and logged (a warning
with the count and the first line number); a listing without any URL line (an HTML error or
login page) is refused.

The listing is fetched once per download call (once per dekad file, ~100 kB against a ~1 GB
unit) into a temporary file and not cached, so every unit sees the current newest version;
its URL (without query) is recorded in the unit's manifest. A dekad file streams into
``.<name>.<native name>.part`` (a rerun resumes it only for the same processing version),
is renamed to its raw name when complete, and its manifest is written last. HTTP basic auth
comes from the environment (``CLMS_USER`` and ``CLMS_PASSWORD``, both or neither) and goes
only to the listing's host (scheme and host:port), so a listing cannot send it elsewhere; it
is never logged, put in a message, a manifest or a file.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import xarray as xr

    from bfm.sources.http import Client

log = logging.getLogger(__name__)
VITO = "https://globalland.vito.be/download/manifest"
USER_ENV, PASSWORD_ENV = "CLMS_USER", "CLMS_PASSWORD"
SCALE, OFFSET, FILL = 0.004, -0.08, 255
MAX_DN = 250  # DN above it are flags
LICENCE = (
    "Copernicus Land Monitoring Service data: free, full and open access (Copernicus data "
    "policy, Regulation (EU) No 1159/2013)"
)
CITATION = (
    "Copernicus Land Monitoring Service / European Union: Normalised Difference Vegetation "
    "Index 1999-2020 (raster 1 km), global, 10-daily, version 3; Normalised Difference "
    "Vegetation Index 2020-present (raster 300 m), global, 10-daily, version 2"
)


@dataclass(frozen=True)
class Product:
    """One CLMS NDVI product: its key (the raw folder), title, file names, pixel size."""

    key: str
    title: str
    prefix: str
    sensors: tuple[str, ...]
    major: int
    pixels_per_degree: int
    manifest_url: str

    def file_pattern(self) -> re.Pattern[str]:
        sensors = "|".join(self.sensors)
        return re.compile(
            rf"{self.prefix}_(?P<date>\d{{8}})0000_GLOBE_(?P<sensor>{sensors})_"
            rf"V(?P<version>{self.major}\.\d+\.\d+)\.nc"
        )

    def sensor_of(self, date: pd.Timestamp) -> str:
        """The sensor tag a sample names (1 km: VGT before 2014, PROBA-V after)."""
        return self.sensors[0] if len(self.sensors) == 1 or date.year < 2014 else self.sensors[1]

    def native_name(self, date: pd.Timestamp, version: str) -> str:
        return f"{self.prefix}_{date:%Y%m%d}0000_GLOBE_{self.sensor_of(date)}_V{version}.nc"


def _manifest(collection: str) -> str:
    return f"{VITO}/{collection}_netcdf/manifest_clms_global_{collection}_netcdf_latest.txt"


PRODUCTS: dict[str, Product] = {
    "ndvi_1km_v3": Product("ndvi_1km_v3", "CLMS NDVI 1 km V3 (10-daily)", "c_gls_NDVI",
                           ("VGT", "PROBAV"), 3, 112, _manifest("ndvi_1km_v3_10daily")),
    "ndvi_300m_v2": Product("ndvi_300m_v2", "CLMS NDVI 300 m V2 (10-daily)", "c_gls_NDVI300",
                            ("OLCI",), 2, 336, _manifest("ndvi_300m_v2_10daily")),
}  # fmt: skip
LAST_1KM = pd.Timestamp("2020-06-21")  # the last dekad of the 1 km V3 product
SAMPLE_VERSION = {"ndvi_1km_v3": "3.0.1", "ndvi_300m_v2": "2.0.1"}


def product_of(date: pd.Timestamp) -> Product:
    """1 km V3 for dekads up to 2020-06-21, 300 m V2 after."""
    return PRODUCTS["ndvi_1km_v3" if date <= LAST_1KM else "ndvi_300m_v2"]


def is_dekad_start(date: pd.Timestamp) -> bool:
    return date.day in (1, 11, 21) and date == date.normalize()


def dekad_end(start: pd.Timestamp) -> pd.Timestamp:
    start = pd.Timestamp(start)
    if start.day == 21:
        return start.replace(day=1) + pd.offsets.MonthBegin(1)
    return start + pd.Timedelta(days=10)


# --- the listing ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    date: pd.Timestamp
    url: str
    name: str
    version: tuple[int, ...]


@dataclass(frozen=True)
class Listing:
    """The product's dekad files by date (newest version), and what was skipped."""

    entries: dict[pd.Timestamp, Entry]
    malformed: int
    first_malformed: int | None
    other: int


def _dekad_date(text: str) -> pd.Timestamp | None:
    try:
        date = pd.Timestamp(pd.to_datetime(text, format="%Y%m%d"))
    except ValueError:
        return None
    return date if is_dekad_start(date) else None


def parse_listing(text: str, product: Product, where: str) -> Listing:
    """The entries of a listing (rules in the module docstring)."""
    pattern = product.file_pattern()
    entries: dict[pd.Timestamp, Entry] = {}
    malformed: list[int] = []
    other = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = urlsplit(line)
        if (
            parts.scheme not in ("http", "https")
            or not parts.netloc
            or any(c.isspace() for c in line)
        ):
            malformed.append(number)
            continue
        match = pattern.fullmatch(parts.path.rsplit("/", 1)[-1])
        if match is None:
            other += 1
            continue
        date = _dekad_date(match["date"])
        if date is None:
            malformed.append(number)
            continue
        version = tuple(int(v) for v in match["version"].split("."))
        old = entries.get(date)
        if old is None or version > old.version:
            entries[date] = Entry(date, line, match.group(0), version)
    if not entries and not other:
        raise ValueError(f"{where}: not a product listing: no absolute URL line in "
                         f"{len(text.splitlines())} line(s) (an error or login page?)")  # fmt: skip
    if malformed:
        log.warning("%s: skipped %d malformed line(s) (not an absolute URL or not a dekad "
                    "date; first: line %d)", where, len(malformed), malformed[0])  # fmt: skip
    return Listing(entries, len(malformed), malformed[0] if malformed else None, other)


# --- downloading ----------------------------------------------------------------------------
def credentials() -> tuple[str, str] | None:
    """HTTP basic auth from ``CLMS_USER`` / ``CLMS_PASSWORD`` (both or neither)."""
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if bool(user) != bool(password):
        raise ValueError(f"ndvi: set both {USER_ENV} and {PASSWORD_ENV} (HTTP basic auth) "
                         "or neither")  # fmt: skip
    return (str(user), str(password)) if user else None


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def _safe(url: str) -> str:
    return url.split("?", 1)[0]


def _get(client: Client, url: str, out: Path, unit: str, auth: Any) -> Path:
    """Client.download with a hint when the service wants (other) credentials."""
    from bfm.sources.http import DownloadError

    try:
        return client.download(url, out, unit, auth=auth)
    except DownloadError as err:
        if re.search(r"HTTP 40[13]\b", str(err)):
            hint = "check" if auth else "the service wants HTTP basic auth: set"
            raise DownloadError(f"{err} ({hint} {USER_ENV} and {PASSWORD_ENV})") from err
        raise


def fetch_listing(client: Client, url: str, product: Product, auth: Any) -> Listing:
    """Fetch and parse a product's listing (retried and size-checked like any unit)."""
    from bfm.sources.http import DownloadError

    unit = f"ndvi listing {product.key}"
    with tempfile.TemporaryDirectory(prefix="bfm-ndvi-listing-") as tmp:
        path = _get(client, url, Path(tmp) / "listing.txt", unit, auth)
        text = path.read_text(encoding="utf-8", errors="replace")
    try:
        return parse_listing(text, product, f"{client.service.name} {unit} ({_safe(url)})")
    except ValueError as err:
        raise DownloadError(str(err)) from err


def download(name: str, product: Product, date: pd.Timestamp, out: Path, listing_url: str,
             client: Client) -> Path:  # fmt: skip
    """Fetch one dekad file (raw name ``name``) to ``out``, then its manifest."""
    from bfm.sources import manifest
    from bfm.sources.http import DownloadError

    auth = credentials()
    listing = fetch_listing(client, listing_url, product, auth)
    entry = listing.entries.get(date)
    unit = f"ndvi {name}"
    if entry is None:
        dates = sorted(listing.entries)
        span = f"{dates[0]:%Y-%m-%d} .. {dates[-1]:%Y-%m-%d}" if dates else "none"
        raise DownloadError(f"{client.service.name} {unit}: dekad {date:%Y-%m-%d} is not in "
                            f"the {product.key} listing {_safe(listing_url)} ({len(dates)} "
                            f"dekads, {span})")  # fmt: skip
    same_host = _origin(entry.url) == _origin(listing_url)
    # Stream into a name of this version: a part file left by an interrupted run resumes only
    # into the same processing version (parts of other versions are dropped).
    staged = out.with_name(f".{out.name}.{entry.name}")
    for stale in out.parent.glob(f".{out.name}.*.part"):
        if stale.name != f"{staged.name}.part":
            stale.unlink()
    _get(client, entry.url, staged, unit, auth if same_host else None)
    os.replace(staged, out)
    manifest.write_manifest(
        out,
        source="ndvi",
        request={"product": product.key, "dekad": f"{date:%Y-%m-%d}", "file": entry.name,
                 "version": ".".join(map(str, entry.version)), "listing": _safe(listing_url)},
        url=entry.url,
        licence=LICENCE,
        citation=CITATION,
    )  # fmt: skip
    return out


# --- the native file ------------------------------------------------------------------------
CRS_ATTRS = {"grid_mapping_name": "latitude_longitude", "long_name": "WGS 84",
             "semi_major_axis": 6378137.0, "inverse_flattening": 298.257223563}  # fmt: skip
TIME_ATTRS = {"units": "days since 1970-01-01 00:00:00", "standard_name": "time",
              "calendar": "standard", "axis": "T"}  # fmt: skip
LAT_ATTRS = {"units": "degrees_north", "standard_name": "latitude", "axis": "Y"}
LON_ATTRS = {"units": "degrees_east", "standard_name": "longitude", "axis": "X"}
NOBS_ATTRS = {"long_name": "number of observations", "units": "-",
              "valid_range": np.array([0, 32], np.uint8), "grid_mapping": "crs"}  # fmt: skip


def _variable(nc: Any, name: str, dtype: str, dims: tuple[str, ...], attrs: dict,
              values: Any, **kwargs: Any) -> None:  # fmt: skip
    var = nc.createVariable(name, dtype, dims, **kwargs)
    var.set_auto_maskandscale(False)
    var.setncatts(attrs)
    var[:] = values


def write_native(path: Path, product: Product, date: pd.Timestamp, dn: np.ndarray,
                 lat: np.ndarray, lon: np.ndarray, nobs: np.ndarray | None = None,
                 attr_dtype: type = np.float64, chunk_rows: int = 1024) -> Path:  # fmt: skip
    """Write one dekad file in the native layout (module docstring); ``dn`` (lat, lon) uint8."""
    import netCDF4

    version = SAMPLE_VERSION[product.key]
    cube = ("time", "lat", "lon")
    packed = {
        "zlib": True,
        "complevel": 4,
        "chunksizes": (1, min(len(lat), chunk_rows), min(len(lon), 1024)),
    }
    ndvi_attrs = {"long_name": "Normalized Difference Vegetation Index", "units": "-",
                  "scale_factor": attr_dtype(SCALE), "add_offset": attr_dtype(OFFSET),
                  "valid_range": np.array([0, MAX_DN], np.uint8), "grid_mapping": "crs",
                  "flag_values": np.arange(MAX_DN + 1, 256, dtype=np.uint8)}  # fmt: skip
    with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
        nc.setncatts({
            "Conventions": "CF-1.6",
            "title": f"10-daily Normalized Difference Vegetation Index: GLOBE {date:%Y-%m-%d}",
            "product_version": f"V{version}",
            "identifier": product.native_name(date, version).removesuffix(".nc"),
            "time_coverage_start": f"{date:%Y-%m-%d}T00:00:00Z",
            "history": "bfm sample ndvi: synthetic values in the CLMS native layout",
        })  # fmt: skip
        for dim, size in zip(cube, (1, len(lat), len(lon)), strict=True):
            nc.createDimension(dim, size)
        _variable(nc, "crs", "i4", (), CRS_ATTRS, 0)
        _variable(nc, "time", "f8", ("time",), TIME_ATTRS, [(date - pd.Timestamp(0)).days])
        _variable(nc, "lat", "f8", ("lat",), LAT_ATTRS, lat)
        _variable(nc, "lon", "f8", ("lon",), LON_ATTRS, lon)
        _variable(nc, "NDVI", "u1", cube, ndvi_attrs, dn[None].astype(np.uint8),
                  fill_value=np.uint8(FILL), **packed)  # fmt: skip
        if nobs is not None:
            _variable(nc, "NOBS", "u1", cube, NOBS_ATTRS, nobs[None].astype(np.uint8), **packed)
    return path


# --- decoding -----------------------------------------------------------------------------
def decode(dn: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """float64 values of raw DN: ``DN * scale + offset`` for DN <= 250, NaN for the flags."""
    dn = np.asarray(dn)
    return np.where(dn <= MAX_DN, dn.astype(np.float64) * scale + offset, np.nan)


# --- open: the dekad files, lazily decoded ----------------------------------------------------
def _attr_float(value: Any) -> float:
    """A scale/offset attribute; float32 ones as the 7-digit decimal they were written from."""
    value = np.asarray(value).reshape(-1)[0]
    return float(f"{float(value):.7g}") if value.dtype == np.float32 else float(value)


def _regular(values: np.ndarray, descending: bool, what: str, where: str) -> np.ndarray:
    """A regular axis, rebuilt evenly between its ends (float32 coordinates jitter by ~1e-5
    deg); ValueError if it is not regular within 1 % of its spacing."""
    values = np.asarray(values, dtype=np.float64)
    diffs = np.diff(values)
    res = abs(float(values[-1] - values[0])) / max(len(values) - 1, 1)
    ok = len(values) > 1 and bool(np.all(diffs < 0) if descending else np.all(diffs > 0))
    if not ok or np.abs(np.abs(diffs) - res).max() > 0.01 * res:
        order = "descending" if descending else "ascending"
        raise ValueError(f"{where}: coordinate {what!r} is not a regular {order} axis")
    return np.linspace(values[0], values[-1], len(values))


class DekadFile:
    """One dekad file: its date, product, scale/offset and pixel axes (read at open)."""

    def __init__(self, path: str | Path) -> None:
        import netCDF4

        self.path = Path(path)
        where = str(self.path)
        if not self.path.exists():
            raise FileNotFoundError(f"{where}: no such NDVI file")
        try:
            with netCDF4.Dataset(self.path) as nc:
                nc.set_auto_mask(False)
                self._read_header(nc, where)
        except OSError as err:
            raise ValueError(f"{where}: cannot read as netCDF ({err})") from err
        self.product = product_of(self.date)

    def _read_header(self, nc: Any, where: str) -> None:
        missing = [v for v in ("NDVI", "lat", "lon") if v not in nc.variables]
        if missing:
            raise ValueError(f"{where}: missing variable(s) {missing}")
        var = nc["NDVI"]
        if var.dimensions != ("time", "lat", "lon") or var.shape[0] != 1:
            raise ValueError(f"{where}: variable 'NDVI' has dims {var.dimensions} "
                             f"{var.shape}, expected (time=1, lat, lon)")  # fmt: skip
        if var.dtype != np.uint8:
            raise ValueError(f"{where}: variable 'NDVI' is {var.dtype}, expected uint8 DN")
        missing = [a for a in ("scale_factor", "add_offset") if a not in var.ncattrs()]
        if missing:
            raise ValueError(f"{where}: variable 'NDVI' lacks attribute(s) {missing}")
        self.scale = _attr_float(var.getncattr("scale_factor"))
        self.offset = _attr_float(var.getncattr("add_offset"))
        self.lat = np.asarray(nc["lat"][:], dtype=np.float64)
        self.lon = np.asarray(nc["lon"][:], dtype=np.float64)
        chunking = var.chunking()
        self.chunk_rows = int(chunking[1]) if isinstance(chunking, list) else 0
        self.lat = _regular(self.lat, True, "lat", where)
        self.lon = _regular(self.lon, False, "lon", where)
        self.res = float(self.lat[0] - self.lat[-1]) / (len(self.lat) - 1)
        lon_res = float(self.lon[-1] - self.lon[0]) / (len(self.lon) - 1)
        if not np.isclose(lon_res, self.res, rtol=1e-4):
            raise ValueError(f"{where}: pixels are not square ({self.res} x {lon_res} deg)")
        self.date = self._date(nc, where)

    def _date(self, nc: Any, where: str) -> pd.Timestamp:
        """The dekad start: from the name (``YYYYMMDD.nc`` or native), else the time variable."""
        stem = self.path.name.removesuffix(".nc")
        found = re.search(r"(?:^|_)(\d{8})(?:0000)?(?:_|$)", stem)
        date = _dekad_date(found.group(1)) if found else None
        if found is None and "time" in nc.variables:
            import netCDF4

            t = nc["time"]
            value = netCDF4.num2date(t[0], t.units, getattr(t, "calendar", "standard"))
            date = pd.Timestamp(str(value)).normalize()
            date = date if is_dekad_start(date) else None
        if date is None:
            raise ValueError(f"{where}: no dekad start (day 1, 11 or 21) in the file name or "
                             "its time variable")  # fmt: skip
        return date

    def read(self, rows: Any, cols: Any) -> np.ndarray:
        """Decoded values (float64, NaN for flags) of ``NDVI[0, rows, cols]``."""
        import netCDF4

        with netCDF4.Dataset(self.path) as nc:
            var = nc["NDVI"]
            var.set_auto_maskandscale(False)
            dn = np.asarray(var[0, rows, cols])
        return decode(dn, self.scale, self.offset)


def _lazy(files: list[DekadFile]) -> Any:
    """A lazily indexed (time, lat, lon) float64 array over the files' decoded NDVI."""
    from xarray.backends import BackendArray
    from xarray.core import indexing

    class Decoded(BackendArray):
        shape = (len(files), len(files[0].lat), len(files[0].lon))
        dtype = np.dtype(np.float64)

        def __getitem__(self, key: Any) -> Any:
            return indexing.explicit_indexing_adapter(
                key, self.shape, indexing.IndexingSupport.BASIC, self._read
            )

        def _read(self, key: tuple) -> np.ndarray:
            t, rows, cols = key
            picks = range(len(files))[t] if isinstance(t, slice) else [t]
            parts = [files[i].read(rows, cols) for i in picks]
            if isinstance(t, slice):
                shape = (len(range(self.shape[1])[rows]), len(range(self.shape[2])[cols]))
                return np.stack(parts) if parts else np.empty((0, *shape))
            return parts[0]

    return indexing.LazilyIndexedArray(Decoded())


def open_dekads(paths: Sequence[str | Path]) -> xr.Dataset:
    """The dekad files as one lazy Dataset: ``ndvi`` (time, latitude, longitude) decoded,
    coordinates ``time`` (dekad start), ``time_end``, pixel-centre latitude and longitude."""
    import xarray as xr

    if not paths:
        raise ValueError("ndvi: no input files")
    files = sorted((DekadFile(p) for p in paths), key=lambda f: f.date)
    first = files[0]
    for f, g in zip(files, files[1:], strict=False):
        if f.date == g.date:
            raise ValueError(f"{g.path}: dekad {g.date:%Y-%m-%d} is also in {f.path}")
    for f in files[1:]:
        if (
            f.lat.shape != first.lat.shape
            or f.lon.shape != first.lon.shape
            or not (np.allclose(f.lat, first.lat) and np.allclose(f.lon, first.lon))
        ):
            raise ValueError(f"{f.path}: its pixel grid differs from {first.path}'s (one tile "
                             "reads dekads of one product and extent)")  # fmt: skip
    dims = ("time", "latitude", "longitude")
    data = xr.Variable(dims, _lazy(files), {"long_name": "NDVI (decoded, flags missing)"},
                       encoding={"chunk_rows": first.chunk_rows})  # fmt: skip
    starts = pd.DatetimeIndex([f.date for f in files])
    ds = xr.Dataset(
        {"ndvi": data},
        coords={"time": starts, "time_end": ("time", [dekad_end(d) for d in starts]),
                "latitude": first.lat, "longitude": first.lon},
        attrs={"products": ", ".join(dict.fromkeys(f.product.title for f in files)),
               "files": ", ".join(f.path.name for f in files), "pixel_size": first.res},
    )  # fmt: skip
    ds.encoding["source"] = str(first.path) if len(files) == 1 else str(first.path.parent)
    ds.encoding["files"] = [str(f.path) for f in files]  # names the dekad in messages
    return ds
