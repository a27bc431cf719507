"""The World Bank source: the API v2 envelope (paging, nulls, aggregates, the error array
with HTTP 200), the bulk CSV, a fake API with injected faults, reruns after an interruption,
known answers of the tiles and the sample -> open -> to_tile -> write_tile -> open_tile trip."""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from bfm.contracts import catalogue
from bfm.contracts.grid import Grid
from bfm.contracts.tile import open_tile, write_tile
from bfm.sources import countries, manifest
from bfm.sources import worldbank as wb
from bfm.sources import worldbank_formats as wbf
from bfm.sources.base import Study
from bfm.sources.http import Client, DownloadError, Service
from bfm.testing import PROVENANCE
from tests.fakes import Script, Waits, cut_body, malformed_json, server_error, too_many, truncated

DEMO = Grid(44.0, 56.0, 0.0, 20.0, 0.5)
SPECIES = str(Path(__file__).resolve().parents[1] / "tests" / "species.csv")
FOREST = "AG.LND.FRST.ZS"
YEARS = [2010, 2011]


def study(start="2010-01-01", end="2011-12-31", step="1D", **block) -> Study:
    settings = {"mode": "sample", "seed": 5, **block}
    return Study(DEMO, start, end, step, (), SPECIES, {"worldbank": settings})


def client(retries: int = 4) -> tuple[Client, Waits]:
    waits = Waits()
    return Client(Service("worldbank", retries=retries, backoff=1.0, timeout=5),
                  sleep=waits), waits  # fmt: skip


def row(iso3: str, year: int, value: float | None, code: str = FOREST) -> dict:
    return {
        "indicator": {"id": code, "value": wb.NAMES[code]},
        "country": {"id": iso3[:2], "value": iso3},
        "countryiso3code": iso3,
        "date": str(year),
        "value": value,
        "unit": "",
        "obs_status": "",
        "decimal": 1,
    }


def page_bytes(rows: list, page: int, per_page: int) -> bytes:
    pages = math.ceil(len(rows) / per_page)
    meta = {"page": page, "pages": pages, "per_page": per_page, "total": len(rows),
            "sourceid": "2", "lastupdated": "2025-07-01"}  # fmt: skip
    return json.dumps([meta, rows[(page - 1) * per_page : page * per_page]]).encode()


def api(rows: list):
    """The World Bank API v2 over ``rows``: paging by per_page/page, Range honoured."""

    def handle(request: Request) -> Response:
        data = page_bytes(rows, int(request.args["page"]), int(request.args["per_page"]))
        start = int(request.headers.get("Range", "bytes=0-")[6:-1] or 0)
        return Response(data[start:], 206 if start else 200, content_type="application/json")

    return handle


def serve(httpserver: HTTPServer, *handlers) -> Script:
    script = Script(handlers)
    httpserver.expect_request(f"/v2/country/all/indicator/{FOREST}").respond_with_handler(script)
    return script


@pytest.fixture(scope="module")
def sample_rows() -> list:
    return wb.sample_body(FOREST, countries.BOUNDARIES, countries.CODES, YEARS, seed=5)[1]


# --- sample and formats ---------------------------------------------------------------------
def test_sample_is_the_api_envelope_with_aggregates_and_nulls(tmp_path, sample_rows):
    path = wb.WorldBank().sample(f"{FOREST}.json", tmp_path / f"{FOREST}.json", study())
    meta, rows = json.loads(path.read_text())
    assert (meta["page"], meta["pages"], meta["total"]) == (1, 1, len(rows))
    assert rows == sample_rows
    iso3 = {r["countryiso3code"] for r in rows}
    assert {"EUU", "WLD", "ECS"} <= iso3 and {"DEU", "FRA"} <= iso3 and "TWN" not in iso3
    de = [r for r in rows if r["countryiso3code"] == "DEU"]
    assert [r["date"] for r in de] == ["2011", "2010"] and de[0]["country"]["id"] == "DE"
    assert any(r["value"] is None for r in rows)
    assert all(r["value"] is None or 0 <= r["value"] <= 100 for r in rows)
    record = manifest.verify(path)
    assert record["url"] == "sample:worldbank?seed=5" and record["request"]["date"] == "2010:2011"
    again = wb.WorldBank().sample(f"{FOREST}.json", tmp_path / "again.json", study())
    assert again.read_bytes() == path.read_bytes()  # deterministic


def test_open_keeps_boundary_countries_and_the_window_years(tmp_path, sample_rows):
    path = tmp_path / f"{FOREST}.json"
    rows = sample_rows + [row("DEU", 2009, 11.0)]  # a year outside the window
    path.write_text(json.dumps([{"page": 1, "pages": 1, "total": len(rows)}, rows]))
    ds = wb.WorldBank().open([path], catalogue.modality("forest"), study())
    assert list(ds["year"].values) == YEARS
    assert "EUU" not in ds["country"].values and len(ds["country"]) == 175
    by_key = {(r["countryiso3code"], int(r["date"])): r["value"] for r in sample_rows}
    got = ds["forest_area"].sel(country="DEU", year=2010).item()
    assert got == by_key[("DEU", 2010)]
    assert np.isnan(ds["forest_area"].sel(country="TWN")).all()  # no rows: missing


def bulk_csv(rows: list, code: str = FOREST) -> str:
    years = list(range(1960, 2024))
    table: dict[str, dict] = {}
    for r in rows:
        line = table.setdefault(r["countryiso3code"], {"name": r["country"]["value"]})
        line[int(r["date"])] = "" if r["value"] is None else repr(r["value"])
    head = ['"Data Source","World Development Indicators",', "",
            '"Last Updated Date","2025-07-01",', "",
            ",".join(f'"{c}"' for c in ["Country Name", "Country Code", "Indicator Name",
                                        "Indicator Code", *map(str, years)]) + ","]  # fmt: skip
    body = [",".join([f'"{v["name"]}"', f'"{iso3}"', '"Forest area"', f'"{code}"',
                      *(f'"{v.get(y, "")}"' for y in years)]) + ","
            for iso3, v in table.items()]  # fmt: skip
    return "\ufeff" + "\n".join(head + body) + "\n"


def test_the_bulk_csv_reads_as_the_api(tmp_path, sample_rows):
    api_table, _ = wb.read(_write_api(tmp_path / f"{FOREST}.json", sample_rows), FOREST)
    zpath = tmp_path / f"API_{FOREST}_DS2_en_csv_v2_4770.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr(f"Metadata_Country_API_{FOREST}_DS2_en_csv_v2_4770.csv", "x\n")
        zf.writestr(f"API_{FOREST}_DS2_en_csv_v2_4770.csv", bulk_csv(sample_rows))
    table, updated = wb.read(zpath, FOREST)
    assert updated == "2025-07-01"
    table = table[table["year"].isin(YEARS)]
    merged = api_table.merge(table, on=["iso3", "year"], suffixes=("_api", "_csv"))
    assert len(merged) == len(api_table)
    pd.testing.assert_series_equal(merged["value_api"], merged["value_csv"], check_names=False)
    src = wb.WorldBank()
    assert src.user_file(str(tmp_path / "none"), f"{FOREST}.json").endswith(f"{FOREST}.json")
    (tmp_path / f"{FOREST}.json").unlink()
    assert src.user_file(str(tmp_path), f"{FOREST}.json") == str(zpath)
    csv = tmp_path / "API_AG.LND.AGRI.ZS_DS2_en_csv_v2_1.csv"
    csv.write_text(bulk_csv(sample_rows))  # wrong indicator inside
    with pytest.raises(ValueError, match=rf"{csv.name}: indicator\(s\) \['{FOREST}'\], "):
        wb.read(csv, "AG.LND.AGRI.ZS")


def _write_api(path: Path, rows: list) -> Path:
    path.write_text(json.dumps([{"page": 1, "pages": 1, "total": len(rows)}, rows]))
    return path


def test_the_error_array_names_the_indicator(tmp_path, httpserver: HTTPServer):
    error = [{"message": [{"id": "120", "key": "Invalid value",
                           "value": "The provided parameter value is not valid"}]}]  # fmt: skip
    path = tmp_path / f"{FOREST}.json"
    path.write_text(json.dumps(error))
    with pytest.raises(ValueError, match=rf"answered with an error for indicator {FOREST}: "
                       r"120 Invalid value: The provided parameter"):  # fmt: skip
        wb.read(path, FOREST)
    serve(httpserver, lambda r: Response(json.dumps(error), 200))
    c, _ = client()
    with pytest.raises(DownloadError, match=rf"worldbank {FOREST}.json page 1: the World Bank "
                       rf"API answered with an error for indicator {FOREST}: 120"):  # fmt: skip
        wb.download(tmp_path / "d" / path.name, FOREST, YEARS, c, httpserver.url_for("/v2"))
    assert not (tmp_path / "d" / path.name).exists()


# --- downloads against the fake API ---------------------------------------------------------
def fetch(httpserver: HTTPServer, out: Path, c: Client, per_page: int = 100) -> Path:
    return wb.download(out, FOREST, YEARS, c, httpserver.url_for("/v2"), per_page)


def test_download_joins_the_pages(tmp_path, httpserver: HTTPServer, sample_rows):
    script = serve(httpserver, api(sample_rows))
    path = fetch(httpserver, tmp_path / f"{FOREST}.json", client()[0], per_page=100)
    pages = math.ceil(len(sample_rows) / 100)
    assert pages > 2 and script.calls == pages
    assert [r.args["page"] for r in script.requests] == [str(p) for p in range(1, pages + 1)]
    assert {r.args["date"] for r in script.requests} == {"2010:2011"}
    meta, rows = json.loads(path.read_text())
    assert rows == sample_rows and (meta["page"], meta["pages"]) == (1, 1)
    record = manifest.verify(path)
    assert record["url"].endswith(f"/v2/country/all/indicator/{FOREST}")
    assert record["request"] == wb.request(FOREST, YEARS, 100)
    assert not wb.scratch_dir(path).exists()


@pytest.mark.parametrize("fault", ["429", "500s", "reset", "truncated", "malformed"])
def test_download_survives_faults(tmp_path, httpserver: HTTPServer, sample_rows, fault):
    first = page_bytes(sample_rows, 1, 100)
    faults = {"429": [too_many(7)], "500s": [server_error(500), server_error(503)],
              "reset": [cut_body(first, 4000)], "truncated": [truncated(first, 3000)],
              "malformed": [malformed_json()]}[fault]  # fmt: skip
    serve(httpserver, *faults, api(sample_rows))
    c, waits = client()
    path = fetch(httpserver, tmp_path / f"{FOREST}.json", c)
    assert json.loads(path.read_text())[1] == sample_rows
    assert len(waits) == len(faults) and (fault != "429" or waits == [7.0])


def test_a_failing_service_names_the_unit_and_the_cause(tmp_path, httpserver: HTTPServer):
    serve(httpserver, server_error(500))
    with pytest.raises(
        DownloadError,
        match=rf"worldbank {FOREST}.json page 1: HTTP 500 from "
        r"http://.*/v2/country/all/indicator/AG.LND.FRST.ZS after 3 attempts",
    ):
        fetch(httpserver, tmp_path / f"{FOREST}.json", client(retries=2)[0])


def test_an_interrupted_download_reruns_to_the_same_manifest(tmp_path, httpserver, sample_rows):
    serve(httpserver, api(sample_rows))
    clean = fetch(httpserver, tmp_path / "clean" / f"{FOREST}.json", client()[0])
    httpserver.clear()
    served = iter(range(10_000))

    def failing_after_page_1(request: Request) -> Response:
        next(served)
        if request.args["page"] != "1":
            return Response("down", 503)
        return api(sample_rows)(request)

    serve(httpserver, failing_after_page_1)
    out = tmp_path / "rerun" / f"{FOREST}.json"
    with pytest.raises(DownloadError, match=r"page 2: HTTP 503"):
        fetch(httpserver, out, client(retries=1)[0])
    assert not out.exists() and any(wb.scratch_dir(out).iterdir())  # page 1 kept
    httpserver.clear()
    script = serve(httpserver, api(sample_rows))
    fetch(httpserver, out, client()[0])
    assert "1" not in [r.args["page"] for r in script.requests]  # page 1 reused
    assert out.read_bytes() == clean.read_bytes()
    a, b = manifest.read_manifest(clean), manifest.read_manifest(out)
    a.pop("retrieved_at"), b.pop("retrieved_at")
    assert a == b


# --- tiles ----------------------------------------------------------------------------------
def test_tile_known_answers_by_area_fraction_and_the_yearly_rule(tmp_path):
    rows = [
        row("DEU", 2011, 30.0),
        row("DEU", 2010, 20.0),
        row("FRA", 2011, None),
        row("FRA", 2010, 40.0),
        row("WLD", 2010, 99.0),
        row("EUU", 2010, 77.0),
    ]
    path = _write_api(tmp_path / f"{FOREST}.json", rows)
    s = study(start="2010-12-30", end="2011-01-02")
    src, forest = wb.WorldBank(), catalogue.modality("forest")
    native = src.open([path], forest, s)
    dec = src.to_tile(native, forest, s, "2010-12", PROVENANCE)["forest_area"].values
    jan = src.to_tile(native, forest, s, "2011-01", PROVENANCE)["forest_area"].values
    assert dec.shape == (2, *DEMO.shape) and jan.shape == (2, *DEMO.shape)
    lat, lon = list(DEMO.latitudes), list(DEMO.longitudes)
    berlin, paris, sea = (
        (lat.index(52.5), lon.index(13.5)),
        (lat.index(49.0), lon.index(2.5)),
        (lat.index(55.0), lon.index(4.0)),
    )  # North Sea
    assert dec[0][berlin] == 20.0 and jan[1][berlin] == 30.0  # the value of each step's year
    assert dec[0][paris] == 40.0 and np.isnan(jan[0][paris])  # 2011 null: never carried on
    assert np.isnan(dec[0][sea])  # WLD and EUU are aggregates, not countries
    # A cell on the German-French border holds the fraction-weighted mean of 20 and 40.
    fr = countries.fractions(DEMO)
    k = [fr.codes.index("DEU"), fr.codes.index("FRA")]
    for cell in range(DEMO.n_lat * DEMO.n_lon):
        sel = fr.cell == cell
        f = {c: fr.fraction[sel & (fr.country == c)].sum() for c in k}
        if min(f.values()) > 0.2 and fr.fraction[sel].sum() == pytest.approx(sum(f.values())):
            expected = (20 * f[k[0]] + 40 * f[k[1]]) / (f[k[0]] + f[k[1]])
            assert dec[0].ravel()[cell] == pytest.approx(expected, rel=1e-6)
            break
    else:
        pytest.fail("no cell shared by Germany and France alone")


def test_values_outside_the_range_are_masked_and_counted(tmp_path, sample_rows):
    rows = [dict(r) for r in sample_rows]
    de = next(r for r in rows if r["countryiso3code"] == "DEU" and r["date"] == "2010")
    de["value"] = 150.0  # % of land area: impossible
    path = _write_api(tmp_path / f"{FOREST}.json", rows)
    src, forest, s = wb.WorldBank(), catalogue.modality("forest"), study()
    tile = src.to_tile(src.open([path], forest, s), forest, s, "2010-03", PROVENANCE)
    assert tile["forest_area"].attrs["n_out_of_range"] == 1
    assert np.nanmax(tile["forest_area"].values) <= 100
    for r in rows[:50]:
        r["value"] = 1e20
    path = _write_api(tmp_path / f"{FOREST}.json", rows)
    with pytest.raises(ValueError, match=r"forest_area.*outside its valid range"):
        src.to_tile(src.open([path], forest, s), forest, s, "2010-03", PROVENANCE)


@pytest.mark.parametrize("step", ["1D", "1MS"])
@pytest.mark.parametrize("name", ["land", "agriculture", "forest"])
def test_round_trip_sample_open_tile_write_open(tmp_path, name, step):
    s = study(start="2010-11-01", end="2011-02-28", step=step)
    src, modality = wb.WorldBank(), catalogue.modality(name)
    files = [src.sample(n, tmp_path / n, s) for n in src.raw_names(modality, "2011-01", s)]
    tile = src.to_tile(src.open(files, modality, s), modality, s, "2011-01", PROVENANCE)
    path = write_tile(tile, tmp_path / "tile.nc")
    with open_tile(path, name) as back:
        assert len(back["time"]) == (31 if step == "1D" else 1)
        for var in modality.variable_names:
            np.testing.assert_array_equal(back[var].values, tile[var].values)
            assert np.isfinite(back[var].values).mean() > 0.3  # land, with a value
        assert "World Bank" in back.attrs["source"] and back.attrs["licence"] == "CC BY 4.0"


def test_options_and_names_are_checked():
    with pytest.raises(ValueError, match=r"sources.worldbank.options: unknown key\(s\) \['pages'"):
        wb.options(study(options={"pages": 3}))
    with pytest.raises(ValueError, match=r"raw file 'forest.json' is not <CODE>.json"):
        wb.parse_name("forest.json")
    s = study()
    names = wb.WorldBank().raw_names(catalogue.modality("agriculture"), "2010-01", s)
    assert names == [f"{c}.json" for c in ("AG.LND.AGRI.ZS", "AG.LND.IRIG.AG.ZS",
                                            "AG.LND.ARBL.ZS", "AG.LND.CROP.ZS")]  # fmt: skip
    assert wb.WorldBank().raw_settings(names[0], s)["years"] == [2010, 2011]
    assert "grid" not in wb.WorldBank().raw_settings(names[0], s)  # a grid change keeps them


def test_bulk_csv_without_header_is_refused():
    with pytest.raises(ValueError, match=r"x.csv: no header line starting with \"Country Name"):
        wbf.bulk_table(io.StringIO("a,b\n").getvalue(), FOREST, "x.csv")
