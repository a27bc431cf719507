"""The Red List source: Butchart's index worked by hand, category sources, the UN SDG answer
and CSV exports, fake UN SDG and IUCN v4 servers with injected faults, reruns, the IUCN token
kept out of logs, manifests and tiles, and the sample -> tile -> write -> open round trip."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from bfm.contracts import catalogue
from bfm.contracts.grid import Grid
from bfm.contracts.tile import open_tile, write_tile
from bfm.sources import countries, gbif, manifest
from bfm.sources import redlist as rl
from bfm.sources import redlist_formats as rf
from bfm.sources.base import Study
from bfm.sources.http import Client, DownloadError, Service
from bfm.testing import PROVENANCE
from tests.fakes import Script, Waits, cut_body, malformed_json, server_error, too_many, truncated

DEMO = Grid(44.0, 56.0, 0.0, 20.0, 0.5)
SPECIES = str(Path(__file__).resolve().parents[1] / "tests" / "species.csv")
YEARS = [2010, 2011]
TOKEN = "PLANTED-IUCN-TOKEN-7f3a9c"


def study(start="2010-01-01", end="2011-12-31", step="1D", species=SPECIES, **block) -> Study:
    settings = {"mode": "sample", "seed": 9, **block}
    return Study(DEMO, start, end, step, (), str(species), {"redlist": settings})


def client(name: str = "unsdg", retries: int = 4) -> tuple[Client, Waits]:
    waits = Waits()
    return Client(Service(name, retries=retries, backoff=1.0, timeout=5), sleep=waits), waits


# --- the index ------------------------------------------------------------------------------
def test_red_list_index_worked_by_hand():
    # Weights LC 0, NT 1, VU 2, EN 3, CR 4, EX 5; DD, NE and no category are left out:
    # N = 6, sum W = 0 + 1 + 2 + 3 + 4 + 5 = 15, RLI = 1 - 15 / (5 * 6) = 0.5.
    cats = ["LC", "NT", "VU", "EN", "CR", "EX", "DD", "NE", None]
    assert rl.red_list_index(cats) == pytest.approx(0.5)
    # CR(PE) weighs as extinct: N = 4, sum W = 0 + 0 + 3 + 5 = 8, RLI = 1 - 8 / 20 = 0.6.
    assert rl.red_list_index(["LC", "LC", "EN", "CR(PE)"]) == pytest.approx(0.6)
    assert rl.red_list_index(["LC"] * 3) == 1.0 and rl.red_list_index(["EX", "EW"]) == 0.0
    assert math.isnan(rl.red_list_index(["DD", "NE"]))
    assert rl.category(" cr (pe) ", "x") == "CR(PE)" and rl.category("LR/nt", "x") == "NT"
    assert rl.category("", "x") is None
    with pytest.raises(ValueError, match=r"species.csv: row 3: 'XX' is not an IUCN Red List"):
        rl.category("XX", "species.csv: row 3")


def test_categories_come_from_the_option_then_the_species_list_then_iucn(tmp_path):
    assert rl.categories_origin(study()) == "iucn"
    with_column = tmp_path / "species.csv"
    with_column.write_text("gbif_key,scientific_name,common_name,red_list_category\n"
                           "1,A a,a,LC\n2,B b,b,EN\n3,C c,c,DD\n4,D d,d,\n")  # fmt: skip
    s = study(species=with_column)
    assert rl.categories_origin(s) == "species list"
    assert rl.RedList().raw_names(catalogue.modality("redlist"), "2010-01", s) == ["rli.json"]
    cats, origin = rl.species_categories([], s)
    assert cats == {1: "LC", 2: "EN", 3: "DD", 4: None} and "species.csv" in origin
    # RLI of LC and EN (DD and the blank left out): 1 - (0 + 3) / (5 * 2) = 0.7.
    assert rl.red_list_index(cats.values()) == pytest.approx(0.7)
    option = tmp_path / "cats.csv"
    option.write_text("gbif_key,red_list_category\n1,CR\n2,VU\n9,LC\n")
    s = study(species=with_column, options={"categories": str(option)})
    cats, _ = rl.species_categories([], s)
    assert cats == {1: "CR", 2: "VU", 3: None, 4: None}  # 9 is no species of the study
    option.write_text("gbif_key,category\n1,CR\n")
    with pytest.raises(ValueError, match=r"cats.csv: missing column\(s\) \['red_list_category"):
        rl.species_categories([], s)
    with pytest.raises(FileNotFoundError, match=r"none.csv: no such file of Red List categ"):
        rl.species_categories([], study(options={"categories": str(tmp_path / "none.csv")}))


# --- UN SDG formats --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def m49() -> dict[str, str]:
    return rl.m49_codes(countries.BOUNDARIES, countries.CODES)


def test_sample_rli_is_the_sdg_answer_and_reads_back_by_iso3(tmp_path, m49):
    path = rl.RedList().sample("rli.json", tmp_path / "rli.json", study())
    body = json.loads(path.read_text())
    assert body["totalPages"] == 1 and body["totalElements"] == len(body["data"])
    first = body["data"][0]
    assert first["series"] == "ER_RSK_LST" and isinstance(first["value"], str)
    assert {"1", "150"} <= {r["geoAreaCode"] for r in body["data"]}  # regions mixed in
    table = rf.read_rli(path, m49)
    assert set(table["year"]) == set(YEARS) and "DEU" in set(table["iso3"])
    assert table["value"].between(0, 1).all() and len(table) == 2 * (
        len(m49) - 3
    )  # no ATA, ATF, TWN
    record = manifest.verify(path)
    assert (
        record["request"]["seriesCode"] == "ER_RSK_LST" and "276" in record["request"]["areaCode"]
    )


def test_csv_exports_read_as_the_api(tmp_path, m49):
    (tmp_path / "un.csv").write_text(
        "Goal,Target,Indicator,SeriesCode,SeriesDescription,GeoAreaCode,GeoAreaName,"
        "TimePeriod,Value,Reporting Type\n"
        "15,15.5,15.5.1,ER_RSK_LST,Red List Index,276,Germany,2010,0.93,N\n"
        "15,15.5,15.5.1,ER_RSK_LST,Red List Index,276,Germany,2010,0.91,G\n"
        "15,15.5,15.5.1,ER_RSK_LST,Red List Index,040,Austria,2011,0.88,G\n"
        "15,15.5,15.5.1,ER_RSK_LST,Red List Index,150,Europe,2011,0.9,G\n"
        "15,15.5,15.5.1,OTHER,Other,276,Germany,2011,5,G\n"
    )  # fmt: skip
    table = rf.read_rli(tmp_path / "un.csv", m49)  # G wins over N; regions and OTHER dropped
    assert sorted(map(tuple, table.to_numpy().tolist())) == [("AUT", 2011, 0.88),
                                                             ("DEU", 2010, 0.91)]  # fmt: skip
    (tmp_path / "owid.csv").write_text(
        'Entity,Code,Year,"15.5.1 - Red List Index - ER_RSK_LST"\n'
        "Germany,DEU,2010,0.91\nAustria,AUT,2011,0.88\nWorld,OWID_WRL,2010,0.72\n"
    )
    owid = rf.read_rli(tmp_path / "owid.csv", m49)
    assert sorted(map(tuple, owid.to_numpy().tolist())) == [("AUT", 2011, 0.88),
                                                            ("DEU", 2010, 0.91)]  # fmt: skip
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"bad.csv: neither the UN SDG CSV export"):
        rf.read_rli(tmp_path / "bad.csv", m49)


# --- the fake UN SDG API ---------------------------------------------------------------------
def sdg_page(rows: list, page: int, size: int) -> bytes:
    body = {"size": size, "totalElements": len(rows), "totalPages": math.ceil(len(rows) / size),
            "pageNumber": page, "attributes": [], "dimensions": [],
            "data": rows[(page - 1) * size : page * size]}  # fmt: skip
    return json.dumps(body).encode()


def sdg_api(rows: list):
    def handle(request: Request) -> Response:
        assert request.args["seriesCode"] == "ER_RSK_LST"
        data = sdg_page(rows, int(request.args["page"]), int(request.args["pageSize"]))
        start = int(request.headers.get("Range", "bytes=0-")[6:-1] or 0)
        return Response(data[start:], 206 if start else 200, content_type="application/json")

    return handle


@pytest.fixture(scope="module")
def sdg_rows(m49) -> list:
    return rf.sample_rli(m49, YEARS, seed=9)["data"]


def fetch_rli(httpserver: HTTPServer, out: Path, c: Client, m49, size: int = 100) -> Path:
    request = rl.sdg_request(m49, YEARS, size)
    return rl.download_rli(out, request, c, httpserver.url_for("/sdg"))


@pytest.mark.parametrize("fault", ["none", "429", "500s", "reset", "truncated", "malformed"])
def test_sdg_download_pages_and_survives_faults(tmp_path, httpserver, sdg_rows, m49, fault):
    first = sdg_page(sdg_rows, 1, 100)
    faults = {"none": [], "429": [too_many(3)], "500s": [server_error(502), server_error(500)],
              "reset": [cut_body(first, 5000)], "truncated": [truncated(first, 4000)],
              "malformed": [malformed_json()]}[fault]  # fmt: skip
    script = Script([*faults, sdg_api(sdg_rows)])
    httpserver.expect_request("/sdg/Series/Data").respond_with_handler(script)
    c, waits = client()
    path = fetch_rli(httpserver, tmp_path / "rli.json", c, m49)
    body = json.loads(path.read_text())
    assert body["data"] == sdg_rows and body["totalPages"] == 1
    assert len(waits) == len(faults) and (fault != "429" or waits == [3.0])
    last = script.requests[-1]
    assert last.args.getlist("areaCode") == sorted(m49, key=int)
    assert last.args.getlist("timePeriod") == ["2010", "2011"]
    assert last.args["page"] == str(math.ceil(len(sdg_rows) / 100))


def test_sdg_interrupted_download_reruns_to_the_same_manifest(tmp_path, httpserver, sdg_rows, m49):
    httpserver.expect_request("/sdg/Series/Data").respond_with_handler(sdg_api(sdg_rows))
    clean = fetch_rli(httpserver, tmp_path / "a" / "rli.json", client()[0], m49)
    httpserver.clear()
    page_2 = sdg_page(sdg_rows, 2, 100)
    script = Script([sdg_api(sdg_rows), cut_body(page_2, 2000), server_error(503)])
    httpserver.expect_request("/sdg/Series/Data").respond_with_handler(script)
    out = tmp_path / "b" / "rli.json"
    with pytest.raises(DownloadError, match=r"unsdg redlist rli.json page 2: HTTP 503"):
        fetch_rli(httpserver, out, client(retries=2)[0], m49)
    assert not out.exists()
    httpserver.clear()
    httpserver.expect_request("/sdg/Series/Data").respond_with_handler(sdg_api(sdg_rows))
    fetch_rli(httpserver, out, client()[0], m49)
    assert out.read_bytes() == clean.read_bytes()
    a, b = manifest.read_manifest(clean), manifest.read_manifest(out)
    a.pop("retrieved_at"), b.pop("retrieved_at")
    assert a == b


# --- the fake IUCN API -----------------------------------------------------------------------
def iucn_api(known: dict[str, str]):
    """/taxa/scientific_name: 401 without the token (echoing what it got), 404 if unknown."""

    def handle(request: Request) -> Response:
        if request.headers.get("Authorization") != TOKEN:
            got = request.headers.get("Authorization")
            return Response(json.dumps({"error": f"bad token {got}"}), 401)
        name = f"{request.args['genus_name']} {request.args['species_name']}"
        if name not in known:
            return Response(json.dumps({"error": "Not found"}), 404)
        a = {"assessment_id": 1, "latest": True, "year_published": "2022",
             "red_list_category_code": known[name], "scopes": [{"code": "1",
             "description": {"en": "Global"}}]}  # fmt: skip
        old = {**a, "assessment_id": 0, "latest": False, "red_list_category_code": "CR"}
        body = {"taxon": {"scientific_name": name}, "assessments": [old, a]}
        return Response(json.dumps(body), 200, content_type="application/json")

    return handle


KNOWN = {"Lynx lynx": "LC", "Canis lupus": "NT", "Ursus arctos": "EN", "Vulpes vulpes": "LC"}


def test_iucn_download_with_faults_keeps_the_token_out_of_everything(
    tmp_path, httpserver: HTTPServer, monkeypatch, caplog
):
    monkeypatch.setenv(rl.TOKEN_ENV, TOKEN)
    script = Script([too_many(2), server_error(500), iucn_api(KNOWN)])
    httpserver.expect_request("/v4/taxa/scientific_name").respond_with_handler(script)
    waits = Waits()
    c = rl.iucn_client(Service("iucn", retries=3, backoff=1.0), sleep=waits)
    species = gbif.read_species(SPECIES)
    caplog.set_level(logging.DEBUG)
    out = rl.download_iucn(tmp_path / "iucn.json", species, c, httpserver.url_for("/v4"))
    # Retry-After 2, then backoff 1 * 2**1, then the courtesy pause between species.
    assert waits == [2.0, 2.0, *[rl.IUCN_PAUSE] * (len(species) - 1)]
    got = rf.read_iucn(out)
    by_name = dict(zip(species["scientific_name"], species["gbif_key"], strict=True))
    assert got[by_name["Ursus arctos"]] == "EN"  # the latest assessment, not the old CR
    missing = [k for k in species["gbif_key"] if got[int(k)] is None]
    assert len(missing) == len(species) - len(KNOWN)  # 404: no category
    # RLI of LC, NT, EN, LC: 1 - (0 + 1 + 3 + 0) / 20 = 0.8.
    assert rl.red_list_index(got.values()) == pytest.approx(0.8)
    s = study(start="2010-01-01", end="2010-01-31")
    rli = rl.RedList().sample("rli.json", tmp_path / "rli.json", s)
    src, modality = rl.RedList(), catalogue.modality("redlist")
    tile = src.to_tile(src.open([rli, out], modality, s), modality, s, "2010-01", PROVENANCE)
    tile_path = write_tile(tile, tmp_path / "tile.nc")
    assert np.nanmax(tile["rli_species"].values) == pytest.approx(0.8)
    texts = [caplog.text, out.read_text(), manifest.manifest_path(out).read_text()]
    assert all(TOKEN not in t for t in texts) and TOKEN.encode() not in tile_path.read_bytes()


def test_iucn_refused_or_missing_token_fails_clearly(tmp_path, httpserver, monkeypatch):
    monkeypatch.delenv(rl.TOKEN_ENV, raising=False)
    with pytest.raises(DownloadError, match=r"set the environment variable IUCN_API_TOKEN"):
        rl.iucn_client()
    monkeypatch.setenv(rl.TOKEN_ENV, "WRONG-" + TOKEN)
    httpserver.expect_request("/v4/taxa/scientific_name").respond_with_handler(iucn_api(KNOWN))
    c = rl.iucn_client(Service("iucn", retries=1), sleep=Waits())
    with pytest.raises(DownloadError, match=r"refused the token in IUCN_API_TOKEN \(HTTP 401\)"
                       ) as err:  # fmt: skip
        rl.download_iucn(tmp_path / "iucn.json", gbif.read_species(SPECIES), c,
                         httpserver.url_for("/v4"))  # fmt: skip
    assert TOKEN not in str(err.value) and not (tmp_path / "iucn.json").exists()


# --- tiles ----------------------------------------------------------------------------------
def test_rli_species_is_one_value_on_land_and_rli_follows_the_countries(tmp_path):
    s = study(start="2010-12-31", end="2011-01-01")
    src, modality = rl.RedList(), catalogue.modality("redlist")
    body = {"data": [rf._sdg_row("276", "Germany", 2010, 0.9),
                     rf._sdg_row("276", "Germany", 2011, 0.8),
                     rf._sdg_row("250", "France", 2010, 0.7),
                     rf._sdg_row("150", "Europe", 2011, 0.5)]}  # fmt: skip
    (tmp_path / "rli.json").write_text(json.dumps(body))
    iucn = src.sample("iucn.json", tmp_path / "iucn.json", s)
    native = src.open([tmp_path / "rli.json", iucn], modality, s)
    dec = src.to_tile(native, modality, s, "2010-12", PROVENANCE)
    jan = src.to_tile(native, modality, s, "2011-01", PROVENANCE)
    lat, lon = list(DEMO.latitudes), list(DEMO.longitudes)
    berlin, paris = (lat.index(52.5), lon.index(13.5)), (lat.index(49.0), lon.index(2.5))
    sea = (lat.index(55.0), lon.index(4.0))
    assert dec["rli"].values[0][berlin] == pytest.approx(0.9)
    assert jan["rli"].values[0][berlin] == pytest.approx(0.8)
    assert dec["rli"].values[0][paris] == pytest.approx(0.7)
    assert np.isnan(jan["rli"].values[0][paris])  # no 2011 row: missing, never carried on
    species = dec["rli_species"].values[0]
    land = countries.fractions(DEMO).covered() > 0
    assert np.isnan(species[~land]).all() and np.isnan(species[sea])
    assert np.unique(species[land]).size == 1
    expected = rl.red_list_index(rf.read_iucn(iucn).values())
    assert species[berlin] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("step", ["1D", "1MS"])
def test_round_trip_sample_open_tile_write_open(tmp_path, step):
    s = study(start="2010-11-01", end="2011-02-28", step=step)
    src, modality = rl.RedList(), catalogue.modality("redlist")
    files = [src.sample(n, tmp_path / n, s) for n in src.raw_names(modality, "2011-01", s)]
    assert [f.name for f in files] == ["rli.json", "iucn.json"]
    tile = src.to_tile(src.open(files, modality, s), modality, s, "2011-01", PROVENANCE)
    path = write_tile(tile, tmp_path / "tile.nc")
    with open_tile(path, "redlist") as back:
        assert len(back["time"]) == (31 if step == "1D" else 1)
        for var in ("rli", "rli_species"):
            np.testing.assert_array_equal(back[var].values, tile[var].values)
            assert 0.2 < np.isfinite(back[var].values).mean() and np.nanmax(back[var]) <= 1
        assert "ER_RSK_LST" in back.attrs["source"]


def test_file_mode_names_and_options(tmp_path):
    src = rl.RedList()
    assert src.user_file(str(tmp_path / "export.csv"), "rli.json") == str(tmp_path / "export.csv")
    assert src.user_file(str(tmp_path / "export.csv"), "iucn.json") == str(tmp_path / "iucn.json")
    (tmp_path / "rli.csv").write_text("x")
    assert src.user_file(str(tmp_path), "rli.json") == str(tmp_path / "rli.csv")
    with pytest.raises(ValueError, match=r"sources.redlist.options: unknown key\(s\) \['token'"):
        rl.options(study(options={"token": "x"}))
    s = study()
    assert src.raw_settings("iucn.json", s)["species"] == SPECIES
    assert src.raw_inputs("iucn.json", s) == [SPECIES] and src.raw_inputs("rli.json", s) == []
    assert src.raw_settings("rli.json", s)["years"] == [2010, 2011]
