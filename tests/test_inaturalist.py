"""The iNaturalist source: a fake API v1 (id_above paging, the 10,000-result window, filters,
Range) with injected faults, courtesy pacing and the daily budget, reruns after an
interruption, photos (size cap, licences, corrupt images), deterministic samples and the
occurrence contract's record and media tables."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from bfm.contracts import occurrence as oc
from bfm.contracts.grid import Grid
from bfm.contracts.occurrence import read_quarantine
from bfm.sources import gbif, manifest
from bfm.sources import inaturalist as inat
from bfm.sources import inaturalist_formats as fmt
from bfm.sources.http import Client, DownloadError
from bfm.sources.httpjson import scratch_dir
from tests.fakes import Script, Waits, cut_body, malformed_json, server_error, too_many, truncated

DEMO = Grid(44.0, 56.0, 0.0, 20.0, 0.5)
SPECIES = gbif.read_species(Path(__file__).resolve().parents[1] / "tests" / "species.csv")
START, END = "2010-05-01", "2010-05-31"
PER_PAGE = 40
T = pd.Timestamp


def client(retries: int = 4) -> tuple[Client, Waits]:
    waits = Waits()
    service = dataclasses.replace(inat.SERVICE, retries=retries, backoff=1.0, timeout=5)
    return inat.make_client(service, sleep=waits), waits


# --- the fake API --------------------------------------------------------------------------
def matcher(args) -> Callable[[dict], bool]:
    """The API's filters of a query: geo, taxon_name (with descendants), d1/d2, bbox, grade."""
    a = dict(args.items())
    box = [float(a[k]) for k in ("swlat", "nelat", "swlng", "nelng")] if "swlat" in a else None
    d1, d2, grade, name = a.get("d1", ""), a.get("d2", "9999"), a.get("quality_grade"), a.get(
        "taxon_name")  # fmt: skip

    def match(obs: dict) -> bool:
        point = (obs.get("geojson") or {}).get("coordinates")
        if (a.get("geo") == "true" and not point) or not d1 <= obs["observed_on"] <= d2:
            return False
        if name and " ".join(obs["taxon"]["name"].split()[:2]) != name:
            return False
        if point and box and not (box[0] <= point[1] <= box[1] and box[2] <= point[0] <= box[3]):
            return False
        return grade in (None, obs["quality_grade"])

    return match


def page_bytes(db: list[dict], args) -> bytes:
    per_page, page = min(int(args.get("per_page", 30)), 200), int(args.get("page", 1))
    match, above = matcher(args), int(args.get("id_above", 0))
    chosen = [o for o in db if o["id"] > above and match(o)]
    chosen.sort(key=lambda o: o["id"], reverse=(args.get("order_by"), args.get("order"))
                != ("id", "asc"))  # fmt: skip
    body = {"total_results": len(chosen), "page": page, "per_page": per_page,
            "results": chosen[(page - 1) * per_page : page * per_page]}  # fmt: skip
    return json.dumps(body).encode()


def api(db: list[dict], window: int = fmt.WINDOW):
    """GET /v1/observations over ``db``: filters, id_above, the result window, Range."""

    def handle(request: Request) -> Response:
        per_page = min(int(request.args.get("per_page", 30)), 200)
        if int(request.args.get("page", 1)) * per_page > window:
            return Response(json.dumps({"error": f"You cannot view more than {window} results",
                                        "status": 403}), 403,
                            content_type="application/json")  # fmt: skip
        data = page_bytes(db, request.args)
        start = int(request.headers.get("Range", "bytes=0-")[6:-1] or 0)
        return Response(data[start:], 206 if start else 200, content_type="application/json")

    return handle


def serve(httpserver: HTTPServer, *handlers) -> Script:
    script = Script(handlers)
    httpserver.expect_request("/v1/observations").respond_with_handler(script)
    return script


@pytest.fixture(scope="module")
def db() -> list[dict]:
    return fmt.sample_observations(SPECIES, START, END, DEMO, seed=7)


def expected(db: list[dict]) -> list[dict]:
    """What a download over the fake finds: the study species' geolocated observations."""
    names = set(SPECIES["scientific_name"])
    found = []
    for o in db:
        name = " ".join(o["taxon"]["name"].split()[:2])
        params = {k: str(v) for k, v in inat.request_params(name, START, END, DEMO).items()}
        if name in names and matcher(params)(o):
            found.append(o)
    return sorted(found, key=lambda o: o["id"])


def pages(db: list[dict]) -> int:
    """The requests of a clean download: per species, its full pages and one short page."""
    found = expected(db)
    return sum(sum(o["taxon"]["name"].startswith(n) for o in found) // PER_PAGE + 1
               for n in SPECIES["scientific_name"])  # fmt: skip


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]


def fetch(httpserver: HTTPServer, out: Path, c: Client, **kw) -> Path:
    return inat.download(out, SPECIES, START, END, DEMO, c, httpserver.url_for("/v1"),
                         per_page=kw.pop("per_page", PER_PAGE), **kw)  # fmt: skip


# --- the request ---------------------------------------------------------------------------
def test_request_params_cover_the_grid_cells_and_the_window():
    grid = Grid(44.0, 48.0, 0.0, 6.0, 0.5)
    p = inat.request_params("Lynx lynx (Linnaeus, 1758)", "2010-01-01", "2010-02-28", grid)
    assert p == {"taxon_name": "Lynx lynx", "swlat": 43.75, "swlng": -0.25, "nelat": 48.25,
                 "nelng": 6.25, "d1": "2010-01-01", "d2": "2010-02-28",
                 "quality_grade": "research", "photos": "true", "geo": "true",
                 "captive": "false", "per_page": 200, "order_by": "id", "order": "asc"}  # fmt: skip
    with pytest.raises(ValueError, match=r"end 2010-01-01 is before start 2010-02-01"):
        inat.request_params("Lynx lynx", "2010-02-01", "2010-01-01", grid)
    with pytest.raises(ValueError, match=r"per_page must be 1..200, got 500"):
        inat.request_params("Lynx lynx", "2010-01-01", "2010-02-01", grid, per_page=500)


# --- downloads against the fake API --------------------------------------------------------
def test_download_pages_by_id_above_and_writes_the_native_lines(tmp_path, httpserver, db):
    script = serve(httpserver, api(db))
    c, _ = client()
    path = fetch(httpserver, tmp_path / inat.RAW_NAME, c)
    want = expected(db)
    assert lines(path) == want and len(want) > 300  # the results exactly as served, by id
    assert script.calls == c.requests == pages(db) > len(SPECIES) + 3  # several for some
    by_taxon: dict[str, list] = {}
    for r in script.requests:
        assert "page" not in r.args and r.args["order_by"] == "id" and r.args["order"] == "asc"
        assert r.headers["User-Agent"].startswith("bfm/")
        by_taxon.setdefault(r.args["taxon_name"], []).append(r.args.get("id_above"))
    for name, aboves in by_taxon.items():
        ids = [o["id"] for o in want if o["taxon"]["name"].startswith(name)]
        # the first page has no id_above; each next one starts after the last id served
        assert aboves == [None] + [str(ids[k * PER_PAGE - 1]) for k in range(1, len(aboves))]
        assert len(aboves) == len(ids) // PER_PAGE + 1
    record = manifest.verify(path)
    assert record["url"].endswith("/v1/observations")
    assert record["request"] == fmt.manifest_request(SPECIES, START, END, DEMO, PER_PAGE)
    assert record["licence"].startswith(f"{len(want)} observations, licence per item: ")
    text = (tmp_path / f"{inat.RAW_NAME}.manifest.json").read_text()
    assert "User-Agent" not in text and "bfm/" not in text and "uthoriz" not in text
    assert not scratch_dir(path).exists()


def test_the_10000_result_window_is_never_paged_into(tmp_path, httpserver: HTTPServer):
    db = [{"id": 100 + 3 * i, "quality_grade": "research", "observed_on": "2010-05-02",
           "geojson": {"type": "Point", "coordinates": [10.0, 50.0]},
           "taxon": {"name": "Lynx lynx"}} for i in range(10_050)]  # fmt: skip
    script = serve(httpserver, api(db))
    url = httpserver.url_for("/v1/observations")
    refused = requests.get(url, params={"per_page": 200, "page": 51}, timeout=5)
    assert refused.status_code == 403 and "10000" in refused.json()["error"]  # as the real API
    assert requests.get(url, params={"per_page": 200, "page": 50}, timeout=5).ok
    c, _ = client()
    path = inat.download(tmp_path / inat.RAW_NAME, SPECIES.iloc[:1], START, END, DEMO, c,
                         httpserver.url_for("/v1"))  # fmt: skip
    assert [o["id"] for o in lines(path)] == [o["id"] for o in db]  # all 10,050
    asked = script.requests[2:]
    assert len(asked) == 51 and all("page" not in r.args for r in asked)


@pytest.mark.parametrize("fault", ["429", "500s", "reset", "truncated", "malformed"])
def test_download_survives_faults(tmp_path, httpserver: HTTPServer, db, fault):
    first_args = {k: str(v) for k, v in inat.request_params(
        "Lynx lynx", START, END, DEMO, per_page=PER_PAGE).items()}  # fmt: skip
    first = page_bytes(db, first_args)
    faults = {"429": [too_many(7)], "500s": [server_error(500), server_error(503)],
              "reset": [cut_body(first, 1500)], "truncated": [truncated(first, 1200)],
              "malformed": [malformed_json()]}[fault]  # fmt: skip
    script = serve(httpserver, *faults, api(db))
    c, waits = client()
    path = fetch(httpserver, tmp_path / inat.RAW_NAME, c)
    assert lines(path) == expected(db)
    assert script.calls == c.requests == pages(db) + len(faults)  # each fault cost one retry
    assert fault != "429" or 7.0 in waits  # Retry-After honoured


def test_a_failing_service_names_the_species_and_the_cause(tmp_path, httpserver: HTTPServer):
    serve(httpserver, server_error(500))
    with pytest.raises(DownloadError, match=r"inaturalist Lynx lynx \(1/6\) id_above=0: HTTP "
                       r"500 from http://.*/v1/observations after 3 attempts"):  # fmt: skip
        fetch(httpserver, tmp_path / inat.RAW_NAME, client(retries=2)[0])
    assert not (tmp_path / inat.RAW_NAME).exists()


def test_an_answer_out_of_order_is_refused(tmp_path, httpserver: HTTPServer, db):
    def ignoring_order(request: Request) -> Response:
        args = {k: v for k, v in request.args.items() if k != "order"}
        return Response(page_bytes(db, args), 200, content_type="application/json")

    serve(httpserver, ignoring_order)
    with pytest.raises(DownloadError, match=r"do not rise above id_above=0 \(the server "
                       r"ignored order_by=id&order=asc\)"):  # fmt: skip
        fetch(httpserver, tmp_path / inat.RAW_NAME, client()[0])
    assert not scratch_dir(tmp_path / inat.RAW_NAME).exists()  # the wrong page is not reused


def _same_manifest(a: Path, b: Path) -> None:
    ma, mb = manifest.read_manifest(a), manifest.read_manifest(b)
    for m in (ma, mb):
        m.pop("retrieved_at"), m.pop("file")
    assert ma == mb


def test_an_interrupted_download_reruns_to_the_same_file(tmp_path, httpserver: HTTPServer, db):
    serve(httpserver, api(db))
    clean = fetch(httpserver, tmp_path / "clean" / inat.RAW_NAME, client()[0])
    httpserver.clear()
    served: list[str] = []

    def failing_after_five(request: Request) -> Response:
        served.append(request.query_string.decode())
        return api(db)(request) if len(served) <= 5 else Response("down", 503)

    serve(httpserver, failing_after_five)
    out = tmp_path / "rerun" / inat.RAW_NAME
    with pytest.raises(DownloadError, match=r"HTTP 503"):
        fetch(httpserver, out, client(retries=1)[0])
    assert not out.exists() and len(list(scratch_dir(out).iterdir())) == 5
    httpserver.clear()
    script = serve(httpserver, api(db))
    fetch(httpserver, out, client()[0])
    again = [r.query_string.decode() for r in script.requests]
    assert not set(again) & set(served[:5])  # the five pages fetched are reused
    assert out.read_bytes() == clean.read_bytes()
    ids = [o["id"] for o in lines(out)]
    assert len(ids) == len(set(ids))
    _same_manifest(clean, out)


def test_requests_keep_one_second_apart(tmp_path, httpserver: HTTPServer, db):
    now = [1000.0]
    starts: list[float] = []
    script = serve(httpserver, lambda r: (starts.append(now[0]), api(db)(r))[1])
    c, waits = client()

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    c.sleep, c.clock = sleep, lambda: now[0]
    fetch(httpserver, tmp_path / inat.RAW_NAME, c)
    assert script.calls > 10 and waits == [1.0] * (script.calls - 1)
    assert np.all(np.diff(starts) >= 1.0)  # at most 60 requests a minute


def test_the_daily_budget_stops_and_a_rerun_resumes(tmp_path, httpserver: HTTPServer, db):
    serve(httpserver, api(db))
    clean = fetch(httpserver, tmp_path / "clean" / inat.RAW_NAME, client()[0])
    httpserver.clear()
    script = serve(httpserver, api(db))
    out = tmp_path / "budget" / inat.RAW_NAME
    c, _ = client()
    with pytest.raises(DownloadError, match=r"the daily budget of 4 requests is spent, stopped "
                       r"at \w+ \w+ \(\d/6\) after \d page\(s\) \(\d+ observations, "
                       r"id_above=\d+\); run it again tomorrow"):  # fmt: skip
        fetch(httpserver, out, c, budget=4)
    assert c.requests == script.calls == 4 and not out.exists()
    fetch(httpserver, out, client()[0])
    assert out.read_bytes() == clean.read_bytes()
    _same_manifest(clean, out)
    assert len({r.query_string for r in script.requests}) == script.calls  # none fetched twice


# --- photos --------------------------------------------------------------------------------
def _jpeg(n: int) -> bytes:
    return fmt.sample_image(0, 1, n, "jpg")


def photo_db(httpserver: HTTPServer) -> tuple[list[dict], dict[int, object]]:
    """Two species' observations whose photos lie on the fake server, with what each serves."""
    good = _jpeg(1)
    served: dict[int, object] = {
        11: good, 12: None, 13: b"\xff\xd8\xff" + bytes(6000), 14: "stream", 15: b"<html>",
        16: good[: len(good) // 2] + b"\xff\xd9", 17: fmt.png_bytes(np.zeros((4, 4, 3), np.uint8)),
        18: good, 19: 404, 21: _jpeg(2), 22: _jpeg(3), 23: _jpeg(4),
    }  # fmt: skip

    def photo(pid: int, licence: str | None) -> dict:
        ext = "png" if pid == 17 else "jpg"
        return {"id": pid, "license_code": licence, "attribution": f"(c) someone {pid}",
                "url": httpserver.url_for(f"/photos/{pid}/square.{ext}") + "?1600000"}  # fmt: skip

    def obs(oid: int, name: str, photos: list) -> dict:
        return {"id": oid, "taxon": {"name": name}, "photos": photos}

    db = [obs(1, "Lynx lynx", [photo(11, "cc-by"), photo(12, None)]),
          obs(2, "Lynx lynx", [photo(13, "cc-by-nc"), photo(14, "cc0")]),
          obs(3, "Lynx lynx lynx", [photo(15, "cc-by"), photo(16, "cc-by-sa")]),
          obs(4, "Lynx lynx", [photo(17, "CC-BY-NC"), photo(19, "cc-by"), photo(18, "cc-by")]),
          obs(5, "Canis lupus", [photo(21, "cc0"), photo(22, "cc0"), photo(23, "cc0")]),
          obs(6, "Felis silvestris", [photo(24, "cc0")])]  # fmt: skip
    return db, served


def photo_server(served: dict[int, object]):
    def handle(request: Request) -> Response:
        pid = int(request.path.split("/")[2])
        what = served[pid]
        if what == 404:
            return Response("gone", 404)
        if what == "stream":  # no Content-Length: the cap is counted while streaming
            response = Response((bytes(1000) for _ in range(10)), 200)
            response.direct_passthrough = True
            return response
        assert isinstance(what, bytes)
        return Response(what, 200, content_type="image/jpeg")

    return handle


def test_photos_keep_open_licences_within_the_size_cap(tmp_path, httpserver: HTTPServer):
    db, served = photo_db(httpserver)
    obs_path = fmt.write_observations(tmp_path / inat.RAW_NAME, db)
    script = Script([photo_server(served)])
    httpserver.expect_request(re.compile(r"/photos/\d+/medium\.(jpg|png)")).respond_with_handler(
        script)  # fmt: skip
    c, _ = client()
    out = inat.download_photos(obs_path, tmp_path / "photos.zip", c, per_species=2,
                               max_bytes=5000, species=SPECIES)  # fmt: skip
    index = inat.open_photos(out)
    assert list(index["path"]) == ["2435240/11.jpg", "2435240/17.png", "5219173/21.jpg",
                                   "5219173/22.jpg"]  # fmt: skip
    assert list(index["licence"]) == ["cc-by", "cc-by-nc", "cc0", "cc0"]
    assert list(index["record_id"]) == ["inaturalist:1", "inaturalist:4", "inaturalist:5",
                                        "inaturalist:5"]  # fmt: skip
    assert index["attribution"][0] == "(c) someone 11" and index["size"][0] == len(served[11])
    with zipfile.ZipFile(out) as zf:
        assert zf.read("2435240/11.jpg") == served[11]
    fetched = sorted(int(r.path.split("/")[2]) for r in script.requests)
    assert fetched == [11, 13, 14, 15, 16, 17, 21, 22]  # never 12 (closed), 18/23 (enough)
    report = read_quarantine(tmp_path / "photos.zip.quarantine.json")
    assert report["dropped"] == {"corrupt_media": 2, "media_not_open": 1, "too_large_media": 2}
    assert report["read"] == 9 and report["kept"] == 4
    assert report["examples"]["media_not_open"] == "inaturalist:photo:12"
    record = manifest.verify(out)
    assert record["licence"].startswith("4 photos, licence per item: cc-by 1, cc-by-nc 1, cc0 2")
    assert record["url"] == httpserver.url_for("/").rstrip("/")
    assert not (tmp_path / ".photos.zip.photos").exists()


def test_a_missing_photo_is_counted_and_the_size_is_checked(tmp_path, httpserver: HTTPServer):
    db, served = photo_db(httpserver)
    obs_path = fmt.write_observations(tmp_path / inat.RAW_NAME, db[3:4])
    httpserver.expect_request(re.compile(r"/photos/.*")).respond_with_handler(
        photo_server(served))  # fmt: skip
    out = inat.download_photos(obs_path, tmp_path / "p.zip", client()[0], species=SPECIES)
    assert list(inat.open_photos(out)["photo_id"]) == [17, 18]
    assert read_quarantine(tmp_path / "p.zip.quarantine.json")["dropped"] == {
        "media_unavailable": 1}  # fmt: skip
    with pytest.raises(ValueError, match=r"photo size 'huge' is not one of \['square'"):
        inat.download_photos(obs_path, tmp_path / "q.zip", client()[0], size="huge")


def test_photos_stopped_by_the_budget_resume_to_the_same_zip(tmp_path, httpserver: HTTPServer):
    db, served = photo_db(httpserver)
    obs_path = fmt.write_observations(tmp_path / inat.RAW_NAME, db)
    script = Script([photo_server(served)])
    httpserver.expect_request(re.compile(r"/photos/.*")).respond_with_handler(script)
    kw = {"per_species": 2, "max_bytes": 5000, "species": SPECIES}
    clean = inat.download_photos(obs_path, tmp_path / "clean.zip", client()[0], **kw)
    script.requests.clear()
    out = tmp_path / "photos.zip"
    spent = r"budget of 3 requests is spent, stopped at photo 15 of species 2435240 \(4 photo"
    with pytest.raises(DownloadError, match=spent):
        inat.download_photos(obs_path, out, client()[0], budget=3, **kw)
    first = [r.path for r in script.requests]
    inat.download_photos(obs_path, out, client()[0], **kw)
    assert not set(first) & {r.path for r in script.requests[len(first) :]}  # none twice
    assert out.read_bytes() == clean.read_bytes()
    _same_manifest(clean, out)
    assert (tmp_path / "photos.zip.quarantine.json").read_text().replace("photos.zip", "x") == (
        tmp_path / "clean.zip.quarantine.json").read_text().replace("clean.zip", "x")  # fmt: skip


def test_photo_urls_and_image_checks():
    url = "https://inaturalist-open-data.s3.amazonaws.com/photos/70367476/square.jpeg?1234"
    assert fmt.photo_url(url, "large").endswith("/photos/70367476/large.jpeg?1234")
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    png = fmt.png_bytes(rgb)
    image = fmt.pillow()
    np.testing.assert_array_equal(np.asarray(image.open(io.BytesIO(png)).convert("RGB")), rgb)
    assert fmt.image_kind(png) == "png" and fmt.image_kind(_jpeg(5)) == "jpg"
    assert fmt.image_kind(png[:-20]) is None and fmt.image_kind(b"GIF89a") is None
    assert fmt.image_kind(_jpeg(5)[:300] + b"\xff\xd9") is None  # markers right, data cut


# --- samples -------------------------------------------------------------------------------
def test_the_sample_is_deterministic_native_and_has_bad_records(tmp_path):
    a = inat.sample(tmp_path / "a" / inat.RAW_NAME, SPECIES, START, END, DEMO, seed=7)
    b = inat.sample(tmp_path / "b" / inat.RAW_NAME, SPECIES, START, END, DEMO, seed=7)
    c = inat.sample(tmp_path / "c" / inat.RAW_NAME, SPECIES, START, END, DEMO, seed=8)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    obs = lines(a)
    ids = [o["id"] for o in obs]
    assert ids == sorted(set(ids)) and len(obs) > 300
    times = [o["time_observed_at"] for o in obs if o["time_observed_at"]]
    assert all(t.endswith("+02:00") for t in times)  # May: CEST
    assert 0.05 < 1 - len(times) / len(obs) < 0.3  # some date-only
    assert sum(o["geojson"] is None for o in obs) == 2
    assert sum(o["observed_on"].endswith("-02-30") for o in obs) == 2
    one = next(o for o in obs if o["geojson"] and o["taxon"]["rank"] == "species")
    assert one["quality_grade"] == "research" and set(one["taxon"]) == {
        "id", "name", "rank", "preferred_common_name"}  # fmt: skip
    lat, lon = map(float, one["location"].split(","))
    assert one["geojson"]["coordinates"] == [lon, lat] and DEMO.contains(lat, lon)
    assert one["photos"][0]["url"].split("/")[-1].startswith("square.")
    assert manifest.verify(a)["url"] == "sample:inaturalist?seed=7"
    za = inat.sample_photos(a, tmp_path / "a" / "photos.zip", seed=7)
    zb = inat.sample_photos(b, tmp_path / "b" / "photos.zip", seed=7)
    zc = inat.sample_photos(c, tmp_path / "c" / "photos.zip", seed=8)
    assert za.read_bytes() == zb.read_bytes() != zc.read_bytes()
    index = inat.open_photos(za)
    assert index.groupby("species_key").size().to_dict() == dict.fromkeys(SPECIES["gbif_key"], 5)
    assert set(index["licence"]) <= fmt.OPEN_LICENCES
    with zipfile.ZipFile(za) as zf:
        assert all(fmt.image_kind(zf.read(p)) == p.rsplit(".")[-1] for p in index["path"])
    assert read_quarantine(tmp_path / "a" / "photos.zip.quarantine.json")["kept"] == 30


# --- records -------------------------------------------------------------------------------
def test_records_follow_the_contract_with_utc_times_and_day_precision(tmp_path):
    raw = [
        {"id": 5, "observed_on": "2019-05-04", "time_observed_at": "2019-05-04T01:12:00+02:00",
         "geojson": {"type": "Point", "coordinates": [8.6, 50.1]}, "location": "0,0",
         "positional_accuracy": 10, "public_positional_accuracy": 28000,
         "license_code": "cc-by-nc", "taxon": {"name": "Lynx lynx"},
         "photos": [{"id": 9, "license_code": None, "attribution": "(c) a, all rights reserved",
                     "url": "https://static.inaturalist.org/photos/9/square.jpg"}]},
        {"id": 6, "observed_on": "2019-05-04", "time_observed_at": None, "location": "47.5,7.25",
         "positional_accuracy": 25, "license_code": None, "taxon": {"name": "Canis lupus"},
         "captive": True, "photos": []},
        {"id": 7, "observed_on": "2019-02-30", "time_observed_at": None, "location": None,
         "geojson": None, "license_code": "cc0", "taxon": {"name": "Felis silvestris"}},
    ]  # fmt: skip
    path = tmp_path / inat.RAW_NAME
    text = "\n".join(json.dumps(o) for o in raw[:2]) + '\n{"id": 8, "obs\n[1, 2]\n'
    path.write_bytes(gzip.compress((text + json.dumps(raw[2]) + "\n").encode()))
    table, media, q = inat.records(path, SPECIES)
    assert list(table.columns) == list(oc.COLUMNS)
    assert (table.dtypes == oc.empty().dtypes).all()
    assert list(table["record_id"]) == ["inaturalist:5", "inaturalist:6", "inaturalist:7"]
    a, b, c = (table.iloc[i] for i in range(3))
    assert (a.start, a.end, a.precision) == (T("2019-05-03 23:12"), T("2019-05-03 23:12"), "time")
    assert (b.start, b.end, b.precision) == (T("2019-05-04"), T("2019-05-05"), "day")
    assert c.precision == "unusable" and pd.isna(c.start)
    assert (a.latitude, a.longitude, a.uncertainty_m) == (50.1, 8.6, 28000.0)  # the public one
    assert (b.latitude, b.longitude, b.uncertainty_m) == (47.5, 7.25, 25.0)
    assert np.isnan(c.latitude) and np.isnan(c.uncertainty_m)
    assert list(table["species_key"].astype("object")) == [2435240, 5219173, pd.NA]
    assert list(table["licence"]) == ["cc-by-nc", "all-rights-reserved", "cc0"]
    assert list(table["basis"]) == ["HUMAN_OBSERVATION", "LIVING_SPECIMEN", "HUMAN_OBSERVATION"]
    assert set(table["source"]) == {"inaturalist"} and set(table["same_as"]) == {""}
    assert set(table["status"]) == {"PRESENT"}
    assert q.read == 5 and dict(q.dropped) == {"unreadable_line": 2}
    assert q.examples["unreadable_line"] == f"{inat.RAW_NAME} line 3"
    assert list(media.columns) == list(oc.MEDIA_COLUMNS) and len(media) == 1
    m = media.iloc[0]
    assert (m.record_id, m.species_key, m.kind, m.licence) == ("inaturalist:5", 2435240, "image",
                                                              "all-rights-reserved")  # fmt: skip
    assert m.uri.endswith("/photos/9/square.jpg") and m.attribution.startswith("(c) a")


def test_sample_records_are_cleaned_by_the_contract(tmp_path):
    path = inat.sample(tmp_path / inat.RAW_NAME, SPECIES, START, END, DEMO, seed=7)
    table, media, q = inat.records(path, SPECIES)
    kept = oc.clean(table, q, max_uncertainty_m=10_000)
    assert q.dropped["coordinates_missing"] == 2 and q.dropped["date_unusable"] == 2
    assert q.dropped["not_a_study_species"] == 1  # Felis silvestris; Lynx lynx lynx is kept
    assert q.dropped["uncertainty_too_large"] > 0  # obscured: 28 km
    assert len(kept) == q.read - q.n_dropped > 300
    assert set(kept["precision"]) == {"time", "day"}
    assert set(media["kind"]) == {"image"} and media["record_id"].isin(table["record_id"]).all()
    assert (kept["start"].dt.hour != 0).mean() > 0.5  # times of day, converted to UTC
