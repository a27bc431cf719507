"""GBIF API v1 against a fake GBIF on 127.0.0.1: species match (EXACT, synonym, NONE,
HIGHERRANK, FUZZY) and its cache, the search split under the 100,000 offset cap, the
asynchronous download (request once, poll, redirect, resume, DOI), faults, safe zip members
(zip bombs, lying headers, path traversal), DwC-A media and republications."""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from bfm.contracts.grid import Grid
from bfm.contracts.occurrence import MEDIA_COLUMNS, Quarantine
from bfm.sources import gbif_api as api
from bfm.sources import gbif_dwca as dwca
from bfm.sources import manifest
from bfm.sources.http import Client, DownloadError, Service
from tests.fakes import (
    Script,
    Waits,
    cut_body,
    malformed_json,
    ranged,
    server_error,
    too_many,
    truncated,
)

PASSWORD = "pa55-W0rd-never-shown"
ENV = {"GBIF_USER": "alice", "GBIF_PWD": PASSWORD, "GBIF_EMAIL": "alice@example.org"}
SPECIES = pd.DataFrame({"gbif_key": [2435240, 5219173], "scientific_name": ["Lynx lynx",
                        "Canis lupus"], "common_name": ["lynx", "wolf"]})  # fmt: skip


def client(retries: int = 4) -> tuple[Client, Waits]:
    waits = Waits()
    return Client(Service("gbif", retries=retries, backoff=1.0, timeout=5), sleep=waits), waits


def base(httpserver: HTTPServer) -> str:
    return httpserver.url_for("/v1")


# --- species match --------------------------------------------------------------------------
def taxon(key: int, name: str, **extra) -> dict:
    ranks = dict(kingdom="Animalia", phylum="Chordata", order="Carnivora", family="Felidae",
                 genus=name.split()[0], species=name)  # fmt: skip
    ranks["class"] = "Mammalia"
    keys = dict(kingdomKey=1, phylumKey=44, classKey=359, orderKey=732, familyKey=9703,
                genusKey=2435022, speciesKey=key)  # fmt: skip
    return {"usageKey": key, "scientificName": f"{name} (Linnaeus, 1758)", "canonicalName": name,
            "rank": "SPECIES", "status": "ACCEPTED", "confidence": 99, "matchType": "EXACT",
            "synonym": False, **ranks, **keys, **extra}  # fmt: skip


ANSWERS = {
    "Lynx lynx": taxon(2435240, "Lynx lynx"),
    "Canis lupus": taxon(5219173, "Canis lupus"),
    "Felis lynx": taxon(2435240, "Lynx lynx", usageKey=7193927, acceptedUsageKey=2435240,
                        status="SYNONYM", synonym=True, confidence=97),
    "Lynx lynks": taxon(2435240, "Lynx lynx", matchType="FUZZY", confidence=96),
    "Lynx lynxx": taxon(2435240, "Lynx lynx", matchType="FUZZY", confidence=80),
    "Nonexistus nullus": {"confidence": 100, "matchType": "NONE", "synonym": False},
    "Lynx imaginarius": {**taxon(2435022, "Lynx"), "rank": "GENUS", "matchType": "HIGHERRANK",
                         "confidence": 94},
}  # fmt: skip


def serve_match(httpserver: HTTPServer, *faults) -> Script:
    def answer(request: Request) -> Response:
        assert request.args["strict"] == "true"
        return Response(json.dumps(ANSWERS[request.args["name"]]), 200,
                        content_type="application/json")  # fmt: skip

    script = Script([*faults, answer])
    httpserver.expect_request("/v1/species/match").respond_with_handler(script)
    return script


def test_match_exact_and_synonym_then_the_cache_asks_nothing(tmp_path, httpserver, caplog):
    script = serve_match(httpserver, too_many(3), malformed_json())
    cache = tmp_path / "match.json"
    names = ["Lynx lynx", "Felis lynx", "Canis lupus", "Lynx lynks"]
    c, waits = client()
    with caplog.at_level(logging.WARNING):
        table = api.match_species(names, cache, c, base(httpserver))
    assert waits == [3.0, 1.0] and script.calls == 6  # 429, malformed, then 4 names
    assert list(table["name"]) == names and list(table.columns) == list(api.MATCH_COLUMNS)
    assert list(table["key"]) == [2435240, 2435240, 5219173, 2435240]
    syn = table.set_index("name").loc["Felis lynx"]
    assert (syn["usageKey"], syn["acceptedUsageKey"], syn["status"]) == (7193927, 2435240,
                                                                         "SYNONYM")  # fmt: skip
    assert syn["genus"] == "Lynx" and syn["familyKey"] == 9703 and syn["class"] == "Mammalia"
    assert "'Felis lynx' is a SYNONYM (usageKey 7193927) of the accepted taxon 2435240" in (
        caplog.text
    )
    assert "'Lynx lynks' matched FUZZY (confidence 96)" in caplog.text
    body = json.loads(cache.read_text())
    assert body["checklist"].startswith("GBIF Backbone") and set(body["names"]) == set(names)
    assert body["names"]["Lynx lynx"]["url"].endswith("/v1/species/match")
    assert body["names"]["Lynx lynx"]["asked"][:4].isdigit()
    again = api.match_species(names[::-1], cache, c, base(httpserver))
    assert script.calls == 6  # a name asked once is never asked again
    pd.testing.assert_frame_equal(again.iloc[::-1].reset_index(drop=True), table)


def test_names_without_an_exact_match_are_listed_never_guessed(tmp_path, httpserver):
    script = serve_match(httpserver)
    cache = tmp_path / "match.json"
    names = ["Lynx lynx", "Nonexistus nullus", "Lynx imaginarius", "Lynx lynxx"]
    with pytest.raises(
        ValueError,
        match=r"3 name\(s\) without an exact match .*'Nonexistus "
        r"nullus' \(NONE, confidence 100\), 'Lynx imaginarius' \(HIGHERRANK, "
        r"confidence 94\), 'Lynx lynxx' \(FUZZY, confidence 80 < 95\)",
    ) as err:
        api.match_species(names, cache, client()[0], base(httpserver))  # fmt: skip
    assert "'Lynx lynx'" not in str(err.value)
    assert script.calls == 4 and len(json.loads(cache.read_text())["names"]) == 4
    with pytest.raises(ValueError, match="3 name"):
        api.match_species(names, cache, client()[0], base(httpserver))
    assert script.calls == 4  # the answers are cached, refusals too
    cache.write_text("{")
    with pytest.raises(ValueError, match=r"match.json: the species match cache is not valid"):
        api.match_species(names, cache, client()[0], base(httpserver))


# --- search ---------------------------------------------------------------------------------
class FakeSearch:
    """GBIF occurrence search over synthetic points; each point stands for ``weight`` records
    in ``count`` (huge counts, small pages). offset + limit > ``cap``: HTTP 400, as GBIF."""

    def __init__(self, years, lat, lon, weight: int = 1, cap: int = api.MAX_RECORDS) -> None:
        self.year, self.lat, self.lon = np.asarray(years), np.asarray(lat), np.asarray(lon)
        self.weight, self.cap, self.asked = weight, cap, []
        self.keys = np.arange(len(self.year)) + 4_000_000_000

    def inside(self, args) -> np.ndarray:
        sel = np.ones(len(self.year), bool)
        for name, values in (("year", self.year), ("decimalLatitude", self.lat),
                             ("decimalLongitude", self.lon)):  # fmt: skip
            lo, _, hi = args[name].partition(",")
            sel &= (values >= float(lo)) & (values <= float(hi or lo))
        return np.flatnonzero(sel)

    def __call__(self, request: Request) -> Response:
        a = request.args
        offset, limit = int(a.get("offset", 0)), int(a.get("limit", 20))
        self.asked.append((offset, limit))
        if offset + limit > self.cap:
            return Response(f"offset + limit must not exceed {self.cap}", 400)
        assert a["taxonKey"] == "2435240" and a["hasCoordinate"] == "true"
        idx = self.inside(a)
        page = idx[offset : offset + limit] if limit else idx[:0]
        results = [{"key": int(self.keys[i]), "datasetKey": "963a6b96", "taxonKey": 2435240,
                    "year": int(self.year[i]), "decimalLatitude": float(self.lat[i]),
                    "decimalLongitude": float(self.lon[i]), "basisOfRecord": "HUMAN_OBSERVATION"}
                   for i in page]  # fmt: skip
        body = {
            "offset": offset,
            "limit": limit,
            "count": int(len(idx) * self.weight),
            "endOfRecords": offset + limit >= len(idx),
            "results": results,
        }
        return ranged(json.dumps(body).encode())(request)


QUERY = {"taxonKey": 2435240, "hasCoordinate": "true", "occurrenceStatus": "PRESENT"}
BBOX = (34.0, 72.0, -30.0, 50.0)


def dense_2018() -> FakeSearch:
    """620 points x 500 = 310,000 records over 2000-2020; 2018 alone counts 110,000, and 10
    of its points lie on 10 deg E, the edge of its two halves."""
    rng = np.random.default_rng(7)
    years = np.r_[np.repeat(np.arange(2000, 2021), 20), np.full(200, 2018)]
    lat = np.round(rng.uniform(34, 72, len(years)), 4)
    lon = np.round(rng.uniform(-30, 50, len(years)), 4)
    lon[-10:] = 10.0
    return FakeSearch(years, lat, lon, weight=500)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]


def serve_search(httpserver: HTTPServer, *handlers) -> Script:
    script = Script(handlers)
    httpserver.expect_request("/v1/occurrence/search").respond_with_handler(script)
    return script


def test_the_plan_halves_years_then_area_until_every_piece_fits():
    fake = dense_2018()

    def count(piece: api.Piece) -> int:
        return len(fake.inside(piece.params())) * fake.weight

    plan = api.search_plan(count, (2000, 2020), BBOX)
    assert all(n <= api.MAX_RECORDS for _, n in plan)
    years = [p.years for p, _ in plan]
    assert years == sorted(years) and years[0][0] == 2000 and years[-1][1] == 2020
    split_2018 = [p for p, _ in plan if p.years == (2018, 2018)]
    assert [p.lon for p in split_2018] == [(-30.0, 10.0), (10.0, 50.0)]  # the longer side
    assert sum(n for _, n in plan) == 310_000 + 10 * 500  # the edge points counted twice
    with pytest.raises(DownloadError, match=r"cannot be split further; use the asynchronous"):
        api.search_plan(lambda piece: 200_000, (2018, 2018), (50.0, 50.0001, 10.0, 10.0001))


def test_search_splits_fetches_every_record_once(tmp_path, httpserver):
    fake = dense_2018()
    serve_search(httpserver, fake)
    out = api.search(tmp_path / "search.jsonl.gz", QUERY, (2000, 2020), BBOX, client()[0],
                     base(httpserver))  # fmt: skip
    records = read_jsonl(out)
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)) == 620 and set(keys) == set(fake.keys.tolist())
    assert records[0]["basisOfRecord"] == "HUMAN_OBSERVATION"  # the objects as GBIF sent them
    assert all(o + lim <= api.MAX_RECORDS for o, lim in fake.asked)
    request = manifest.verify(out)["request"]
    pieces = request["pieces"]
    assert all(p["count"] <= api.MAX_RECORDS for p in pieces) and request["records"] == 620
    assert sum(p["fetched"] for p in pieces) == 630 and sum(p["new"] for p in pieces) == 620
    assert {"year": "2018,2018", "decimalLatitude": "34,72", "decimalLongitude": "10,50"} in [
        {k: p[k] for k in ("year", "decimalLatitude", "decimalLongitude")} for p in pieces
    ]
    assert not (tmp_path / ".search.jsonl.gz.pages").exists()


def uniform(n: int = 1000, cap: int = 1000) -> FakeSearch:
    rng = np.random.default_rng(3)
    return FakeSearch(rng.integers(2000, 2021, n), rng.uniform(34, 72, n),
                      rng.uniform(-30, 50, n), cap=cap)  # fmt: skip


def test_paging_stops_short_of_the_offset_cap_and_the_fake_enforces_it(tmp_path, httpserver):
    fake = uniform()
    serve_search(httpserver, fake)
    out = api.search(tmp_path / "s.jsonl.gz", QUERY, (2000, 2020), BBOX, client()[0],
                     base(httpserver), max_records=1000)  # fmt: skip
    assert fake.asked == [(0, 0), (0, 300), (300, 300), (600, 300), (900, 100)]
    assert len(read_jsonl(out)) == 1000
    fake.asked.clear()
    with pytest.raises(DownloadError, match=r"HTTP 400 from http://.*/v1/occurrence/search: "
                       r"offset \+ limit must not exceed 1000"):  # fmt: skip
        api.search(tmp_path / "t.jsonl.gz", QUERY, (2000, 2020), BBOX, client()[0],
                   base(httpserver), max_records=2000)  # fmt: skip
    assert fake.asked[-1] == (900, 300) and not (tmp_path / "t.jsonl.gz").exists()
    with pytest.raises(ValueError, match=r"query sets \['year'\]; the plan sets them"):
        api.search(tmp_path / "u.jsonl.gz", {**QUERY, "year": "2001"}, (2000, 2020), BBOX)


@pytest.mark.parametrize("fault", ["429", "500s", "reset", "truncated", "malformed"])
def test_search_survives_faults(tmp_path, httpserver, fault):
    serve_search(httpserver, uniform(300))
    clean = api.search(tmp_path / "clean.jsonl.gz", QUERY, (2000, 2020), BBOX, client()[0],
                       base(httpserver))  # fmt: skip
    httpserver.clear()
    fake = uniform(300)
    first = json.dumps({"offset": 0, "limit": 0, "count": 300, "endOfRecords": False,
                        "results": []}).encode()  # fmt: skip
    faults = {"429": [too_many(5)], "500s": [server_error(500), server_error(503)],
              "reset": [cut_body(first, 20)], "truncated": [truncated(first, 30)],
              "malformed": [malformed_json()]}[fault]  # fmt: skip
    serve_search(httpserver, *faults, fake)
    c, waits = client()
    out = api.search(tmp_path / "s.jsonl.gz", QUERY, (2000, 2020), BBOX, c, base(httpserver))
    assert out.read_bytes() == clean.read_bytes()
    assert len(waits) == len(faults) and (fault != "429" or waits == [5.0])


def test_an_interrupted_search_reruns_to_the_same_file(tmp_path, httpserver):
    serve_search(httpserver, uniform(900, cap=100_000))
    clean = api.search(tmp_path / "a" / "s.jsonl.gz", QUERY, (2000, 2020), BBOX, client()[0],
                       base(httpserver))  # fmt: skip
    httpserver.clear()
    fake = uniform(900, cap=100_000)
    served = iter(range(100))

    def failing_after_2(request: Request) -> Response:
        return fake(request) if next(served) < 2 else Response("down", 503)

    serve_search(httpserver, failing_after_2)
    out = tmp_path / "b" / "s.jsonl.gz"
    with pytest.raises(DownloadError, match=r"HTTP 503"):
        api.search(out, QUERY, (2000, 2020), BBOX, client(retries=1)[0], base(httpserver))
    assert not out.exists()
    httpserver.clear()
    fake.asked.clear()
    serve_search(httpserver, fake)
    api.search(out, QUERY, (2000, 2020), BBOX, client()[0], base(httpserver))
    assert fake.asked == [(300, 300), (600, 300)]  # the count and page 1 reused
    assert out.read_bytes() == clean.read_bytes()
    a, b = manifest.read_manifest(clean), manifest.read_manifest(out)
    a.pop("retrieved_at"), b.pop("retrieved_at")
    assert a == b


# --- download -------------------------------------------------------------------------------
KEY = "0001005-200812085136737"
DOI = "10.15468/dl.abcd12"
DEMO = Grid(44.0, 56.0, 0.0, 20.0, 0.5)


def zip_bytes(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            info = zipfile.ZipInfo(name, (2026, 5, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, text)
    return buf.getvalue()


ZIP = zip_bytes(
    {
        f"{KEY}.csv": "gbifID\tspeciesKey\tx\n"
        + "".join(
            f"{4_000_000_000 + i}\t2435240\t{x}\n"
            for i, x in enumerate(np.random.default_rng(1).integers(0, 10**9, 6000))
        )
    }
)


class FakeDownloads:
    """POST request (Basic auth, 201 text key), status walking ``states``, the zip at
    ``downloadLink`` behind a 302 to storage served by ``storage`` (a Script)."""

    def __init__(self, httpserver: HTTPServer, states=("PREPARING", "RUNNING", "SUCCEEDED"),
                 post=(), storage=(), size: int = len(ZIP)) -> None:  # fmt: skip
        self.server, self.states, self.polls, self.size = httpserver, list(states), 0, size
        self.posts = Script([*post, self.accept])
        self.storage = Script([*storage, ranged(ZIP)])
        self.bodies: list[dict] = []
        v1 = "/v1/occurrence/download"
        httpserver.expect_request(f"{v1}/request", method="POST").respond_with_handler(self.posts)
        httpserver.expect_request(f"{v1}/{KEY}").respond_with_handler(self.status)
        httpserver.expect_request(f"{v1}/request/{KEY}.zip").respond_with_handler(
            lambda r: Response("", 302, {"Location": httpserver.url_for(f"/storage/{KEY}.zip")})
        )
        httpserver.expect_request(f"/storage/{KEY}.zip").respond_with_handler(self.storage)

    def accept(self, request: Request) -> Response:
        user, _, pwd = (
            base64.b64decode(request.headers["Authorization"][6:]).decode().partition(":")
        )
        if (user, pwd) != ("alice", PASSWORD):
            return Response('{"message": "Unauthorized"}', 401, content_type="application/json")
        self.bodies.append(request.get_json())
        return Response(KEY, 201, content_type="text/plain")

    def status(self, request: Request) -> Response:
        state = self.states[min(self.polls, len(self.states) - 1)]
        self.polls += 1
        body = {"key": KEY, "doi": DOI, "status": state, "size": self.size,
                "license": "http://creativecommons.org/licenses/by-nc/4.0/legalcode",
                "created": "2026-05-01T10:00:00.000+00:00", "totalRecords": 400,
                "request": {"predicate": self.bodies[0]["predicate"] if self.bodies else {},
                            "format": "SIMPLE_CSV", "type": "OCCURRENCE"}}  # fmt: skip
        if state == "SUCCEEDED":
            body["downloadLink"] = self.server.url_for(f"/v1/occurrence/download/request/{KEY}.zip")
        return Response(json.dumps(body), 200, content_type="application/json")


def predicate() -> dict:
    return api.download_predicate([2435240, 5219173], 2000, 2020, DEMO)


def test_the_predicate_is_the_grid_the_species_and_the_years():
    p = predicate()
    assert p["type"] == "and"
    by_key = {q.get("key", q["type"]): q for q in p["predicates"]}  # YEAR: the last
    assert by_key["TAXON_KEY"] == {"type": "in", "key": "TAXON_KEY",
                                   "values": ["2435240", "5219173"]}  # fmt: skip
    wkt = by_key["within"]["geometry"]
    assert wkt == "POLYGON((-0.25 43.75,20.25 43.75,20.25 56.25,-0.25 56.25,-0.25 43.75))"
    xy = np.array([[float(v) for v in pt.split()] for pt in wkt[9:-2].split(",")])
    shoelace = np.sum(xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1])
    assert shoelace > 0  # counter-clockwise, as GBIF wants
    years = [(q["type"], q["value"]) for q in p["predicates"] if q.get("key") == "YEAR"]
    assert years == [("greaterThanOrEquals", "2000"), ("lessThanOrEquals", "2020")]
    assert by_key["HAS_GEOSPATIAL_ISSUE"]["value"] == "false"
    assert by_key["OCCURRENCE_STATUS"]["value"] == "PRESENT"
    with pytest.raises(ValueError, match=r"start year 2020 <= end year 2000"):
        api.download_predicate([1], 2020, 2000, DEMO)


def test_download_requests_polls_follows_the_redirect_and_cites_the_doi(tmp_path, httpserver):
    fake = FakeDownloads(httpserver)
    c, waits = client()
    out = api.download(tmp_path / "occurrences.zip", predicate(), "SIMPLE_CSV", c,
                       base(httpserver), poll=30.0, env=ENV)  # fmt: skip
    assert out.read_bytes() == ZIP and fake.posts.calls == 1 and fake.polls == 3
    assert waits == [30.0, 30.0]  # PREPARING, RUNNING, then SUCCEEDED
    sent = fake.bodies[0]
    assert sent["creator"] == "alice" and sent["notificationAddresses"] == ["alice@example.org"]
    assert sent["format"] == "SIMPLE_CSV" and sent["predicate"] == predicate()
    assert "Authorization" not in fake.storage.requests[0].headers  # never sent to storage
    record = manifest.verify(out)
    req = record["request"]
    assert (req["download_key"], req["doi"], req["totalRecords"]) == (KEY, DOI, 400)
    assert req["predicate"] == predicate() and req["format"] == "SIMPLE_CSV"
    assert record["licence"].endswith("by-nc/4.0/legalcode")
    assert record["citation"] == ("GBIF.org (2026-05-01) GBIF Occurrence Download "
                                  "https://doi.org/10.15468/dl.abcd12")  # fmt: skip
    assert not api.state_path(out).exists()
    api.download(out, predicate(), "SIMPLE_CSV", c, base(httpserver), env={})
    assert (fake.posts.calls, fake.polls) == (1, 3)  # complete: nothing asked again


def test_an_interrupted_run_polls_the_same_key_and_never_requests_again(tmp_path, httpserver):
    fake = FakeDownloads(httpserver, states=["PREPARING", "RUNNING"])
    out = tmp_path / "occurrences.zip"
    with pytest.raises(DownloadError, match=rf"download {KEY}: still RUNNING after 3 polls"):
        api.download(out, predicate(), "SIMPLE_CSV", client()[0], base(httpserver),
                     max_polls=3, env=ENV)  # fmt: skip
    text = api.state_path(out).read_text()
    assert PASSWORD not in text and "alice@" not in text
    state = json.loads(text)
    assert state["key"] == KEY and state["predicate"] == predicate()
    fake.states = ["RUNNING", "SUCCEEDED"]
    fake.polls = 0
    api.download(out, predicate(), "SIMPLE_CSV", client()[0], base(httpserver), env={})
    assert fake.posts.calls == 1 and out.read_bytes() == ZIP  # no credentials needed either
    assert manifest.verify(out)["request"]["download_key"] == KEY


@pytest.mark.parametrize("state", ["KILLED", "CANCELLED", "FAILED", "FILE_ERASED"])
def test_a_failed_download_names_its_key(tmp_path, httpserver, state):
    FakeDownloads(httpserver, states=["RUNNING", state])
    with pytest.raises(DownloadError, match=rf"gbif download {KEY}: status {state}; nothing"):
        api.download(tmp_path / "o.zip", predicate(), "DWCA", client()[0], base(httpserver),
                     env=ENV)  # fmt: skip


def test_the_request_waits_out_420_429_and_5xx(tmp_path, httpserver):
    fake = FakeDownloads(httpserver, post=[lambda r: Response("Enhance Your Calm", 420),
                                           too_many(9), server_error(503)])  # fmt: skip
    c, waits = client()
    key = api.request_download(predicate(), "SIMPLE_CSV", api.credentials(ENV), c,
                               base(httpserver))  # fmt: skip
    assert key == KEY and fake.posts.calls == 4 and len(fake.bodies) == 1
    assert waits == [60.0, 9.0, 2.0]  # 420: ours; 429 Retry-After, 503 backoff: the Client's


@pytest.mark.parametrize("fault", ["reset", "truncated", "500", "429"])
def test_the_file_is_resumed_and_its_size_checked(tmp_path, httpserver, fault):
    assert len(ZIP) > 45_000  # a reset loses at most the chunk in flight (16 kB)
    faults = {"reset": [cut_body(ZIP, 40_000)], "truncated": [truncated(ZIP, 3000)],
              "500": [server_error(502)], "429": [too_many(4)]}[fault]  # fmt: skip
    fake = FakeDownloads(httpserver, states=["SUCCEEDED"], storage=faults)
    out = api.fetch_download(KEY, tmp_path / "o.zip", client()[0], base(httpserver))
    assert out.read_bytes() == ZIP and fake.storage.calls == 2
    if fault == "reset":
        assert fake.storage.requests[1].headers["Range"] == "bytes=32768-"


def test_a_file_of_another_size_than_the_status_says_is_refused(tmp_path, httpserver):
    FakeDownloads(httpserver, states=["SUCCEEDED"], size=len(ZIP) + 5)
    with pytest.raises(DownloadError, match=rf"got {len(ZIP)} bytes .* expected {len(ZIP) + 5}"):
        api.fetch_download(KEY, tmp_path / "o.zip", client(retries=1)[0], base(httpserver))
    assert not (tmp_path / "o.zip").exists()


def test_missing_credentials_are_named():
    with pytest.raises(DownloadError, match=r"variable\(s\) \['GBIF_PWD', 'GBIF_EMAIL'\] not"):
        api.credentials({"GBIF_USER": "alice", "GBIF_EMAIL": " "})
    assert PASSWORD not in repr(api.credentials(ENV))


def test_the_password_appears_in_no_log_error_or_file(tmp_path, httpserver, caplog, capsys):
    fake = FakeDownloads(httpserver)
    caplog.set_level(logging.DEBUG)
    wrong = {**ENV, "GBIF_PWD": PASSWORD + "-wrong"}
    with pytest.raises(DownloadError, match=r"HTTP 401 .*Unauthorized") as err:
        api.download(tmp_path / "x.zip", predicate(), "SIMPLE_CSV", client()[0],
                     base(httpserver), env=wrong)  # fmt: skip
    api.download(tmp_path / "o.zip", predicate(), "SIMPLE_CSV", client()[0], base(httpserver),
                 env=ENV)  # fmt: skip
    assert fake.posts.calls == 2
    seen = [caplog.text, str(err.value), repr(err.value), *capsys.readouterr()]
    seen += [p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file()]
    assert len(seen) > 4 and not any(PASSWORD in text for text in seen)


# --- safe zip members -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """200 MB of zeros packed in about 0.9 MB (ratio 229; 0.4 s to write)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("0001-1.csv", "w") as f:
            zero = bytes(1 << 20)
            for _ in range(200):
                f.write(zero)
    return path


def test_a_zip_bomb_is_refused_before_inflating(bomb):
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"bomb.zip:0001-1.csv: declares 209715200 bytes packed"
                       r" in \d+ \(ratio 2\d\d > 100\): a zip bomb\? refused"):  # fmt: skip
        with dwca.open_zip_member(bomb, ".csv"):
            pytest.fail("opened")
    with pytest.raises(ValueError, match=r"over the limit 1000000: refused"):
        with dwca.open_zip_member(bomb, ".csv", max_bytes=1_000_000, max_ratio=1e9):
            pass
    assert time.perf_counter() - t0 < 0.5


def patch_size(data: bytes, size: int) -> bytes:
    """``data`` (a one-member zip) with the member's declared size replaced (both headers)."""
    out = bytearray(data)
    for sig, at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = data.index(sig)
        out[i + at : i + at + 4] = size.to_bytes(4, "little")
    return bytes(out)


def test_a_lying_header_is_caught_while_streaming(tmp_path):
    real = zip_bytes({"a.csv": "x\ty\n" + "1\t2\n" * 50_000})  # 200 kB
    path = tmp_path / "liar.zip"
    path.write_bytes(patch_size(real, 1000))
    with pytest.raises(ValueError, match=r"liar.zip:a.csv: .*refused"):
        with dwca.open_zip_member(path, ".csv") as f:
            f.read()
    path.write_bytes(patch_size(real, 300_000))  # declares more than it holds
    with pytest.raises(ValueError, match=r"liar.zip:a.csv: 200004 bytes, not the 300000 its"):
        with dwca.open_zip_member(path, ".csv") as f:
            f.read()
    path.write_bytes(patch_size(real, 1 << 30))  # 1 GiB declared in a few kB: refused at once
    with pytest.raises(ValueError, match=r"declares 1073741824 bytes .*zip bomb"):
        with dwca.open_zip_member(path, ".csv"):
            pass
    path.write_bytes(real)
    with dwca.open_zip_member(path, ".csv") as f:
        assert len(f.read()) == 4 + 4 * 50_000


@pytest.mark.parametrize("name", ["../evil.csv", "/etc/evil.csv", "a/../../evil.csv",
                                  "C:\\evil.csv"])  # fmt: skip
def test_path_traversal_is_refused(tmp_path, name):
    path = tmp_path / "t.zip"
    path.write_bytes(zip_bytes({"ok.csv": "a\n1\n", name: "a\n1\n"}))
    with pytest.raises(ValueError, match=r"points outside the archive \(path traversal\)"):
        with dwca.open_zip_member(path, "ok.csv"):
            pass


# --- DwC-A ----------------------------------------------------------------------------------
OCC = ("gbifID\tdatasetKey\toccurrenceID\tcatalogNumber\tspeciesKey\tspecies\tscientificName"
       "\tlicense\n"
       f"11\t{dwca.INATURALIST}\thttps://www.inaturalist.org/observations/123456\t123456"
       "\t2435240\tLynx lynx\tLynx lynx (L.)\tCC_BY_4_0\n"
       f"12\t{dwca.XENOCANTO[0]}\t\tXC98765\t\tCanis lupus\tCanis lupus L.\tCC_BY_NC_4_0\n"
       "13\t11111111-2222\turn:x:13\t13\t5219243\tVulpes vulpes\tVulpes vulpes\tCC0_1_0\n"
       f"14\t{dwca.XENOCANTO[1]}\thttps://xeno-canto.org/55501\t\t5219173\tCanis lupus\t"
       "Canis lupus\tCC_BY_4_0\n")  # fmt: skip
MM = ("gbifID\ttype\tformat\tidentifier\treferences\ttitle\tdescription\tsource\taudience"
      "\tcreated\tcreator\tcontributor\tpublisher\tlicense\trightsHolder\n"
      "11\tStillImage\timage/jpeg\thttps://img.example/1.jpg\t\t\t\t\t\t\tAna\t\t\t"
      "http://creativecommons.org/licenses/by/4.0/\tAna\n"
      "12\tSound\taudio/mpeg\thttps://xeno-canto.org/98765/download\t\t\t\t\t\t\tBo\t\t\t\t"
      "Bird Society\n"
      "12\tMovingImage\tvideo/mp4\thttps://v.example/1.mp4\t\t\t\t\t\t\t\t\t\t\t\n"
      "13\tStillImage\timage/jpeg\thttps://img.example/3.jpg\t\t\t\t\t\t\t\t\t\t\t\n"
      "14\tStillImage\timage/jpeg\t\t\t\t\t\t\t\t\t\t\t\t\n")  # fmt: skip


def test_dwca_media_map_to_the_contract(tmp_path, caplog):
    path = tmp_path / f"{KEY}.zip"
    path.write_bytes(zip_bytes({"occurrence.txt": OCC, "verbatim.txt": OCC, "multimedia.txt": MM,
                                "meta.xml": "<archive/>"}))  # fmt: skip
    occ, mm = dwca.read_dwca(path)
    assert len(occ) == 4 and len(mm) == 5 and occ["speciesKey"].iloc[1] == ""
    q = Quarantine("media")
    with caplog.at_level(logging.INFO):
        media = dwca.multimedia_media(mm, occ, SPECIES, q)
    assert list(media.columns) == list(MEDIA_COLUMNS)
    assert list(media["record_id"]) == ["gbif:11", "gbif:12"]
    assert list(media["kind"]) == ["image", "audio"]
    assert list(media["species_key"]) == [2435240, 5219173]  # 12 by its name
    assert list(media["licence"]) == [
        "http://creativecommons.org/licenses/by/4.0/",
        "CC_BY_NC_4_0",
    ]  # the record's when the medium has none
    assert list(media["attribution"]) == ["Ana", "Bo; rights holder: Bird Society"]
    assert q.read == 4 and dict(q.dropped) == {"corrupt_media": 1, "not_a_study_species": 1}
    assert "{'MovingImage': 1}" in caplog.text
    bare = tmp_path / "bare.zip"
    bare.write_bytes(zip_bytes({"occurrence.txt": OCC}))
    assert len(dwca.read_dwca(bare)[1]) == 0
    broken = tmp_path / "broken.zip"
    broken.write_bytes(zip_bytes({"occurrence.txt": "id\tx\n1\t2\n"}))
    with pytest.raises(ValueError, match=r"broken.zip:occurrence.txt: missing column\(s\) "
                       r"\['gbifID'\]"):  # fmt: skip
        dwca.read_dwca(broken)


def test_republications_of_inaturalist_and_xeno_canto():
    occ = pd.read_csv(io.StringIO(OCC), sep="\t", dtype=str, keep_default_na=False)
    assert list(dwca.same_as(occ)) == ["inaturalist:123456", "xenocanto:98765", "",
                                       "xenocanto:55501"]  # fmt: skip
    row = {"datasetKey": dwca.INATURALIST, "occurrenceID": "urn:other", "catalogNumber": "77"}
    assert dwca.same_as_of(row) == "inaturalist:77"
    assert dwca.same_as_of({"datasetKey": "x", "catalogNumber": "XC1"}) == ""  # not the dataset
    assert dwca.same_as_of({"gbifID": "1"}) == ""  # columns absent
