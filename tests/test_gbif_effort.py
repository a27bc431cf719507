"""GBIF sampling effort: the SQL of the cube (Grid.index_of in SQL, the filters, GROUP BY),
the SQL download against a fake GBIF on 127.0.0.1 (Basic auth, polling, redirect, faults,
an interrupted rerun), credentials nowhere, the sample, the reader's checks and the counts
per step at 1D, 6h and 1MS."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from bfm.contracts.grid import Grid
from bfm.sources import gbif_api, manifest
from bfm.sources import gbif_effort as ge
from bfm.sources.http import Client, DownloadError, Service
from tests.fakes import Script, Waits, cut_body, ranged, server_error, too_many

PASSWORD = "pa55-W0rd-never-shown"
ENV = {"GBIF_USER": "alice", "GBIF_PWD": PASSWORD, "GBIF_EMAIL": "alice@example.org"}
KEY = "0004711-260501100000123"
DOI = "10.15468/dl.eff0rt"
DEMO = Grid(44.0, 56.0, 0.0, 20.0, 0.5)
AVES, MAMMALIA = 212, 359
SPECIES = pd.DataFrame({"gbif_key": [2435240, 5219173, 2492462],
                        "scientific_name": ["Lynx lynx", "Canis lupus", "Erithacus rubecula"],
                        "common_name": ["lynx", "wolf", "robin"],
                        "class_key": [MAMMALIA, MAMMALIA, AVES]})  # fmt: skip


def client(retries: int = 4) -> tuple[Client, Waits]:
    waits = Waits()
    return Client(Service("gbif", retries=retries, backoff=1.0, timeout=5), sleep=waits), waits


def study_records(n: int = 400, seed: int = 5) -> pd.DataFrame:
    """Contract-like records of the study species in January-February 2010, and a few that
    no effort counts: outside the grid, a month's precision, an absence, not a study species,
    after the window."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2010-01-01") + pd.to_timedelta(rng.integers(0, 59 * 86400, n), "s")
    t = pd.DataFrame({"species_key": pd.array(rng.choice(SPECIES["gbif_key"], n), "Int64"),
                      "latitude": rng.uniform(44, 56, n), "longitude": rng.uniform(0, 20, n),
                      "start": start, "end": start, "status": "PRESENT",
                      "basis": "HUMAN_OBSERVATION"})  # fmt: skip
    t.loc[:19, "species_key"] = 2435240  # 20 records of a lynx in one cell ...
    t.loc[:19, ["latitude", "longitude"]] = [50.1, 10.1]
    t.loc[:19, "start"] = t.loc[:19, "end"] = pd.Timestamp("2010-01-09 10:00")  # ... one day
    t.loc[20, "longitude"] = 25.0  # outside the grid
    t.loc[21, "end"] = t.loc[21, "start"] + pd.Timedelta(days=31)  # a month
    t.loc[22, "status"] = "ABSENT"
    t.loc[23, "species_key"] = pd.NA
    t.loc[24, ["start", "end"]] = pd.Timestamp("2010-03-05")
    return t


def counted(records: pd.DataFrame) -> pd.DataFrame:
    """The study records an effort cube must hold, per class, day and cell (by hand)."""
    t = records.iloc[25:].copy()
    t = pd.concat([records.iloc[:20], t])
    row, col = DEMO.index_of(t["latitude"].to_numpy(), t["longitude"].to_numpy())
    classes = dict(zip(SPECIES["gbif_key"], SPECIES["class_key"], strict=True))
    return (pd.DataFrame({"class_key": t["species_key"].astype(int).map(classes).to_numpy(),
                          "time": t["start"].dt.normalize().to_numpy(), "row": row, "col": col})
            .value_counts().rename("study").reset_index())  # fmt: skip


@pytest.fixture(scope="module")
def cube(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("cube") / ge.EFFORT_NAME
    return ge.sample(path, study_records(), SPECIES, DEMO, "2010-01-01", "2010-02-28", 3
                     ).read_bytes()  # fmt: skip


# --- the query ------------------------------------------------------------------------------
def sql_lists(sql: str) -> tuple[list[str], list[str], list[str]]:
    """(selected expressions, WHERE conditions, GROUP BY expressions) of effort_sql's text."""
    select = sql.split("SELECT\n", 1)[1].split("\nFROM occurrence\n", 1)[0].split(",\n")
    where = sql.split("\nWHERE\n", 1)[1].split("\nGROUP BY\n", 1)[0].split("\n  AND ")
    group = sql.split("\nGROUP BY\n", 1)[1].split(",\n")
    return [s.strip() for s in select], [w.strip() for w in where], [g.strip() for g in group]


def test_the_sql_counts_the_kept_records_and_groups_every_plain_column():
    sql = ge.effort_sql([MAMMALIA, AVES, AVES], 2000, 2020, DEMO)
    select, where, group = sql_lists(sql)
    aliases = [s.rsplit(" AS ", 1)[-1].strip('"') for s in select]
    assert aliases == ["classkey", "year", "month", "day", "cell_row", "cell_col", "n"]
    plain = [s.rsplit(" AS ", 1)[0] for s in select if not s.startswith("COUNT(")]
    assert plain == group  # every non-aggregate is grouped, nothing else
    assert "FLOOR((56.25 - decimalLatitude) / 0.5)" in group
    assert "FLOOR((decimalLongitude + 0.25) / 0.5)" in group
    assert where == [
        "classKey IN (212, 359)", "occurrenceStatus = 'PRESENT'", "hasGeospatialIssues = FALSE",
        "basisOfRecord NOT IN ('FOSSIL_SPECIMEN', 'LIVING_SPECIMEN')",
        "decimalLatitude > 43.75", "decimalLatitude <= 56.25", "decimalLongitude >= -0.25",
        "decimalLongitude < 20.25", '"year" >= 2000', '"year" <= 2020', '"month" IS NOT NULL',
        '"day" IS NOT NULL', "(coordinateUncertaintyInMeters IS NULL OR "
        "coordinateUncertaintyInMeters <= 10000.0)"]  # fmt: skip
    # GBIF's rules: one SELECT on the one table, no join, no sub-query, no *, no comment
    assert sql.count("SELECT") == 1 and sql.count("FROM") == 1 and "JOIN" not in sql.upper()
    assert "*" not in sql.replace("COUNT(*)", "") and "--" not in sql and ";" not in sql
    loose = ge.effort_sql([AVES], 2010, 2010, DEMO, max_uncertainty_m=None)
    assert "coordinateUncertaintyInMeters" not in loose
    assert "<= 2500.0)" in ge.effort_sql([AVES], 2010, 2010, DEMO, max_uncertainty_m=2500)
    with pytest.raises(ValueError, match=r"start year 2020 <= end year 2000"):
        ge.effort_sql([AVES], 2020, 2000, DEMO)
    with pytest.raises(ValueError, match=r"need positive class keys \(\[\]\)"):
        ge.effort_sql([], 2000, 2020, DEMO)


@pytest.mark.parametrize("grid", [DEMO, Grid(34.0, 72.0, -30.0, 50.0, 0.25),
                                  Grid(-12.3, -10.0, 7.7, 9.9, 0.1)])  # fmt: skip
def test_the_sql_cell_of_a_point_is_grid_index_of_even_on_edges(grid):
    """The FLOOR expressions and the box, evaluated in Python on the same doubles."""
    select, where, _ = sql_lists(ge.effort_sql([AVES], 2000, 2020, grid))
    row_sql = next(s for s in select if s.endswith(" AS cell_row")).rsplit(" AS ", 1)[0]
    col_sql = next(s for s in select if s.endswith(" AS cell_col")).rsplit(" AS ", 1)[0]
    box = [w for w in where if w.startswith(("decimalLatitude", "decimalLongitude"))]
    assert len(box) == 4
    rng = np.random.default_rng(0)
    lat_e, lon_e = grid.lat_edges(), grid.lon_edges()
    lats = np.r_[lat_e, grid.latitudes, rng.uniform(lat_e[-1] - 1, lat_e[0] + 1, 200)]
    lons = np.r_[lon_e, grid.longitudes, rng.uniform(lon_e[0] - 1, lon_e[-1] + 1, 200)]
    n = max(len(lats), len(lons))  # every edge, centre and random value, paired at random
    lat, lon = np.resize(rng.permutation(lats), n), np.resize(rng.permutation(lons), n)
    mid_lat, mid_lon = grid.latitudes[grid.n_lat // 2], grid.longitudes[grid.n_lon // 2]
    lat = np.r_[lat, lat_e, np.full(len(lon_e), mid_lat), lat_e[[0, -1]]]  # every edge, and
    lon = np.r_[lon, np.full(len(lat_e), mid_lon), lon_e, lon_e[[0, -1]]]  # the corners
    row, col = grid.index_of(lat, lon)
    inside = grid.contains(lat, lon)
    code = [compile(e, "sql", "eval") for e in (row_sql, col_sql, *box)]
    for i in range(len(lat)):
        point = {"FLOOR": math.floor, "decimalLatitude": lat[i], "decimalLongitude": lon[i]}
        got = [eval(c, point) for c in code]
        assert got[:2] == [row[i], col[i]] and all(got[2:]) == inside[i], (lat[i], lon[i])
    assert not inside.all() and not inside[-1]  # points outside the box too: lon east edge
    assert set(row[inside]) == set(range(grid.n_lat)) and set(col[inside]) == set(range(grid.n_lon))


# --- the download ---------------------------------------------------------------------------
class FakeSql:
    """GBIF's download API for an SQL download: POST (Basic auth, 201 text key), status
    walking ``states`` with the request's sql, the zip behind a 302 to storage."""

    def __init__(self, server: HTTPServer, data: bytes, states=("PREPARING", "RUNNING",
                 "SUCCEEDED"), post=(), storage=()) -> None:  # fmt: skip
        self.server, self.data, self.states, self.polls = server, data, list(states), 0
        self.posts = Script([*post, self.accept])
        self.storage = Script([*storage, ranged(data)])
        self.bodies: list[dict] = []
        v1 = "/v1/occurrence/download"
        server.expect_request(f"{v1}/request", method="POST").respond_with_handler(self.posts)
        server.expect_request(f"{v1}/{KEY}").respond_with_handler(self.status)
        server.expect_request(f"{v1}/request/{KEY}.zip").respond_with_handler(
            lambda r: Response("", 302, {"Location": server.url_for(f"/storage/{KEY}.zip")})
        )
        server.expect_request(f"/storage/{KEY}.zip").respond_with_handler(self.storage)

    def accept(self, request: Request) -> Response:
        auth = request.headers.get("Authorization", "")
        user, _, pwd = base64.b64decode(auth[6:]).decode().partition(":")
        if not auth.startswith("Basic ") or (user, pwd) != ("alice", PASSWORD):
            return Response('{"message": "Unauthorized"}', 401, content_type="application/json")
        self.bodies.append(request.get_json())
        return Response(KEY, 201, content_type="text/plain")

    def status(self, request: Request) -> Response:
        state = self.states[min(self.polls, len(self.states) - 1)]
        self.polls += 1
        sql = self.bodies[0]["sql"] if self.bodies else ""
        body = {
            "key": KEY,
            "doi": DOI,
            "status": state,
            "size": len(self.data),
            "license": "http://creativecommons.org/licenses/by-nc/4.0/legalcode",
            "created": "2026-05-01T10:00:00.000+00:00",
            "totalRecords": 123456,
            "request": {"sql": sql, "format": "SQL_TSV_ZIP", "type": "OCCURRENCE"},
        }
        if state == "SUCCEEDED":
            body["downloadLink"] = self.server.url_for(f"/v1/occurrence/download/request/{KEY}.zip")
        return Response(json.dumps(body), 200, content_type="application/json")


def fetch(out: Path, server: HTTPServer, c: Client | None = None, **kw) -> Path:
    return ge.download(out, [AVES, MAMMALIA], 2010, 2010, DEMO, c or client()[0],
                       server.url_for("/v1"), **{"env": ENV, "poll": 30.0, **kw})  # fmt: skip


def test_download_posts_the_sql_polls_follows_the_redirect_and_cites_the_doi(
        tmp_path, httpserver, cube):  # fmt: skip
    fake = FakeSql(httpserver, cube)
    c, waits = client()
    out = fetch(tmp_path / ge.EFFORT_NAME, httpserver, c)
    assert out.read_bytes() == cube and fake.posts.calls == 1 and fake.polls == 3
    assert waits == [30.0, 30.0]
    sql = ge.effort_sql([AVES, MAMMALIA], 2010, 2010, DEMO)
    assert fake.bodies == [{"sendNotification": False, "format": "SQL_TSV_ZIP", "sql": sql,
                            "notificationAddresses": ["alice@example.org"]}]  # fmt: skip
    assert fake.posts.requests[0].headers["Content-Type"] == "application/json"
    assert "Authorization" not in fake.storage.requests[0].headers  # never sent to storage
    record = manifest.verify(out)
    req = record["request"]
    assert (req["download_key"], req["doi"], req["format"], req["sql"]) == (
        KEY,
        DOI,
        "SQL_TSV_ZIP",
        sql,
    )
    assert req["class_keys"] == [AVES, MAMMALIA] and req["max_uncertainty_m"] == 10000.0
    assert record["citation"] == ("GBIF.org (2026-05-01) GBIF Occurrence Download "
                                  "https://doi.org/10.15468/dl.eff0rt")  # fmt: skip
    assert record["licence"].endswith("by-nc/4.0/legalcode")
    assert not gbif_api.state_path(out).exists()
    fetch(out, httpserver, c, env={})
    assert (fake.posts.calls, fake.polls) == (1, 3)  # complete: nothing asked again
    ge.download(out, [AVES], 2010, 2010, DEMO, c, httpserver.url_for("/v1"), env=ENV)
    assert fake.posts.calls == 2 and fake.bodies[1]["sql"] != sql  # another query: requested


@pytest.mark.parametrize("fault", ["429", "500", "reset"])
def test_the_zip_survives_faults(tmp_path, httpserver, cube, fault):
    assert len(cube) > 45_000  # a reset loses at most the chunk in flight (16 kB)
    faults = {"429": [too_many(7)], "500": [server_error(500), server_error(503)],
              "reset": [cut_body(cube, 40_000)]}[fault]  # fmt: skip
    fake = FakeSql(httpserver, cube, states=["SUCCEEDED"], storage=faults)
    c, waits = client()
    out = fetch(tmp_path / ge.EFFORT_NAME, httpserver, c)
    assert out.read_bytes() == cube and fake.storage.calls == len(faults) + 1
    assert {"429": [7.0], "500": [1.0, 2.0], "reset": [1.0]}[fault] == waits
    if fault == "reset":
        assert fake.storage.requests[1].headers["Range"] == "bytes=32768-"


def test_the_request_waits_out_420_429_and_5xx(httpserver, cube):
    fake = FakeSql(httpserver, cube, post=[lambda r: Response("Enhance Your Calm", 420),
                                           too_many(9), server_error(502)])  # fmt: skip
    c, waits = client()
    key = ge.request_sql_download("SELECT 1", gbif_api.credentials(ENV), c,
                                  httpserver.url_for("/v1"))  # fmt: skip
    assert key == KEY and fake.posts.calls == 4 and waits == [60.0, 9.0, 2.0]


@pytest.mark.parametrize("cut", ["while polling", "mid-body"])
def test_an_interrupted_run_polls_the_saved_key_to_the_same_file(tmp_path, httpserver, cube,
                                                                  cut):  # fmt: skip
    FakeSql(httpserver, cube)
    clean = fetch(tmp_path / "a" / ge.EFFORT_NAME, httpserver)
    httpserver.clear()
    out = tmp_path / "b" / ge.EFFORT_NAME
    if cut == "while polling":
        fake = FakeSql(httpserver, cube, states=["PREPARING", "RUNNING"])
        with pytest.raises(DownloadError, match=rf"download {KEY}: still RUNNING after 2 polls"):
            fetch(out, httpserver, max_polls=2)
        fake.states, fake.polls = ["SUCCEEDED"], 0
    else:
        fake = FakeSql(httpserver, cube, states=["SUCCEEDED"], storage=[cut_body(cube, 40_000)])
        with pytest.raises(DownloadError, match=r"cut short 1 times"):
            fetch(out, httpserver, client(retries=0)[0])
        assert out.with_name(out.name + ".part").stat().st_size == 32768
    state = gbif_api.state_path(out).read_text()
    assert PASSWORD not in state and "alice" not in state
    saved = json.loads(state)
    assert saved["key"] == KEY and saved["sql"] == fake.bodies[0]["sql"]
    fetch(out, httpserver, env={})  # no credentials needed: the key is polled
    assert fake.posts.calls == 1 and out.read_bytes() == clean.read_bytes()
    if cut == "mid-body":
        assert fake.storage.requests[-1].headers["Range"] == "bytes=32768-"
    a, b = manifest.read_manifest(clean), manifest.read_manifest(out)
    a.pop("retrieved_at"), b.pop("retrieved_at")
    assert a == b and not gbif_api.state_path(out).exists()


def test_credentials_appear_in_no_log_error_state_or_file(tmp_path, httpserver, cube, caplog,
                                                          capsys):  # fmt: skip
    fake = FakeSql(httpserver, cube)
    caplog.set_level(logging.DEBUG)
    wrong = {**ENV, "GBIF_PWD": PASSWORD + "-wrong"}
    with pytest.raises(DownloadError, match=r"HTTP 401 .*Unauthorized") as err:
        fetch(tmp_path / "x.zip", httpserver, env=wrong)
    fetch(tmp_path / ge.EFFORT_NAME, httpserver)
    assert fake.posts.calls == 2
    with pytest.raises(DownloadError, match=r"variable\(s\) \['GBIF_USER', 'GBIF_PWD', "):
        fetch(tmp_path / "y.zip", httpserver, env={})
    seen = [caplog.text, str(err.value), repr(err.value), *capsys.readouterr()]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {ge.EFFORT_NAME, f"{ge.EFFORT_NAME}.manifest.json"}
    seen += [p.read_bytes().decode("latin-1") for p in files]
    assert not any(PASSWORD in text for text in seen)
    assert "alice@example.org" not in manifest.manifest_path(tmp_path / ge.EFFORT_NAME
                                                             ).read_text()  # fmt: skip


# --- the sample -----------------------------------------------------------------------------
def test_the_sample_is_deterministic_and_holds_every_study_record(tmp_path, cube):
    records = study_records()
    again = ge.sample(tmp_path / "a.zip", records, SPECIES, DEMO, "2010-01-01", "2010-02-28", 3)
    other = ge.sample(tmp_path / "b.zip", records, SPECIES, DEMO, "2010-01-01", "2010-02-28", 4)
    assert again.read_bytes() == cube and other.read_bytes() != cube
    record = manifest.verify(again)
    assert record["request"]["sql"] == ge.effort_sql([AVES, MAMMALIA], 2010, 2010, DEMO)
    assert record["request"]["sample"]["study_records"] == 20 + 375
    effort, q = ge.read_effort(again, DEMO, "2010-01-01", "2010-02-28")
    assert q.read == len(effort) + 4
    assert dict(q.dropped) == {"unreadable_line": 2, "outside_grid": 1, "date_unusable": 1}
    assert set(effort["class_key"]) == {AVES, MAMMALIA, 131}  # Amphibia: no study species
    keyed = effort.set_index(["class_key", "time", "row", "col"])["n"]
    assert keyed.index.is_unique
    study = counted(records).set_index(["class_key", "time", "row", "col"])["study"]
    assert study.sum() == 395 and study.max() == 20
    joined = pd.concat([keyed, study], axis=1).fillna(0)
    assert (joined["n"] >= joined["study"]).all()  # effort >= study records, every cell-day
    background = joined["n"] - joined["study"]
    assert background.sum() > 10 * study.sum()  # other species of the class, observed too
    daily = effort[effort["class_key"] == AVES].groupby("time")["n"].sum()
    assert len(daily) == 59 and daily.max() > 2 * daily.min()  # busier days
    cells = effort.groupby(["row", "col"])["n"].sum()
    assert cells.max() > 10 * cells.median()  # hotspots
    unresolved = SPECIES.assign(class_key=pd.array([MAMMALIA, None, AVES], "Int64"))
    with pytest.raises(ValueError, match=r"species \['Canis lupus'\]: 'gbif_key' and 'class_key"):
        ge.sample(tmp_path / "c.zip", records, unresolved, DEMO, "2010-01-01", "2010-01-31")
    with pytest.raises(ValueError, match=r"lacks column 'class_key'"):
        ge.sample(tmp_path / "c.zip", records, SPECIES.drop(columns="class_key"), DEMO,
                  "2010-01-01", "2010-01-31")  # fmt: skip


# --- reading --------------------------------------------------------------------------------
def zip_bytes(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            zf.writestr(zipfile.ZipInfo(name, (2026, 5, 1, 0, 0, 0)), text, zipfile.ZIP_DEFLATED)
    return buf.getvalue()


TINY = Grid(0.0, 1.0, 0.0, 1.0, 0.5)  # 3 x 3
ROWS = """\
212\t2010\t1\t5\t0\t0\t3
359\t2010\t1\t5\t2\t1\t1
212\t2010\t1\t5\t0\t0\tmany
x\t2010\t1\t5\t0\t0\t1
212\t2010\t1\t5\t0\t0\t-1
212\t2010\t1\t5\t1.5\t0\t1
212\t2010\t1\t\t0\t0\t1
212\t2010\t2\t30\t0\t0\t1
212\t2010\t13\t1\t0\t0\t1
212\t4\t5\t6\t0\t0\t1
212\t2009\t12\t31\t0\t0\t1
212\t2010\t1\t5\t-1\t0\t1
212\t2010\t1\t5\t0\t3\t1
"""


def test_read_effort_keeps_good_rows_and_counts_every_bad_one(tmp_path):
    path = tmp_path / "effort.zip"
    header = 'classKey\t"year"\tMONTH\tday\tcell_row\tcell_col\tn\n'  # read case-insensitively
    path.write_bytes(zip_bytes({"0004711-260501100000123.csv": header + ROWS,
                                "citations.txt": "GBIF.org ...\n"}))  # fmt: skip
    effort, q = ge.read_effort(path, TINY, "2010-01-01", "2010-12-31")
    assert effort.to_dict("list") == {"class_key": [212, 359],
                                      "time": [pd.Timestamp("2010-01-05")] * 2,
                                      "row": [0, 2], "col": [0, 1], "n": [3.0, 1.0]}  # fmt: skip
    assert [str(t) for t in effort.dtypes] == ["int64", "datetime64[ns]", "int64", "int64",
                                               "float64"]  # fmt: skip
    assert q.read == 13 and q.where == f"{path}:0004711-260501100000123.csv"
    assert dict(q.dropped) == {"unreadable_line": 4, "date_missing": 1, "date_unusable": 3,
                               "outside_window": 1, "outside_grid": 2}  # fmt: skip
    assert q.examples["unreadable_line"] == "line 4" and q.examples["outside_grid"] == "line 13"
    assert effort.attrs["source"] == q.where
    path.write_bytes(zip_bytes({"a.tsv": "\t".join(ge.COLUMNS) + "\n"}))  # no rows at all
    empty, q = ge.read_effort(path, TINY, "2010-01-01", "2010-12-31")
    assert len(empty) == 0 and q.read == 0 and list(empty.columns) == list(effort.columns)
    assert (empty.dtypes == effort.dtypes).all()


@pytest.mark.parametrize("files, error", [
    ({"a.csv": "classkey\tyear\tmonth\tday\tcell_row\tcell_col\n"},
     r"effort.zip:a.csv: missing column\(s\) \['n'\]"),
    ({"a.csv": "x\n", "b.tsv": "x\n"}, r"expected one .csv/.tsv/.txt member .*\['a.csv', 'b.tsv'"),
    ({"a.csv": "x\n", "../evil.csv": "x\n"}, r"points outside the archive \(path traversal\)"),
    ({"a.csv": "\t".join(ge.COLUMNS) + "\n1\t2\t3\t4\t5\t6\t7\t8\t9\n"},
     r"effort.zip:a.csv: not a tab-separated table of 7 columns"),
])  # fmt: skip
def test_a_bad_file_is_a_clear_error(tmp_path, files, error):
    path = tmp_path / "effort.zip"
    path.write_bytes(zip_bytes(files))
    with pytest.raises(ValueError, match=error):
        ge.read_effort(path, TINY, "2010-01-01", "2010-12-31")


def test_a_lying_zip_header_is_refused_before_inflating(tmp_path):
    data = bytearray(zip_bytes({"a.csv": "\t".join(ge.COLUMNS) + "\n" + ROWS}))
    for sig, at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # the declared size, 1 GiB
        i = data.index(sig)
        data[i + at : i + at + 4] = (1 << 30).to_bytes(4, "little")
    path = tmp_path / "effort.zip"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"declares 1073741824 bytes .*a zip bomb\? refused"):
        ge.read_effort(path, TINY, "2010-01-01", "2010-12-31")


# --- per step -------------------------------------------------------------------------------
def tiny_effort() -> pd.DataFrame:
    day = pd.Timestamp("2010-01-01")
    rows = [(AVES, day, 0, 0, 4.0), (AVES, day + pd.Timedelta(days=1), 2, 1, 2.0),
            (MAMMALIA, day, 1, 1, 3.0), (131, day, 0, 0, 100.0),  # a class not asked for
            (AVES, day + pd.Timedelta(days=2), 0, 0, 7.0)]  # fmt: skip
    return pd.DataFrame(rows, columns=["class_key", "time", "row", "col", "n"])


def test_effort_counts_per_day_known_answer():
    times = pd.date_range("2010-01-01", periods=2, freq="D")
    counts = ge.effort_counts(tiny_effort(), [MAMMALIA, AVES], times, times + pd.Timedelta(
        days=1), TINY)  # fmt: skip
    want = np.zeros((2, 2, 3, 3), np.float32)
    want[0, 1, 0, 0], want[1, 1, 2, 1], want[0, 0, 1, 1] = 4, 2, 3
    assert counts.dtype == np.float32
    np.testing.assert_array_equal(counts, want)  # 131 and the third day left out
    month = ge.effort_counts(tiny_effort(), [AVES], pd.DatetimeIndex(["2010-01-01"]),
                             pd.DatetimeIndex(["2010-02-01"]), TINY)  # fmt: skip
    assert month[0, 0, 0, 0] == 11 and month[0, 0, 2, 1] == 2 and month.sum() == 13


def test_effort_counts_at_6h_spread_a_day_evenly():
    times = pd.date_range("2010-01-01", periods=8, freq="6h")
    counts = ge.effort_counts(tiny_effort(), [AVES, MAMMALIA], times,
                              times + pd.Timedelta(hours=6), TINY)  # fmt: skip
    assert counts.shape == (8, 2, 3, 3)
    np.testing.assert_array_equal(counts[:4, 0, 0, 0], [1, 1, 1, 1])
    np.testing.assert_array_equal(counts[4:, 0, 2, 1], [0.5] * 4)
    np.testing.assert_array_equal(counts[:4, 1, 1, 1], [0.75] * 4)
    assert counts.sum() == 4 + 2 + 3  # conserved
    half = ge.effort_counts(tiny_effort(), [AVES], times[:2], times[:2] + pd.Timedelta(hours=6),
                            TINY)  # fmt: skip
    assert half.sum() == 2  # only the quarters of the day the steps cover


def test_effort_counts_refuse_bad_arguments():
    times = pd.date_range("2010-01-01", periods=2, freq="D")
    with pytest.raises(ValueError, match=r"unique class keys \(\[212, 212\]\)"):
        ge.effort_counts(tiny_effort(), [AVES, AVES], times, times, TINY)
    bad = tiny_effort().assign(row=[0, 0, 0, 0, 3])
    with pytest.raises(ValueError, match=r"1 row\(s\) with a cell outside the grid \(3, 3\)"):
        ge.effort_counts(bad, [AVES], times, times + pd.Timedelta(days=1), TINY)


def test_the_sample_counts_on_the_model_steps(tmp_path, cube):
    path = tmp_path / ge.EFFORT_NAME
    path.write_bytes(cube)
    effort, _ = ge.read_effort(path, DEMO, "2010-01-01", "2010-02-28")
    times = pd.date_range("2010-01-01", "2010-02-28", freq="D")
    counts = ge.effort_counts(effort, [AVES, MAMMALIA], times, times + pd.Timedelta(days=1),
                              DEMO)  # fmt: skip
    assert counts.shape == (59, 2, DEMO.n_lat, DEMO.n_lon)
    study = effort[effort["class_key"] != 131].groupby("class_key")["n"].sum()
    np.testing.assert_allclose(counts.sum(axis=(0, 2, 3)), study.loc[[AVES, MAMMALIA]])
    day = pd.Timestamp("2010-01-09")
    row, col = DEMO.index_of(np.array([50.1]), np.array([10.1]))
    assert counts[8, :, row[0], col[0]].sum() >= 20  # the 20 study records of that cell-day
    assert re.fullmatch(r"\d{7}-\d{12}\.csv", effort.attrs["source"].rsplit(":", 1)[1])
    assert (effort["time"] == day).any()
