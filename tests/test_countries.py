"""Country polygons and their area-fraction rasterisation (bfm.sources.countries): known
answers on hand-made countries, invariants on the shipped Natural Earth boundaries, the
boundary file's checks, the code table and the cache."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from bfm.contracts.grid import EARTH_RADIUS_M, Grid
from bfm.sources import countries
from bfm.testing import EUROPE_GRID

DEMO = Grid(44.0, 56.0, 0.0, 20.0, 0.5)
# 2 x 3 cells of 1 deg: row 0 spans lat 1.5..2.5, row 1 lat 0.5..1.5; columns lon 0.5..1.5,
# 1.5..2.5, 2.5..3.5.
TOY = Grid(lat_min=1.0, lat_max=2.0, lon_min=1.0, lon_max=3.0, res=1.0)


def box(lon0: float, lat0: float, lon1: float, lat1: float) -> dict:
    ring = [[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]
    return {"type": "Polygon", "coordinates": [ring]}


def write_boundaries(path: Path, shapes: dict[str, dict]) -> Path:
    features = [{"type": "Feature", "properties": {"iso3": code, "name": code},
                 "geometry": geom} for code, geom in shapes.items()]  # fmt: skip
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


@pytest.fixture
def toy_file(tmp_path: Path) -> Path:
    return write_boundaries(tmp_path / "toy.geojson", {
        "AAA": box(0.5, 1.5, 1.0, 2.5),  # exactly the western half of cell (0, 0)
        "BBB": box(1.5, 0.5, 1.8, 1.5),  # 30 % of cell (1, 1) ...
        "CCC": box(1.8, 0.5, 2.5, 1.5),  # ... and the other 70 %
        "DDD": box(0.5, 0.5, 1.5, 1.5),  # all of cell (1, 0)
    })  # fmt: skip


def as_dense(fr: countries.Fractions) -> dict[str, np.ndarray]:
    out = {c: np.zeros(fr.grid.n_lat * fr.grid.n_lon) for c in fr.codes}
    for cell, k, f in zip(fr.cell, fr.country, fr.fraction, strict=True):
        out[fr.codes[k]][cell] += f
    return {c: v.reshape(fr.grid.shape) for c, v in out.items()}


def test_fractions_of_hand_made_countries(toy_file):
    fr = countries.fractions(TOY, toy_file)
    dense = as_dense(fr)
    np.testing.assert_allclose(dense["AAA"], [[0.5, 0, 0], [0, 0, 0]], atol=1e-7)
    np.testing.assert_allclose(dense["BBB"], [[0, 0, 0], [0, 0.3, 0]], atol=1e-7)
    np.testing.assert_allclose(dense["CCC"], [[0, 0, 0], [0, 0.7, 0]], atol=1e-7)
    np.testing.assert_allclose(dense["DDD"], [[0, 0, 0], [1, 0, 0]], atol=1e-7)
    np.testing.assert_allclose(fr.covered(), [[0.5, 0, 0], [1, 1, 0]], atol=1e-7)
    # AAA's area is half of cell (0, 0) on the sphere: R^2 (sin 2.5 - sin 1.5) (1 deg) / 2.
    sines = np.sin(np.radians(2.5)) - np.sin(np.radians(1.5))
    cell = EARTH_RADIUS_M**2 * sines * np.radians(1)
    assert fr.country_areas()["AAA"] == pytest.approx(cell / 2 / 1e6, rel=1e-6)


def test_rasterise_mixes_border_cells_and_renormalises_over_valued_land(toy_file):
    fr = countries.fractions(TOY, toy_file)
    codes = ["CCC", "AAA", "EUU", "BBB", "DDD"]  # any order; EUU is in no boundary file
    values = np.array(
        [
            [100.0, 10.0, 7.0, 0.0, 50.0],  # year 1
            [np.nan, np.nan, 7.0, 0.0, 50.0],
        ]
    )  # year 2: CCC and AAA lack a value
    out = countries.rasterise(fr, codes, values)
    # Year 1: cell (0, 0) is half AAA, half sea -> AAA's 10 (renormalised over land);
    # cell (1, 1) = 0.3 * 0 + 0.7 * 100 = 70; cell (1, 0) = DDD's 50; the rest is sea.
    np.testing.assert_allclose(out[0], [[10, np.nan, np.nan], [50, 70, np.nan]], rtol=1e-6)
    # Year 2: CCC does not count, so cell (1, 1) is BBB's 0; AAA's cell has no valued country.
    np.testing.assert_allclose(out[1], [[np.nan] * 3, [50, 0, np.nan]], atol=1e-9)
    with pytest.raises(ValueError, match="repeated country code"):
        countries.rasterise(fr, ["AAA", "AAA"], np.ones((1, 2)))
    with pytest.raises(ValueError, match=r"do not match 2 codes"):
        countries.rasterise(fr, ["AAA", "BBB"], np.ones((1, 3)))


def test_overlaps_are_scaled_to_one_and_polar_cells_use_their_clipped_area(tmp_path):
    path = write_boundaries(tmp_path / "b.geojson", {
        "AAA": box(0.5, 0.5, 1.5, 1.5), "BBB": box(0.5, 0.5, 1.5, 1.5),  # the same cell
        "PPP": box(0.0, 89.5, 1.0, 90.0),  # all of the polar cell 89.5..90 (centre 90)
    })  # fmt: skip
    dense = as_dense(countries.fractions(TOY, path))
    np.testing.assert_allclose(dense["AAA"][1, 0] + dense["BBB"][1, 0], 1.0)
    assert dense["AAA"][1, 0] == pytest.approx(0.5)
    polar = Grid(lat_min=89.0, lat_max=90.0, lon_min=0.0, lon_max=1.0, res=1.0)
    dense = as_dense(countries.fractions(polar, path))
    # Cell (0, 0) spans lat 89.5..90 (clipped) and lon -0.5..0.5: PPP covers its eastern half.
    assert dense["PPP"][0, 0] == pytest.approx(0.5) and dense["PPP"][0, 1] == pytest.approx(0.5)


@pytest.mark.parametrize("grid", [DEMO, EUROPE_GRID], ids=["demo", "europe"])
def test_invariants_on_the_natural_earth_boundaries(grid):
    fr = countries.fractions(grid)
    assert (fr.fraction > 0).all() and (fr.fraction <= 1 + 1e-12).all()
    covered = fr.covered()
    assert covered.max() <= 1 + 1e-12 and 0.2 < (covered > 0).mean() < 0.9
    n = len(fr.codes)
    constant = countries.rasterise(fr, fr.codes, np.full((1, n), 42.5))[0]
    land = covered > 0
    np.testing.assert_allclose(constant[land], 42.5, rtol=1e-12)
    assert np.isnan(constant[~land]).all()
    values = np.random.default_rng(0).uniform(0, 100, (3, n))
    out = countries.rasterise(fr, fr.codes, values)
    assert np.nanmin(out) >= values.min() and np.nanmax(out) <= values.max()
    assert np.array_equal(np.isfinite(out), np.broadcast_to(land, out.shape))


def test_country_areas_match_the_countries():
    areas = countries.fractions(EUROPE_GRID).country_areas()
    # Natural Earth 1:110m polygons; the World Bank's figures are 357,580 and 549,087 km2
    # (France's polygon here includes Corsica but not French Guiana, which lies off the grid).
    assert areas["DEU"] == pytest.approx(357_000, rel=0.02)
    assert areas["FRA"] == pytest.approx(551_500, rel=0.02)
    assert areas["ESP"] == pytest.approx(505_000, rel=0.02)  # with the Balearics
    assert areas["USA"] == 0.0  # off the grid


def test_fractions_agree_with_shapely_intersections():
    """An independent check: the planar intersection areas of cell boxes and polygons."""
    import shapely
    from shapely.geometry import shape

    fr = countries.fractions(DEMO)
    found = countries.load()
    lat_e, lon_e = DEMO.lat_edges(), DEMO.lon_edges()
    cells = shapely.box(lon_e[:-1][None, :], lat_e[1:][:, None], lon_e[1:][None, :],
                        lat_e[:-1][:, None])  # fmt: skip
    dense = as_dense(fr)
    for code in ("DEU", "CHE", "AUT", "ITA", "DNK"):
        geom = shape(found.features[found.codes.index(code)]["geometry"])
        expected = shapely.area(shapely.intersection(cells, geom)) / DEMO.res**2
        np.testing.assert_allclose(dense[code], expected, atol=1e-6, err_msg=code)


def test_fractions_are_cached_per_grid_and_file_version(toy_file):
    countries._fractions.cache_clear()
    began = time.perf_counter()
    first = countries.fractions(EUROPE_GRID)
    elapsed = time.perf_counter() - began
    assert elapsed < 5.0, f"fractions of the Europe grid took {elapsed:.2f} s"
    assert countries.fractions(EUROPE_GRID) is first
    a = countries.fractions(TOY, toy_file)
    write_boundaries(toy_file, {"AAA": box(0.0, 0.0, 4.0, 3.0)})
    b = countries.fractions(TOY, toy_file)  # a new file version: computed again
    assert a is not b and b.codes == ("AAA",) and b.covered().min() == pytest.approx(1.0)


def test_boundary_file_errors_name_the_file_and_the_country(tmp_path):
    bad = write_boundaries(tmp_path / "bad.geojson", {"de": box(0, 0, 1, 1)})
    with pytest.raises(ValueError, match=r"bad\.geojson: feature 0: properties.iso3 'de'"):
        countries.load(bad)
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    bad = write_boundaries(tmp_path / "bow.geojson", {"AAA": bowtie})
    with pytest.raises(ValueError, match=r"bow\.geojson: AAA: invalid geometry \(Self-inter"):
        countries.load(bad)
    point = {"type": "Point", "coordinates": [0, 0]}
    with pytest.raises(ValueError, match="AAA: geometry must be a Polygon or MultiPolygon"):
        countries.load(write_boundaries(tmp_path / "p.geojson", {"AAA": point}))
    (tmp_path / "x.geojson").write_text('{"type": "Feature')
    with pytest.raises(ValueError, match=r"x\.geojson: not valid JSON"):
        countries.load(tmp_path / "x.geojson")
    with pytest.raises(FileNotFoundError, match="no such country boundary file"):
        countries.load(tmp_path / "none.geojson")


def test_the_shipped_boundaries_and_codes():
    found = countries.load()
    assert len(found.codes) == 175 and len(set(found.codes)) == 175
    assert {"FRA", "NOR", "XKX", "CYP", "SOM"} <= set(found.codes)
    assert not {"SOL", "CYN"} & set(found.codes)  # merged into SOM and CYP
    assert countries.resource(countries.BOUNDARIES).stat().st_size < 2_000_000
    codes = countries.read_codes()
    assert list(codes["iso3"]) == list(found.codes)
    m49 = dict(zip(codes["iso3"], codes["m49"], strict=True))
    assert (m49["DEU"], m49["FRA"], m49["AUT"], m49["XKX"]) == ("276", "250", "40", "")
    iso2 = dict(zip(codes["iso3"], codes["iso2"], strict=True))
    assert (iso2["DEU"], iso2["GBR"], iso2["XKX"]) == ("DE", "GB", "XK")
    assert codes["m49"].str.len().gt(0).sum() == 174 and codes["iso2"].is_unique
