"""Every user-facing error message: bad input raises one clear error naming the file, key or
value and the rule it breaks (the messages the other test modules do not reach)."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from bfm import cli, regrid, sources
from bfm.config import ConfigError, load_config, validate_config
from bfm.contracts import catalogue, timeaxis
from bfm.contracts import tile as tiles
from bfm.contracts.batch import BatchError, read_batch
from bfm.contracts.catalogue import Cadence, DimsKind, Modality, Variable, VariableKind
from bfm.contracts.grid import Grid
from bfm.contracts.layout import Layout, Normaliser
from bfm.contracts.sample import ModelInput
from bfm.contracts.stats import batch_moments, load_stats, merge_all
from bfm.model import BFM, ModelConfig, build_config
from bfm.pipeline import batches as batch_step
from bfm.pipeline import raw as raw_step
from bfm.pipeline import stats as stats_step
from bfm.pipeline import tiles as tile_step
from bfm.provenance import provenance
from bfm.sources import Study, base, era5, gbif, manifest
from bfm.testing import (
    BASE_GROUPS,
    GRID,
    LEVELS,
    PROVENANCE,
    ROOT,
    SPECIES,
    demo_config,
    mock_batch,
    mock_meta,
    mock_tile,
    write_sequence,
    write_stats,
)
from bfm.training import checkpoint, data, engine, loop
from bfm.training.config import TrainConfig
from bfm.training.distributed import DistEnv
from bfm.workflow import Plan

SPECIES_CSV = ROOT / "tests" / "species.csv"
TINY = Grid(46.0, 47.0, 8.0, 9.0, 0.5)  # 3 x 3 cells, native ERA5 7 x 7
WINDOW = ("2010-01-01", "2010-01-05")
PROV = provenance(None, {"test": "errors"})
SOURCES = {"era5": {"mode": "sample", "seed": 1}, "gbif": {"mode": "sample", "seed": 2}}
LAYOUT = Layout(levels=LEVELS, species=SPECIES, groups=BASE_GROUPS)


def study(sources: dict | None = None) -> Study:
    return Study(TINY, *WINDOW, "1D", (500, 850), str(SPECIES_CSV), sources or SOURCES)


def era5_only_plan() -> Plan:
    return Plan(demo_config(sources={"era5": {"mode": "sample"}}))


def run_cli(argv: list[str], caplog: pytest.LogCaptureFixture) -> str:
    """Run ``bfm ARGV``; it must fail cleanly (exit 1); the logged message."""
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="bfm"):
        assert cli.main(argv) == 1
    return caplog.text


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """ERA5 samples of every group and a GBIF download on the tiny grid."""
    d = tmp_path_factory.mktemp("raw")
    era5.sample(d / "surface.nc", "surface", TINY, "2010-01", seed=1)
    era5.sample(d / "atmospheric.nc", "atmospheric", TINY, "2010-01", (500, 850), seed=1)
    species = gbif.read_species(SPECIES_CSV)
    gbif.sample(d / "occurrences.zip", species, *WINDOW, TINY, seed=2, climate_seed=1)
    return d


@pytest.fixture
def batch_file(tmp_path) -> Path:
    (path,) = write_sequence(tmp_path, 1)
    return path


# --- config --------------------------------------------------------------------------------
def test_config_plugins_must_be_a_list():
    with pytest.raises(ConfigError, match=r"^cfg: key 'plugins' must be a list of module names"):
        validate_config(demo_config(plugins="workflow/plugins/toy.py"), "cfg")


@pytest.mark.parametrize("text", [None, "grid: [unclosed\n"], ids=["missing", "bad-yaml"])
def test_config_file_that_cannot_be_read(tmp_path, text):
    path = tmp_path / "config.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: cannot read config \("):
        load_config(path)


def test_cli_names_an_unreadable_config(tmp_path, caplog):
    missing = tmp_path / "nope.yaml"
    args = ["batch", "--t0", "20100101T00", "--tile", "era5_static=s.nc"]
    text = run_cli([*args, "--config", str(missing), "--out", str(tmp_path / "b.h5")], caplog)
    assert f"{missing}: cannot read config" in text


# --- workflow plan ---------------------------------------------------------------------------
def test_plan_unknown_split_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown split 'test' \(all, train, eval\)"):
        era5_only_plan().batch_names("test")


# --- time axis -----------------------------------------------------------------------------
def test_unknown_step_names_the_key_and_the_choices():
    with pytest.raises(ValueError, match=r"time\.step: '2h' is not one of \('6h', '1D', '1MS'\)"):
        timeaxis.offset("2h")


@pytest.mark.parametrize("name", ["2010-01-01", "20100101", "notatime"])
def test_batch_name_must_be_yyyymmddthh(name):
    with pytest.raises(ValueError, match=rf"batch name '{name}' is not of the form YYYYMMDDTHH"):
        timeaxis.parse_t0(name)


# --- catalogue (what a plugin registers) -----------------------------------------------------
def test_variable_needs_an_increasing_valid_range():
    with pytest.raises(ValueError, match=r"catalogue: variable 'x': valid_range 5\.0 \.\. 1\.0"):
        Variable("x", "1", "x", valid_range=(5.0, 1.0))


@pytest.mark.parametrize(
    "kw",
    [{"categories": (0, 1)}, {"kind": VariableKind.CATEGORICAL}],
    ids=["categories-without-kind", "kind-without-categories"],
)
def test_categories_go_with_kind_categorical(kw):
    with pytest.raises(ValueError, match=r"variable 'x': categories go with kind categorical"):
        Variable("x", "1", "x", **kw)


def _modality(name="toy", group="toy", kind=DimsKind.TIME, cadence=Cadence.DAILY, variables=None):
    return Modality(name, "toy", group, kind, cadence, variables or (Variable("a", "1", "a"),))


@pytest.mark.parametrize("variables", [(), (Variable("a", "1", "a"), Variable("a", "1", "b"))])
def test_modality_needs_distinct_variables(variables):
    with pytest.raises(ValueError, match=r"catalogue: modality 'toy' needs distinct variables"):
        Modality("toy", "toy", "toy", DimsKind.TIME, Cadence.DAILY, variables)


@pytest.mark.parametrize(
    ("kind", "cadence"),
    [(DimsKind.STATIC, Cadence.DAILY), (DimsKind.TIME, Cadence.INVARIANT)],
)
def test_static_kind_goes_with_invariant_cadence(kind, cadence):
    with pytest.raises(ValueError, match=r"modality 'toy': kind static goes with cadence invar"):
        _modality(kind=kind, cadence=cadence)


def test_modality_names_an_unknown_variable_and_its_variables():
    with pytest.raises(ValueError, match=r"modality 'era5_surface' has no variable 'sst' \(has \["):
        catalogue.modality("era5_surface").variable("sst")


def test_registering_a_modality_twice_or_a_group_twice_is_refused():
    before = catalogue.modalities()
    with pytest.raises(ValueError, match=r"modality 'era5_surface' is already registered with "):
        catalogue.register(_modality(name="era5_surface", group="surface"))
    with pytest.raises(ValueError, match=r"group 'surface' of 'toy' is already fed by 'era5_s"):
        catalogue.register(_modality(group="surface"))
    assert catalogue.modalities() == before


def test_unknown_batch_group_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown batch group 'sst' \(known: \['surface'"):
        catalogue.of_group("sst")


# --- channel layout and normaliser -------------------------------------------------------
def test_layout_refuses_a_repeated_group():
    with pytest.raises(ValueError, match=r"layout: repeated group in \['surface', 'surface'\]"):
        Layout(levels=(), species=(), groups=("surface", "surface"))


def test_layout_refuses_groups_kinds_and_variables_of_other_lengths():
    with pytest.raises(ValueError, match=r"layout: groups, kinds and variables differ in length"):
        Layout((), (), groups=("surface",), kinds=("time", "static"), variables_of=(("t2m",),))


def test_layout_names_an_unknown_group_and_its_groups():
    with pytest.raises(ValueError, match=r"layout: no group 'sst' \(has \['surface', "):
        LAYOUT.variables("sst")


def test_model_layout_names_the_groups_a_batch_lacks(tmp_path):
    """A model (layout) that reads species, given batches without them (bfm evaluate)."""
    paths = write_sequence(tmp_path, 2, groups=["surface", "static"])
    pairs = data.BatchPairs(paths, Normaliser({}, {}), layout=LAYOUT)
    with pytest.raises(
        ValueError, match=r"lacks group\(s\) \['atmospheric', 'species'\] the mo"
    ) as e:
        pairs.load(0)
    assert str(e.value).startswith(f"{paths[0]}: ")
    assert "(it has ['static', 'surface'])" in str(e.value)


# --- statistics ------------------------------------------------------------------------------
def test_statistics_name_a_missing_entry_and_the_entries_they_have(tmp_path):
    only_surface = mock_batch("2010-01-01", groups=["surface"])
    stats = load_stats(write_stats([only_surface], tmp_path / "stats.json"))
    with pytest.raises(ValueError, match=r"statistics have no entry 'static/z' \(have \['surface/"):
        Normaliser.from_stats(stats, LAYOUT)


def test_moments_of_other_channel_counts_do_not_merge():
    a = batch_moments(mock_batch("2010-01-01", levels=(500, 850), groups=["atmospheric"]))
    b = batch_moments(mock_batch("2010-01-02", levels=(500,), groups=["atmospheric"]))
    with pytest.raises(ValueError, match=r"cannot merge moments with .*\(2,\) and .*\(1,\) chan"):
        merge_all([a, b])


def test_stats_partial_refuses_batches_of_mixed_settings(tmp_path):
    first = write_sequence(tmp_path, 1)
    other = write_sequence(
        tmp_path, 1, start="2010-01-02", provenance={**PROVENANCE, "settings_hash": "f" * 64}
    )
    with pytest.raises(ValueError, match=r"built under other settings \(settings_hash ffffff") as e:
        stats_step.partial([str(p) for p in first + other])
    assert str(e.value).startswith(f"{other[0]}: ")


def test_stats_merge_names_an_unreadable_partial(tmp_path, caplog):
    bad = tmp_path / "part.json"
    bad.write_text(json.dumps({"batches": []}))  # no "variables"
    text = run_cli(["stats", "merge", "--partials", str(bad), "--out", str(tmp_path / "s")], caplog)
    assert f"{bad}: cannot read partial statistics" in text
    assert not (tmp_path / "s").exists()


# --- batches -----------------------------------------------------------------------------
def _edit(path: Path, edit) -> Path:
    with h5py.File(path, "a") as f:
        edit(f)
    return path


def _add_unknown_group(f: h5py.File) -> None:
    f.create_group("sst")
    f.attrs["groups"] = json.dumps([*json.loads(f.attrs["groups"]), "sst"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda f: f.attrs.__setitem__("times", '["2010-01-01", "2010-01-02", "2010-01-03"]'),
            r"attribute 'times' must hold 2 times, got 3",
        ),
        (lambda f: f.__delitem__("longitude"), r"missing coordinate dataset 'longitude'"),
        (lambda f: f.__delitem__("atmospheric/level"), r"group 'atmospheric' lacks coordinate 'le"),
        (lambda f: f.__delitem__("species/species_key"), r"'species' lacks coordinate 'species_k"),
        (_add_unknown_group, r"unknown batch group 'sst' \(known: "),
    ],
    ids=["three-times", "no-longitude", "no-level", "no-species-key", "unknown-group"],
)
def test_batch_reader_names_the_file_and_the_field(batch_file, edit, message):
    _edit(batch_file, edit)
    with pytest.raises(BatchError, match=message) as err:
        read_batch(batch_file)
    assert str(err.value).startswith(f"{batch_file}: ")


def test_batch_reader_names_the_required_groups_a_batch_lacks(tmp_path):
    (path,) = write_sequence(tmp_path, 1, groups=["surface", "static"])
    with pytest.raises(BatchError, match=r"missing group\(s\) \['species'\] \(required: \['surf"):
        read_batch(path, require=("surface", "species"))


def test_batch_times_need_a_readable_batch_file(tmp_path):
    fake = tmp_path / "20100101T00.h5"
    fake.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match=r"cannot read the batch attribute 'times'") as err:
        data.pair_batches([fake])
    assert str(err.value).startswith(f"{fake}: ")
    without = tmp_path / "20100102T00.h5"
    h5py.File(without, "w").close()
    with pytest.raises(ValueError, match=rf"{without}: cannot read the batch attribute 'times'"):
        data.pair_batches([without])


def test_training_pairs_refuse_a_batch_on_another_grid(tmp_path):
    paths = write_sequence(tmp_path, 2) + write_sequence(
        tmp_path, 1, grid=Grid(44.0, 48.0, 1.0, 7.0, 0.5), start="2010-01-03"
    )
    stats = load_stats(write_stats(paths[:2], tmp_path / "stats.json"))
    pairs = data.BatchPairs(paths, stats)
    pairs.load(0)
    with pytest.raises(ValueError, match=r"grid Grid\(.*lon_min=1\.0.*\) differs from Grid\(") as e:
        pairs.load(1)
    assert str(e.value).startswith(f"{paths[2]}: ")


# --- tiles -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("modality", "edit", "message"),
    [
        ("era5_static", lambda ds: ds.drop_vars("latitude"), r"missing coordinate 'latitude'"),
        (
            "era5_static",
            lambda ds: ds.assign_coords(longitude=ds["longitude"].values + 0.5),
            r"coordinate 'longitude' does not match the grid Grid\(",
        ),
        ("era5_atmospheric", lambda ds: ds.drop_vars("level"), r"missing coordinate 'level'"),
        ("era5_surface", lambda ds: ds.drop_vars("time"), r"missing coordinate 'time'"),
        (
            "species_occurrence",
            lambda ds: ds.drop_vars("scientific_name"),
            r"missing coordinate 'scientific_name'",
        ),
        (
            "species_occurrence",
            lambda ds: ds.drop_vars("species_key"),
            r"missing coordinate 'species_key'",
        ),
    ],
    ids=[
        "no-latitude",
        "shifted-longitude",
        "no-level",
        "no-time",
        "no-scientific-name",
        "no-species-key",
    ],
)
def test_tile_validation_names_the_tile_and_the_field(tmp_path, modality, edit, message):
    ds = edit(mock_tile(modality, GRID))
    where = str(tmp_path / "2010-01.nc")
    with pytest.raises(ValueError, match=rf"^{re.escape(where)}: {message}"):
        tiles.validate_tile(ds, modality, where)
    with pytest.raises(ValueError, match=message):
        tiles.write_tile(ds, where)
    assert not Path(where).exists()


def test_open_tile_names_a_file_that_is_not_netcdf(tmp_path):
    path = tmp_path / "2010-01.nc"
    path.write_bytes(b"plain text, not netCDF")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: cannot read as netCDF \("):
        tiles.open_tile(path, "era5_surface")


# --- bfm tile ------------------------------------------------------------------------------
def test_tile_of_a_modality_whose_source_is_not_in_the_study():
    with pytest.raises(ValueError, match=r"species_occurrence: its source 'occurrences' is not a "):
        tile_step.build_tile("species_occurrence", "2010-01", ["occ.zip"], era5_only_plan())


# --- bfm sample / download -----------------------------------------------------------------
def test_sample_of_a_source_that_is_not_in_the_study(tmp_path):
    with pytest.raises(ValueError, match=r"gbif: not a source of this study \(config key 'sou"):
        raw_step.write_raw(
            "sample", "gbif", "occurrences.zip", tmp_path / "o.zip", era5_only_plan()
        )
    assert not (tmp_path / "o.zip").exists()


# --- bfm batch -------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["era5_surface", "era5_surface=", "=a.nc"])
def test_tile_argument_must_be_modality_equals_paths(value):
    with pytest.raises(
        ValueError,
        match=rf"--tile: expected MODALITY=PATH\[,PATH\.\.\.\], got {re.escape(repr(value))}$",
    ):
        batch_step.parse_tile_args([value])


def test_assemble_refuses_tiles_on_another_grid():
    t0 = pd.Timestamp("2010-01-01")
    other_lat = {"era5_static": mock_tile("era5_static", Grid(44.0, 47.0, 0.0, 6.0, 0.5))}
    with pytest.raises(ValueError, match=r"^era5_static: latitude \(7,\) does not match the gri"):
        batch_step.assemble(t0, "1D", GRID, other_lat)
    other_lon = {"era5_static": mock_tile("era5_static", Grid(44.0, 48.0, 0.5, 6.5, 0.5))}
    with pytest.raises(ValueError, match=r"^era5_static: longitude \(13,\) does not match the g"):
        batch_step.assemble(t0, "1D", GRID, other_lon)


def test_assemble_refuses_a_tile_without_a_variable():
    tile = mock_tile("era5_static", GRID).drop_vars("lsm")
    with pytest.raises(ValueError, match=r"^era5_static: tile lacks variable\(s\) \['lsm'\]"):
        batch_step.assemble(pd.Timestamp("2010-01-01"), "1D", GRID, {"era5_static": tile})


# --- sources: registry and study -----------------------------------------------------------
def test_study_names_a_source_the_config_does_not_set():
    with pytest.raises(ValueError, match=r"config: key 'sources\.era5' is not set"):
        era5.ERA5().raw_settings("surface/2010-01.nc", study({"gbif": {"mode": "sample"}}))


def test_a_second_source_class_under_a_registered_name_is_refused():
    class Impostor(era5.ERA5):
        pass

    with pytest.raises(ValueError, match=r"sources: 'era5' is already registered by <class 'bfm"):
        base.register(Impostor())
    assert type(base.get("era5")) is era5.ERA5


# --- sources: ERA5 -------------------------------------------------------------------------
def test_era5_unknown_group_names_the_groups():
    with pytest.raises(ValueError, match=r"era5: group 'land' is not one of \('surface', "):
        era5.request("land", TINY, "2010-01")


def test_era5_sample_of_a_monthly_group_needs_a_period():
    with pytest.raises(ValueError, match=r"era5: group 'surface' needs a period \(YYYY-MM\)"):
        era5.sample_dataset("surface", TINY, None)


def test_era5_open_names_a_file_that_is_not_netcdf(tmp_path):
    path = tmp_path / "2010-01.nc"
    path.write_text("not netCDF")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: cannot read as netCDF \("):
        era5.open(path, "surface")


def test_era5_open_needs_the_time_dimension(tmp_path):
    path = tmp_path / "2010-01.nc"
    era5.sample_dataset("surface", TINY, "2010-01").isel(valid_time=0).to_netcdf(path)
    with pytest.raises(ValueError, match=r"missing time dimension 'valid_time' \(or 'time'\)"):
        era5.open(path, "surface")


def test_era5_open_needs_the_pressure_level_dimension(tmp_path):
    path = tmp_path / "2010-01.nc"
    ds = era5.sample_dataset("atmospheric", TINY, "2010-01", (500, 850))
    ds.isel(pressure_level=0).drop_vars("pressure_level").to_netcdf(path)
    with pytest.raises(ValueError, match=r"missing dimension 'pressure_level' \(or 'level'\)"):
        era5.open(path, "atmospheric")


def _native(raw: Path, edit) -> xr.Dataset:
    ds = edit(era5.open(raw / "surface.nc"))
    ds.encoding["source"] = str(raw / "surface.nc")  # as era5.open leaves it
    return ds


@pytest.mark.parametrize(
    ("edit", "period", "message"),
    [
        (lambda ds: ds, "2011-05", r"time: no step of the window falls in period 2011-05"),
        (lambda ds: ds.drop_vars("msl"), "2010-01", r"missing variable\(s\) \['msl'\] of 'era5_s"),
        (
            lambda ds: ds.assign(msl=ds["msl"].isel(latitude=0, drop=True)),
            "2010-01",
            r"variable 'msl' has dims \('time', 'longitude'\), need \('time', 'latitude', 'lon",
        ),
        (
            lambda ds: ds.isel(latitude=[0]),
            "2010-01",
            r"latitude/longitude: need at least 2 values, got lat\.size=1",
        ),
    ],
    ids=["period-outside-window", "missing-variable", "wrong-dims", "one-latitude"],
)
def test_era5_to_tile_names_the_raw_file_and_the_rule(raw, edit, period, message):
    native = _native(raw, edit)
    modality = catalogue.modality("era5_surface")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(raw / 'surface.nc'))}: {message}"):
        era5.ERA5().to_tile(native, modality, study(), period, PROV)


# --- sources: GBIF -------------------------------------------------------------------------
def test_gbif_species_list_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"species\.csv: no such species list"):
        gbif.read_species(tmp_path / "species.csv")


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (["2435240", "0"], r"column 'gbif_key' must hold positive integers"),
        (["2435240", "-3"], r"column 'gbif_key' must hold positive integers"),
        (["2435240", "lynx"], r"column 'gbif_key' must hold positive integers"),
        (["2435240", ""], r"column 'gbif_key' must hold positive integers"),
        (["2435240", "2435240"], r"column 'gbif_key' has duplicates"),
    ],
    ids=["zero", "negative", "text", "empty", "duplicate"],
)
def test_gbif_species_keys_are_distinct_positive_integers(tmp_path, keys, message):
    path = tmp_path / "species.csv"
    rows = "".join(f"{k},Genus species{i},name {i}\n" for i, k in enumerate(keys))
    path.write_text("gbif_key,scientific_name,common_name\n" + rows)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: {message}"):
        gbif.read_species(path)


def test_gbif_sample_window_must_not_end_before_it_starts(tmp_path):
    species = gbif.read_species(SPECIES_CSV)
    with pytest.raises(ValueError, match=r"gbif: --end 2010-01-01 is before --start 2010-02-01"):
        gbif.sample(tmp_path / "o.zip", species, "2010-02-01", "2010-01-01", TINY)
    assert not (tmp_path / "o.zip").exists()


def test_gbif_has_one_raw_file(tmp_path):
    with pytest.raises(ValueError, match=r"gbif: raw file 'birds\.zip' is not one of "
                       r"\['occurrences\.zip', 'media\.zip', 'effort\.zip'\]"):  # fmt: skip
        gbif.GBIF().sample("birds.zip", tmp_path / "birds.zip", study())


def test_occurrence_tile_of_a_period_outside_the_window(raw):
    modality = catalogue.modality("species_occurrence")
    occurrences = sources.get("occurrences")
    with pytest.raises(ValueError, match=r"records.parquet: time: no step of the window falls "
                       "in period 2011-05"):  # fmt: skip
        occurrences.tile([raw / "records.parquet", raw / "effort.parquet"], modality, study(),
                         "2011-05", PROV)  # fmt: skip
    for call in (occurrences.open, gbif.GBIF().open):  # tiles come from the period's records
        with pytest.raises(ValueError, match="tile|modality"):
            call([raw / "occurrences.zip"], modality, study())
    with pytest.raises(ValueError, match="gbif: has no modality"):
        gbif.GBIF().to_tile(None, modality, study(), "2010-01", PROV)  # type: ignore[arg-type]


# --- sources: manifests --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", r"not valid JSON \("),
        (json.dumps({"file": "x.nc", "source": "era5"}), r"missing field\(s\) \['request', 'url'"),
    ],
    ids=["not-json", "missing-fields"],
)
def test_manifest_names_itself_and_what_is_wrong(tmp_path, text, message):
    data_file = tmp_path / "x.nc"
    data_file.write_text("data")
    mpath = manifest.manifest_path(data_file)
    mpath.write_text(text)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(mpath))}: {message}"):
        manifest.read_manifest(data_file)
    with pytest.raises(ValueError, match=message):
        manifest.verify(data_file)


# --- regridding ----------------------------------------------------------------------------
def test_count_points_needs_matching_shapes():
    with pytest.raises(ValueError, match=r"count_points: lat\.shape=\(2,\) differs from lon\.sha"):
        regrid.count_points(np.zeros(2), np.zeros(3), GRID)
    with pytest.raises(ValueError, match=r"count_points: need groups\.shape=\(1,\) == lat\.shape"):
        regrid.count_points(np.zeros(2), np.zeros(2), GRID, np.zeros(1), 2)
    with pytest.raises(ValueError, match=r"count_points: need .* and n_groups"):
        regrid.count_points(np.zeros(2), np.zeros(2), GRID, np.zeros(2))


# --- report --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"step": 1, "loss": 0.5}\n{"step": 2, \n', r":2: not a JSON line \("),
        ("\n\n", r": no records"),
    ],
    ids=["bad-line", "empty"],
)
def test_report_names_the_metrics_file_and_the_line(tmp_path, caplog, text, message):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(text)
    log = run_cli(
        ["report", "loss", "--metrics", str(metrics), "--out", str(tmp_path / "l.svg")], caplog
    )
    assert re.search(re.escape(str(metrics)) + message, log)
    assert not (tmp_path / "l.svg").exists()


# --- model ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_heads": 5}, r"model: embed_dim=48 must be divisible by num_heads=5"),
        ({"latent_levels": 3}, r"model: latent_levels=3 must be a multiple of window\[0\]=2"),
        ({"patch_size": 0}, r"model: bad patch_size/window/backbone_depths in ModelConfig\("),
        ({"window": (2, 0, 2)}, r"model: bad patch_size/window/backbone_depths"),
    ],
)
def test_model_config_names_the_hyper_parameter(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_config("tiny", LAYOUT, **overrides)


def test_model_config_from_meta_names_unknown_keys():
    d = build_config("tiny", LAYOUT).to_dict()
    with pytest.raises(ValueError, match=r"model config: unknown keys \['dropout'\]"):
        ModelConfig.from_dict({**d, "dropout": 0.1})


def _inputs(h: int = 9, w: int = 13) -> dict[str, torch.Tensor]:
    out = {}
    for g in LAYOUT.groups:
        c = LAYOUT.n_channels(g)
        out[g] = torch.zeros((1, c, h, w) if LAYOUT.kind(g) == "static" else (1, 2, c, h, w))
    return out


def _coords(h: int = 9, w: int = 13) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.linspace(48, 44, h), torch.linspace(0, 6, w), torch.tensor([[1.0, 0.0]])


def test_model_input_must_carry_every_group_on_one_grid():
    model = BFM(build_config("tiny", LAYOUT))
    x = _inputs()
    del x["static"]
    with pytest.raises(ValueError, match=r"model input lacks group 'static' \(needs \['surface"):
        model(ModelInput(x, *_coords()))
    x = _inputs()
    x["static"] = _inputs(7, 13)["static"]
    with pytest.raises(ValueError, match=r"model inputs disagree on \(H, W\): \{'surface': \(9,"):
        model(ModelInput(x, *_coords()))


# --- training: settings, DeepSpeed config, run directory -----------------------------------
@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"steps": 0}, r"--steps and --checkpoint-every must be >= 1, got 0, 20"),
        ({"checkpoint_every": 0}, r"--steps and --checkpoint-every must be >= 1, got 40, 0"),
        ({"lr": 0.0}, r"--lr must be > 0 and --warmup-steps, --weight-decay >= 0, got 0\.0, 5,"),
        ({"warmup_steps": -1}, r"--lr must be > 0 .* got 0\.002, -1, 0\.0"),
        ({"weight_decay": -0.1}, r"--lr must be > 0 .* got 0\.002, 5, -0\.1"),
    ],
)
def test_train_settings_name_the_option(kw, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(batches=(), stats="s.json", deepspeed="ds.json", out="run", **kw)


def test_deepspeed_config_must_exist_and_be_json(tmp_path):
    path = tmp_path / "ds.json"
    with pytest.raises(FileNotFoundError, match=rf"--deepspeed: {re.escape(str(path))} does not"):
        engine.load_ds_config(path)
    path.write_text("{'zero_optimization': 1}")
    with pytest.raises(ValueError, match=rf"--deepspeed: {re.escape(str(path))} is not valid JSON"):
        engine.load_ds_config(path)


def test_checkpoint_tag_must_be_step_nnnnnn():
    with pytest.raises(ValueError, match=r"checkpoint tag 'latest' is not of the form step_NNNNNN"):
        checkpoint.step_of("latest")


def test_meta_json_must_exist_and_be_json(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match=rf"no meta\.json; is {re.escape(str(run))} a tr"):
        checkpoint.read_meta(run)
    (run / "meta.json").write_text('{"schema": "bfm-run/1",')
    with pytest.raises(ValueError, match=rf"{re.escape(str(run / 'meta.json'))}: not valid JSON"):
        checkpoint.read_meta(run)


def test_load_model_refuses_zero3_checkpoints(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps(mock_meta(build_config("tiny", LAYOUT), 1, 3)))
    with pytest.raises(ValueError, match=r"ZeRO-3 checkpoints hold partitioned weights; consol"):
        checkpoint.load_model(tmp_path)


def test_resume_refuses_to_restart_when_no_checkpoint_loads(tmp_path):
    (checkpoint.state_dir(tmp_path) / "step_000002").mkdir(parents=True)
    (checkpoint.state_dir(tmp_path) / "step_000001").mkdir()

    class Engine:
        device = torch.device("cpu")

        def load_checkpoint(self, directory: str, tag: str) -> tuple:
            raise RuntimeError(f"{tag} is damaged")

    with pytest.raises(
        ValueError, match=r"none of the checkpoints \['step_000002', 'step_000001'\] can be load"
    ):
        checkpoint.resume(Engine(), tmp_path)


def test_a_second_train_in_one_run_directory_is_refused(tmp_path):
    """A run directory locked by another process (a running bfm train) is refused."""
    lock = checkpoint.state_dir(tmp_path) / checkpoint.LOCK
    lock.parent.mkdir(parents=True)
    holder = (
        "import fcntl, sys, time\n"
        "f = open(sys.argv[1], 'a+')\n"
        "fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "f.write('pid 4242 on gcn1 since 2026-01-01'); f.flush()\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=r"another bfm train is running in this run dir") as e:
            with checkpoint.locked(tmp_path):
                pass
        assert "(pid 4242 on gcn1 since 2026-01-01); wait for it or use another --out" in str(
            e.value
        )
    finally:
        proc.kill()
        proc.wait()


def test_other_ranks_fail_when_rank_0_cannot_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "all_ok", lambda ok, world, device: False)
    cfg = TrainConfig(batches=(), stats="s.json", deepspeed="ds.json", out=str(tmp_path / "run"))
    rank1 = DistEnv(1, 2, 1, "127.0.0.1", 29500, "torchrun")
    with pytest.raises(ValueError, match=r"run: rank 0 could not lock the run directory"):
        with loop.run_lock(cfg, rank1):
            pass


def test_train_refuses_a_run_directory_of_another_model(tmp_path):
    state = checkpoint.state_dir(tmp_path)
    (state / "step_000001").mkdir(parents=True)
    (state / "meta.json").write_text(json.dumps(mock_meta(build_config("tiny", LAYOUT))))
    other = build_config("tiny", LAYOUT, embed_dim=32)
    with pytest.raises(ValueError, match=rf"--out {re.escape(str(tmp_path))}: holds a run of a d"):
        loop.check_same_model(tmp_path, other)


# --- fixed after the first pass over the messages ---------------------------------------------
def test_species_keys_must_be_whole_numbers_and_unique_as_numbers(tmp_path):
    path = tmp_path / "species.csv"
    path.write_text("gbif_key,scientific_name,common_name\n2435240.7,A a,a\n5219173,B b,b\n")
    with pytest.raises(ValueError, match=r"'gbif_key' must hold positive integers, got "
                       r"'2435240\.7' \(row 2\)"):  # fmt: skip
        gbif.read_species(path)
    path.write_text("gbif_key,scientific_name,common_name\n0042,A a,a\n42,B b,b\n")
    with pytest.raises(ValueError, match=r"'gbif_key' must hold positive integers, got '0042'"):
        gbif.read_species(path)
    path.write_text("gbif_key,scientific_name,common_name\n42,A a,a\n42,B b,b\n")
    with pytest.raises(ValueError, match=r"'gbif_key' has duplicates: \[42\]"):
        gbif.read_species(path)


def test_a_plugin_that_fails_to_import_names_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.py").write_text("def f(:\n")
    (tmp_path / "needs.py").write_text("import no_such_package_for_bfm\n")
    for entry, error in (("broken.py", "SyntaxError"), ("needs.py", "ModuleNotFoundError")):
        cfg = demo_config(plugins=[entry])
        with pytest.raises(ConfigError, match=rf"'plugins': cannot import '{entry}' \({error}"):
            validate_config(cfg)


def test_a_report_line_that_is_not_an_object_is_named(tmp_path):
    from bfm.report import read_jsonl

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n5\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: a record must be a JSON object"):
        read_jsonl(path, ("step", "loss"))


def test_a_batch_times_attribute_that_is_not_json_names_the_file(tmp_path):
    (path,) = write_sequence(tmp_path, 1)
    with h5py.File(path, "a") as f:
        f.attrs["times"] = "[2010-01-01] x"
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: cannot read the batch "
                       "attribute 'times'"):  # fmt: skip
        data.batch_attrs(path)


def test_meta_json_with_a_model_that_is_not_an_object_is_refused(tmp_path):
    meta = mock_meta(build_config("tiny", LAYOUT))
    meta["model"] = None
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"meta\.json: missing key\(s\) \['model\.config'\]"):
        checkpoint.read_meta(tmp_path)


def test_merging_partials_of_other_channels_names_the_variable():
    a = batch_moments(mock_batch("2010-01-01", levels=(500, 850)))
    b = batch_moments(mock_batch("2010-01-02", levels=(500,)))
    with pytest.raises(ValueError, match=r"statistics atmospheric/z: cannot merge moments"):
        merge_all([a, b])
