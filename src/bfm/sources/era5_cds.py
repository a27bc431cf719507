"""ERA5 downloads from the Copernicus Climate Data Store: one CDS job per raw file.

:func:`fetch` writes one download unit (``era5.ERA5.download`` builds its request and writes
the manifest after it):

1. **Credentials** are cdsapi's own: ``CDSAPI_URL`` / ``CDSAPI_KEY`` from the environment,
   else the ``url:`` / ``key:`` lines of ``~/.cdsapirc`` (or the file ``CDSAPI_RC`` names).
   The key is the CDS personal access token; an old-CDS ``UID:KEY`` is refused. The key is
   sent only to the CDS API (header ``PRIVATE-TOKEN``), never to the host that serves the
   file, and never logged or stored: cdsapi's log lines pass through callbacks that blank it.
2. **The job**: ``cdsapi.Client(url=..., key=...).retrieve(dataset, request)`` submits the
   request (``POST <url>/retrieve/v1/processes/<dataset>/execution``), polls the job until it
   is successful (from 1 s, x1.5 per poll, at most ``sleep_max``) and reads its results (the
   asset's ``href`` and ``file:size``). A refusal (400 cost limits, 401 token, 403 licence
   not accepted, 429) or a failed job is a :class:`~bfm.sources.http.DownloadError` naming
   the unit and the server's title and detail.
3. **The file** is fetched with :class:`bfm.sources.http.Client` rather than cdsapi's own
   transfer, which neither honours ``Retry-After`` nor resumes across runs: retries with
   backoff, ``Retry-After`` honoured (at most ``sleep_max``), a reset resumed with ``Range``
   (also in a later run: the partial ``.<file>.<asset>.download.part`` is kept; one of
   another asset is deleted), and the size must be the results' ``file:size``.
4. **A zip** (the CDS zips the netCDF files of requests that mix step types) is unpacked
   into the raw file: exactly one ``.nc`` member, no absolute or ``..`` member names, a size
   within :data:`MAX_UNPACKED` and a ratio within :data:`MAX_RATIO` of the packed size, and
   exactly the size the archive declares.
5. **Checked** (the caller's ``check``: the group's variables, the grid's cells, every time)
   and renamed into place; nothing is left at the raw file's path when any step fails.

cdsapi settings: ``quiet=True, progress=False, delete=False``, ``retry_max = retries + 1``
(attempts per API call on 5xx, 429 and connection errors, waiting ``sleep_max`` s between
them: cdsapi's fixed ``retry_after``), ``sleep_max`` and ``timeout`` from :class:`Options`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import requests

from bfm.fileio import atomic_path
from bfm.sources import manifest, tiling
from bfm.sources.base import Study
from bfm.sources.http import Client, DownloadError, Service, Sleep

log = logging.getLogger(__name__)
SLEEP: Sleep = time.sleep  # waits between attempts of the file transfer (tests replace it)
MAX_UNPACKED = 64 << 30  # bytes: the largest netCDF accepted from a zip
MAX_RATIO = 1000  # unpacked / packed size of a zip member (beyond: a zip bomb)
ZIP_MAGIC = b"PK\x03\x04"
NETCDF_MAGIC = (b"CDF\x01", b"CDF\x02", b"\x89HDF\r\n\x1a\n")
SETUP_HINT = (
    "set CDSAPI_URL and CDSAPI_KEY, or write 'url: https://cds.climate.copernicus.eu/api' and "
    "'key: <personal access token>' to ~/.cdsapirc"
)


@dataclass(frozen=True)
class Options:
    """Transfer settings (config ``sources.era5.options``); none changes the file's bytes.

    Attributes:
        retries: attempts after the first, for each API call and for the file.
        sleep_max: seconds: the longest poll interval and wait between attempts.
        timeout: seconds to wait for a connection and for each read.
    """

    retries: int = 10
    sleep_max: float = 120.0
    timeout: float = 60.0

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> Options:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"config: key 'sources.era5.options' has unknown option(s) {unknown} "
                f"(known: {sorted(known)})"
            )
        values: dict[str, Any] = {}
        for name, value in options.items():
            kind = int if name == "retries" else float
            ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
            if not ok or (kind is int and not float(value).is_integer()):
                raise ValueError(
                    f"config: key 'sources.era5.options.{name}' must be a number >= 0"
                    + (" (whole)" if kind is int else "")
                    + f", got {value!r}"
                )
            values[name] = kind(value)
        return cls(**values)


def _callbacks(unit: str, key: str) -> dict[str, Callable[..., None]]:
    """cdsapi's log callbacks: its lines under this module's logger, the key blanked."""

    def at(level: int) -> Callable[..., None]:
        def emit(msg: Any, *args: Any, **_: Any) -> None:
            try:
                text = str(msg) % args if args else str(msg)
            except (TypeError, ValueError):
                text = " ".join(str(a) for a in (msg, *args))
            text = text.replace(key, "***") if key else text
            log.log(level, "cds %s: %s", unit, text[:2000])

        return emit

    names = {
        "info": logging.INFO,
        "warning": logging.WARNING,
        "error": logging.ERROR,
        "debug": logging.DEBUG,
    }
    return {f"{name}_callback": at(level) for name, level in names.items()}


def credentials(unit: str) -> tuple[str, str, bool]:
    """(url, key, verify) as cdsapi reads them (environment, then ~/.cdsapirc)."""
    import cdsapi.api

    try:
        url, key, verify = cdsapi.api.get_url_key_verify(None, None, None)
    except Exception as err:  # cdsapi raises a bare Exception; the rc file may be malformed
        raise DownloadError(f"cds {unit}: no CDS credentials ({err}): {SETUP_HINT}") from None
    url, key = str(url).strip().rstrip("/"), str(key).strip()
    if not url or not key:
        raise DownloadError(f"cds {unit}: empty CDS url or key: {SETUP_HINT}")
    if ":" in key:
        raise DownloadError(
            f"cds {unit}: the CDS key has the old 'UID:KEY' form; the new CDS (since 2024-09) "
            "takes the personal access token alone (see your CDS profile page)"
        )
    return url, key, bool(verify)


def public_url(url: str) -> str:
    """``url`` without user info, query or fragment (what a manifest may record)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def up_to_date(out: Path, req: Mapping[str, Any]) -> bool:
    """True if ``out`` is complete: its manifest verifies and records the request ``req``."""
    if not out.is_file() or not manifest.manifest_path(out).is_file():
        return False
    try:
        record = manifest.verify(out)
    except (ValueError, OSError) as err:
        log.warning("%s: downloading again (%s)", out, err)
        return False
    return bool(record["request"] == dict(req))


def download(where: str, out: Path, unit: str, period: str | None, study: Study) -> Path:
    """Raw file ``out`` of ERA5 ``unit`` (and ``period``) from the CDS, then its manifest;
    a complete file whose manifest records this request is kept as it is."""
    from bfm.sources import era5

    req = era5.request(unit, study.grid, period, study.levels)
    if up_to_date(out, req):
        log.info("%s: %s is complete (manifest verified): not downloaded again", where, out)
        return out
    options = Options.from_config(study.options("era5"))

    def check(path: Path) -> None:
        """The file must be the unit asked for: its variables, cells, levels and times."""
        levels = study.levels if unit == "atmospheric" else None
        with era5.open(path, unit, study.grid, levels) as ds:
            tiling.native_grid(ds, study.grid, "the file")
            times = pd.DatetimeIndex(ds["time"].values if "time" in ds.dims else [])
            missing = era5.month_times(period).difference(times) if period else []
            if len(missing):
                raise ValueError(
                    f"the file lacks {len(missing)} of the month's 6-hourly "
                    f"times (first {missing[0]})"
                )

    url = fetch(where, out, req, options, check)
    manifest.write_manifest(
        out, source="era5", request=req, url=url, licence=era5.LICENCE, citation=era5.CITATION
    )
    return out


def fetch(
    unit: str,
    out: Path,
    req: Mapping[str, Any],
    options: Options,
    check: Callable[[Path], None],
) -> str:
    """Write the CDS result of ``req`` (``{"dataset", "request"}``) to ``out`` atomically;
    returns the URL a manifest records (the dataset's process, without credentials)."""
    url, key, verify = credentials(unit)
    dataset, request = str(req["dataset"]), dict(req["request"])
    location, size = _results(unit, url, key, verify, dataset, request, options)
    part_of = _download(unit, out, location, size, verify, options)
    try:
        with atomic_path(out) as tmp:
            if _head(part_of).startswith(ZIP_MAGIC):
                unzip_one(part_of, tmp, unit)
            elif _head(part_of).startswith(NETCDF_MAGIC):
                os.replace(part_of, tmp)
            else:
                raise DownloadError(
                    f"cds {unit}: the CDS file is neither netCDF nor zip "
                    f"(it starts with {_head(part_of)!r})"
                )
            try:
                check(tmp)
            except ValueError as err:
                why = str(err).replace(str(tmp), "the file")
                raise DownloadError(
                    f"cds {unit}: the CDS sent something else than the requested data: {why}"
                ) from err
    finally:
        part_of.unlink(missing_ok=True)
    return f"{public_url(url)}/retrieve/v1/processes/{dataset}"


def _results(
    unit: str, url: str, key: str, verify: bool, dataset: str, request: dict, options: Options
) -> tuple[str, int]:
    """Submit the job, wait for it, and return its asset's (URL, size)."""
    import cdsapi
    from ecmwf.datastores.processing import LinkError, ProcessingFailedError

    settings = {
        "quiet": True,
        "progress": False,
        "delete": False,
        "retry_max": options.retries + 1,
        "sleep_max": options.sleep_max,
        "timeout": options.timeout,
    }
    try:
        client = cdsapi.Client(url=url, key=key, verify=verify, **settings, **_callbacks(unit, key))
        results = client.retrieve(dataset, request)
        return str(results.location), int(results.content_length)
    except requests.HTTPError as err:
        raise DownloadError(_refusal(unit, err, key)) from None
    except ProcessingFailedError as err:
        raise DownloadError(f"cds {unit}: the CDS job failed: {_lines(str(err), key)}") from None
    except requests.JSONDecodeError as err:
        raise DownloadError(
            f"cds {unit}: unexpected answer from the CDS (malformed JSON: {_lines(str(err), key)})"
        ) from None
    except requests.RequestException as err:
        raise DownloadError(
            f"cds {unit}: cannot reach the CDS at {public_url(url)} after "
            f"{options.retries + 1} attempts ({type(err).__name__})"
        ) from None
    except (ValueError, KeyError, TypeError, LinkError) as err:
        why = f"{type(err).__name__}: {_lines(str(err), key)}"
        raise DownloadError(f"cds {unit}: unexpected answer from the CDS ({why})") from None


def _lines(text: str, key: str) -> str:
    text = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    return (text.replace(key, "***") if key else text)[:600]


def _server_words(response: requests.Response) -> str:
    """The server's own words: the JSON title, detail and traceback, else the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300]
    if not isinstance(body, dict):
        return str(body)[:300]
    return "; ".join(str(body[k]).strip() for k in ("title", "detail", "traceback") if body.get(k))


def _refusal(unit: str, err: requests.HTTPError, key: str) -> str:
    """The message for an HTTP error answer of the CDS API."""
    response = err.response
    if response is None:
        return f"cds {unit}: {_lines(str(err), key)}"
    status = int(response.status_code)
    # cdsapi reads a failed job's results, which answer with the reason.
    failed = urlsplit(response.url).path.endswith("/results")
    stage = f"the CDS job failed (HTTP {status})" if failed else f"HTTP {status}"
    hint = {
        401: f" (check the CDS key: {SETUP_HINT})",
        403: " (accept the dataset's licence on its CDS page?)",
    }.get(status, "")
    words = _lines(_server_words(response), key)
    return f"cds {unit}: {stage} from {public_url(response.url)}: {words}{hint}"


def _download(
    unit: str, out: Path, location: str, size: int, verify: bool, options: Options
) -> Path:
    """The asset at ``location`` in a partial-download file beside ``out`` (resumable)."""
    if urlsplit(location).scheme not in ("http", "https"):
        raise DownloadError(f"cds {unit}: the results' asset href {location!r} is not http(s)")
    parts = urlsplit(location)
    tag = hashlib.sha256(f"{parts.netloc}{parts.path}".encode()).hexdigest()[:16]
    target = out.with_name(f".{out.name}.{tag}.download")
    for stale in out.parent.glob(f".{out.name}.*.download*"):
        if not stale.name.startswith(target.name):
            stale.unlink(missing_ok=True)  # a partial of another asset: never mixed in
    service = Service(
        "cds",
        retries=options.retries,
        backoff=2.0,
        max_wait=options.sleep_max,
        timeout=options.timeout,
    )
    session = requests.Session()
    session.verify = verify
    client = Client(service, session=session, sleep=SLEEP)
    return client.download(location, target, unit, expected_bytes=size)


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(8)


def unzip_one(archive: Path, out: Path, unit: str) -> Path:
    """Unpack the one netCDF member of a CDS zip to ``out`` (the rules of the module doc)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            for m in members:
                name = PurePosixPath(m.filename.replace("\\", "/"))
                if name.is_absolute() or ".." in name.parts or ":" in m.filename:
                    raise DownloadError(
                        f"cds {unit}: zip member {m.filename!r} points outside "
                        "the archive (path traversal): refused"
                    )
            if len(members) != 1 or not members[0].filename.endswith(".nc"):
                names = [m.filename for m in members]
                raise DownloadError(
                    f"cds {unit}: the CDS zip holds {names}, expected one .nc "
                    "file (a request mixing step types?)"
                )
            (member,) = members
            limit = min(MAX_UNPACKED, MAX_RATIO * max(member.compress_size, 1 << 20))
            if member.file_size > limit:
                raise DownloadError(
                    f"cds {unit}: zip member {member.filename!r} declares "
                    f"{member.file_size} bytes, over the limit {limit}"
                )
            _copy_member(zf, member, out, unit)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"cds {unit}: the CDS zip is broken ({err})") from err
    return out


def _copy_member(zf: zipfile.ZipFile, member: zipfile.ZipInfo, out: Path, unit: str) -> None:
    written = 0
    with zf.open(member) as src, open(out, "wb") as dst:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > member.file_size:
                raise DownloadError(
                    f"cds {unit}: zip member {member.filename!r} is longer "
                    f"than the {member.file_size} bytes it declares"
                )
            dst.write(chunk)
    if written != member.file_size:
        raise DownloadError(
            f"cds {unit}: zip member {member.filename!r} has {written} bytes, "
            f"not the {member.file_size} it declares"
        )
