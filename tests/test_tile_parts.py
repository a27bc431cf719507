"""Tiles written one data variable at a time (``contract.write_tile_parts``, what ``bfm tile``
does for ERA5): the same file as ``write_tile`` of the whole tile in memory, at most one
variable in memory at once, and the contract's checks and atomic write."""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import Iterator

import netCDF4
import numpy as np
import pytest
import xarray as xr
import yaml

from bfm.cli import main
from bfm.contracts import catalogue
from bfm.contracts import tile as contract
from bfm.contracts.grid import Grid
from bfm.fileio import netcdf_chunk_cache
from bfm.pipeline import tiles as tile_step
from bfm.provenance import provenance
from bfm.sources import Source, Study, era5
from bfm.testing import demo_config

HALF = Grid(46.0, 47.5, 8.0, 9.5, 0.5)
LEVELS = (250, 500, 850)
PROV = provenance(None, {"test": "tile parts"})
ERA5 = era5.ERA5()
PERIODS = {"era5_atmospheric": "2010-01", "era5_surface": "2010-01", "era5_static": "static"}


def study(step: str = "1D") -> Study:
    sources = {"era5": {"mode": "sample", "seed": 5}}
    return Study(HALF, "2010-01-03", "2010-02-28", step, LEVELS, "species.csv", sources)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    return {
        "era5_surface": era5.sample(root / "surface.nc", "surface", HALF, "2010-01", seed=5),
        "era5_atmospheric": era5.sample(
            root / "atm.nc", "atmospheric", HALF, "2010-01", LEVELS, seed=5
        ),
        "era5_static": era5.sample(root / "static.nc", "static", HALF, seed=5),
    }


def parts(raw, name: str, step: str = "1D") -> tuple[contract.TileParts, xr.Dataset]:
    """The parts of a tile (and the native Dataset they read; close it)."""
    modality, st = catalogue.modality(name), study(step)
    native = ERA5.open([raw[name]], modality, st)
    return ERA5.tile_parts(native, modality, st, PERIODS[name], PROV), native


@pytest.mark.parametrize("step", ["6h", "1D"])
@pytest.mark.parametrize("name", ["era5_atmospheric", "era5_surface", "era5_static"])
def test_a_tile_written_by_variable_is_the_file_write_tile_writes(raw, tmp_path, name, step):
    modality, st = catalogue.modality(name), study(step)
    whole = contract.write_tile(
        ERA5.tile([raw[name]], modality, st, PERIODS[name], PROV), tmp_path / "whole" / "t.nc"
    )
    by_variable = ERA5.write_tile([raw[name]], modality, st, PERIODS[name], PROV,
                                  tmp_path / "parts" / "t.nc")  # fmt: skip
    with xr.open_dataset(whole) as a, xr.open_dataset(by_variable) as b:
        assert a.identical(b)  # values (NaN where NaN), attributes, coordinates
        for v in [*a.data_vars, *a.coords]:  # zlib, shuffle, chunks, _FillValue, time units
            np.testing.assert_equal(  # NaN equals NaN (the _FillValue)
                {k: x for k, x in a[v].encoding.items() if k != "source"},
                {k: x for k, x in b[v].encoding.items() if k != "source"},
                err_msg=v,
            )
        first = a[modality.variable_names[0]]
        assert first.encoding["chunksizes"] == (*[1] * (first.ndim - 2), *HALF.shape)
    assert by_variable.read_bytes() == whole.read_bytes()  # the same file, byte for byte
    report = json.loads(contract.qc_path(by_variable).read_text())
    assert report == json.loads(contract.qc_path(whole).read_text())
    assert set(report["variables"]) == set(modality.variable_names)


def test_parts_make_the_same_dataset_as_the_whole_tile(raw):
    tile_parts, native = parts(raw, "era5_atmospheric")
    assert tile_parts.frame.data_vars == {} and "level" in tile_parts.frame.coords
    st = study()
    whole = ERA5.to_tile(native, catalogue.modality("era5_atmospheric"), st, "2010-01", PROV)
    assert tile_parts.dataset().identical(whole)
    native.close()


def test_one_variable_at_a_time_is_in_memory(raw, tmp_path):
    """Each variable made is let go once written, before the next one is made."""
    tile_parts, native = parts(raw, "era5_atmospheric", "6h")
    alive: list[weakref.ref] = []

    def watched() -> Iterator[tuple[str, xr.Variable]]:
        for name, variable in tile_parts.variables:
            gc.collect()
            assert not any(ref() is not None for ref in alive), f"{name}: an earlier one lives"
            alive.append(weakref.ref(variable.values))
            yield name, variable
            del variable

    watched_parts = contract.TileParts(tile_parts.frame, watched())
    path = contract.write_tile_parts(watched_parts, tmp_path / "t.nc")
    assert len(alive) == 5
    contract.open_tile(path, "era5_atmospheric").close()
    native.close()


def _broken(tile_parts: contract.TileParts, at: str, make) -> contract.TileParts:
    def variables() -> Iterator[tuple[str, xr.Variable]]:
        for name, variable in tile_parts.variables:
            if name == at:
                out = make(name, variable)
                if out is None:
                    return
                yield out
            else:
                yield name, variable

    return contract.TileParts(tile_parts.frame, variables())


def _out_of_range(name: str, variable: xr.Variable) -> tuple[str, xr.Variable]:
    values = variable.values.copy()
    values[0, 0, 0, 0] = 1e9
    return name, variable.copy(data=values)


def _failing(name: str, variable: xr.Variable) -> tuple[str, xr.Variable]:
    raise ValueError(f"atm.nc: variable {name!r}: cannot read native times 0..3 (HDF error)")


@pytest.mark.parametrize(
    ("at", "make", "message"),
    [
        ("u", _out_of_range, r"t\.nc: variable 'u' holds 1 value\(s\) outside its valid range"),
        ("v", _failing, r"atm\.nc: variable 'v': cannot read native times"),
        ("q", lambda name, v: None, r"t\.nc: missing variable\(s\) \['q'\] of modality"),
        ("t", lambda name, v: (name, v.astype(np.float64)),
         r"t\.nc: variable 't' has dims .* and dtype float64, expected .* float32"),
    ],
)  # fmt: skip
def test_a_failed_write_leaves_nothing_and_names_the_file_and_rule(
    raw, tmp_path, at, make, message
):
    path = tmp_path / "out" / "t.nc"
    tile_parts, native = parts(raw, "era5_atmospheric")
    with pytest.raises(ValueError, match=message):
        contract.write_tile_parts(_broken(tile_parts, at, make), path)
    assert list((tmp_path / "out").iterdir()) == []  # no tile, no report, no temporary file
    native.close()


def test_a_failed_write_keeps_the_previous_tile(raw, tmp_path):
    tile_parts, native = parts(raw, "era5_atmospheric")
    path = contract.write_tile_parts(tile_parts, tmp_path / "t.nc")
    before = path.read_bytes(), contract.qc_path(path).read_bytes()
    again, _ = parts(raw, "era5_atmospheric")
    with pytest.raises(ValueError, match="outside its valid range"):
        contract.write_tile_parts(_broken(again, "z", _out_of_range), path)
    assert (path.read_bytes(), contract.qc_path(path).read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.nc", "t.nc.qc.json"]
    native.close()


def test_a_frame_breaking_the_contract_is_refused_before_a_variable_is_made(raw, tmp_path):
    tile_parts, native = parts(raw, "era5_surface")
    made: list[str] = []

    def variables() -> Iterator[tuple[str, xr.Variable]]:
        for name, variable in tile_parts.variables:
            made.append(name)
            yield name, variable

    frame = tile_parts.frame.copy()
    del frame.attrs["licence"]
    with pytest.raises(ValueError, match=r"t\.nc: missing global attribute\(s\) \['licence'\]"):
        contract.write_tile_parts(contract.TileParts(frame, variables()), tmp_path / "t.nc")
    assert made == [] and list(tmp_path.iterdir()) == []
    native.close()


def test_bfm_tile_writes_era5_by_variable_and_other_sources_whole(monkeypatch, raw, tmp_path):
    calls: list[str] = []
    real_parts, real_whole = contract.write_tile_parts, contract.write_tile
    monkeypatch.setattr(contract, "write_tile_parts",
                        lambda p, path: calls.append("parts") or real_parts(p, path))  # fmt: skip
    monkeypatch.setattr(contract, "write_tile",
                        lambda ds, path: calls.append("whole") or real_whole(ds, path))  # fmt: skip
    modality = catalogue.modality("era5_surface")
    ERA5.write_tile([raw["era5_surface"]], modality, study(), "2010-01", PROV, tmp_path / "a.nc")
    assert calls == ["parts"]

    class Whole(era5.ERA5):  # a source without parts (the default Source.tile_parts)
        tile_parts = Source.tile_parts

        def to_tile(self, native, *args):  # ERA5's tile, made whole
            return era5.ERA5.tile_parts(self, native, *args).dataset()

    # tile(), then write_tile
    Whole().write_tile([raw["era5_surface"]], modality, study(), "2010-01", PROV, tmp_path / "b.nc")
    assert calls == ["parts", "whole"]
    assert (tmp_path / "a.nc").read_bytes() == (tmp_path / "b.nc").read_bytes()


def test_the_chunk_cache_holds_within_the_block_and_is_restored(tmp_path):
    ds = xr.Dataset({"a": (("y", "x"), np.zeros((4, 5), np.float32))})
    ds.to_netcdf(tmp_path / "a.nc", encoding={"a": {"zlib": True, "chunksizes": (1, 5)}})
    default = netCDF4.get_chunk_cache()
    with netcdf_chunk_cache(1 << 20):
        assert netCDF4.get_chunk_cache()[0] == 1 << 20
        with netCDF4.Dataset(tmp_path / "a.nc") as nc:
            assert nc["a"].get_var_chunk_cache()[0] == 1 << 20
    assert netCDF4.get_chunk_cache() == default
    with pytest.raises(RuntimeError), netcdf_chunk_cache(1 << 10):
        raise RuntimeError("restored on errors too")
    assert netCDF4.get_chunk_cache() == default


def test_bfm_tile_writes_with_a_small_chunk_cache(monkeypatch, raw, tmp_path, caplog):
    cfg = demo_config(grid=HALF.to_dict(), levels=list(LEVELS))
    cfg["time"].update(start="2010-01-01", end="2010-02-28", step="1D", eval_start="2010-02-18")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    seen: list[int] = []
    real = era5.ERA5.write_tile

    def spy(self, *args):
        seen.append(netCDF4.get_chunk_cache()[0])
        return real(self, *args)

    monkeypatch.setattr(era5.ERA5, "write_tile", spy)
    out = tmp_path / "tile.nc"
    args = ["tile", "era5_atmospheric", "--period", "2010-01", "--input",
            str(raw["era5_atmospheric"]), "--config", str(tmp_path / "config.yaml"),
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert seen == [tile_step.CHUNK_CACHE] != [netCDF4.get_chunk_cache()[0]]
    contract.open_tile(out, "era5_atmospheric").close()
    quality = contract.written_quality(out)  # what bfm tile logs: the counts of every variable
    assert quality == {v: {"n_out_of_range": 0, "n_incomplete": 0} for v in "ztuvq"}
