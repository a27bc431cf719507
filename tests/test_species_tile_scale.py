"""The species tiles at scale: a month's tile reads only the records of its month (rows read
counted, not timed), and the GBIF sample is written a month at a time."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from bfm.contracts import occurrence as contract
from bfm.sources import gbif, occurrence_store
from bfm.sources.occurrences import RECORD_ORDER, effort_in, records_in
from bfm.species_list import read_species
from bfm.testing import ROOT

SPECIES_CSV = ROOT / "tests/species.csv"
LYNX = 2435240


def _records(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """Contract records ``(record_id, start, end)``, one species at one place."""
    n = len(rows)
    table = pd.DataFrame({
        "record_id": [r[0] for r in rows], "same_as": "", "source": "gbif",
        "scientific_name": "Lynx lynx", "species_key": LYNX, "latitude": [50.1] * n,
        "longitude": [10.1] * n, "uncertainty_m": 10.0,
        "start": pd.to_datetime([r[1] for r in rows], format="ISO8601"),
        "end": pd.to_datetime([r[2] for r in rows], format="ISO8601"), "precision": "day",
        "basis": "HUMAN_OBSERVATION", "status": "PRESENT", "licence": "CC0",
    })  # fmt: skip
    return contract.conform(table, "test")


# (id, start, end): which months each overlaps by the tiles' rule (start < t1, end >= t0)
HAND = [
    ("a", "2010-01-05", "2010-01-06"),  # a day of January
    ("b", "2010-01-31", "2010-02-01"),  # the last day of January: ends as February begins
    ("c", "2010-02-10 06:30", "2010-02-10 06:30"),  # a point in February
    ("d", "2010-01-01", "2011-01-01"),  # a year: every month of 2010 (and 2011-01)
    ("e", "2010-03-01", "2010-04-01"),  # a month: March (and April's first instant)
    ("f", "2010-02-28", "2010-03-01"),  # the last day of February
    ("g", "2010-03-15", "2010-03-16"),
]
EXPECTED = {
    "2010-01": ["d", "a", "b"],  # (start, record_id) order
    "2010-02": ["d", "b", "c", "f"],
    "2010-03": ["d", "f", "e", "g"],
    "2010-04": ["d", "e"],
    "2010-05": ["d"],
}


def _month(period: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    t0 = pd.Timestamp(f"{period}-01")
    return t0, t0 + pd.offsets.MonthBegin(1)


@pytest.fixture
def hand_table(tmp_path):
    path = tmp_path / "records.parquet"
    table = _records(HAND).sample(frac=1.0, random_state=1)  # any input order
    occurrence_store.write_by_period([table], path, "start", "end", RECORD_ORDER, max_rows=2)
    return path


@pytest.mark.parametrize("period", sorted(EXPECTED))
def test_a_period_reads_exactly_its_records(hand_table, period):
    got = records_in(hand_table, *_month(period))
    assert got.table["record_id"].tolist() == EXPECTED[period]
    assert got.rows_read == len(EXPECTED[period])  # no row of another lane was read
    assert got.groups_read < got.groups_total


def test_the_pyarrow_filter_and_the_period_read_agree_on_any_layout(tmp_path):
    """Correctness does not rest on the layout: a file written in one row group in any
    order gives the same records (it is only read whole)."""
    plain = tmp_path / "plain.parquet"
    _records(HAND[::-1]).to_parquet(plain, index=False)
    for period, ids in EXPECTED.items():
        got = records_in(plain, *_month(period))
        assert got.table["record_id"].tolist() == ids
        assert got.rows_read == len(HAND)


def _window(months: int, per_month: int, seed: int = 0) -> pd.DataFrame:
    """``per_month`` day records in every month from 2000-01, starting on random days
    (some on the month's last day, so they end in the next month)."""
    rng = np.random.default_rng(seed)
    first = pd.date_range("2000-01-01", periods=months, freq="MS")
    days = np.concatenate([
        m + pd.to_timedelta(rng.integers(0, m.days_in_month, per_month), unit="D") for m in first
    ])  # fmt: skip
    start = pd.DatetimeIndex(days)
    rows = [(f"r{i:07d}", s, s + pd.Timedelta(days=1)) for i, s in enumerate(start)]
    return _records([(i, str(s), str(e)) for i, s, e in rows])


def test_rows_read_per_month_do_not_grow_with_the_window(tmp_path):
    """Linear IO: the rows a month reads are that month's, in a 1-year or a 4-year file."""
    reads = {}
    for months in (12, 48):
        path = tmp_path / f"w{months}.parquet"
        table = _window(months, per_month=300)
        chunks = [table.iloc[i : i + 1000] for i in range(0, len(table), 1000)]  # streamed
        occurrence_store.write_by_period(chunks, path, "start", "end", RECORD_ORDER, 250)
        got = records_in(path, *_month("2000-06"))
        t0, t1 = _month("2000-06")
        inside = table[(table["start"] < t1) & (table["end"] >= t0)]
        assert sorted(got.table["record_id"]) == sorted(inside["record_id"])
        assert got.rows_read == len(inside)
        reads[months] = got.rows_read
    assert reads[12] == reads[48]


def test_effort_rows_of_a_period_are_read_alone(tmp_path):
    days = pd.date_range("2010-01-01", "2010-06-30", freq="D")
    effort = pd.DataFrame({"class_key": 359, "time": np.repeat(days, 3), "row": 1, "col": 2,
                           "n": 1.0})  # fmt: skip
    path = tmp_path / "effort.parquet"
    occurrence_store.write_by_period([effort], path, "time", "time", ["time", "class_key"])
    got = effort_in(path, pd.Timestamp("2010-03-01 12:00"), pd.Timestamp("2010-04-01"))
    assert got.table["time"].min() == pd.Timestamp("2010-03-01")  # the day begun before t0
    assert len(got.table) == got.rows_read == 31 * 3


def test_a_table_without_the_interval_columns_is_refused(tmp_path):
    path = tmp_path / "odd.parquet"
    pd.DataFrame({"when": pd.to_datetime(["2010-01-01"])}).to_parquet(path)
    with pytest.raises(ValueError, match=r"odd.parquet: lacks column\(s\) \['start', 'end'\]"):
        records_in(path, *_month("2010-01"))


def test_the_gbif_sample_is_written_a_month_at_a_time(tmp_path, monkeypatch):
    from bfm.contracts.grid import Grid

    grid = Grid(lat_min=46.0, lat_max=50.0, lon_min=6.0, lon_max=12.0, res=1.0)
    species = read_species(SPECIES_CSV)
    seen: list[int] = []
    writer = gbif.simple_csv_table

    def spy(records: pd.DataFrame, *args: object, **kwargs: object) -> pd.DataFrame:
        seen.append(len(records))
        return writer(records, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gbif, "simple_csv_table", spy)
    path = gbif.sample(tmp_path / "occ.zip", species, "2010-01-01", "2010-03-31", grid, seed=2)
    whole = gbif.sample_records(species, "2010-01-01", "2010-03-31", grid, 2, 2)
    assert len(seen) == 3 and sum(seen) == len(whole) and max(seen) < len(whole)
    table = gbif.open(path)
    assert table["gbifID"].astype(np.int64).diff().dropna().eq(1).all()  # ids run on
    assert (table["eventDate"].dt.floor("D").to_numpy() == whole["date"].to_numpy()).all()
    with zipfile.ZipFile(path) as zf:
        assert len(zf.namelist()) == 1


def test_sparse_sums_equal_the_dense_bincount_bit_for_bit():
    from bfm.sources.gbif_effort import per_species, sums_at

    rng = np.random.default_rng(3)
    shape = (4, 3, 5, 6)
    flat = rng.integers(0, int(np.prod(shape)), 500)
    weights = rng.random(500) / 3.0  # not exact in binary: the order of summation shows
    dense = np.bincount(flat, weights=weights, minlength=int(np.prod(shape)))
    got = sums_at(flat, weights, shape)
    assert got.dtype == np.float32
    assert np.array_equal(got, dense.reshape(shape).astype(np.float32))
    assert not sums_at(flat[:0], weights[:0], shape).any()
    of_species = [2, 0, 2, 1]
    assert np.array_equal(per_species(got, of_species), got[:, of_species])


def test_the_value_check_without_copies_keeps_its_verdicts(tmp_path):
    """write_tile checks ranges by min/max first; a value outside still names the variable,
    NaN (missing) is skipped as before."""
    from bfm.contracts.tile import write_tile
    from bfm.testing import mock_tile

    ds = mock_tile("species_occurrence")
    ds["occurrence"][0, 0, 0, 0] = np.nan
    write_tile(ds, tmp_path / "ok.nc")
    ds["occurrence"][0, 0, 0, 1] = -2.0
    with pytest.raises(ValueError, match=r"'occurrence' holds 1 value\(s\) outside its valid"):
        write_tile(ds, tmp_path / "bad.nc")


@pytest.mark.slow  # two `bfm tile` child processes (~3 s of imports each)
def test_bench_tiles_reports_a_flat_cost_per_month(tmp_path, capsys):
    from bfm.cli import main

    out = tmp_path / "tiles.json"
    args = ["bench", "tiles", "--grid", "9x13", "--step", "1D", "--no-atmospheric",
            "--records-per-month", "300", "--small-months", "2", "--large-months", "5",
            "--month", "2", "--workdir", str(tmp_path), "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    small, large = json.loads(out.read_text())["species"]
    assert (small["records"], large["records"]) == (600, 1500)
    assert small["rows_read"] == large["rows_read"] == small["records_of_month"] > 300
    assert small["groups_read"] == large["groups_read"] < small["groups_total"]
    assert 0 < small["peak_gib"] < 2 and small["cpu_s"] > 0
    assert "rows read 1.00x" in capsys.readouterr().out


def test_bench_tiles_refuses_a_month_outside_the_windows(caplog):
    from bfm.cli import main

    args = ["bench", "tiles", "--small-months", "3", "--month", "4", "--no-atmospheric"]
    assert main(args) == 1
    assert "--month 4: must be a month of both windows (1..3)" in caplog.text


def test_the_effort_sample_streams_the_download_and_writes_the_same_bytes(tmp_path):
    from bfm.contracts.grid import Grid
    from bfm.sources import gbif_effort

    grid = Grid(lat_min=46.0, lat_max=50.0, lon_min=6.0, lon_max=12.0, res=1.0)
    species = read_species(SPECIES_CSV)
    path = gbif.sample(tmp_path / "occ.zip", species, "2010-01-01", "2010-02-28", grid, seed=2)
    whole = gbif.records(path, species)[0]
    chunks = list(gbif.record_chunks(path, species, rows=100))
    assert len(chunks) > 2 and max(len(c) for c in chunks) == 100
    assert pd.concat(chunks, ignore_index=True).equals(whole)
    window = ("2010-01-01", "2010-02-28")
    a = gbif_effort.sample(tmp_path / "a.zip", whole, species, grid, *window, seed=2)
    b = gbif_effort.sample(tmp_path / "b.zip", iter(chunks), species, grid, *window, seed=2)
    assert a.read_bytes() == b.read_bytes()


def test_the_bench_report_prints_the_ratios_it_is_judged_by():
    from bfm.bench_tiles import report

    case = {"months": 12, "records": 1200, "mib_on_disk": 1.0, "period": "2000-06",
            "rows_read": 100, "groups_read": 3, "groups_total": 24, "cpu_s": 2.0,
            "peak_gib": 1.0}  # fmt: skip
    large = {**case, "months": 120, "records": 12000, "cpu_s": 2.2, "peak_gib": 2.5}
    gbif = [
        {"months": 6, "records": 10, "cpu_s": 1.0, "wall_s": 1.0, "peak_gib": 0.5},
        {"months": 24, "records": 40, "cpu_s": 4.0, "wall_s": 4.0, "peak_gib": 0.55},
    ]
    text = report(case, large, None, gbif)
    assert "rows read 1.00x, CPU 1.10x, peak RSS 2.50x" in text
    assert "peak <= 2 GiB: NO" in text  # the large window's 2.5 GiB
    assert "gbif sample, 24 / 6 months: peak RSS 1.10x" in text


def test_the_bench_report_without_species_prints_the_atmospheric_tile_alone():
    from bfm.bench_tiles import report

    atm = {"period": "2010-01", "step": "6h", "cpu_s": 90.0, "wall_s": 200.0, "peak_gib": 0.7}
    text = report(None, None, atm)  # bfm bench tiles --no-species
    assert text == ("atmospheric tile 2010-01 (step 6h): CPU 90.0 s, wall 200.0 s, peak RSS "
                    "0.70 GiB (target <= 2 GiB: yes)")  # fmt: skip
