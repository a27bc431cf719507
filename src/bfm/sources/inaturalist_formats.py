"""The iNaturalist source's native formats: the request of an API v1 observation search, the
raw JSON Lines file, photo bytes and the photo zip, and deterministic samples of both
(``bfm.sources.inaturalist`` documents the rules)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import struct
import sys
import uuid
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from bfm.contracts.grid import Grid
from bfm.contracts.occurrence import Quarantine, Reason, match_species
from bfm.fileio import atomic_path
from bfm.sources import gbif, manifest
from bfm.sources.climate import Climate

API = "https://api.inaturalist.org/v1"
PER_PAGE = 200  # the API's largest page
WINDOW = 10_000  # page * per_page may not exceed it (Elasticsearch's result window)
OPEN_LICENCES = frozenset(
    ("cc0", "cc-by", "cc-by-nc", "cc-by-sa", "cc-by-nd", "cc-by-nc-sa", "cc-by-nc-nd")
)
ALL_RIGHTS_RESERVED = "all-rights-reserved"  # what a null license_code means
PHOTO_SIZES = ("square", "thumb", "small", "medium", "large", "original")
INDEX_COLUMNS = ("record_id", "species_key", "photo_id", "licence", "attribution", "size", "path")
CITATION = (
    "iNaturalist contributors, iNaturalist research-grade observations, "
    "https://www.inaturalist.org (API v1)"
)
MALFORMED_RECORD = Reason.UNREADABLE_LINE.value  # a line that is not a JSON observation
MEDIA_NOT_OPEN = Reason.MEDIA_NOT_OPEN.value  # a photo under all rights reserved (null licence)
MEDIA_UNAVAILABLE = Reason.MEDIA_UNAVAILABLE.value  # a photo the server no longer has
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def count(q: Quarantine, key: str, n: int = 1, example: str = "") -> None:
    """Count ``n`` drops under the contract Reason whose value is ``key``."""
    q.count(Reason(key), n, example)


# --- the request ---------------------------------------------------------------------------
def taxon_name(name: str) -> str:
    """The ``Genus species`` that ``taxon_name`` is sent (authors and subspecies dropped)."""
    return " ".join(str(name).split()[:2])


def bbox(grid: Grid) -> dict[str, float]:
    """The grid's outer cell edges (the centres plus half a cell) as the API's bbox."""
    lat_e, lon_e = grid.lat_edges(), grid.lon_edges()
    return {"swlat": round(float(lat_e[-1]), 6), "swlng": round(float(lon_e[0]), 6),
            "nelat": round(float(lat_e[0]), 6), "nelng": round(float(lon_e[-1]), 6)}  # fmt: skip


def request_params(species_name: str, start: str, end: str, grid: Grid, *,
                   per_page: int = PER_PAGE) -> dict[str, Any]:  # fmt: skip
    """The query of the first page of one species' search (later pages add ``id_above``)."""
    if pd.Timestamp(end) < pd.Timestamp(start):
        raise ValueError(f"inaturalist: end {end} is before start {start}")
    if not 1 <= per_page <= PER_PAGE:
        raise ValueError(f"inaturalist: per_page must be 1..{PER_PAGE}, got {per_page}")
    return {
        "taxon_name": taxon_name(species_name),
        **bbox(grid),
        "d1": pd.Timestamp(start).strftime("%Y-%m-%d"),
        "d2": pd.Timestamp(end).strftime("%Y-%m-%d"),
        "quality_grade": "research",
        "photos": "true",
        "geo": "true",
        "captive": "false",
        "per_page": int(per_page),
        "order_by": "id",
        "order": "asc",
    }


def manifest_request(species: pd.DataFrame, start: str, end: str, grid: Grid,
                     per_page: int = PER_PAGE) -> dict[str, Any]:  # fmt: skip
    """What a download asks for: the species searched and the query shared by their pages."""
    params = request_params("x", start, end, grid, per_page=per_page)
    params.pop("taxon_name")
    pairs = zip(species["gbif_key"], species["scientific_name"], strict=True)
    taxa = [{"gbif_key": int(k), "taxon_name": taxon_name(n)} for k, n in pairs]
    return {"endpoint": "observations", "species": taxa, "params": params,
            "paging": "id_above=<last id of the previous page>, until a page is short"}  # fmt: skip


def licence_summary(codes: Iterable[object], what: str = "observations") -> str:
    """``N <what>, licence per item: cc-by 3, cc0 1, all-rights-reserved 2``."""
    counts = Counter(str(c).lower() if c else ALL_RIGHTS_RESERVED for c in codes)
    parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    return f"{sum(counts.values())} {what}, licence per item: {parts or 'none'}"


# --- the raw file ---------------------------------------------------------------------------
def write_observations(path: str | Path, observations: Iterable[dict[str, Any]]) -> Path:
    """Gzip JSON Lines, one observation per line, the same bytes for the same observations."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:  # fmt: skip
        for obs in observations:
            gz.write(json.dumps(obs, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
    return path


def read_observations(path: str | Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The observations of a (gzip) JSON Lines file and the numbers of the lines that are not
    a JSON object with an integer ``id``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such iNaturalist observations file")
    try:
        data = path.read_bytes()
        text = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable gzip JSON Lines file ({err})") from err
    good, bad = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obs = json.loads(line)
        except ValueError:
            bad.append(number)
            continue
        if isinstance(obs, dict) and isinstance(obs.get("id"), int):
            good.append(obs)
        else:
            bad.append(number)
    return good, bad


# --- photos -------------------------------------------------------------------------------
def photo_url(url: str, size: str) -> str:
    """The ``size`` variant of a photo URL (``.../photos/<id>/square.jpg?123`` -> medium)."""
    if size not in PHOTO_SIZES:
        raise ValueError(f"inaturalist: photo size {size!r} is not one of {list(PHOTO_SIZES)}")
    return re.sub(r"/square(\.[A-Za-z]+)", rf"/{size}\1", url, count=1)


def png_bytes(rgb: np.ndarray) -> bytes:
    """A PNG (8-bit RGB, no filter) of an ``(height, width, 3)`` uint8 array."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"png: expected (h, w, 3) uint8, got {rgb.shape=} {rgb.dtype=}")
    h, w, _ = rgb.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1)

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (PNG_MAGIC + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
            + chunk(b"IEND", b""))  # fmt: skip


def pillow() -> Any:
    """``PIL.Image``, or None where Pillow is not installed."""
    try:
        import PIL.Image
    except ImportError:
        return None
    return PIL.Image


def image_kind(data: bytes) -> str | None:
    """``jpg`` or ``png`` for a whole, decodable image, else None (magic bytes and end
    markers; Pillow decodes it too where installed)."""
    if data[:3] == b"\xff\xd8\xff" and data.rstrip(b"\x00")[-2:] == b"\xff\xd9":
        kind = "jpg"
    elif data[:8] == PNG_MAGIC and data[-8:-4] == b"IEND":
        kind = "png"
    else:
        return None
    image = pillow()
    if image is not None:
        try:
            with image.open(io.BytesIO(data)) as im:
                im.load()
        except Exception:  # any decoder failure means the photo is unusable
            return None
    return kind


Fetch = Callable[[int, dict[str, Any]], "bytes | str"]


def photo_candidates(observations: Path, species: pd.DataFrame
                     ) -> dict[int, list[tuple[str, dict[str, Any]]]]:  # fmt: skip
    """Per study species (list order): its photos as (record_id, photo), observations in id
    order, each photo id once."""
    found, _ = read_observations(observations)
    found.sort(key=lambda o: o["id"])
    names = pd.Series([str((o.get("taxon") or {}).get("name", "")) for o in found], dtype=object)
    keys = match_species(names, species)
    out: dict[int, list[tuple[str, dict[str, Any]]]] = {int(k): [] for k in species["gbif_key"]}
    seen: dict[int, set[int]] = {k: set() for k in out}
    for obs, key in zip(found, keys, strict=True):
        if pd.isna(key):
            continue
        for photo in obs.get("photos") or []:
            pid = photo.get("id") if isinstance(photo, dict) else None
            if isinstance(pid, int) and pid not in seen[int(key)]:
                seen[int(key)].add(pid)
                out[int(key)].append((f"inaturalist:{obs['id']}", photo))
    return out


def collect_photos(candidates: dict[int, list[tuple[str, dict[str, Any]]]], per_species: int,
                   q: Quarantine, fetch: Fetch) -> list[tuple[dict[str, Any], bytes]]:  # fmt: skip
    """Up to ``per_species`` open-licensed, decodable photos per species: (index row, bytes).

    ``fetch(species_key, photo)`` gives the bytes or the key of the reason they are unusable.
    Every photo looked at is counted (``q.saw``); each one not kept, by reason.
    """
    kept: list[tuple[dict[str, Any], bytes]] = []
    every = 0.5 if sys.stderr.isatty() else 30.0
    bar = tqdm(candidates.items(), "inaturalist photos", unit="species", file=sys.stderr,
               mininterval=every)  # fmt: skip
    for key, items in bar:
        stored = 0
        for record_id, photo in items:
            if stored >= per_species:
                break
            q.saw(1)
            example = f"inaturalist:photo:{photo['id']}"
            licence = str(photo.get("license_code") or "").lower()
            if licence not in OPEN_LICENCES:
                count(q, MEDIA_NOT_OPEN, 1, example)
                continue
            got = fetch(key, photo)
            kind = image_kind(got) if isinstance(got, bytes) else None
            if not isinstance(got, bytes) or kind is None:
                count(q, got if isinstance(got, str) else Reason.CORRUPT_MEDIA.value, 1, example)
                continue
            row = {"record_id": record_id, "species_key": key, "photo_id": int(photo["id"]),
                   "licence": licence, "attribution": str(photo.get("attribution") or ""),
                   "size": len(got), "path": f"{key}/{photo['id']}.{kind}"}  # fmt: skip
            kept.append((row, got))
            stored += 1
    return kept


_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same photos, the same bytes


def write_photo_zip(out_zip: Path, kept: list[tuple[dict[str, Any], bytes]]) -> Path:
    """``<gbif_key>/<photo_id>.<ext>`` (stored: photos are compressed) and ``index.csv``."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=INDEX_COLUMNS, lineterminator="\n")
    writer.writeheader()
    with atomic_path(out_zip) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for row, data in kept:
            zf.writestr(zipfile.ZipInfo(row["path"], _FIXED_TIME), data)
            writer.writerow(row)
        info = zipfile.ZipInfo("index.csv", _FIXED_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, text.getvalue())
    return out_zip


def write_photo_manifest(out_zip: Path, request: dict[str, Any], url: str,
                         kept: list[tuple[dict[str, Any], bytes]]) -> Path:  # fmt: skip
    return manifest.write_manifest(
        out_zip, source="inaturalist", request=request, url=url,
        licence=licence_summary((r["licence"] for r, _ in kept), "photos") + " (index.csv: "
        "licence and attribution of each photo)", citation=CITATION,
    )  # fmt: skip


# --- samples --------------------------------------------------------------------------------
SHARE = 0.25  # iNaturalist's share of the GBIF sample's intensity (the same niches)
DATE_ONLY = 0.15  # observations without a time of day (time_observed_at null)
LICENCES = ("cc-by-nc", "cc-by", "cc0", "cc-by-sa", "cc-by-nc-sa", None)
LICENCE_WEIGHTS = (0.6, 0.15, 0.08, 0.05, 0.04, 0.08)
S3 = "https://inaturalist-open-data.s3.amazonaws.com/photos"
STATIC = "https://static.inaturalist.org/photos"  # where all-rights-reserved photos lie


def _draws(species: pd.DataFrame, start: str, end: str, grid: Grid, seed: int,
           climate_seed: int) -> pd.DataFrame:  # fmt: skip
    """Observations (species, local date and second of day, position) by the GBIF sample's
    niches (same seed) and climate (same climate seed), drawn independently of its records."""
    climate = Climate.from_seed(climate_seed)
    surf = climate.surface(grid.latitudes, grid.longitudes)
    area_km2 = grid.cell_areas() / 1e6
    keys = [int(k) for k in species["gbif_key"]]
    niche = gbif.niches(keys, seed)
    rng = np.random.default_rng([seed, 31])
    days = pd.date_range(start, end, freq="D")
    parts = []
    for month in days.to_period("M").unique():
        chunk = days[days.to_period("M") == month]
        t2m = gbif.daily_mean_t2m(climate, chunk, grid)
        for i, key in enumerate(keys):
            lam = SHARE * gbif.intensity(niche[key], t2m, surf.orography, surf.lsm, area_km2)
            counts = rng.poisson(lam)
            cells = np.nonzero(counts)
            day, row, col = (np.repeat(a, counts[cells]) for a in cells)
            jitter = rng.uniform(0.02, 0.98, size=(2, day.size))
            parts.append(pd.DataFrame({
                "species": i, "date": chunk.values[day],
                "second": rng.integers(6 * 3600, 20 * 3600, day.size),  # local daytime
                "lat": grid.lat_edges()[row] - jitter[0] * grid.res,
                "lon": grid.lon_edges()[col] + jitter[1] * grid.res,
            }))  # fmt: skip
    draws = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["species", "date", "second", "lat", "lon"])  # fmt: skip
    return draws.sort_values(["date", "second", "species"], kind="stable", ignore_index=True)


def _attribution(login: str, licence: str | None) -> str:
    if licence is None:
        return f"(c) {login}, all rights reserved"
    if licence == "cc0":
        return f"(c) {login}, no rights reserved (CC0)"
    return f"(c) {login}, some rights reserved ({licence.upper().replace('-', ' ', 1)})"


def _photos(rng: np.random.Generator, pid: int, licence: str | None, login: str) -> list:
    photos = []
    for k in range(int(rng.integers(1, 4))):
        own = licence if rng.random() < 0.85 else LICENCES[rng.choice(6, p=LICENCE_WEIGHTS)]
        ext = str(rng.choice(["jpg", "jpg", "jpeg", "png"]))
        url = f"{S3 if own else STATIC}/{pid + k}/square.{ext}"
        photos.append({"id": pid + k, "license_code": own, "url": url,
                       "attribution": _attribution(login, own),
                       "original_dimensions": {"width": 2048, "height": 1536}})  # fmt: skip
    return photos


def _observation(d: Any, sp: Any, oid: int, pid: int, rng: np.random.Generator) -> dict:
    date = pd.Timestamp(d.date)
    offset = 2 if 4 <= date.month <= 10 else 1  # CEST in summer, CET in winter (roughly)
    local = date + pd.Timedelta(seconds=int(d.second))
    lat, lon = round(float(d.lat), 6), round(float(d.lon), 6)
    accuracy = int(rng.choice([5, 10, 25, 50, 200]))
    obscured = bool(rng.random() < 0.05)  # public position: somewhere in a 0.2 deg cell
    user = int(rng.integers(1, 900))
    licence = LICENCES[rng.choice(6, p=LICENCE_WEIGHTS)]
    return {
        "id": oid, "uuid": str(uuid.UUID(bytes=rng.bytes(16), version=4)),
        "quality_grade": "research", "captive": False,
        "observed_on": f"{date:%Y-%m-%d}",
        "time_observed_at": None if rng.random() < DATE_ONLY
        else f"{local:%Y-%m-%dT%H:%M:%S}+{offset:02d}:00",
        "location": f"{lat},{lon}", "geojson": {"type": "Point", "coordinates": [lon, lat]},
        "positional_accuracy": accuracy, "obscured": obscured,
        "public_positional_accuracy": 28_000 if obscured else accuracy,
        "license_code": licence,
        "taxon": {"id": 1_000_000 + int(d.species), "name": str(sp.scientific_name),
                  "rank": "species", "preferred_common_name": str(sp.common_name)},
        "user": {"id": user, "login": f"observer{user}"},
        "photos": _photos(rng, pid, licence, f"observer{user}"),
    }  # fmt: skip


def _spoil(observations: list[dict], rng: np.random.Generator) -> None:
    """A few bad records: no location (2), an impossible date (2), a species outside the
    study (1), a subspecies of a study species (1, which counts as its species)."""
    n = len(observations)
    picks = rng.choice(n, size=min(n, 6), replace=False) if n else np.array([], int)
    for kind, i in zip(("where", "where", "when", "when", "other", "subspecies"), picks,
                       strict=False):  # fmt: skip
        obs = observations[int(i)]
        if kind == "where":
            obs.update(location=None, geojson=None, positional_accuracy=None,
                       public_positional_accuracy=None)  # fmt: skip
        elif kind == "when":
            obs.update(observed_on=f"{obs['observed_on'][:4]}-02-30", time_observed_at=None)
        elif kind == "other":
            obs["taxon"] = {"id": 41997, "name": "Felis silvestris", "rank": "species",
                            "preferred_common_name": "European Wildcat"}  # fmt: skip
        else:
            name = obs["taxon"]["name"]
            obs["taxon"] = {**obs["taxon"], "name": f"{name} {name.split()[-1]}",
                            "rank": "subspecies"}  # fmt: skip


def sample_observations(species: pd.DataFrame, start: str, end: str, grid: Grid, seed: int,
                        climate_seed: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Synthetic API v1 observation results, ids ascending (see ``sample``)."""
    climate_seed = seed if climate_seed is None else climate_seed
    draws = _draws(species, start, end, grid, seed, climate_seed)
    rng = np.random.default_rng([seed, 32])
    ids = 30_000_000 + 100_000 * (seed % 1000) + np.cumsum(rng.integers(1, 50, len(draws)))
    pids = 60_000_000 + 1_000_000 * (seed % 1000) + 4 * np.arange(len(draws))
    rows = list(species.itertuples(index=False))
    observations = [_observation(d, rows[int(d.species)], int(ids[i]), int(pids[i]), rng)
                    for i, d in enumerate(draws.itertuples(index=False))]  # fmt: skip
    _spoil(observations, rng)
    return observations


def sample_image(seed: int, species_key: int, photo_id: int, kind: str) -> bytes:
    """A small image (24 x 32, a colour of the species plus seeded noise) as PNG or JPEG
    (JPEG where Pillow is installed, else PNG)."""
    rng = np.random.default_rng([seed, species_key, photo_id])
    base = np.random.default_rng(species_key).integers(40, 200, 3)
    rgb = base + np.linspace(-30, 30, 32)[None, :, None] + rng.normal(0, 12, (24, 32, 3))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    image = pillow()
    if kind != "jpg" or image is None:
        return png_bytes(rgb)
    buffer = io.BytesIO()
    image.fromarray(rgb).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()
