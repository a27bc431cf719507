"""Evaluation against persistence and climatology, with RMSEs worked out by hand.

Every field is spatially constant and moves by a fixed amount D per step, so with the
input (t_k, t_k+1) and target t_k+2: persistence misses by D; a model whose head bias is c
(normalised, std s) predicts persistence + c s and misses by c s - D (species: counts are a
log-rate around the training mean m, so it predicts m exp(c)); climatology (mean m) misses
by m - value.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from bfm.cli import main
from bfm.contracts.batch import Batch, read_batch
from bfm.contracts.layout import Layout, Normaliser
from bfm.evaluation import climatology as clim
from bfm.evaluation.scores import Accumulator, auc, lat_weights, summarise
from bfm.model import BFM, build_config
from bfm.testing import BASE_GROUPS, GRID, mock_meta, write_sequence
from bfm.training import checkpoint

LAYOUT = Layout(levels=(500, 850), species=(7, 8), groups=BASE_GROUPS)
BASE = {
    "t2m": 280.0,
    "msl": 101000.0,
    "u10": 0.0,
    "v10": 0.0,
    "z": 500.0,
    "t": 250.0,
    "u": 0.0,
    "v": 0.0,
    "q": 1.0,
    "occurrence": 0.5,
    "effort": 4.0,
    "lsm": 0.5,
    "slt": 1.0,
}
STEP = {"t2m": 1.0, "msl": 50.0, "occurrence": 0.5}  # D; 2.0 for the others
STD = 4.0
BIAS = {"surface/t2m": 0.25, "atmospheric/t": 0.5, "species/occurrence": -0.5}  # c
CELLS = GRID.n_lat * GRID.n_lon
W0 = float(lat_weights(GRID.latitudes)[0])  # the weight of a point of the first (north) row


def value(var: str, k: int, lat: np.ndarray, lon: np.ndarray, ch: int) -> np.ndarray:
    v = BASE[var] + 10.0 * ch + k * STEP.get(var, 2.0)
    return np.full((len(lat), len(lon)), v)


def holes(k: int, batch: Batch) -> None:
    if k == 2:  # 5 missing target points of t2m for the pair (1, 2)
        batch.groups["surface"]["t2m"][1].flat[:5] = np.nan
    if k == 1:  # 3 msl points of time 2: the target of (0, 1) and the persistence of (1, 2)
        batch.groups["surface"]["msl"][1].flat[:3] = np.nan


def fake_run(run: Path) -> None:
    """A run directory as training leaves it: meta.json + a DeepSpeed-layout checkpoint."""
    mean = {
        g: np.array(
            [BASE[v] + 10.0 * c + 1.0 for v in LAYOUT.variables(g) for c in range(LAYOUT.inner(g))]
        )
        for g in LAYOUT.groups
    }
    std = {g: np.full(LAYOUT.n_channels(g), STD) for g in LAYOUT.groups}
    cfg = build_config("tiny", LAYOUT)
    model = BFM(cfg, Normaliser(mean, std))
    names = [f"{g}/{v}" for g in LAYOUT.dynamic for v in LAYOUT.variables(g)]
    with torch.no_grad():
        for name, c in BIAS.items():
            model.decoder.head_bias[names.index(name)] = c
    ckpt = run / checkpoint.CHECKPOINTS / "step_000001"
    ckpt.mkdir(parents=True)
    torch.save({"module": model.state_dict()}, ckpt / checkpoint.MODEL_STATES)
    (run / checkpoint.CHECKPOINTS / "latest").write_text("step_000001")
    checkpoint.write_meta(run, mock_meta(cfg))


def rmse(errors_and_counts: list[tuple[float, int]]) -> float:
    n = sum(c for _, c in errors_and_counts)
    return float(np.sqrt(sum(e * e * c for e, c in errors_and_counts) / n))


def test_scores_known_answer(tmp_path: Path) -> None:
    paths = write_sequence(
        tmp_path / "batches",
        3,
        levels=LAYOUT.levels,
        species=LAYOUT.species,
        value=value,
        edit=holes,
    )
    fake_run(tmp_path / "run")
    out = tmp_path / "eval" / "scores.jsonl"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tmp_path / "run"),
                "--batches",
                *map(str, paths),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    got = {(r["variable"], r["channel"]): r for r in lines}
    assert len(lines) == 4 + 5 * (2 + 1) + 2 * (2 + 1)  # surface, atmospheric, species
    assert {"variable", "channel", "n", "lead", "headline", "climatology_kind", "rmse_model",
            "rmse_persistence", "rmse_climatology", "bias_model", "mae_model", "acc_model",
            "rmse_model_ci"} <= set(lines[0])  # fmt: skip
    assert {r["lead"] for r in lines} == {1} and lines[0]["climatology_kind"] == "training mean"
    assert got[("surface/t2m", None)]["headline"] and got[("atmospheric/z", "500")]["headline"]
    assert not got[("atmospheric/z", "850")]["headline"]
    approx = lambda x: pytest.approx(x, rel=1e-4, abs=1e-3)  # noqa: E731

    # t2m: D = 1, model = persistence + 0.25 * 4 = exact; targets t=2 (117) and t=3 (112)
    t2m = got[("surface/t2m", None)]
    assert t2m["n"] == CELLS + CELLS - 5
    assert t2m["rmse_persistence"] == approx(1.0)
    assert t2m["rmse_model"] == approx(0.0)
    # climatology m = base + 1 misses value base + t D by 1 - t: -1 at t=2, -2 at t=3
    # latitude weights: the 5 holes lie in the first row (weight W0 each)
    assert t2m["rmse_climatology"] == approx(rmse([(-1.0, CELLS), (-2.0, CELLS - 5 * W0)]))
    assert t2m["bias_persistence"] == approx(-1.0) and t2m["mae_persistence"] == approx(1.0)
    lo, hi = t2m["rmse_climatology_ci"]
    assert lo <= t2m["rmse_climatology"] <= hi

    # msl: no bias -> model == persistence (D = 50); 3 points lost in each pair
    msl = got[("surface/msl", None)]
    assert msl["n"] == 2 * CELLS - 6
    assert msl["rmse_model"] == approx(50.0) and msl["rmse_persistence"] == approx(50.0)
    assert msl["rmse_climatology"] == approx(
        rmse([(1 - 100.0, CELLS - 3 * W0), (1 - 150.0, CELLS - 3 * W0)])
    )

    # atmospheric/t per level (D = 2, c s = 2 -> exact) and its summary over levels
    for channel in ("500", "850", None):
        t = got[("atmospheric/t", channel)]
        assert t["n"] == (2 if channel else 4) * CELLS
        assert t["rmse_model"] == approx(0.0) and t["rmse_persistence"] == approx(2.0)
        assert t["rmse_climatology"] == approx(rmse([(1 - 4.0, CELLS), (1 - 6.0, CELLS)]))
    assert got[("atmospheric/z", "850")]["rmse_model"] == approx(2.0)

    # species per key: the rate m exp(c) with m = base + 10 ch + 1 and c = -0.5 misses the
    # targets base + 10 ch + t D (D = 0.5) at t = 2 and t = 3
    errors = {}
    for ch, channel in enumerate(("7", "8")):
        m = BASE["occurrence"] + 10.0 * ch + 1.0
        rate = m * np.exp(-0.5)
        errors[channel] = [(rate - (m - 1 + 2 * 0.5), CELLS), (rate - (m - 1 + 3 * 0.5), CELLS)]
    errors[None] = errors["7"] + errors["8"]
    for channel, errs in errors.items():
        occ = got[("species/occurrence", channel)]
        assert occ["rmse_model"] == approx(rmse(errs))
        assert occ["rmse_persistence"] == approx(0.5)
        # every cell holds a record: presence everywhere, so no AUC; the Brier score of the
        # model's presence probability 1 - exp(-rate) against 1
        assert occ["auc_model"] is None and occ["rmse_constant"] is not None
    rate = (BASE["occurrence"] + 1.0) * np.exp(-0.5)
    assert got[("species/occurrence", "7")]["brier_model"] == approx(np.exp(-rate) ** 2)


def test_a_rollout_feeds_the_model_its_own_forecast(tmp_path: Path) -> None:
    paths = write_sequence(tmp_path / "batches", 4, levels=LAYOUT.levels,
                           species=LAYOUT.species, value=value)  # fmt: skip
    fake_run(tmp_path / "run")
    out = tmp_path / "eval" / "scores.jsonl"
    assert main(["evaluate", "--model", str(tmp_path / "run"), "--batches", *map(str, paths),
                 "--out", str(out), "--leads", "2", "--bootstrap", "50"]) == 0  # fmt: skip
    lines = [json.loads(x) for x in (out.parent / "scores_by_lead.jsonl").open()]
    got = {(r["variable"], r["channel"], r["lead"]): r for r in lines}
    approx = lambda x: pytest.approx(x, rel=1e-4, abs=1e-3)  # noqa: E731
    # t2m: the model is exact at lead 1 and stays exact on its own forecast; persistence
    # misses by D per step; lead 2 has one start fewer
    one, two = got[("surface/t2m", None, 1)], got[("surface/t2m", None, 2)]
    assert one["rmse_model"] == approx(0.0) and two["rmse_model"] == approx(0.0)
    assert one["rmse_persistence"] == approx(1.0) and two["rmse_persistence"] == approx(2.0)
    assert one["n"] == 3 * CELLS and two["n"] == 2 * CELLS
    # msl has no bias: the model is persistence at lead 1, and persists its own forecast
    assert got[("surface/msl", None, 2)]["rmse_model"] == approx(100.0)
    assert {json.loads(x)["lead"] for x in out.open()} == {1}  # scores.jsonl: lead 1


def test_a_day_of_year_climatology_is_scored_at_the_targets_time(tmp_path: Path) -> None:
    paths = write_sequence(tmp_path / "batches", 3, levels=LAYOUT.levels,
                           species=LAYOUT.species, value=value)  # fmt: skip
    fake_run(tmp_path / "run")
    # window 0: the climatology of a day is that day's value, exact at every target
    clim.build([str(p) for p in paths], LAYOUT, tmp_path / "clim.h5", window=0)
    out = tmp_path / "scores.jsonl"
    assert main(["evaluate", "--model", str(tmp_path / "run"), "--batches", *map(str, paths),
                 "--out", str(out), "--climatology", str(tmp_path / "clim.h5")]) == 0  # fmt: skip
    got = {(r["variable"], r["channel"]): r for r in map(json.loads, out.open())}
    t2m = got[("surface/t2m", None)]
    assert t2m["climatology_kind"] == "day-of-year" and t2m["rmse_climatology"] == 0.0
    assert t2m["acc_model"] is None  # the truth has no anomaly from an exact climatology


def test_scores_weight_latitudes_and_acc_auc_have_known_answers() -> None:
    lat = np.array([60.0, 0.0])
    w = lat_weights(lat)
    assert w.mean() == pytest.approx(1.0) and w[1] / w[0] == pytest.approx(2.0)
    target = np.array([[[1.0, 1.0], [3.0, 3.0]]])
    c = np.zeros_like(target)
    valid = np.ones_like(target, bool)
    acc = Accumulator(("model", "persistence", "climatology"), np.array([False]))
    acc.add({"model": target + np.array([[[2.0, 2.0], [0.0, 0.0]]]),  # errors 2 north, 0 south
             "persistence": -target, "climatology": c}, target, valid, c, w)  # fmt: skip
    out = summarise(acc, [0], n_boot=20)
    # weighted MSE: (2 * w0 * 4) / (2 * w0 + 2 * w1) with w1 = 2 w0 -> 8 / 6
    assert out["rmse_model"] == pytest.approx(np.sqrt(8 / 6))
    assert out["bias_model"] == pytest.approx(4 / 6) and out["mae_model"] == pytest.approx(4 / 6)
    assert out["acc_persistence"] == pytest.approx(-1.0)  # the opposite anomaly
    assert "acc_climatology" not in out and out["rmse_climatology_ci"][0] <= out["rmse_climatology"]
    hist = np.zeros((2, 10))
    hist[0, :3], hist[1, 7:] = 1, 1  # every presence scored above every absence
    assert auc(hist) == 1.0 and auc(hist[::-1]) == 0.0
    tie = np.zeros((2, 10))
    tie[:, 4] = 5
    assert auc(tie) == 0.5 and auc(np.zeros((2, 10))) is None


def test_the_climatology_smooths_over_the_day_of_year_circularly() -> None:
    sums = np.zeros((366, 1))
    counts = np.zeros((366, 1))
    sums[0], counts[0] = 10.0, 1.0  # 1 January
    sums[365], counts[365] = 20.0, 2.0  # 31 December (leap-year day 366)
    out = clim.smooth(sums, counts, 1)
    assert out[0, 0] == pytest.approx(30.0 / 3.0) and out[365, 0] == pytest.approx(10.0)
    assert out[1, 0] == pytest.approx(10.0) and np.isnan(out[100, 0])
    assert clim.hours_of("6h") == (0, 6, 12, 18) and clim.hours_of("1D") == (0,)


def test_the_climatology_smoothed_by_rows_is_the_whole_one_bit_for_bit(tmp_path, monkeypatch):
    # Bounded memory (a few latitude rows smoothed at once, channels in blocks) changes no bit.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(366, 3))
    for shift in (-4, 0, 5, 366):
        acc = np.zeros_like(x)
        clim._add_rolled(acc, x, shift)
        assert np.array_equal(acc, np.roll(x, shift, axis=0))
    paths = [str(p) for p in write_sequence(tmp_path / "batches", 6, step="6h")]
    layout = Layout.from_batch(read_batch(paths[0]))
    whole = clim.build(paths, layout, tmp_path / "whole.h5", 2)
    monkeypatch.setattr(clim, "SMOOTH_ROWS", 2)
    rows = clim.build(paths, layout, tmp_path / "rows.h5", 2, max_bytes=300_000)
    with h5py.File(whole) as a, h5py.File(rows) as b:
        assert set(a) == set(layout.dynamic)
        for g in a:
            assert a[g]["mean"][()].tobytes() == b[g]["mean"][()].tobytes(), g


def test_evaluate_without_checkpoint_is_a_clean_error(tmp_path: Path, caplog) -> None:
    paths = write_sequence(tmp_path / "batches", 2)
    run = tmp_path / "run"
    checkpoint.write_meta(run, mock_meta(build_config("tiny", LAYOUT)))
    rc = main(
        [
            "evaluate",
            "--model",
            str(run),
            "--batches",
            *map(str, paths),
            "--out",
            str(tmp_path / "scores.jsonl"),
        ]
    )
    assert rc == 1
    assert "no readable checkpoint" in caplog.text
    assert not (tmp_path / "scores.jsonl").exists()


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path: Path, caplog) -> None:
    fake_run(tmp_path / "run")
    ckdir = tmp_path / "run" / checkpoint.CHECKPOINTS
    newer = ckdir / "step_000002"
    newer.mkdir()
    (newer / checkpoint.MODEL_STATES).write_bytes(b"\x80\x04 not a checkpoint")
    (ckdir / "latest").write_text("step_000002")
    model, _ = checkpoint.load_model(tmp_path / "run")
    assert checkpoint.find_latest(tmp_path / "run") == ckdir / "step_000001"
    assert "skipping checkpoint" in caplog.text and "step_000002" in caplog.text
    assert model.decoder.head_bias[0, 0].item() == BIAS["surface/t2m"]


def test_meta_json_is_validated_when_read(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "meta.json").write_text('{"schema": "bfm-run/1", "model": {}}')
    with pytest.raises(ValueError, match=r"meta\.json: missing key\(s\) \['created_at'"):
        checkpoint.read_meta(run)
    (run / "meta.json").write_text('{"schema": "other"}')
    with pytest.raises(ValueError, match="'schema' is not 'bfm-run/1'"):
        checkpoint.read_meta(run)
    with pytest.raises(ValueError, match="missing key"):
        checkpoint.write_meta(run, {"schema": "bfm-run/1"})


def test_metrics_log_is_validated_when_read(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5, "lr": 0.1}\n{"step": 1, "loss": 0.4, "lr": 0.1}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: step 1 does not follow step 1"):
        checkpoint.read_metrics(path)
    path.write_text('{"step": 1, "loss": "low", "lr": 0.1}\n')
    with pytest.raises(ValueError, match=r":1: step must be an integer, loss and lr numbers"):
        checkpoint.read_metrics(path)
    path.write_text('{"step": 1}\n')
    with pytest.raises(ValueError, match=r":1: a metrics record needs"):
        checkpoint.read_metrics(path)
    path.write_text("not json\n")
    with pytest.raises(ValueError, match=r":1: not a JSON line"):
        checkpoint.read_metrics(path)


def test_ensemble_crps_and_spread_skill_have_known_answers() -> None:
    from bfm.evaluation.ensemble import EnsembleSums, crps

    y = np.array([1.0])
    assert crps(np.array([[3.0]]), y)[0] == pytest.approx(2.0)  # one member: the MAE
    assert crps(np.array([[0.0], [2.0]]), y)[0] == pytest.approx(1.0 - 4.0 / 8.0)
    rng = np.random.default_rng(0)
    members = rng.normal(size=(6, 5))
    brute = np.abs(members - y).mean(0) - np.abs(members[:, None] - members[None]).sum(
        (0, 1)) / (2 * 36)  # fmt: skip
    np.testing.assert_allclose(crps(members, np.ones(5)), brute)
    # a reliable ensemble (truth and members from one distribution): spread-skill ~ 1
    m, shape = 10, (1, 200, 200)
    ens = EnsembleSums(m)
    truth = rng.normal(size=shape)
    ens.add(rng.normal(size=(m, *shape)), truth, np.ones(shape, bool), np.ones(200))
    out = ens.summary([0])
    assert out["spread_skill"] == pytest.approx(1.0, abs=0.02) and out["members"] == m
    over = EnsembleSums(m)  # an over-confident one: members 1/4 as spread as the error
    over.add(0.25 * rng.normal(size=(m, *shape)), truth, np.ones(shape, bool), np.ones(200))
    assert over.summary([0])["spread_skill"] < 0.3


def test_an_ensemble_of_perturbed_initial_states_is_scored(tmp_path: Path) -> None:
    paths = write_sequence(tmp_path / "batches", 3, levels=LAYOUT.levels,
                           species=LAYOUT.species, value=value)  # fmt: skip
    fake_run(tmp_path / "run")
    lines = {}
    for noise in (0.0, 0.5):
        out = tmp_path / f"scores-{noise}.jsonl"
        assert main(["evaluate", "--model", str(tmp_path / "run"), "--batches",
                     *map(str, paths), "--out", str(out), "--members", "3", "--noise",
                     str(noise), "--bootstrap", "0"]) == 0  # fmt: skip
        lines[noise] = {(r["variable"], r["channel"]): r for r in map(json.loads, out.open())}
    same = lines[0.0][("surface/msl", None)]  # no noise: three equal members
    assert same["members"] == 3 and same["spread"] == 0.0
    assert same["crps_ensemble"] == pytest.approx(same["mae_model"])
    assert same["rmse_ensemble_mean"] == pytest.approx(same["rmse_model"])
    spread = lines[0.5][("surface/msl", None)]
    # member 0 is the unperturbed model; the perturbed members spread
    assert spread["spread"] > 0 and spread["rmse_model"] == pytest.approx(same["rmse_model"])
    assert spread["spread_skill"] > 0 and spread["crps_ensemble"] != same["crps_ensemble"]
