"""The occurrences source: every occurrence source's records cleaned, counted once, tiled."""

from __future__ import annotations

import csv
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bfm import sources
from bfm.config import ConfigError, validate_config
from bfm.contracts import catalogue
from bfm.contracts.occurrence import read_quarantine
from bfm.sources import gbif, gbif_dwca, inaturalist
from bfm.sources.base import Study
from bfm.sources.occurrences import combine, combine_effort, read_records, records_in
from bfm.testing import ROOT, demo_config

LYNX = 2435240  # tests/species.csv
ROW = dict.fromkeys(gbif.SIMPLE_CSV_COLUMNS, "")


def _row(i: int, **values: str) -> dict[str, str]:
    row = {**ROW, "gbifID": str(1000 + i), "speciesKey": str(LYNX), "species": "Lynx lynx",
           "scientificName": "Lynx lynx (Linnaeus, 1758)", "decimalLatitude": "50.1",
           "decimalLongitude": "10.1", "eventDate": "2010-01-05", "occurrenceStatus": "PRESENT",
           "basisOfRecord": "HUMAN_OBSERVATION", "coordinateUncertaintyInMeters": "30"}  # fmt: skip
    row.update(values)
    return row


def _simple_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    table = pd.DataFrame(rows, columns=list(gbif.SIMPLE_CSV_COLUMNS))
    text = table.to_csv(sep="\t", index=False, quoting=csv.QUOTE_NONE, lineterminator="\n")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("0000001-240101000000.csv", text)
    return path


# The faults measured on the GBIF path before the contract, and the other cleaning rules.
ROWS = [
    _row(0),  # kept
    _row(1, decimalLatitude="95"),  # out of range
    _row(2, decimalLongitude="200"),  # out of range
    _row(3, eventDate=""),  # no date
    _row(4, decimalLatitude="fifty"),  # not a number
    _row(5),  # the same gbifID as row 5 below: counted once
    _row(5),
    _row(6, basisOfRecord="FOSSIL_SPECIMEN"),
    _row(7, basisOfRecord="LIVING_SPECIMEN"),
    _row(8, occurrenceStatus="ABSENT"),
    _row(9, decimalLatitude="0", decimalLongitude="0"),
    _row(10, coordinateUncertaintyInMeters="50000"),
    _row(11, eventDate="2010-13-01"),  # unusable
    _row(12, species="Felis catus", scientificName="Felis catus", speciesKey="2435035"),
    _row(13, decimalLatitude="30.0"),  # inside the world, outside the grid
    _row(14, eventDate="2009-06-01"),  # before the window
    _row(15, eventDate="2010-01"),  # a month: coarser than a day, kept for the tiles' rule
]


@pytest.fixture
def study_config(tmp_path) -> dict:
    """The demo config with GBIF from a file and iNaturalist from its sample."""
    config = demo_config()
    config["species"] = str(ROOT / "tests/species.csv")
    config.pop("species_subset")
    config["sources"] = {
        "gbif": {"mode": "file", "path": str(tmp_path / "gbif.zip")},
        "inaturalist": {"mode": "sample", "seed": 3},
    }
    return validate_config(config)


def _run(tmp_path: Path, config: dict, rows: list[dict[str, str]]) -> Path:
    study = Study.from_config(config)
    _simple_csv(tmp_path / "gbif.zip", rows)
    os.chdir(tmp_path)  # raw files lie under results/raw/<source>/
    if "inaturalist" in config["sources"]:
        inat = Path("results/raw/inaturalist/observations.jsonl.gz")
        inat.parent.mkdir(parents=True, exist_ok=True)
        sources.get("inaturalist").sample(inat.name, inat, study)
    out = Path("results/raw/occurrences/records.parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    return combine(study, out)


def test_a_study_with_occurrence_sources_combines_them(study_config):
    assert study_config["sources"]["occurrences"] == {"mode": "combine", "seed": 0,
                                                      "options": {}}  # fmt: skip
    modalities = catalogue.active(study_config["sources"])
    assert [m.name for m in modalities if m.source == "occurrences"] == ["species_occurrence"]


def test_every_bad_gbif_row_is_dropped_and_counted_by_reason(tmp_path, study_config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = _run(tmp_path, study_config, ROWS)
    report = read_quarantine(Path(str(out) + ".quarantine.json"))
    g = report["sources"]["gbif"]
    assert g["read"] == len(ROWS) and g["kept"] == 3
    assert g["dropped"] == {
        "coordinates_out_of_range": 2, "date_missing": 1, "coordinates_missing": 1,
        "duplicate": 1, "fossil_specimen": 1, "living_specimen": 1, "absence": 1,
        "coordinates_zero": 1, "uncertainty_too_large": 1, "date_unusable": 1,
        "not_a_study_species": 1, "outside_grid": 1, "outside_window": 1,
    }  # fmt: skip
    assert g["read"] == g["kept"] + sum(g["dropped"].values())  # nothing vanishes uncounted
    assert report["read"] == report["kept"] + sum(report["dropped"].values())
    table = pd.read_parquet(out)
    kept = table[table["source"] == "gbif"]
    assert sorted(kept["record_id"]) == ["gbif:1000", "gbif:1005", "gbif:1015"]
    month = kept.set_index("record_id").loc["gbif:1015"]
    assert month["precision"] == "month" and month["start"] == pd.Timestamp("2010-01-01")
    assert month["end"] == pd.Timestamp("2010-02-01")  # the month, not its first day
    # stored by period: a month's tile reads only the rows that overlap it
    t0, t1 = pd.Timestamp("2010-02-01"), pd.Timestamp("2010-03-01")
    february = records_in(out, t0, t1)
    overlapping = table[(table["start"] < t1) & (table["end"] >= t0)]
    assert february.rows_read == len(overlapping) == len(february.table) > 0
    assert february.table["start"].is_monotonic_increasing


def test_a_gbif_republication_of_an_inaturalist_observation_counts_once(
    tmp_path, study_config, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    study = Study.from_config(study_config)
    obs = tmp_path / "sample" / inaturalist.RAW_NAME
    obs.parent.mkdir()
    sources.get("inaturalist").sample(obs.name, obs, study)
    first = inaturalist.records(obs, gbif.read_species(study.species))[0]
    first = first[first["species_key"].notna() & first["latitude"].notna()].iloc[0]
    native_id = first["record_id"].split(":")[1]
    url = f"https://www.inaturalist.org/observations/{native_id}"
    republished = _row(20, datasetKey=gbif_dwca.INATURALIST, occurrenceID=url)
    out = _run(tmp_path, study_config, [_row(0), republished])
    table = pd.read_parquet(out)
    assert first["record_id"] in set(table["record_id"])  # the original is kept
    assert "gbif:1020" not in set(table["record_id"])
    report = read_quarantine(Path(str(out) + ".quarantine.json"))
    assert report["dropped"]["duplicate"] == 1 and report["examples"]["duplicate"] == "gbif:1020"


def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path):
    bomb = tmp_path / "bomb.zip"
    header = "\t".join(gbif.SIMPLE_CSV_COLUMNS) + "\n"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("x.csv", "w") as f:
        f.write(header.encode())
        zero = b"\0" * (1 << 20)
        for _ in range(300):  # 300 MiB of zeros in about 0.3 MB
            f.write(zero)
    began = time.perf_counter()
    with pytest.raises(ValueError, match="zip bomb"):
        gbif.records(bomb, gbif.read_species(ROOT / "tests/species.csv"))
    assert time.perf_counter() - began < 2.0


def _tile(tmp_path: Path, config: dict, dates: list[str], step: str, mode: str) -> xr.Dataset:
    config = {**config, "time": {**config["time"], "step": step}}
    gbif_file = {**config["sources"]["gbif"], "options": {"effort": False}}  # no cube here
    config["sources"] = {"gbif": gbif_file, "occurrences": {
        "mode": "combine", "options": {"date_precision": mode}}}  # fmt: skip
    config = validate_config(config)
    rows = [_row(i, eventDate=d) for i, d in enumerate(dates)]
    out = _run(tmp_path, config, rows)
    study = Study.from_config(config)
    modality = catalogue.modality("species_occurrence")
    src = sources.get("occurrences")
    effort = combine_effort(study, out.with_name("effort.parquet"))
    return src.tile([out, effort], modality, study, "2010-01", {"settings_hash": "x"})


@pytest.mark.parametrize("mode", ["exclude", "spread"])
def test_a_date_only_record_at_a_6h_step_is_never_put_at_00_utc(tmp_path, study_config,
                                                               monkeypatch, mode):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    ds = _tile(tmp_path, study_config, ["2010-01-05", "2010-01-05T13:20:00Z"], "6h", mode)
    lynx = ds["occurrence"].sel(time=slice("2010-01-05", "2010-01-05T18:00"))
    keys = list(ds["species_key"].values)
    per_step = lynx.isel(species=keys.index(LYNX)).sum(("latitude", "longitude")).values
    if mode == "exclude":  # the timed record at 12 UTC; the day counted as excluded
        assert per_step.tolist() == [0, 0, 1, 0] and ds.attrs["n_records_coarser_than_step"] == "1"
    else:  # a quarter of the day in each of its steps
        assert np.allclose(per_step, [0.25, 0.25, 1.25, 0.25])
        assert ds.attrs["n_records_coarser_than_step"] == "0"
    assert ds.attrs["date_precision"] == mode


def test_a_day_counts_whole_at_a_daily_step(tmp_path, study_config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = _tile(tmp_path, study_config, ["2010-01-05", "2010-01"], "1D", "exclude")
    total = ds["occurrence"].sum(("species", "latitude", "longitude"))
    assert float(total.sel(time="2010-01-05")) == 1.0 and float(total.sum()) == 1.0
    assert ds.attrs["n_records_coarser_than_step"] == "1"  # the month


def test_a_month_tile_reads_only_the_records_that_overlap_it(tmp_path, study_config,
                                                              monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    rows = [_row(i, eventDate=d) for i, d in enumerate(["2010-01-05", "2010-02-03", "2010"])]
    out = _run(tmp_path, study_config, rows)
    feb = read_records(out, pd.Timestamp("2010-02-01"), pd.Timestamp("2010-03-01"))
    gbif_ids = sorted(feb.loc[feb["source"] == "gbif", "record_id"])
    assert gbif_ids == ["gbif:1001", "gbif:1002"]  # February and the whole year
    with pytest.raises(FileNotFoundError, match="rule combine writes it"):
        read_records(tmp_path / "none.parquet", pd.Timestamp("2010"), pd.Timestamp("2011"))


def test_modes_and_options_are_checked_with_the_key_named(study_config):
    config = demo_config()
    config["sources"]["occurrences"] = {"mode": "sample"}
    with pytest.raises(ConfigError, match="'sources.occurrences.mode' is 'sample'; source "
                       "occurrences takes 'combine'"):  # fmt: skip
        validate_config(config)
    config["sources"]["occurrences"] = {"mode": "combine"}
    config["sources"]["gbif"] = {"mode": "combine"}
    with pytest.raises(ConfigError, match="'sources.gbif.mode' is 'combine'"):
        validate_config(config)
    study = Study.from_config({**study_config, "sources": {**study_config["sources"],
        "occurrences": {"mode": "combine", "options": {"members": ["bold"]}}}})  # fmt: skip
    src = sources.get("occurrences")
    with pytest.raises(ValueError, match=r"members: \['bold'\] are not configured"):
        src.raw_inputs("records.parquet", study)
    for bad, message in (({"date_precision": "guess"}, "date_precision: 'guess'"),
                         ({"max_uncertainty_m": -1}, "positive number of metres"),
                         ({"speed": 1}, r"unknown key\(s\) \['speed'\]")):  # fmt: skip
        study = Study.from_config({**study_config, "sources": {**study_config["sources"],
            "occurrences": {"mode": "combine", "options": bad}}})  # fmt: skip
        with pytest.raises(ValueError, match=message):
            src.raw_settings("records.parquet", study)


def test_the_demo_combines_every_occurrence_source():
    config = validate_config(demo_config())
    study = Study.from_config(config)
    inputs = sources.get("occurrences").raw_inputs("records.parquet", study)
    assert inputs[:-1] == [
        "results/raw/gbif/occurrences.zip", "results/raw/inaturalist/observations.jsonl.gz",
        "results/raw/xenocanto/recordings.jsonl.gz", "results/raw/bold/records.jsonl.gz",
    ]  # fmt: skip
    assert json.dumps(config["sources"]["occurrences"]["options"], sort_keys=True) == (
        '{"date_precision": "exclude", "max_uncertainty_m": 10000}'
    )


def test_without_a_gbif_cube_the_effort_is_the_class_records_known_to_the_day(
    tmp_path, study_config, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    dates = ["2010-01-05", "2010-01-05T13:20:00Z", "2010-01"]  # the month: not a day's effort
    ds = _tile(tmp_path, study_config, dates, "6h", "exclude")
    assert ds.attrs["effort_source"] == "records"
    keys = list(ds["species_key"].values)
    effort = ds["effort"].isel(species=keys.index(LYNX)).sum(("latitude", "longitude"))
    day = effort.sel(time=slice("2010-01-05", "2010-01-05T18:00")).values
    assert np.allclose(day, [0.5, 0.5, 0.5, 0.5])  # two records that day, spread over it
    assert float(effort.sum()) == pytest.approx(2.0)
    # every mammal carries the class's effort; the robin (Aves) none
    classes = pd.read_csv(ROOT / "tests/species.csv").set_index("gbif_key")["class"]
    for i, key in enumerate(keys):
        total = float(ds["effort"].isel(species=i).sum())
        assert total == pytest.approx(2.0 if classes[key] == "Mammalia" else 0.0)
    report = read_quarantine(tmp_path / "results/raw/occurrences/effort.parquet.quarantine.json")
    assert report["dropped"] == {"date_coarser_than_step": 1}
    grid = Study.from_config(validate_config(study_config)).grid
    assert np.allclose(ds["cell_area"].values, grid.cell_areas(), rtol=1e-6)
    assert ds["cell_area"].attrs["standard_name"] == "cell_area"
    assert ds["occurrence"].attrs["cell_measures"] == "area: cell_area"


def test_the_gbif_effort_cube_counts_the_class_records_beside_the_species(tmp_path,
                                                                          monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    config = demo_config(species=str(ROOT / "tests/species.csv"))
    config["sources"] = {"era5": config["sources"]["era5"], "gbif": config["sources"]["gbif"]}
    config = validate_config(config)
    study = Study.from_config(config)
    gbif_src, occ = sources.get("gbif"), sources.get("occurrences")
    assert occ.raw_inputs("effort.parquet", study)[0] == "results/raw/gbif/effort.zip"
    assert gbif_src.raw_inputs("effort.zip", study)[0] == "results/raw/gbif/occurrences.zip"
    for name in ("occurrences.zip", "effort.zip"):
        out = Path("results/raw/gbif") / name
        out.parent.mkdir(parents=True, exist_ok=True)
        gbif_src.sample(name, out, study)
    records = combine(study, Path("results/raw/occurrences/records.parquet"))
    effort = combine_effort(study, records.with_name("effort.parquet"))
    modality = catalogue.modality("species_occurrence")
    ds = occ.tile([records, effort], modality, study, "2010-01", {"settings_hash": "x"})
    assert ds.attrs["effort_source"] == "gbif"
    classes = pd.read_csv(ROOT / "tests/species.csv")["class"].to_numpy()
    for cls in set(classes):
        of = np.flatnonzero(classes == cls)
        found = ds["occurrence"].isel(species=of).sum("species").values
        cube = ds["effort"].isel(species=of[0]).values
        assert (ds["effort"].isel(species=of).values == cube[:, None]).all()  # one per class
        assert (cube >= found - 1e-6).all() and cube.sum() > 2 * found.sum()  # + background
    report = read_quarantine(effort.with_name("effort.parquet.quarantine.json"))
    assert report["dropped"] and report["kept"] > 0  # the sample's bad rows, counted
