"""``bfm predict`` (forecast.nc) and the error maps of ``bfm evaluate`` (error_maps.nc).

The fields of tests/test_evaluate.py: spatially constant, moving by D per step, a model whose
head bias c makes it exact for t2m and t (c s = D) and persistence for msl and z; so every
cell's RMSE is known by hand.
"""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
import pytest
import torch

from bfm.cli import main
from bfm.contracts.batch import read_batch
from bfm.contracts.catalogue import DimsKind, VariableKind
from bfm.contracts.layout import Layout
from bfm.evaluation import evaluate, predict
from bfm.evaluation.error_maps import ErrorMaps
from bfm.testing import GRID, mock_species_table, write_sequence
from bfm.training import checkpoint
from bfm.training.checkpoint import load_model
from bfm.training.data import to_sample
from tests.test_e2e import cf_errors
from tests.test_evaluate import LAYOUT, fake_run, holes, value

HEADLINE_HERE = ("t2m", "msl", "u10", "v10", "z500", "t850")  # LAYOUT's levels: 500, 850


@pytest.fixture
def run_and_batches(tmp_path: Path) -> tuple[Path, list[Path]]:
    paths = write_sequence(tmp_path / "batches", 4, levels=LAYOUT.levels,
                           species=LAYOUT.species, value=value)  # fmt: skip
    fake_run(tmp_path / "run")
    return tmp_path / "run", paths


def shake(run: Path) -> Path:
    """The run's weights plus seeded noise: a forecast that depends on every input (the
    exact model of ``fake_run`` is persistence plus a bias, blind to the rest)."""
    model, _ = load_model(run)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    ckpt = run / checkpoint.CHECKPOINTS / "step_000001" / checkpoint.MODEL_STATES
    torch.save({"module": model.state_dict()}, ckpt)
    return run


def nc(path: Path) -> netCDF4.Dataset:
    ds = netCDF4.Dataset(path)
    ds.set_auto_mask(False)
    return ds


# --- error maps ---------------------------------------------------------------------------
def test_error_maps_hold_each_cells_rmse_and_are_cf_compliant(tmp_path: Path) -> None:
    # 3 batches: lead 1 from starts 0 and 1, lead 2 from start 0 (targets t = 2, 3; t = 3).
    # Holes: t2m at t = 3 in the first 5 cells; msl at t = 2 in the first 3 cells (the
    # target of start 0 and the persistence of start 1: those cells have no valid point).
    paths = write_sequence(tmp_path / "batches", 3, levels=LAYOUT.levels,
                           species=LAYOUT.species, value=value, edit=holes)  # fmt: skip
    fake_run(tmp_path / "run")
    out = tmp_path / "eval" / "scores.jsonl"
    assert main(["evaluate", "--model", str(tmp_path / "run"), "--batches", *map(str, paths),
                 "--out", str(out), "--leads", "2", "--bootstrap", "0"]) == 0  # fmt: skip
    path = out.with_name("error_maps.nc")
    assert cf_errors(path) == []
    with nc(path) as ds:
        names = {f"rmse_{f}_{s}" for f in evaluate.FORECASTS for s in HEADLINE_HERE}
        assert set(ds.variables) == names | {"lead", "latitude", "longitude"}
        lead = ds["lead"]
        assert lead.dtype == np.int32 and list(lead[:]) == [1, 2] and lead.step == "1D"
        assert (lead.long_name, lead.units) == ("forecast lead", "1")
        np.testing.assert_allclose(ds["latitude"][:], GRID.latitudes)
        assert ds["latitude"].units == "degrees_north" and ds["longitude"].units == "degrees_east"
        assert ds.Conventions == "CF-1.10" and ds.run == str(tmp_path / "run")
        assert ds.climatology_kind == "training mean" and ds.config_hash and ds.git_commit
        z = ds["rmse_model_z500"]
        assert z.dimensions == ("lead", "latitude", "longitude") and z.dtype == np.float32
        assert (z.units, z.bfm_variable, z.bfm_channel, z.forecast) == (
            "m2 s-2", "atmospheric/z", "500", "model")  # fmt: skip
        assert z.long_name == "RMSE of the model forecast of geopotential at 500 hPa"
        t2m = ds["rmse_persistence_t2m"]
        assert t2m.bfm_channel == "" and t2m.long_name == (
            "RMSE of the persistence forecast of 2 metre temperature")  # fmt: skip
        get = {n: ds[n][:].reshape(2, -1) for n in names}  # (lead, cell)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-3)  # noqa: E731
    # t2m: the model is exact, persistence misses by D = 1 per lead; the climatology
    # (mean base + 1) misses t = 2 by -1 and t = 3 by -2; the holes have only start 0 at
    # lead 1 and nothing at lead 2
    close(get["rmse_model_t2m"][0], 0.0)
    close(get["rmse_persistence_t2m"][0], 1.0)
    close(get["rmse_climatology_t2m"][0, 5:], np.sqrt((1 + 4) / 2))
    close(get["rmse_climatology_t2m"][0, :5], 1.0)
    assert np.isnan(get["rmse_model_t2m"][1, :5]).all()
    close(get["rmse_persistence_t2m"][1, 5:], 2.0)
    close(get["rmse_climatology_t2m"][1, 5:], 2.0)
    # msl: the model is persistence (D = 50); no valid point in 3 cells at lead 1
    for f in ("model", "persistence"):
        assert np.isnan(get[f"rmse_{f}_msl"][0, :3]).all()
        close(get[f"rmse_{f}_msl"][0, 3:], 50.0)
        close(get[f"rmse_{f}_msl"][1], 100.0)
    # z500 (D = 2, no bias) and t850 (exact): climatology misses z by 1 - 2 t at t = 2, 3
    close(get["rmse_model_z500"][0], 2.0)
    close(get["rmse_climatology_z500"][0], np.sqrt((9 + 25) / 2))
    close(get["rmse_model_t850"], 0.0)
    close(get["rmse_persistence_t850"][1], 4.0)


def test_error_maps_keep_one_cell_sum_per_lead_channel_and_forecast() -> None:
    layout = LAYOUT
    maps = ErrorMaps(layout, evaluate.headline_channels(layout))
    assert [layout.channel_labels(g)[c] for g, c in maps.channels] == [
        ("t2m", None), ("msl", None), ("u10", None), ("v10", None), ("z", "500"),
        ("t", "850")]  # fmt: skip
    shape = (layout.n_channels("surface"), GRID.n_lat, GRID.n_lon)
    target = np.zeros(shape)
    valid = np.ones(shape, bool)
    valid[0, 0, 0] = False
    for lead in (1, 2):
        for k in range(5):  # five forecast times: errors 3 (model), k (persistence)
            maps.add(lead, "surface", {"model": target + 3.0, "persistence": target + k,
                                       "climatology": target}, target, valid, GRID,
                     "1D")  # fmt: skip
    assert len(maps.sq) == 2 * 4 * 3 and len(maps.n) == 2 * 4  # not one field per time
    assert {a.shape for a in [*maps.sq.values(), *maps.n.values()]} == {shape[1:]}
    model = maps.rmse(2, "surface", 0, "model")
    assert np.isnan(model[0, 0]) and np.allclose(model.flat[1:], 3.0)
    pers = maps.rmse(1, "surface", 1, "persistence")
    assert np.allclose(pers, np.sqrt(np.mean(np.arange(5) ** 2)))
    with pytest.raises(ValueError, match="grid"):
        maps.add(1, "surface", {}, target, valid, GRID.__class__(40.0, 48.0, 0.0, 6.0, 0.5), "1D")


# --- bfm predict --------------------------------------------------------------------------
def run_predict(run: Path, paths: list[Path], out: Path, *extra: str) -> int:
    return main(["predict", "--model", str(run), "--batches", *map(str, paths), "--out",
                 str(out), *extra])  # fmt: skip


def test_predict_writes_a_cf_forecast_whose_mean_is_the_evaluated_rollout(
    run_and_batches: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    run, paths = shake(run_and_batches[0]), run_and_batches[1]
    out = tmp_path / "predict" / "forecast.nc"
    # two batches for three leads: lead 3's input takes batch 1's static groups, moved to
    # its time (the static fields are the same in every batch, the time features are not)
    assert run_predict(run, paths[:2], out, "--leads", "3", "--members", "1") == 0
    assert cf_errors(out) == []
    model, _ = load_model(run)
    norm, layout = model.normaliser(), model.config.layout
    batches = [read_batch(p) for p in paths]
    start = batches[0]
    truth = dict(evaluate.forecasts_of(model, batches, 3))  # the evaluation's rollout
    with nc(out) as ds:
        assert ds.dimensions["time"].isunlimited() and len(ds.dimensions["time"]) == 3
        step = pd.Timedelta("1D")
        t1 = pd.Timestamp(start.times[1])
        seconds = [(t1 + k * step).value // 10**9 for k in (1, 2, 3)]
        assert list(ds["time"][:]) == seconds and list(ds["lead"][:]) == [1, 2, 3]
        assert ds["forecast_reference_time"][...] == t1.value // 10**9
        assert ds["forecast_reference_time"].standard_name == "forecast_reference_time"
        assert list(ds["level"][:]) == [500, 850] and list(ds["species_key"][:]) == [7, 8]
        assert "species_name" not in ds.variables  # no species table given
        assert (ds.model_run, ds.members, ds.leads, ds.Conventions) == (str(run), 1, 3, "CF-1.10")
        t2m, z = ds["t2m"], ds["z"]
        assert (t2m.units, t2m.standard_name, t2m.cell_methods) == (
            "K", "air_temperature", "realization: mean")  # fmt: skip
        assert z.dimensions == ("time", "level", "latitude", "longitude")
        assert ds["occurrence"].dimensions == ("time", "species", "latitude", "longitude")
        assert ds["t2m_spread"].cell_methods == "realization: standard_deviation"
        # lead 1 is evaluate.predict of the start; every lead is the evaluation's rollout
        first = evaluate.predict(model, to_sample(start, start, layout, norm).input, norm)
        np.testing.assert_array_equal(ds["t2m"][0], first["surface"][0])
        for lead, preds in truth.items():
            for g in layout.dynamic:
                for v, arr in evaluate.unstack(layout, g, preds[0][g]).items():
                    np.testing.assert_allclose(ds[v][lead - 1], arr, rtol=1e-6, atol=1e-6)
                    assert not ds[f"{v}_spread"][lead - 1].any()  # one member: zero spread


def test_past_the_batches_the_last_ones_static_groups_move_to_the_leads_time(
    run_and_batches: tuple[Path, list[Path]], caplog
) -> None:
    caplog.set_level(logging.INFO, "bfm.predict")
    batches = [read_batch(p) for p in run_and_batches[1]]
    template = predict.templates(batches[:2])
    assert template(1) is batches[1]
    later = template(3)
    assert later.times == batches[3].times and "lead 4's input time" in caplog.text
    np.testing.assert_array_equal(later.groups["static"]["z"], batches[1].groups["static"]["z"])


def test_the_ensemble_spread_is_the_members_standard_deviation(
    run_and_batches: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    run, paths = run_and_batches
    model, _ = load_model(run)
    batches = [read_batch(p) for p in paths]
    members = dict(evaluate.forecasts_of(model, batches, 2, members=3, noise=0.5))
    outs = {}
    for noise in ("0.0", "0.5"):
        outs[noise] = tmp_path / f"forecast-{noise}.nc"
        assert run_predict(run, paths, outs[noise], "--leads", "2", "--members", "3",
                           "--noise", noise) == 0  # fmt: skip
    with nc(outs["0.5"]) as ds:
        assert ds.members == 3 and ds.noise == 0.5
        assert list(ds["realization_bounds"][:]) == [0, 2]
        for lead, preds in members.items():
            x = np.stack([p["surface"] for p in preds]).astype(np.float64)
            msl = ds["msl_spread"][lead - 1]
            assert msl.min() > 0
            np.testing.assert_allclose(msl, x.std(0, ddof=1)[1], rtol=1e-5)
            np.testing.assert_allclose(ds["msl"][lead - 1], x.mean(0)[1], rtol=1e-6)
    with nc(outs["0.0"]) as ds:  # no noise: three equal members
        assert not ds["msl_spread"][:].any() and not ds["occurrence_spread"][:].any()
        np.testing.assert_allclose(ds["msl"][0], members[1][0]["surface"][1], rtol=1e-6)
        # the model is exact for t2m (D = 1 per step): lead L is the truth at t1 + L
        np.testing.assert_allclose(ds["t2m"][1], 280.0 + 3 * 1.0, atol=1e-3)


def test_predict_appends_one_lead_at_a_time(
    run_and_batches: tuple[Path, list[Path]], tmp_path: Path, monkeypatch
) -> None:
    """Memory bound: lead L is written before lead L + 1 is computed, as one time slice."""
    run, paths = run_and_batches
    calls: list[int] = []
    writes: list[tuple[int, int, dict[str, tuple[int, ...]], int]] = []
    real_predict, real_append = evaluate.predict, predict.ForecastFile.append

    def counting(*args, **kwargs):
        calls.append(1)
        return real_predict(*args, **kwargs)

    def recording(self, s):
        on_disk = len(self.ds.dimensions["time"])
        writes.append((s.lead, len(calls), {g: a.shape for g, a in s.mean.items()}, on_disk))
        real_append(self, s)

    monkeypatch.setattr(evaluate, "predict", counting)
    monkeypatch.setattr(predict.ForecastFile, "append", recording)
    assert run_predict(run, paths, tmp_path / "f.nc", "--leads", "4", "--members", "2") == 0
    grid = (GRID.n_lat, GRID.n_lon)
    one_slice = {g: (LAYOUT.n_channels(g), *grid) for g in LAYOUT.dynamic}
    # lead L: 2 L model calls so far (2 members), L - 1 slices already in the file
    assert writes == [(lead, 2 * lead, one_slice, lead - 1) for lead in (1, 2, 3, 4)]


def test_predict_names_species_and_writes_suitability_of_heads(
    run_and_batches: tuple[Path, list[Path]], tmp_path: Path, monkeypatch
) -> None:
    from bfm.contracts.species_table import write_species_table

    run, paths = run_and_batches
    table = tmp_path / "species.parquet"
    write_species_table(mock_species_table([8, 7, 9]), table)
    seen = {}

    class FakeHeads:  # bfm.evaluation.sdm's contract: keys and suitability (S, H, W)
        keys = [8]

        def suitability(self, model, batch, layout, norm):
            seen["batch"] = batch.times
            return np.full((1, GRID.n_lat, GRID.n_lon), 0.25)

    fake = types.ModuleType("bfm.evaluation.sdm")
    fake.load_heads = lambda path: FakeHeads()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bfm.evaluation.sdm", fake)
    out = tmp_path / "f.nc"
    assert run_predict(run, paths, out, "--species-table", str(table), "--heads",
                       str(tmp_path / "heads.pt")) == 0  # fmt: skip
    assert cf_errors(out) == []
    with nc(out) as ds:
        assert list(ds["species_name"][:]) == ["Species 7", "Species 8"]  # the layout's order
        assert ds["occurrence"].coordinates.endswith("species_key species_name")
        suit = ds["suitability"][:]
        assert ds["suitability"].dimensions == ("species", "latitude", "longitude")
        assert np.isnan(suit[0]).all() and (suit[1] == 0.25).all()  # key 7 has no head
    assert seen["batch"] == read_batch(paths[0]).times


def test_forecast_names_take_the_group_where_two_groups_share_one() -> None:
    t, lev, st = DimsKind.TIME, DimsKind.LEVEL, DimsKind.STATIC
    layout = Layout(levels=(500,), species=(), groups=("a", "b", "s"), kinds=(t, lev, st),
                    variables_of=(("x", "y"), ("x", "time"), ("y",)),
                    variable_kinds=((VariableKind.CONTINUOUS,) * 2,) * 2
                    + ((VariableKind.CONTINUOUS,),), categories=((0, 0), (0, 0), (0,)))  # fmt: skip
    # x is in two dynamic groups, time is a coordinate's name, the static y does not count
    assert predict.output_names(layout) == {("a", "x"): "a_x", ("a", "y"): "y",
                                            ("b", "x"): "b_x", ("b", "time"): "b_time"}  # fmt: skip
    # the demo's groups share no name (static z is not forecast)
    assert set(predict.output_names(LAYOUT).values()) == {
        "t2m", "msl", "u10", "v10", "z", "t", "u", "v", "q", "occurrence", "effort"}  # fmt: skip


def test_predict_refuses_bad_input_and_leaves_nothing_behind(
    run_and_batches: tuple[Path, list[Path]], tmp_path: Path, monkeypatch, caplog
) -> None:
    run, paths = run_and_batches
    out = tmp_path / "out" / "forecast.nc"
    for flags, message in ((["--leads", "0"], "--leads 0 and --members 1 must be >= 1"),
                           (["--members", "0"], "--members 0 must be >= 1"),
                           (["--noise", "-1"], "--noise -1.0 >= 0")):  # fmt: skip
        assert run_predict(run, paths, out, *flags) == 1
        assert message in caplog.text
    assert run_predict(run, [tmp_path / "nope.h5"], out) == 1
    assert "batch file" in caplog.text and "nope.h5 does not exist" in caplog.text
    with pytest.raises(ValueError, match="no batch file given"):
        predict.PredictSettings(run, (), out)
    with pytest.raises(SystemExit):  # argparse: --batches needs a file
        main(["predict", "--model", str(run), "--batches", "--out", str(out)])
    # a failure half-way leaves neither the file nor its temporary
    real = predict.ForecastFile.append

    def fail_at_lead_2(self, s):
        if s.lead == 2:
            raise RuntimeError("disk full")
        real(self, s)

    monkeypatch.setattr(predict.ForecastFile, "append", fail_at_lead_2)
    with pytest.raises(RuntimeError, match="disk full"):
        run_predict(run, paths, out, "--leads", "3")
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_predict_help_explains_the_file(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "forecast_reference_time" in text and "--members" in text and "_spread" in text
