"""Convert Natural Earth 1:110m admin-0 countries (the ``naturalearth_lowres`` shapefile of the
geopandas 0.14.4 wheel) into ``countries.geojson``, keyed by ISO 3166-1 alpha-3 code.

Run by hand, once, when the boundary set changes (never at build time; see README.md)::

    pip download --no-deps geopandas==0.14.4 -d /tmp/gpd
    unzip -o /tmp/gpd/geopandas-0.14.4-py3-none-any.whl \
        'geopandas/datasets/naturalearth_lowres/*' -d /tmp/gpd
    python resources/countries/make.py /tmp/gpd/geopandas/datasets/naturalearth_lowres

It needs only shapely (the shapefile and its dBASE table are read here, with ``struct``).
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import shapely
from shapely.geometry import Polygon, mapping

HERE = Path(__file__).resolve().parent
STEM = "naturalearth_lowres"
DIGITS = 6  # coordinates are rounded to 1e-6 deg (0.1 m; the 1:110m data is ~1 km coarse)
# iso_a3 "-99" in the shapefile: the code the World Bank uses for the country.
CODE_FROM_NAME = {"Kosovo": "XKX"}
# Natural Earth shows these separately; the World Bank and UN SDG report them as part of
# the country they belong to, so their polygons join that country.
MERGED_INTO = {"SOL": "SOM", "CYN": "CYP"}  # Somaliland -> Somalia, N. Cyprus -> Cyprus


def read_dbf(path: Path) -> list[dict[str, str]]:
    """The records of a dBASE III table (every field as stripped text)."""
    data = path.read_bytes()
    count, header_len, record_len = struct.unpack("<IHH", data[4:12])
    encoding = "latin-1"  # naturalearth_lowres.cpg: ISO-8859-1
    fields, offset = [], 32
    while data[offset] != 0x0D:
        name = data[offset : offset + 11].split(b"\0")[0].decode("ascii")
        fields.append((name, data[offset + 16]))
        offset += 32
    rows = []
    for i in range(count):
        record = data[header_len + i * record_len : header_len + (i + 1) * record_len]
        pos, row = 1, {}  # byte 0: deletion flag
        for name, length in fields:
            row[name] = record[pos : pos + length].decode(encoding).strip()
            pos += length
        rows.append(row)
    return rows


def read_polygons(path: Path) -> list[shapely.Geometry]:
    """The (multi)polygons of an ESRI shapefile of shape type 5 (Polygon)."""
    data = path.read_bytes()
    (shape_type,) = struct.unpack("<i", data[32:36])
    if shape_type != 5:
        raise ValueError(f"{path}: shape type {shape_type}, expected 5 (Polygon)")
    out, offset = [], 100
    while offset < len(data):
        _, words = struct.unpack(">ii", data[offset : offset + 8])
        content = data[offset + 8 : offset + 8 + 2 * words]
        n_parts, n_points = struct.unpack("<ii", content[36:44])
        parts = list(struct.unpack(f"<{n_parts}i", content[44 : 44 + 4 * n_parts]))
        xy = struct.unpack(f"<{2 * n_points}d", content[44 + 4 * n_parts :][: 16 * n_points])
        points = list(zip(xy[0::2], xy[1::2], strict=True))
        rings = [points[a:b] for a, b in zip(parts, parts[1:] + [n_points], strict=True)]
        out.append(assemble(rings))
        offset += 8 + 2 * words
    return out


def assemble(rings: list[list[tuple[float, float]]]) -> shapely.Geometry:
    """Shapefile rings -> (multi)polygon: clockwise rings are shells, the others holes."""
    shells = [Polygon(r) for r in rings if not shapely.is_ccw(shapely.LinearRing(r))]
    holes = [Polygon(r) for r in rings if shapely.is_ccw(shapely.LinearRing(r))]
    parts = []
    for shell in shells:
        inside = [h for h in holes if shell.contains(h.representative_point())]
        parts.append(Polygon(shell.exterior, [h.exterior for h in inside]))
    return shapely.multipolygons(parts) if len(parts) > 1 else parts[0]


def convert(folder: Path) -> dict:
    rows = read_dbf(folder / f"{STEM}.dbf")
    polygons = read_polygons(folder / f"{STEM}.shp")
    if len(rows) != len(polygons):
        raise ValueError(f"{folder}: {len(rows)} records but {len(polygons)} shapes")
    by_code: dict[str, tuple[str, str, list[shapely.Geometry]]] = {}
    for row, geom in zip(rows, polygons, strict=True):
        own = CODE_FROM_NAME.get(row["name"], row["iso_a3"])
        code = MERGED_INTO.get(own, own)
        if len(code) != 3 or not code.isalpha():
            raise ValueError(f"{row['name']}: iso_a3 {row['iso_a3']!r} and no fix for it")
        _, _, parts = by_code.get(code, ("", "", []))
        if code == own or code not in by_code:  # the country's own row names it
            by_code[code] = (row["name"], row["continent"], parts)
        parts.append(geom)
    features = []
    for code in sorted(by_code):
        name, continent, parts = by_code[code]
        geom = shapely.set_precision(shapely.union_all(parts), 10.0**-DIGITS)
        geom = shapely.orient_polygons(geom)  # RFC 7946: shells counter-clockwise
        if not geom.is_valid or geom.is_empty:
            raise ValueError(f"{code}: invalid geometry after rounding")
        features.append({"type": "Feature", "properties": {"iso3": code, "name": name,
                         "continent": continent}, "geometry": mapping(geom)})  # fmt: skip
    return {"type": "FeatureCollection", "features": features}


def main(folder: str) -> None:
    collection = convert(Path(folder))
    text = json.dumps(collection, separators=(",", ":"))
    (HERE / "countries.geojson").write_text(text + "\n")
    codes = {f["properties"]["iso3"] for f in collection["features"]}
    listed = {line.split(",")[0] for line in (HERE / "codes.csv").read_text().splitlines()[1:]}
    print(f"{len(codes)} countries, {len(text) / 1e6:.2f} MB; not in codes.csv: "
          f"{sorted(codes - listed)}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])
