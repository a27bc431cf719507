"""The occurrence contract: dates at their real precision, steps, cleaning, de-duplication."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bfm.contracts import occurrence as oc
from bfm.contracts.occurrence import Quarantine

T = pd.Timestamp


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2019", (T("2019-01-01"), T("2020-01-01"), "year")),
        ("2019-05", (T("2019-05-01"), T("2019-06-01"), "month")),
        ("2019-05-03", (T("2019-05-03"), T("2019-05-04"), "day")),
        ("2019-00-00", (T("2019-01-01"), T("2020-01-01"), "year")),  # Xeno-canto: unknown
        ("2019-05-00", (T("2019-05-01"), T("2019-06-01"), "month")),
        ("2019-05-03T10:00:00+02:00", (T("2019-05-03 08:00"), T("2019-05-03 08:00"), "time")),
        ("2019-05-03T10:00", (T("2019-05-03 10:00"), T("2019-05-03 10:00"), "time")),
        ("2019-05-01/2019-05-10", (T("2019-05-01"), T("2019-05-11"), "interval")),
        ("2019-05/2019-05", (T("2019-05-01"), T("2019-06-01"), "month")),
    ],
)
def test_a_date_stands_for_the_interval_it_is_precise_to(value, expected):
    assert oc.parse_date(value) == expected


@pytest.mark.parametrize("value", ["", "?", None, float("nan"), "0000-00-00"])
def test_missing_dates_are_missing(value):
    start, end, precision = oc.parse_date(value)
    assert precision == "missing" and pd.isna(start) and pd.isna(end)


@pytest.mark.parametrize("value", ["2019-13-01", "2019-02-30", "abc", "2019-05-10/2019-05-01"])
def test_impossible_dates_are_unusable_not_guessed(value):
    assert oc.parse_date(value)[2] == "unusable"


def test_parse_dates_parses_each_distinct_value_once_and_keeps_the_index():
    values = pd.Series(["2010-01-02", "?", "2010-01-02"], index=[7, 8, 9])
    out = oc.parse_dates(values)
    assert list(out.index) == [7, 8, 9]
    assert list(out["precision"]) == ["day", "missing", "day"]
    assert out["start"].iloc[2] == T("2010-01-02")


def _steps(mode: str, values: list[str], step: str = "6h", n: int = 8):
    d = oc.parse_dates(values)
    times = pd.date_range("2010-01-01", periods=n, freq=step)
    return oc.to_steps(pd.DatetimeIndex(d["start"]), pd.DatetimeIndex(d["end"]), times,
                       times + pd.Timedelta(step), mode)  # fmt: skip


def test_a_date_only_record_is_never_put_at_00_utc_of_a_6h_step():
    rec, step, weight, coarse = _steps("exclude", ["2010-01-02", "2010-01-02T07:00"])
    assert rec.tolist() == [1] and step.tolist() == [5] and coarse.tolist() == [True, False]
    rec, step, weight, coarse = _steps("spread", ["2010-01-02"])
    assert step.tolist() == [4, 5, 6, 7] and np.allclose(weight, 0.25) and not coarse.any()


def test_a_day_counts_whole_at_a_daily_step_and_a_month_spreads_by_overlap():
    rec, step, weight, coarse = _steps("exclude", ["2010-01-02", "2010-01"], step="1D", n=10)
    assert rec.tolist() == [0] and step.tolist() == [1] and coarse.tolist() == [False, True]
    rec, step, weight, _ = _steps("spread", ["2010-01"], step="1D", n=10)
    assert step.tolist() == list(range(10)) and np.allclose(weight, 1 / 31)


def test_records_outside_the_steps_count_nowhere_and_are_not_flagged():
    rec, _, _, coarse = _steps("exclude", ["2011-05-05", "2011-05", "?"])
    assert rec.size == 0 and not coarse.any()


def test_an_unknown_precision_mode_is_refused():
    with pytest.raises(ValueError, match="date precision mode 'guess'"):
        _steps("guess", ["2010-01-01"])


def _records(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    base = {
        "record_id": [f"gbif:{i}" for i in range(n)], "same_as": [""] * n,
        "source": ["gbif"] * n, "scientific_name": ["Lynx lynx"] * n, "species_key": [1] * n,
        "latitude": [50.0] * n, "longitude": [8.0] * n, "uncertainty_m": [np.nan] * n,
        "start": [T("2010-01-01")] * n, "end": [T("2010-01-02")] * n,
        "precision": ["day"] * n, "basis": ["HUMAN_OBSERVATION"] * n,
        "status": ["PRESENT"] * n, "licence": ["CC0"] * n,
    }  # fmt: skip
    base.update(columns)
    return oc.conform(pd.DataFrame(base), "test")


def test_clean_drops_each_bad_record_and_counts_it_by_reason(tmp_path):
    table = _records(
        latitude=[50, 95, 50, np.nan, 0, 50, 50, 50, 50, 50, 50],
        longitude=[8, 8, 200, 8, 0, 8, 8, 8, 8, 8, 8],
        basis=["HUMAN_OBSERVATION"] * 5 + ["FOSSIL_SPECIMEN", "LIVING_SPECIMEN"]
        + ["HUMAN_OBSERVATION"] * 4,
        status=["PRESENT"] * 7 + ["ABSENT"] + ["PRESENT"] * 3,
        precision=["day"] * 8 + ["missing", "unusable", "day"],
        uncertainty_m=[np.nan] * 10 + [50_000.0],
    )  # fmt: skip
    q = Quarantine("occurrences.parquet")
    q.saw(len(table))
    kept = oc.clean(table, q, max_uncertainty_m=10_000)
    assert kept["record_id"].tolist() == ["gbif:0"]
    assert dict(q.dropped) == {
        "coordinates_out_of_range": 2, "coordinates_missing": 1, "coordinates_zero": 1,
        "fossil_specimen": 1, "living_specimen": 1, "absence": 1, "date_missing": 1,
        "date_unusable": 1, "uncertainty_too_large": 1,
    }  # fmt: skip
    report = oc.read_quarantine(q.write(tmp_path / "occurrences.parquet"))
    assert report["read"] == 11 and report["kept"] == 1
    assert report["examples"]["coordinates_out_of_range"] == "gbif:1"
    assert "dropped 10" in q.summary()


def test_a_repeated_record_id_is_counted_once():
    table = _records(record_id=["gbif:1", "gbif:1", "gbif:2"], latitude=[50, 50, 51])
    q = Quarantine("x")
    q.saw(3)
    assert oc.clean(table, q)["record_id"].tolist() == ["gbif:1", "gbif:2"]
    assert q.dropped == {"duplicate": 1}


def test_a_name_outside_the_study_is_counted_not_kept():
    species = pd.DataFrame({"gbif_key": [2435099], "scientific_name": ["Lynx lynx"]})
    names = pd.Series(["Lynx lynx (Linnaeus, 1758)", "LYNX LYNX carpathicus", "Canis lupus"])
    keys = oc.match_species(names, species)
    assert keys.tolist()[:2] == [2435099, 2435099] and pd.isna(keys.iloc[2])
    table = _records(species_key=keys.tolist())
    q = Quarantine("x")
    assert len(oc.clean(table, q)) == 2 and q.dropped == {"not_a_study_species": 1}


def test_a_republished_record_is_counted_once_and_the_original_kept():
    gbif = _records(record_id=["gbif:10", "gbif:11"], same_as=["inaturalist:5", ""])
    inat = _records(record_id=["inaturalist:5"], source=["inaturalist"])
    q = Quarantine("x")
    both = oc.deduplicate({"gbif": gbif, "inaturalist": inat}, q)
    assert sorted(both["record_id"]) == ["gbif:11", "inaturalist:5"]
    assert q.dropped == {"duplicate": 1} and q.examples["duplicate"] == "gbif:10"


def test_conform_names_the_table_and_the_missing_columns():
    with pytest.raises(ValueError, match=r"inat.jsonl: record table lacks column\(s\) \['end'"):
        oc.conform(_records(latitude=[1.0]).drop(columns=["end", "basis"]), "inat.jsonl")
    with pytest.raises(ValueError, match=r"media kind\(s\) \['video'\]"):
        oc.conform_media(pd.DataFrame({c: ["x"] for c in oc.MEDIA_COLUMNS} | {"kind": ["video"],
                         "species_key": [1]}), "m")  # fmt: skip
    assert list(oc.empty().columns) == list(oc.COLUMNS)
    assert list(oc.empty_media().columns) == list(oc.MEDIA_COLUMNS)


def test_a_quarantine_of_another_schema_is_refused(tmp_path):
    path = tmp_path / "x.quarantine.json"
    path.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ValueError, match="not bfm-quarantine/1"):
        oc.read_quarantine(path)
