"""The Xeno-canto source: a fake API v3 (key required, tag-only queries, string counts,
numPages, the v3 error shape) with injected faults, paging, pacing, reruns after an
interruption, the key kept out of every log line, manifest, raw file and message, dates at
their real precision, the audio zip (size cap, magic bytes, quality order) and the samples."""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import re
import wave
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from bfm.contracts.grid import Grid
from bfm.contracts.occurrence import Reason, clean, read_quarantine
from bfm.sources import manifest
from bfm.sources import xenocanto as xc
from bfm.sources import xenocanto_formats as fmt
from bfm.sources.gbif import read_species
from bfm.sources.http import Client, DownloadError, Service
from bfm.sources.httpjson import scratch_dir
from tests.fakes import Script, cut_body, malformed_json, ranged, server_error, too_many, truncated

DEMO = Grid(44.0, 56.0, 0.0, 20.0, 0.5)
SPECIES = read_species(Path(__file__).resolve().parents[1] / "tests" / "species.csv")
KEY = "xc-Secret-7f3a9b2c"  # distinctive, so that a leak is found wherever it lands
ROBIN = "Erithacus rubecula"
TAG = re.compile(r'\s*([a-z]+(?:-[a-z]+)*):("[^"]*"|[^\s"]+)')


@pytest.fixture(autouse=True)
def the_key(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no user key file leaks in
    monkeypatch.setenv(xc.KEY_ENV, KEY)


class FakeTime:
    """An injected sleep that advances an injected clock (no test waits)."""

    def __init__(self) -> None:
        self.now, self.waits = 1000.0, []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def client(retries: int = 4) -> tuple[Client, FakeTime]:
    t = FakeTime()
    service = Service("xenocanto", retries=retries, backoff=1.5, timeout=5,
                      min_interval=xc.SERVICE.min_interval)  # fmt: skip
    c = Client(service, sleep=t.sleep)
    c.clock = t.clock
    return c, t


# --- the fake Xeno-canto API v3 -------------------------------------------------------------
def tags(q: str) -> dict[str, str] | None:
    """The tags of a v3 query, None when some term is not ``tag:value``."""
    found, pos = {}, 0
    while pos < len(q.rstrip()):
        m = TAG.match(q, pos)
        if not m:
            return None
        found[m.group(1)] = m.group(2).strip('"')
        pos = m.end()
    return found


def error(status: int, code: str, message: str) -> Response:
    body = json.dumps({"error": {"code": code, "message": message}})
    return Response(body, status, content_type="application/json")


class FakeXC:
    """Xeno-canto API v3 over ``recordings``: key, tags, sp + box filter, paging, Range."""

    def __init__(self, recordings: list[dict], clock: FakeTime | None = None) -> None:
        self.recordings = sorted(recordings, key=lambda r: int(r["id"]))
        self.clock, self.arrivals, self.keys = clock, [], []

    def select(self, q: str) -> list[dict]:
        t = tags(q) or {}
        la0, lo0, la1, lo1 = (float(v) for v in t["box"].split(","))
        out = []
        for r in self.recordings:
            if f"{r['gen']} {r['sp']}".lower() != t["sp"] or not r.get("lat") or not r.get("lon"):
                continue
            if la0 <= float(r["lat"]) <= la1 and lo0 <= float(r["lon"]) <= lo1:
                out.append(r)
        return out

    def page_bytes(self, q: str, per_page: int, page: int) -> bytes:
        found = self.select(q)
        body = {"numRecordings": str(len(found)), "numSpecies": "1" if found else "0",
                "page": page, "numPages": math.ceil(len(found) / per_page),
                "recordings": found[(page - 1) * per_page : page * per_page]}  # fmt: skip
        return json.dumps(body).encode()

    def __call__(self, request: Request) -> Response:
        self.keys.append(request.args.get("key"))
        if self.clock is not None:
            self.arrivals.append(self.clock.now)
        if "key" not in request.args:
            return error(401, "missing_parameter", "No API key: the 'key' parameter is required")
        if request.args["key"] != KEY:
            return error(401, "invalid_key", f"Invalid API key '{request.args['key']}'")
        q = request.args.get("query", "")
        if tags(q) is None or not {"sp", "box"} <= set(tags(q) or {}):
            return error(400, "invalid_parameter", f"Every search term must be a tag: {q!r}")
        per_page = int(request.args.get("per_page", 100))
        if not 50 <= per_page <= 500:
            return error(400, "invalid_parameter", "per_page must be between 50 and 500")
        data = self.page_bytes(q, per_page, int(request.args.get("page", 1)))
        start = int(request.headers.get("Range", "bytes=0-")[6:-1] or 0)
        return Response(data[start:], 206 if start else 200, content_type="application/json")


def world(n_robins: int = 120) -> list[dict]:
    """Sample recordings of the study species plus many robins (three pages of 50), one robin
    outside the box and one of a species outside the study."""
    recs = fmt.sample_recordings(SPECIES, "2019-03-01", "2019-08-31", DEMO, seed=3)
    robin = next(r for r in recs if r["gen"] == "Erithacus" and r["lat"])
    extra = [dict(robin, id=str(900_000 + i), q="ABCDE"[i % 5]) for i in range(n_robins)]
    outside = dict(robin, id="990001", lat="40.1", lon="-3.7")
    stranger = dict(robin, id="990002", gen="Turdus", sp="merula")
    return recs + extra + [outside, stranger]


def serve(httpserver: HTTPServer, *handlers) -> Script:
    script = Script(handlers)
    httpserver.expect_request("/api/3/recordings").respond_with_handler(script)
    return script


def fetch(httpserver: HTTPServer, out: Path, c: Client, per_page: int = 50) -> Path:
    return xc.download(out, SPECIES, DEMO, c, httpserver.url_for("/api/3"), per_page)


def raw(path: Path) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]


def without_time(path: Path) -> dict:
    record = manifest.read_manifest(path)
    record.pop("retrieved_at")
    return record


@pytest.fixture(scope="module")
def recordings() -> list[dict]:
    return world()


# --- queries and the key --------------------------------------------------------------------
def test_the_query_is_tags_only_with_the_grids_box():
    assert xc.query(ROBIN, DEMO) == 'sp:"erithacus rubecula" box:43.75,-0.25,56.25,20.25'
    assert xc.query("Lynx lynx (Linnaeus, 1758)", DEMO).startswith('sp:"lynx lynx" box:')
    assert tags(xc.query(ROBIN, DEMO)) == {"sp": "erithacus rubecula",
                                           "box": "43.75,-0.25,56.25,20.25"}  # fmt: skip
    with pytest.raises(ValueError, match=r"scientific name 'Lynx' is not 'Genus species'"):
        xc.query("Lynx", DEMO)
    assert xc.SERVICE.min_interval >= 1.0  # at most one request a second


def test_no_key_fails_before_any_request(tmp_path, httpserver: HTTPServer, monkeypatch,
                                         recordings):  # fmt: skip
    serve(httpserver, FakeXC(recordings))
    monkeypatch.delenv(xc.KEY_ENV)
    with pytest.raises(DownloadError, match=r"set the environment variable XC_API_KEY or "
                       r"write the key \(one line\) to .*/\.config/xeno-canto/key"):  # fmt: skip
        fetch(httpserver, tmp_path / xc.RAW_NAME, client()[0])
    assert len(httpserver.log) == 0
    # the key file serves as well (its first line)
    xc.key_file().parent.mkdir(parents=True)
    xc.key_file().write_text(f"  {KEY}\nsecond line\n")
    assert xc.api_key() == KEY


def test_the_fake_rejects_untagged_queries_and_accepts_tagged(tmp_path, httpserver, recordings,
                                                              monkeypatch):  # fmt: skip
    serve(httpserver, FakeXC(recordings))
    url = httpserver.url_for("/api/3/recordings")
    bad = requests.get(url, params={"query": "erithacus rubecula", "key": KEY}, timeout=5)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_parameter"
    good = requests.get(url, params={"query": xc.query(ROBIN, DEMO), "key": KEY}, timeout=5)
    assert good.status_code == 200 and isinstance(good.json()["numPages"], int)
    assert isinstance(good.json()["numRecordings"], str)
    assert requests.get(url, params={"query": xc.query(ROBIN, DEMO)}, timeout=5).status_code == 401
    # the downloader surfaces the server's message when a query is refused
    monkeypatch.setattr(xc, "query", lambda name, grid: name.lower())
    with pytest.raises(DownloadError, match=r"Lynx lynx page 1: HTTP 400 .*invalid_parameter.*"
                       r"Every search term must be a tag") as err:  # fmt: skip
        fetch(httpserver, tmp_path / xc.RAW_NAME, client()[0])
    assert KEY not in str(err.value)


# --- downloads against the fake API ---------------------------------------------------------
def test_download_pages_every_species_and_writes_the_raw_file(tmp_path, httpserver, recordings):
    fake = FakeXC(recordings)
    script = serve(httpserver, fake)
    path = fetch(httpserver, tmp_path / xc.RAW_NAME, client()[0])
    queries = [xc.query(n, DEMO) for n in SPECIES["scientific_name"]]
    pages = {q: math.ceil(len(fake.select(q)) / 50) for q in queries}
    assert pages[xc.query(ROBIN, DEMO)] == 3 and script.calls == sum(
        max(p, 1) for p in pages.values()
    )
    robin_pages = [r.args["page"] for r in script.requests if "erithacus" in r.args["query"]]
    assert robin_pages == ["1", "2", "3"]
    got = raw(path)
    expected = sorted((r for q in queries for r in fake.select(q)), key=lambda r: int(r["id"]))
    assert got == expected  # native objects, sorted by numeric id, each once
    ids = [r["id"] for r in got]
    assert "990001" not in ids and "990002" not in ids  # outside the box; not a study species
    record = manifest.verify(path)
    assert record["url"] == httpserver.url_for("/api/3/recordings")
    robin = next(e for e in record["request"]["queries"] if e["scientific_name"] == ROBIN)
    assert robin["query"] == xc.query(ROBIN, DEMO) and robin["numPages"] == 3
    assert robin["numRecordings"] == len(fake.select(xc.query(ROBIN, DEMO)))
    assert not scratch_dir(path).exists()


@pytest.mark.parametrize("fault", ["429", "500s", "reset", "truncated", "malformed"])
def test_download_survives_faults(tmp_path, httpserver: HTTPServer, recordings, fault):
    fake = FakeXC(recordings)
    serve(httpserver, fake)
    clean_run = fetch(httpserver, tmp_path / "clean" / xc.RAW_NAME, client()[0])
    httpserver.clear()
    first = fake.page_bytes(xc.query(SPECIES["scientific_name"][0], DEMO), 50, 1)
    faults = {"429": [too_many(7)], "500s": [server_error(500), server_error(503)],
              "reset": [cut_body(first, 100)], "truncated": [truncated(first, 90)],
              "malformed": [malformed_json()]}[fault]  # fmt: skip
    serve(httpserver, *faults, fake)
    c, t = client()
    path = fetch(httpserver, tmp_path / xc.RAW_NAME, c)
    assert path.read_bytes() == clean_run.read_bytes()
    retries = [w for w in t.waits if w != 1.0]  # the rest keep the courtesy interval
    assert len(retries) == len(faults) and (fault != "429" or retries == [7.0])


def test_requests_keep_one_second_apart(tmp_path, httpserver: HTTPServer, recordings):
    c, t = client()
    fake = FakeXC(recordings, clock=t)
    serve(httpserver, too_many(3), fake)
    fetch(httpserver, tmp_path / xc.RAW_NAME, c)
    gaps = np.diff(fake.arrivals)
    assert len(gaps) >= 7 and gaps.min() >= 1.0
    assert t.waits == [3.0] + [1.0] * (len(fake.arrivals) - 1)  # Retry-After, then 1 s apart


def test_an_interrupted_download_reruns_to_the_same_file(tmp_path, httpserver, recordings):
    fake = FakeXC(recordings)
    serve(httpserver, fake)
    clean_run = fetch(httpserver, tmp_path / "clean" / xc.RAW_NAME, client()[0])
    httpserver.clear()

    def robin_page_2_down(request: Request) -> Response:
        if "erithacus" in request.args["query"] and request.args["page"] == "2":
            return Response("down", 503)
        return fake(request)

    serve(httpserver, robin_page_2_down)
    out = tmp_path / "rerun" / xc.RAW_NAME
    with pytest.raises(DownloadError, match=r"Erithacus rubecula page 2: HTTP 503"):
        fetch(httpserver, out, client(retries=1)[0])
    assert not out.exists() and len(list(scratch_dir(out).iterdir())) >= 6  # pages kept
    assert not manifest.manifest_path(out).exists()
    httpserver.clear()
    script = serve(httpserver, fake)
    fetch(httpserver, out, client()[0])
    asked = [(r.args["query"], r.args["page"]) for r in script.requests]
    assert (xc.query(ROBIN, DEMO), "1") not in asked and len(asked) == 2  # robin pages 2, 3
    assert out.read_bytes() == clean_run.read_bytes()
    assert without_time(out) == without_time(clean_run)
    ids = [r["id"] for r in raw(out)]
    assert len(ids) == len(set(ids))


def test_a_page_that_shifts_while_paging_fails_and_is_not_reused(tmp_path, httpserver,
                                                                  recordings):  # fmt: skip
    fake = FakeXC(recordings)

    def grows(request: Request) -> Response:
        if request.args["page"] == "2":
            body = json.loads(fake.page_bytes(request.args["query"], 50, 2))
            body["numRecordings"] = str(int(body["numRecordings"]) + 1)
            return Response(json.dumps(body), 200, content_type="application/json")
        return fake(request)

    serve(httpserver, grows)
    out = tmp_path / xc.RAW_NAME
    with pytest.raises(DownloadError, match=r"Erithacus rubecula page 2: numRecordings (\d+), "
                       r"page 1 said \d+: the data changed while paging; run again"):  # fmt: skip
        fetch(httpserver, out, client()[0])
    assert not scratch_dir(out).exists() and not out.exists()


def test_the_key_appears_nowhere(tmp_path, httpserver: HTTPServer, recordings, caplog):
    caplog.set_level(logging.DEBUG)
    fake = FakeXC(recordings)
    serve(httpserver, too_many(2), server_error(500), fake)
    path = fetch(httpserver, tmp_path / xc.RAW_NAME, client()[0])
    assert set(fake.keys) == {KEY}  # it was sent with every request...
    ours = [r for r in caplog.records if r.name != "werkzeug"]  # not the fake server's own log
    messages = [r.getMessage() for r in ours]
    assert any("key=***" in m for m in messages)  # ...urllib3's request lines are redacted
    assert any("retry 1/4" in m for m in messages)
    assert all(KEY not in m for m in messages)
    assert KEY not in manifest.manifest_path(path).read_text()
    assert KEY.encode() not in gzip.decompress(path.read_bytes()) and KEY.encode() not in (
        path.read_bytes())  # fmt: skip
    # a bad key: the server's words (which echo the key) without the key
    xc_key = "xc-Wrong-0000"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(xc.KEY_ENV, xc_key)
        with pytest.raises(DownloadError, match=r"HTTP 401 .*Invalid API key '\*\*\*'.*check "
                           r"the Xeno-canto API key: XC_API_KEY or") as err:  # fmt: skip
            fetch(httpserver, tmp_path / "bad" / xc.RAW_NAME, client()[0])
    chain, e = [], err.value
    while e is not None:
        chain.append(f"{e!s} {e!r}")
        e = e.__cause__ or e.__context__
    assert all(xc_key not in text and KEY not in text for text in chain)
    assert all(xc_key not in r.getMessage() for r in caplog.records if r.name != "werkzeug")
    scratch = scratch_dir(tmp_path / "bad" / xc.RAW_NAME)
    for page in scratch.rglob("*") if scratch.exists() else []:
        assert xc_key not in page.name and xc_key.encode() not in page.read_bytes()


# --- records --------------------------------------------------------------------------------
def line(rid: str, date: str, time: str = "07:30", lat: object = "50.1", lon: object = "10.2",
         gen: str = "Erithacus", sp: str = "rubecula") -> dict:  # fmt: skip
    return {"id": rid, "gen": gen, "sp": sp, "ssp": "", "grp": "birds", "en": "European Robin",
            "rec": "Ann Example", "lat": lat, "lon": lon, "file": f"https://xeno-canto.org/{rid}"
            "/download", "lic": "//creativecommons.org/licenses/by-nc-sa/4.0/", "q": "A",
            "time": time, "date": date, "animal-seen": "yes"}  # fmt: skip


def test_records_keep_dates_at_their_real_precision(tmp_path):
    rows = [line("11", "2019-00-00"), line("12", "2019-05-00"), line("13", "2019-05-12"),
            line("14", "?", time="?"), line("15", ""), line("16", "0000-00-00"),
            line("17", "2019-02-30"), line("18", "2019-06-01", lat="", lon=None),
            line("19", "2019-06-02", gen="Turdus", sp="merula")]  # fmt: skip
    path = tmp_path / xc.RAW_NAME
    text = "\n".join(json.dumps(r) for r in rows[:4]) + "\nnot json\n" + "\n".join(
        json.dumps(r) for r in rows[4:]) + '\n{"no": "id"}\n[1, 2]\n'  # fmt: skip
    path.write_bytes(gzip.compress(text.encode()))
    table, media, q = xc.records(path, SPECIES)
    by = table.set_index("record_id")
    assert by.loc["xenocanto:11", ["start", "end", "precision"]].tolist() == [
        pd.Timestamp("2019-01-01"),
        pd.Timestamp("2020-01-01"),
        "year",
    ]  # never January 1st
    assert by.loc["xenocanto:12", ["start", "end", "precision"]].tolist() == [
        pd.Timestamp("2019-05-01"), pd.Timestamp("2019-06-01"), "month"]  # fmt: skip
    assert by.loc["xenocanto:13", ["start", "end", "precision"]].tolist() == [
        pd.Timestamp("2019-05-12"),
        pd.Timestamp("2019-05-13"),
        "day",
    ]  # local 07:30 ignored
    assert by.loc[["xenocanto:14", "xenocanto:15", "xenocanto:16"], "precision"].tolist() == [
        "missing"] * 3  # fmt: skip
    assert by.loc["xenocanto:17", "precision"] == "unusable"
    assert by.loc["xenocanto:18", ["latitude", "longitude"]].isna().all()
    assert by.loc["xenocanto:13", ["latitude", "longitude"]].tolist() == [50.1, 10.2]
    assert by.loc["xenocanto:13", "species_key"] == 2492462
    assert pd.isna(by.loc["xenocanto:19", "species_key"])
    assert set(table["basis"]) == {"MACHINE_OBSERVATION"} and set(table["status"]) == {"PRESENT"}
    assert set(table["source"]) == {"xenocanto"} and set(table["same_as"]) == {""}
    assert set(table["licence"]) == {"https://creativecommons.org/licenses/by-nc-sa/4.0/"}
    assert table["uncertainty_m"].isna().all() and table["scientific_name"][0] == ROBIN
    assert q.read == 12 and q.dropped == {Reason.UNREADABLE_LINE.value: 3}
    assert q.examples[Reason.UNREADABLE_LINE.value] == "line 5"
    kept = clean(table, q)
    assert q.dropped[Reason.DATE_MISSING] == 3 and q.dropped[Reason.DATE_UNUSABLE] == 1
    assert q.dropped[Reason.COORDINATES_MISSING] == 1
    assert q.dropped[Reason.NOT_A_STUDY_SPECIES] == 1
    assert sorted(kept["record_id"]) == ["xenocanto:11", "xenocanto:12", "xenocanto:13"]
    assert q.report()["kept"] == 3
    assert list(media.columns) == ["record_id", "species_key", "kind", "uri", "content",
                                   "licence", "attribution"]  # fmt: skip
    m = media.set_index("record_id").loc["xenocanto:13"]
    assert (m["kind"], m["uri"], m["attribution"]) == (
        "audio",
        "https://xeno-canto.org/13/download",
        "Ann Example, XC13",
    )


def test_a_raw_file_that_is_not_gzip_is_named(tmp_path):
    path = tmp_path / xc.RAW_NAME
    path.write_text('{"id": "1"}\n')
    with pytest.raises(ValueError, match=rf"{path.name}: not a gzip JSON Lines file"):
        xc.records(path, SPECIES)


# --- audio ----------------------------------------------------------------------------------
def test_audio_magic_bytes():
    assert fmt.audio_kind(fmt.tone_wav(800.0, 0)[:16]) == "wav"
    assert fmt.audio_kind(b"ID3\x04\x00" + bytes(11)) == "mp3"
    assert fmt.audio_kind(b"\xff\xfb\x90\x64" + bytes(12)) == "mp3"  # MPEG-1 layer III frame
    assert fmt.audio_kind(b"\xff\xe9\x90\x64") is None  # reserved layer 00: not a frame
    assert fmt.audio_kind(b"fLaC" + bytes(12)) == "flac"
    assert fmt.audio_kind(b"OggS" + bytes(12)) == "ogg"
    assert fmt.audio_kind(b"<!DOCTYPE html><html>") is None
    assert fmt.audio_kind(b"RIFF\x00\x00\x00\x00AVI ") is None and fmt.audio_kind(b"") is None


def test_download_audio_caps_size_counts_corrupt_files_and_prefers_quality(tmp_path, httpserver):
    robin = [line(str(i), "2019-05-12") for i in range(101, 107)]
    grades = {"101": "C", "102": "A", "103": "B", "104": "A", "105": "B", "106": "D"}
    for r in robin:
        r["q"], r["file"] = grades[r["id"]], httpserver.url_for(f"/{r['id']}/download")
    wolf = dict(line("201", "2019-05-12", gen="Canis", sp="lupus"), q="B",
                file=httpserver.url_for("/201/download"))  # fmt: skip
    path = tmp_path / xc.RAW_NAME
    fmt.write_lines(path, [*robin, wolf])
    manifest.write_manifest(path, source="xenocanto", request=xc.request(SPECIES, DEMO, 500),
                            url="test", licence="", citation="")  # fmt: skip
    wav, mp3 = fmt.tone_wav(900.0, 1), b"ID3\x04\x00" + bytes(600)
    bodies = {"102": (wav, None), "104": (b"x" * 8000, None),  # too large, announced by HEAD
              "103": (b"<html>not audio</html>", None),  # corrupt
              "105": (b"ID3" + bytes(8000), 405),  # too large; HEAD refused: known after GET
              "101": (mp3, None), "201": (wav, None), "106": (wav, None)}  # fmt: skip
    scripts = {}
    for rid, (data, head_status) in bodies.items():

        def handle(request: Request, data=data, head_status=head_status) -> Response:
            if request.method == "HEAD" and head_status:
                return Response("", head_status)
            return ranged(data)(request)

        scripts[rid] = Script([handle])
        httpserver.expect_request(f"/{rid}/download").respond_with_handler(scripts[rid])
    out = tmp_path / "audio" / "audio.zip"
    c, _ = client()
    xc.download_audio(path, out, c, per_species=2, max_bytes=6000, quality="C")
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        index = pd.read_csv(io.BytesIO(zf.read("index.csv")))
        assert zf.read("2492462/XC102.wav") == wav and zf.read("2492462/XC101.mp3") == mp3
    # A (102, 104) first, then B (103, 105), then C (101); 104 too large, 103 corrupt, 105 too
    # large; D (106) is worse than the quality asked for
    assert names == ["2492462/XC101.mp3", "2492462/XC102.wav", "5219173/XC201.wav", "index.csv"]
    assert [r.method for r in scripts["104"].requests] == ["HEAD"]  # refused before its body
    assert [r.method for r in scripts["105"].requests] == ["HEAD", "GET"]
    assert not scripts["106"].requests
    assert list(index.columns) == list(fmt.INDEX_COLUMNS)
    row = index.set_index("record_id").loc["xenocanto:102"]
    assert (row["species_key"], row["bytes"]) == (2492462, len(wav))
    assert row["attribution"] == "Ann Example, XC102"
    assert row["licence"] == "https://creativecommons.org/licenses/by-nc-sa/4.0/"
    report = read_quarantine(Path(f"{out}.quarantine.json"))
    assert report["dropped"] == {"corrupt_media": 1, "too_large_media": 2}
    assert (report["read"], report["kept"]) == (6, 3)
    assert manifest.verify(out)["request"]["files"] == 3
    assert not out.with_name(f".{out.name}.files").exists()


# --- samples --------------------------------------------------------------------------------
def test_sample_is_deterministic_v3_with_bad_records(tmp_path):
    a = xc.sample(tmp_path / "a" / xc.RAW_NAME, SPECIES, "2019-03-01", "2019-08-31", DEMO, 4)
    b = xc.sample(tmp_path / "b" / xc.RAW_NAME, SPECIES, "2019-03-01", "2019-08-31", DEMO, 4)
    c = xc.sample(tmp_path / "c" / xc.RAW_NAME, SPECIES, "2019-03-01", "2019-08-31", DEMO, 5)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    recs = raw(a)
    assert all({"lon", "grp", "animal-seen"} <= set(r) for r in recs)
    assert not any({"lng", "group", "bird-seen"} & set(r) for r in recs)
    assert all(isinstance(r[k], str) for r in recs for k in ("id", "alt", "smp", "length"))
    dates = {r["date"] for r in recs}
    assert {"2019-00-00", "2019-03-00", "?", "0000-00-00"} <= dates
    assert any(r["lat"] == "" for r in recs) and any(r["lat"] is None for r in recs)
    placed = [r for r in recs if r["lat"]]
    assert DEMO.contains(np.array([float(r["lat"]) for r in placed]),
                         np.array([float(r["lon"]) for r in placed])).all()  # fmt: skip
    assert [int(r["id"]) for r in recs] == sorted(int(r["id"]) for r in recs)
    record = manifest.read_manifest(a)
    assert record["request"] == xc.request(SPECIES, DEMO, 500, {
        int(k): (sum(r["gen"] + " " + r["sp"] == n.lower().capitalize() for r in recs), 1)
        for k, n in zip(SPECIES["gbif_key"], SPECIES["scientific_name"], strict=True)})  # fmt: skip
    table, media, q = xc.records(a, SPECIES)
    clean(table, q)
    assert q.dropped[Reason.DATE_MISSING] == 2 and q.dropped[Reason.DATE_UNUSABLE] == 1
    assert q.dropped[Reason.COORDINATES_MISSING] == 2
    assert {"year", "month", "day"} <= set(table["precision"])
    assert len(media) == len(table) and table["species_key"].notna().all()


def test_sample_audio_is_tiny_wavs_with_a_pitch_per_species(tmp_path):
    recs = xc.sample(tmp_path / xc.RAW_NAME, SPECIES, "2019-03-01", "2019-08-31", DEMO, 4)
    a = xc.sample_audio(recs, tmp_path / "a.zip", seed=2)
    assert a.read_bytes() == xc.sample_audio(recs, tmp_path / "b.zip", seed=2).read_bytes()
    peaks = {}
    with zipfile.ZipFile(a) as zf:
        index = pd.read_csv(io.BytesIO(zf.read("index.csv")))
        assert list(index.columns) == list(fmt.INDEX_COLUMNS)
        for member, size in zip(index["member"], index["bytes"], strict=True):
            data = zf.read(member)
            assert len(data) == size < 10_000 and fmt.audio_kind(data[:16]) == "wav"
            with wave.open(io.BytesIO(data)) as w:
                assert (w.getnchannels(), w.getframerate()) == (1, fmt.WAV_RATE)
                pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(float)
            spectrum = np.abs(np.fft.rfft(pcm))
            peaks.setdefault(member.split("/")[0], []).append(
                np.fft.rfftfreq(len(pcm), 1 / fmt.WAV_RATE)[spectrum.argmax()])  # fmt: skip
    assert set(peaks) == {str(k) for k in SPECIES["gbif_key"]} and index["bytes"].gt(0).all()
    assert (index.groupby("species_key").size() <= 3).all()
    centres = [np.median(v) for v in peaks.values()]
    assert len({round(c, -2) for c in centres}) == len(centres)  # one pitch per species
    assert read_quarantine(Path(f"{a}.quarantine.json"))["kept"] == len(index)


# --- errors ---------------------------------------------------------------------------------
def test_errors_name_the_file_the_page_and_the_rule(tmp_path, httpserver, recordings):
    with pytest.raises(ValueError, match=r"per_page must be in 50\.\.500, got 20"):
        fetch(httpserver, tmp_path / xc.RAW_NAME, client()[0], per_page=20)
    with pytest.raises(FileNotFoundError, match=r"no such Xeno-canto raw file"):
        xc.records(tmp_path / "none.jsonl.gz", SPECIES)
    with pytest.raises(ValueError, match=r"x: not a Xeno-canto API v3 page \(no 'recordings'"):
        fmt.page_of([], "x")
    with pytest.raises(ValueError, match=r"x: numRecordings/numPages missing or not whole"):
        fmt.page_of({"recordings": [], "numRecordings": "many", "numPages": 1}, "x")
    with pytest.raises(ValueError, match=r"x: recording 1 has no numeric 'id'"):
        fmt.page_of({"recordings": [{"id": "1"}, {}], "numRecordings": "2", "numPages": 1}, "x")
    path = fmt.write_lines(tmp_path / xc.RAW_NAME, [line("1", "2019-05-01")])
    manifest.write_manifest(path, source="xenocanto", request={}, url="t", licence="",
                            citation="")  # fmt: skip
    with pytest.raises(ValueError, match=r"manifest.json: request.queries is missing: cannot "):
        xc.download_audio(path, tmp_path / "a.zip", client()[0])
    with pytest.raises(ValueError, match=r"quality must be one of \['A', 'B', 'C', 'D', 'E'\]"):
        xc.sample_audio(path, tmp_path / "a.zip", 0, quality="F")
    with pytest.raises(ValueError, match=r"per_species must be >= 1, got 0"):
        xc.sample_audio(path, tmp_path / "a.zip", 0, per_species=0)
    with pytest.raises(ValueError, match=r"--end 2019-01-01 is before --start 2019-02-01"):
        xc.sample(tmp_path / "s.gz", SPECIES, "2019-02-01", "2019-01-01", DEMO, 0)


def test_an_error_at_200_or_repeated_recordings_fail_the_species(tmp_path, httpserver,
                                                                 recordings):  # fmt: skip
    fake = FakeXC(recordings)
    serve(httpserver, lambda r: error(200, "server_busy", "Try again later"))
    out = tmp_path / xc.RAW_NAME
    with pytest.raises(DownloadError, match=r"Lynx lynx page 1: Xeno-canto answered with an "
                       r"error: server_busy: Try again later"):  # fmt: skip
        fetch(httpserver, out, client()[0])
    assert not scratch_dir(out).exists()
    httpserver.clear()

    def page_2_repeats_page_1(request: Request) -> Response:
        if request.args["page"] == "2":
            body = json.loads(fake.page_bytes(request.args["query"], 50, 1))
            body["page"] = 2
            return Response(json.dumps(body), 200, content_type="application/json")
        return fake(request)

    serve(httpserver, page_2_repeats_page_1)
    total = len(fake.select(xc.query(ROBIN, DEMO)))
    with pytest.raises(DownloadError, match=rf"Erithacus rubecula: {total - 50} distinct "
                       rf"recordings over 3 page\(s\), numRecordings says {total}: the data "
                       "changed; run again"):  # fmt: skip
        fetch(httpserver, out, client()[0])
    assert not out.exists() and not scratch_dir(out).exists()
