"""ERA5 downloads against a fake CDS that the real cdsapi client talks to (sources.md 4.3).

The fake serves the retrieve API on a local pytest-httpserver: the catalogue messages, the
process, the submission (201, link ``monitor``), a job whose status walks accepted -> running
-> successful, its results (asset ``href`` and ``file:size``) and the file itself from another
path (an object store: no token sent there). It checks the ``PRIVATE-TOKEN`` header and can
refuse (400/401/403/429 JSON with title and detail), fail the job, zip the result and inject
faults into the transfer. The file is the project's own sample (era5.sample), so what arrives
opens with era5.open and tiles.

Speed: cdsapi's poll sleeps (from a fixed 1 s) are replaced by a no-op (the ``time`` of
ecmwf.datastores.processing), ``sleep_max`` 0 makes its API retries immediate, and the file
transfer's waits go to a recorder (era5_cds.SLEEP).
"""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from bfm.contracts import catalogue
from bfm.contracts import tile as tiles
from bfm.contracts.grid import Grid
from bfm.provenance import file_sha256, provenance
from bfm.sources import Study, era5, era5_cds, manifest
from bfm.sources.http import DownloadError
from tests.fakes import (
    Handler,
    Script,
    Waits,
    cut_body,
    json_response,
    ranged,
    server_error,
    too_many,
    truncated,
)

TOKEN = "5c1e0a7e-3b1f-4d2a-9c8e-7f6a5b4c3d2e"  # planted: must appear nowhere
GRID = Grid(46.0, 47.0, 8.0, 9.0, 0.5)  # native cover 45.75..47.25 N, 7.75..9.25 E
LEVELS = (500, 850)
SINGLE = "reanalysis-era5-single-levels"
ERA5 = era5.ERA5()


class FakeCDS:
    """The CDS retrieve API (sources.md 4.3) serving ``data`` as the result of every job."""

    def __init__(self, server: HTTPServer, data: bytes, statuses: tuple = ("running",)) -> None:
        self.server, self.data, self.statuses = server, data, list(statuses) + ["successful"]
        self.job = str(uuid.UUID(int=7))
        self.execution: list[Handler] = []  # answers to the submission before it succeeds
        self.failure: Handler | None = None  # the results of a failed job
        self.polls: list[Handler] = []  # answers to status polls before the scripted ones
        self.asset = Script([ranged(data)])
        self.submitted: list[dict] = []
        self.api_requests: list[Request] = []
        self.n_polls = 0
        server.expect_request(re.compile(r"/api/.*")).respond_with_handler(self.api)
        server.expect_request(re.compile(r"/store/.*")).respond_with_handler(self.asset)

    @property
    def url(self) -> str:
        return self.server.url_for("/api")

    def job_json(self, status: str) -> dict:
        monitor = self.server.url_for(f"/api/retrieve/v1/jobs/{self.job}")
        return {
            "processID": SINGLE,
            "type": "process",
            "jobID": self.job,
            "status": status,
            "created": "2026-01-01T00:00:00",
            "updated": "2026-01-01T00:00:01",
            "links": [
                {"href": monitor, "rel": "monitor", "type": "application/json"},
                {"href": f"{monitor}/results", "rel": "results"},
            ],
            "metadata": {"log": [["2026-01-01T00:00:01", "INFO: the job is queued"]]},
        }

    def api(self, request: Request) -> Response:
        self.api_requests.append(request)
        path = request.path.removeprefix("/api")
        if path == "/catalogue/v1/messages":
            return json_response({"messages": []})(request)
        if request.headers.get("PRIVATE-TOKEN") != TOKEN:
            body = {"title": "Authentication failed", "detail": "The API key is not valid"}
            return json_response(body, 401)(request)
        if m := re.fullmatch(r"/retrieve/v1/processes/([\w-]+)", path):
            return json_response({"id": m[1], "message": "WARNING: a dataset notice"})(request)
        if path.endswith("/execution") and request.method == "POST":
            if self.execution:
                return self.execution.pop(0)(request)
            self.submitted.append(json.loads(request.data))
            return json_response(self.job_json("accepted"), 201)(request)
        if path == f"/retrieve/v1/jobs/{self.job}":
            if self.polls:
                return self.polls.pop(0)(request)
            status = self.statuses[min(self.n_polls, len(self.statuses) - 1)]
            self.n_polls += 1
            return json_response(self.job_json(status))(request)
        if path == f"/retrieve/v1/jobs/{self.job}/results":
            if self.failure is not None:
                return self.failure(request)
            href = self.server.url_for(f"/store/{file_sha256_bytes(self.data)}.nc")
            asset = {
                "type": "application/netcdf",
                "href": href,
                "file:size": len(self.data),
                "file:checksum": file_sha256_bytes(self.data),
            }
            return json_response({"asset": {"value": asset}})(request)
        return json_response({"title": "API endpoint not found"}, 404)(request)


def file_sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def study(**options: Any) -> Study:
    sources = {"era5": {"mode": "download", "options": {"retries": 2, "sleep_max": 0, **options}}}
    return Study(GRID, "2010-01-01", "2010-02-28", "1D", LEVELS, "species.csv", sources)


@pytest.fixture(scope="module")
def netcdf(tmp_path_factory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("cds")
    out = {}
    for unit, period in (("surface", "2010-01"), ("atmospheric", "2010-01"), ("static", None)):
        out[unit] = era5.sample(root / f"{unit}.nc", unit, GRID, period, LEVELS, 3).read_bytes()
    return out


@pytest.fixture(autouse=True)
def fast_and_isolated(monkeypatch, tmp_path):
    """No real sleeping, no real credentials (HOME without .cdsapirc)."""
    from ecmwf.datastores import processing

    monkeypatch.setattr(processing, "time", SimpleNamespace(sleep=lambda seconds: None))
    monkeypatch.setattr(era5_cds, "SLEEP", lambda seconds: None)
    for name in ("CDSAPI_URL", "CDSAPI_KEY", "CDSAPI_RC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def cds(httpserver: HTTPServer, netcdf, monkeypatch) -> FakeCDS:
    fake = FakeCDS(httpserver, netcdf["surface"])
    monkeypatch.setenv("CDSAPI_URL", fake.url)
    monkeypatch.setenv("CDSAPI_KEY", TOKEN)
    return fake


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob(".*") if p.is_file()]


# --- the happy path ------------------------------------------------------------------------
def test_download_submits_the_request_polls_and_writes_file_and_manifest(cds, tmp_path):
    out = ERA5.download("surface/2010-01.nc", tmp_path / "raw/surface/2010-01.nc", study())
    assert out.read_bytes() == cds.data
    req = era5.request("surface", GRID, "2010-01", LEVELS)
    assert cds.submitted == [{"inputs": req["request"]}]  # what cdsapi POSTs
    sent = req["request"]
    assert sent["area"] == [47.25, 7.75, 45.75, 9.25]  # N, W, S, E of the native cover
    assert sent["data_format"] == "netcdf" and sent["download_format"] == "unarchived"
    assert sent["time"] == ["00:00", "06:00", "12:00", "18:00"] and len(sent["day"]) == 31
    assert cds.n_polls >= 2  # accepted (submission) -> running -> successful
    assert all(r.headers["PRIVATE-TOKEN"] == TOKEN for r in cds.api_requests[1:])
    assert [r.headers.get("PRIVATE-TOKEN") for r in cds.asset.requests] == [None]
    record = manifest.verify(out)
    assert record["request"] == req and record["source"] == "era5"
    assert record["url"] == f"{cds.url}/retrieve/v1/processes/{SINGLE}"
    assert record["bytes"] == len(cds.data) and record["sha256"] == file_sha256(out)
    assert record["licence"] == era5.LICENCE and "Hersbach" in record["citation"]
    assert no_temp_files(tmp_path / "raw")
    ds = era5.open(out, "surface")
    assert ds.sizes["time"] == 124
    ds.close()


def test_atmospheric_request_names_the_study_levels(httpserver, netcdf, monkeypatch, tmp_path):
    fake = FakeCDS(httpserver, netcdf["atmospheric"], statuses=())
    monkeypatch.setenv("CDSAPI_URL", fake.url)
    monkeypatch.setenv("CDSAPI_KEY", TOKEN)
    ERA5.download("atmospheric/2010-01.nc", tmp_path / "a.nc", study())
    (sent,) = fake.submitted
    assert sent["inputs"]["pressure_level"] == ["500", "850"]
    assert sent["inputs"]["variable"] == [v.request_name for v in era5.VARIABLES["atmospheric"]]
    assert fake.api_requests[2].path.endswith("reanalysis-era5-pressure-levels/execution")


def test_a_complete_file_is_not_downloaded_again(cds, tmp_path):
    out = ERA5.download("surface/2010-01.nc", tmp_path / "s.nc", study())
    text = manifest.manifest_path(out).read_text()
    assert ERA5.download("surface/2010-01.nc", out, study()) == out
    assert len(cds.submitted) == 1 and manifest.manifest_path(out).read_text() == text
    with open(out, "r+b") as f:  # damaged: the manifest no longer verifies
        f.seek(len(cds.data) // 2)
        f.write(b"XYZ")
    ERA5.download("surface/2010-01.nc", out, study())
    assert len(cds.submitted) == 2 and out.read_bytes() == cds.data


def test_credentials_from_the_cdsapirc_file(cds, monkeypatch, tmp_path):
    monkeypatch.delenv("CDSAPI_URL")
    monkeypatch.delenv("CDSAPI_KEY")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".cdsapirc").write_text(f"url: {cds.url}\nkey: {TOKEN}\n")
    assert ERA5.download("surface/2010-01.nc", tmp_path / "s.nc", study()).exists()
    assert len(cds.submitted) == 1


def test_missing_or_old_style_credentials_are_refused_before_any_request(
    cds, monkeypatch, tmp_path
):
    monkeypatch.delenv("CDSAPI_KEY")
    with pytest.raises(DownloadError, match=r"^cds era5 surface/2010-01\.nc: no CDS credentials"):
        ERA5.download("surface/2010-01.nc", tmp_path / "s.nc", study())
    monkeypatch.setenv("CDSAPI_KEY", f"12345:{TOKEN}")
    with pytest.raises(DownloadError, match=r"old 'UID:KEY' form") as err:
        ERA5.download("surface/2010-01.nc", tmp_path / "s.nc", study())
    assert TOKEN not in str(err.value) and cds.api_requests == []


# --- refusals and failures -----------------------------------------------------------------
def test_a_wrong_token_is_401_with_the_servers_words(cds, monkeypatch, tmp_path):
    monkeypatch.setenv("CDSAPI_KEY", "00000000-0000-0000-0000-000000000000")
    with pytest.raises(DownloadError) as err:
        ERA5.download("surface/2010-01.nc", tmp_path / "s.nc", study())
    message = str(err.value)
    assert message.startswith("cds era5 surface/2010-01.nc: HTTP 401 from http://")
    assert "Authentication failed; The API key is not valid (check the CDS key" in message
    assert "00000000-0000" not in message and not (tmp_path / "s.nc").exists()


@pytest.mark.parametrize(
    ("status", "body", "words"),
    [
        (
            400,
            {
                "title": "cost limits exceeded",
                "detail": "Request too large. Cost 64512 over 60000 limit",
            },
            r"HTTP 400 .*cost limits exceeded; Request too large",
        ),
        (
            403,
            {
                "title": "required licences not accepted",
                "detail": "please accept licence-to-use-copernicus-products",
            },
            r"HTTP 403 .*required licences not accepted; please accept .*\(accept the dataset's",
        ),
        (
            429,
            {"title": "Rate limit exceeded", "detail": "Please wait 17 seconds."},
            r"HTTP 429 .*/execution: Rate limit exceeded; Please wait 17 seconds\.",
        ),
    ],
    ids=["400-cost", "403-licence", "429-persistent"],
)
def test_cds_refusals_name_the_unit_and_the_servers_words(cds, tmp_path, status, body, words):
    cds.execution = [json_response(body, status)] * 5
    with pytest.raises(DownloadError, match=rf"^cds era5 surface/2010-01\.nc: {words}"):
        ERA5.download("surface/2010-01.nc", tmp_path / "s.nc", study())
    # 4xx fails at once; a 429 is retried retry_max = retries + 1 = 3 times, then refused.
    assert len(cds.execution) == (2 if status == 429 else 4)
    assert not (tmp_path / "s.nc").exists() and no_temp_files(tmp_path)


def test_api_429_and_a_500_burst_are_retried_by_cdsapi(cds, tmp_path):
    cds.execution = [too_many(17), server_error(500)]
    cds.polls = [server_error(503)]
    ERA5.download("surface/2010-01.nc", tmp_path / "s.nc", study())
    assert cds.execution == [] and cds.polls == [] and len(cds.submitted) == 1


@pytest.mark.parametrize("status", ["failed", "dismissed"])
def test_a_failed_job_names_the_unit_and_the_servers_message(cds, tmp_path, status):
    cds.statuses = ["running", status]
    body = {
        "type": "job failed",
        "title": "The job has failed",
        "detail": "MARS returned no data",
        "traceback": "mars - ERROR - no data for 2010-01-32",
    }
    cds.failure = json_response(body, 400)
    with pytest.raises(DownloadError, match=r"^cds era5 surface/2010-01\.nc: the CDS job ") as e:
        ERA5.download("surface/2010-01.nc", tmp_path / "s.nc", study())
    if status == "failed":  # cdsapi reads the results, which carry the reason
        assert "failed (HTTP 400) from http" in str(e.value)
        assert "The job has failed; MARS returned no data; mars - ERROR" in str(e.value)
    else:
        assert "failed: API state 'dismissed'" in str(e.value)
    assert cds.asset.calls == 0 and not (tmp_path / "s.nc").exists()


def test_malformed_json_from_the_cds_fails_naming_the_unit(cds, tmp_path):
    cds.polls = [lambda r: Response('{"status": "runn', 200, content_type="application/json")]
    with pytest.raises(
        DownloadError,
        match=r"^cds era5 surface/2010-01\.nc: unexpected answer "
        r"from the CDS \(malformed JSON: Unterminated string",
    ):
        ERA5.download("surface/2010-01.nc", tmp_path / "s.nc", study())


# --- the transfer: faults, resume, zips ------------------------------------------------------
def test_transfer_faults_recover_honouring_retry_after(cds, monkeypatch, tmp_path):
    waits = Waits()
    monkeypatch.setattr(era5_cds, "SLEEP", waits)
    data = cds.data
    cds.asset.handlers = [
        too_many(7),
        server_error(500),
        server_error(502),
        cut_body(data, 40_000),
        truncated(data, 1000),
        ranged(data),
    ]
    out = ERA5.download("surface/2010-01.nc", tmp_path / "s.nc", study(retries=6, sleep_max=60))
    assert out.read_bytes() == data and cds.asset.calls == 6
    assert waits[:3] == [7.0, 4.0, 8.0]  # Retry-After, then backoff 2 s * 2**attempt
    ranges = [r.headers.get("Range") for r in cds.asset.requests]
    assert ranges[3] is None and ranges[4] is not None  # the reset is resumed with Range
    assert no_temp_files(tmp_path)


def test_an_interrupted_download_completes_on_rerun_with_the_same_manifest(
    cds, httpserver, netcdf, tmp_path
):
    clean = ERA5.download("surface/2010-01.nc", tmp_path / "clean/s.nc", study())
    want = json.loads(manifest.manifest_path(clean).read_text())
    cds.asset.handlers, cds.asset.calls = [cut_body(cds.data, 50_000)], 0
    out = tmp_path / "raw/s.nc"
    with pytest.raises(
        DownloadError,
        match=r"^cds era5 surface/2010-01\.nc: the body from "
        r"http://.*/store/\w+\.nc was cut short 3 times",
    ):
        ERA5.download("surface/2010-01.nc", out, study())
    assert not out.exists() and not manifest.manifest_path(out).exists()
    (part,) = out.parent.glob(".s.nc.*.download.part")  # kept for the next run
    have = part.stat().st_size
    cds.asset.handlers, cds.asset.requests = [ranged(cds.data)], []
    ERA5.download("surface/2010-01.nc", out, study())
    assert have > 0 and cds.asset.requests[0].headers["Range"] == f"bytes={have}-"
    got = json.loads(manifest.manifest_path(out).read_text())
    assert {**got, "retrieved_at": None} == {**want, "retrieved_at": None}
    assert no_temp_files(tmp_path / "raw")


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_a_zipped_result_is_unpacked_into_the_raw_file(cds, tmp_path):
    netcdf_bytes = cds.data
    cds.data = zipped({"data_stream-oper_stepType-instant.nc": netcdf_bytes})
    cds.asset.handlers = [ranged(cds.data)]
    out = ERA5.download("surface/2010-01.nc", tmp_path / "s.nc", study())
    assert out.read_bytes() == netcdf_bytes
    assert manifest.verify(out)["bytes"] == len(netcdf_bytes)
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (
            {"a-instant.nc": b"x", "a-accum.nc": b"y"},
            r"holds \['a-instant\.nc', 'a-accum\.nc'\]"
            r", expected one \.nc file",
        ),
        ({"../../evil.nc": b"x"}, r"member '\.\./\.\./evil\.nc' points outside the archive"),
        ({"/etc/evil.nc": b"x"}, r"member '/etc/evil\.nc' points outside"),
        ({"big.nc": b"\0" * 5000}, r"member 'big\.nc' declares 5000 bytes, over the limit 1000"),
        ({"notes.txt": b"x"}, r"holds \['notes\.txt'\], expected one \.nc"),
    ],
    ids=["two-step-types", "traversal", "absolute", "too-big", "no-netcdf"],
)
def test_unsafe_or_unexpected_zips_are_refused(cds, monkeypatch, tmp_path, members, message):
    monkeypatch.setattr(era5_cds, "MAX_UNPACKED", 1000)
    cds.data = zipped(members)
    cds.asset.handlers = [ranged(cds.data)]
    with pytest.raises(DownloadError, match=rf"^cds era5 surface/2010-01\.nc: .*{message}"):
        ERA5.download("surface/2010-01.nc", tmp_path / "raw/s.nc", study())
    assert not (tmp_path / "raw/s.nc").exists() and no_temp_files(tmp_path / "raw")
    assert not (tmp_path / "evil.nc").exists()


def test_a_file_that_is_not_the_unit_asked_for_is_refused(cds, netcdf, tmp_path):
    for data, message in (
        (
            b"<html>Service unavailable</html>",
            r"the CDS file is neither netCDF nor zip \(it starts with b'<html",
        ),
        (
            netcdf["atmospheric"],
            r"the CDS sent something else than the requested data: the file: missing "
            r"variable\(s\) \['t2m', 'msl', 'u10', 'v10'\] of group 'surface'",
        ),
    ):
        cds.data = data
        cds.asset.handlers = [ranged(data)]
        with pytest.raises(DownloadError, match=rf"^cds era5 surface/2010-01\.nc: {message}"):
            ERA5.download("surface/2010-01.nc", tmp_path / "raw/s.nc", study())
        assert not (tmp_path / "raw/s.nc").exists() and no_temp_files(tmp_path / "raw")


# --- credentials never leak; options -------------------------------------------------------
def test_the_token_is_in_no_log_record_manifest_or_tile(cds, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    cds.asset.handlers = [server_error(500), ranged(cds.data)]
    out = ERA5.download("surface/2010-01.nc", tmp_path / "raw/surface/2010-01.nc", study())
    modality = catalogue.modality("era5_surface")
    native = ERA5.open([out], modality, study())
    tile = ERA5.to_tile(native, modality, study(), "2010-01", provenance(None, {"t": "x"}))
    native.close()
    path = tiles.write_tile(tile, tmp_path / "tiles/era5_surface/2010-01.nc")
    assert "CDSAPI" in caplog.text  # cdsapi's own debug line (with the key blanked) is there
    for record in caplog.records:
        assert TOKEN not in record.getMessage() and TOKEN not in str(record.args)
    assert TOKEN not in caplog.text
    for file in [*tmp_path.rglob("*.json"), path, tiles.qc_path(path)]:
        assert TOKEN.encode() not in file.read_bytes(), file


def test_options_are_checked_and_change_no_raw_setting():
    assert era5_cds.Options.from_config({}) == era5_cds.Options(10, 120.0, 60.0)
    assert era5_cds.Options.from_config({"retries": 3, "sleep_max": 5}).sleep_max == 5.0
    with pytest.raises(
        ValueError,
        match=r"'sources\.era5\.options' has unknown option\(s\) "
        r"\['retry'\] \(known: \['retries', 'sleep_max', 'timeout'\]\)",
    ):
        era5_cds.Options.from_config({"retry": 3})
    for bad in (-1, 2.5, "3", True):
        with pytest.raises(ValueError, match=r"'sources\.era5\.options\.retries' must be"):
            era5_cds.Options.from_config({"retries": bad})
    assert era5.TRANSFER_OPTIONS == {f for f in era5_cds.Options.__dataclass_fields__}
    tuned = ERA5.raw_settings("surface/2010-01.nc", study(retries=9, timeout=5))
    assert tuned == ERA5.raw_settings("surface/2010-01.nc", study())
    assert tuned["source"]["options"] == {} and tuned["source"]["mode"] == "download"
    assert ERA5.service == "cds"
