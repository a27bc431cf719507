"""End to end: the demo DAG in a temporary directory, then every artefact is checked."""

from __future__ import annotations

import json
import subprocess
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from bfm.contracts.batch import read_batch
from bfm.contracts.stats import load_stats
from bfm.workflow import Plan
from tests.conftest import ROOT, demo_workdir, snakemake_cmd

PROVENANCE_KEYS = ("bfm_version", "git_commit", "config_hash")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    workdir = demo_workdir(tmp_path_factory.mktemp("demo"))
    base = snakemake_cmd(workdir)
    started = time.monotonic()
    run = subprocess.run([*base, "--cores", "2"], capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-5000:]
    print(f"demo DAG: {time.monotonic() - started:.0f} s")
    report = subprocess.run(
        [*base, "--report", "report.zip"], capture_output=True, text=True, timeout=600
    )
    assert report.returncode == 0, report.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def plan() -> Plan:
    import yaml

    return Plan(yaml.safe_load((ROOT / "config/config.yaml").read_text()))


@pytest.mark.slow
def test_tiles_open_with_xarray_and_carry_provenance(demo_run, plan):
    from bfm.contracts.tile import open_tile

    tiles = sorted((demo_run / "results/tiles").rglob("*.nc"))
    assert len(tiles) == sum(len(plan.tile_periods(m)) for m in plan.modalities)
    assert {t.parent.name for t in tiles} == {m.name for m in plan.modalities} == {
        "era5_surface", "era5_static", "era5_atmospheric", "species_occurrence", "ndvi",
        "land", "agriculture", "forest", "redlist", "lpi"}  # fmt: skip
    for path in tiles:
        modality = path.parent.name
        ds = open_tile(path, modality)
        assert ds.attrs["Conventions"] == "CF-1.10"
        assert all(ds.attrs[k] for k in PROVENANCE_KEYS)
        assert (ds["latitude"].size, ds["longitude"].size) == plan.grid.shape
        ds.close()
        with xr.open_dataset(path) as raw:
            assert raw.sizes["latitude"] == plan.grid.n_lat


@pytest.mark.slow
def test_every_batch_is_valid(demo_run, plan):
    files = sorted((demo_run / "results/batches").glob("*.h5"))
    assert [f.stem for f in files] == plan.batch_names()
    groups = {"surface", "static", "atmospheric", "species", "vegetation", "land",
              "agriculture", "forest", "redlist", "lpi"}  # fmt: skip
    for path in files:
        batch = read_batch(path)
        assert all(batch.attrs[k] for k in PROVENANCE_KEYS)
        assert set(batch.groups) == groups, path  # every group in every batch
        with h5py.File(path) as f:
            assert "32001" in f["surface/t2m"]._filters  # Blosc (bfm.contracts.batch)
    with xr.open_dataset(files[0], engine="h5netcdf", group="surface") as ds:
        t2m = ds["t2m"].values
    assert 230 < float(t2m.mean()) < 300  # Kelvin, winter over central Europe


@pytest.mark.slow
def test_statistics_cover_exactly_the_training_batches(demo_run, plan):
    stats = load_stats(demo_run / "results/stats/stats.json")
    assert stats.meta["batches"] == [f"{t0}.h5" for t0 in plan.batch_names("train")]
    mean, std = stats.mean_std("atmospheric", "t")
    assert mean.shape == (len(plan.config["levels"]),)
    assert mean[0] < mean[-1]  # colder at 50 hPa than at 1000 hPa


@pytest.mark.slow
def test_checkpoint_loads_and_meta_is_complete(demo_run, plan):
    from bfm.training.checkpoint import load_model

    run_dir = demo_run / "results/models/demo"
    meta = json.loads((run_dir / "meta.json").read_text())
    for key in ("config", "stats_sha256", *PROVENANCE_KEYS):
        assert meta.get(key), key
    assert meta["config"] == plan.config
    model, loaded_meta = load_model(run_dir)
    assert loaded_meta["steps_done"] == plan.config["train"]["steps"]
    assert sum(p.numel() for p in model.parameters()) == meta["parameters"]
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == plan.config["train"]["steps"]


@pytest.mark.slow
def test_statistics_equal_an_independent_numpy_calculation(demo_run, plan):
    """Every time slice of every training batch counts once per batch it appears in."""
    stats = load_stats(demo_run / "results/stats/stats.json")
    paths = [demo_run / f"results/batches/{t0}.h5" for t0 in plan.batch_names("train")]
    for key, level in (("surface/t2m", None), ("atmospheric/q", 3), ("species/occurrence", 2)):
        group, var = key.split("/")
        with_level = [read_batch(p).groups[group][var] for p in paths]
        values = np.stack([a if level is None else a[:, level] for a in with_level])
        channel = 0 if level is None else level
        m = stats.variables[key]
        assert m.count[channel] == np.isfinite(values).sum() == values.size
        np.testing.assert_allclose(m.mean[channel], values.astype(np.float64).mean(), rtol=1e-10)
        np.testing.assert_allclose(m.std[channel], values.astype(np.float64).std(), rtol=1e-7)
        assert (m.min[channel], m.max[channel]) == (values.min(), values.max())


@pytest.mark.slow
def test_held_out_scores_and_report(demo_run):
    rows = [
        json.loads(x)
        for x in (demo_run / "results/eval/demo/scores.jsonl").read_text().splitlines()
    ]
    summary = {r["variable"]: r for r in rows if r["channel"] is None}
    assert {"surface/t2m", "surface/msl", "atmospheric/t", "species/occurrence"} <= set(summary)
    for r in summary.values():
        assert r["n"] > 0
    # The trained model beats persistence on the weather it has learnt to move.
    for key in (
        "surface/t2m",
        "surface/msl",
        "surface/v10",
        "atmospheric/z",
        "atmospheric/t",
        "atmospheric/v",
    ):
        r = summary[key]
        assert r["rmse_model"] < 0.9 * r["rmse_persistence"], r
    with zipfile.ZipFile(demo_run / "report.zip") as z:
        names = z.namelist()
        page = z.read("report/report.html").decode()
    assert any(n.endswith("loss.svg") for n in names), names
    assert any(n.endswith("scores.html") for n in names), names
    # Each reported file comes with its caption.
    assert "Training loss (NaN-masked, normalised mean squared error" in page
    assert "Root-mean-square error on the held-out batches" in page


@pytest.mark.slow
def test_every_job_recorded_its_cost(demo_run, plan):
    """Each job of a rule that runs on a compute node wrote Snakemake's benchmark beside its
    log (results/benchmarks/), which `bfm bench rules --from` reads, memory included."""
    from bfm.bench_rules import collect

    jobs = collect(demo_run / "results/benchmarks", demo_run / "logs")
    rules = {"sample", "combine", "tile", "species_table", "batches", "stats_partial", "stats",
             "train", "climatology", "species_glm", "evaluate", "predict", "finetune",
             "report_loss", "report_scores", "report_lead", "report_error_maps",
             "report_forecast_maps", "report_suitability_maps", "report_sdm",
             "report_ablations"}  # fmt: skip
    assert {j.rule for j in jobs} == rules
    tiles = [j for j in jobs if j.rule == "tile"]
    assert len(tiles) == sum(len(plan.tile_periods(m)) for m in plan.modalities)
    assert len([j for j in jobs if j.rule == "train"]) == 1 + len(plan.ablations)
    assert all(j.seconds > 0 and j.rss_mib and j.rss_mib > 10 for j in jobs)


@pytest.mark.slow
def test_every_report_figure_is_displayed_in_a_browser(demo_run):
    from tests.browser import assert_figures_displayed

    items = ("loss curve", "score table", "scores by lead", "error maps", "forecast maps",
             "suitability maps", "ablations")  # fmt: skip
    assert_figures_displayed(
        demo_run / "report.zip",
        [{"item": i, "run": "demo"} for i in items]
        + [{"item": "SDM metrics", "set": "all", "run": "demo"}],
    )


@pytest.mark.slow
def test_species_models_beat_chance_against_their_baselines(demo_run):
    metrics = demo_run / "results/sdm/demo/all/metrics.jsonl"
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    methods = {(x["method"], x["cv"]) for x in lines}
    assert methods == {(m, cv) for m in ("bfm", "glm", "maxent") for cv in ("spatial", "random")}
    assert len({x["species"] for x in lines}) == 6
    for x in lines:
        assert x["replicates"] == 5 and x["auc_roc_sd"] is not None
    for method in ("bfm", "glm", "maxent"):
        auc = [x["auc_roc"] for x in lines if x["method"] == method and x["cv"] == "random"]
        assert np.mean(auc) > 0.6, (method, auc)  # presence follows the sample's environment
    scores = [json.loads(x) for x in
              (demo_run / "results/eval/demo/scores.jsonl").read_text().splitlines()]  # fmt: skip
    occ = next(r for r in scores if r["variable"] == "species/occurrence" and r["channel"] is None)
    assert occ["deviance_glm"] is not None and occ["auc_glm"] is not None


@pytest.mark.slow
def test_the_forecast_and_error_maps_are_cf_compliant(demo_run):
    forecast = demo_run / "results/predict/demo/forecast.nc"
    assert cf_errors(forecast) == []
    assert cf_errors(demo_run / "results/eval/demo/error_maps.nc") == []
    with xr.open_dataset(forecast) as ds:
        assert ds.sizes["time"] == 3 and "suitability" in ds and "t2m_spread" in ds
        assert float(ds["t2m_spread"].max()) > 0
        s = ds["suitability"].values
        assert np.isfinite(s).all() and 0 <= s.min() and s.max() <= 1


def cf_errors(path: Path) -> list[str]:
    """What the IOOS compliance checker (CF 1.10) reports as errors for a netCDF file."""
    import tempfile

    from compliance_checker.runner import CheckSuite, ComplianceChecker

    CheckSuite.load_all_available_checkers()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cf.json"
        ComplianceChecker.run_checker(str(path), ["cf:1.10"], 0, "normal",
                                      output_filename=str(out), output_format="json")  # fmt: skip
        report = json.loads(out.read_text())["cf:1.10"]
    return [f"{p['name']}: {m}" for p in report["high_priorities"] for m in p["msgs"]]


@pytest.mark.slow
def test_every_tile_of_the_demo_is_cf_compliant(demo_run):
    tiles = sorted((demo_run / "results/tiles").rglob("*.nc"))
    assert tiles
    errors = {str(t.relative_to(demo_run)): cf_errors(t) for t in tiles}
    assert not any(errors.values()), {k: v for k, v in errors.items() if v}


def held_out_species(workdir: Path, run: str, plan: Plan) -> tuple[np.ndarray, np.ndarray, dict]:
    """Observed counts, predicted expected counts ``(N, S, H, W)`` on the held-out batches,
    and the model's normaliser means (the constant: the training mean per species)."""
    from bfm.evaluation.evaluate import predict
    from bfm.training.checkpoint import load_model
    from bfm.training.data import BatchPairs, to_sample

    model, _ = load_model(workdir / f"results/models/{run}")
    norm, layout = model.normaliser(), model.config.layout
    paths = [str(workdir / f"results/batches/{t}.h5") for t in plan.batch_names("eval")]
    data = BatchPairs(paths, norm, layout=layout)
    observed, predicted = [], []
    inner = layout.inner("species")  # the occurrence channels (the effort follows them)
    occ = slice(*(layout.variables("species").index("occurrence") * inner + k for k in (0, inner)))
    for i in range(len(data)):
        x, y = data.load(i)
        predicted.append(predict(model, to_sample(x, y, layout, norm), norm)["species"][occ])
        observed.append(layout.stack("species", y.groups["species"])[1][occ])
    return np.stack(observed), np.stack(predicted), {"mean": norm.mean["species"][occ]}


@pytest.mark.slow
def test_species_skill_beats_the_constant_on_held_out_batches(demo_run, plan):
    """Poisson deviance below that of the training-mean constant and AUC (cells with records
    vs without) above 0.5 on batches the model never saw: over all species together, and per
    species where the held-out batches hold enough records for the comparison to mean
    something (>= 20; the rarest demo species has about 4, whose deviance is noise)."""
    from sklearn.metrics import mean_poisson_deviance, roc_auc_score

    y, mu, norm = held_out_species(demo_run, "demo", plan)
    assert (mu > 0).all() and np.isfinite(mu).all()  # log-rate output: never negative
    assert y.shape[1] == len(plan.config["species_subset"])  # the demo's six species
    const = np.broadcast_to(norm["mean"][None, :, None, None], y.shape)
    ok = np.isfinite(y)
    pooled = (mean_poisson_deviance(y[ok], mu[ok]), mean_poisson_deviance(y[ok], const[ok]))
    print(f"species, all: deviance model {pooled[0]:.5f}, constant {pooled[1]:.5f}")
    assert pooled[0] < pooled[1]
    judged = 0
    for s in range(y.shape[1]):
        obs, pred, c = (a[:, s][ok[:, s]] for a in (y, mu, const))
        model_dev, const_dev = mean_poisson_deviance(obs, pred), mean_poisson_deviance(obs, c)
        auc = roc_auc_score(obs > 0, pred)
        print(f"species {s}: {obs.sum():.0f} records, deviance model {model_dev:.5f}, "
              f"constant {const_dev:.5f}, AUC {auc:.3f}")  # fmt: skip
        assert auc > 0.5, (s, auc)
        if obs.sum() >= 20:
            judged += 1
            assert model_dev < const_dev, (s, model_dev, const_dev)
    assert judged >= y.shape[1] - 1


@pytest.mark.slow
def test_the_mvit_backbone_trains_in_the_demo_dag(demo_run):
    """Both backbones train in the demo DAG (the ablation `mvit`, run demo-mvit: the demo's
    model with the other backbone): MViT beats persistence where Swin3D does, on the same
    held-out batches."""
    from bfm.training.checkpoint import load_model

    workdir, run = demo_run, "demo-mvit"
    meta = json.loads((workdir / f"results/models/{run}/meta.json").read_text())
    assert meta["model"]["config"]["backbone"] == "mvit"
    groups = {g["name"] for g in meta["model"]["config"]["layout"]["groups"]}
    assert groups == {"surface", "static", "atmospheric", "species", "vegetation", "land",
                      "agriculture", "forest", "redlist", "lpi"}  # fmt: skip
    model, _ = load_model(workdir / f"results/models/{run}")
    assert type(model.backbone).__name__ == "MViTBackbone"
    rows = [json.loads(x) for x in (workdir / f"results/eval/{run}/scores.jsonl").open()]
    summary = {r["variable"]: r for r in rows if r["channel"] is None}
    assert {g.split("/")[0] for g in summary} == groups - {"static"}
    for key in ("surface/t2m", "surface/msl", "surface/v10", "atmospheric/t", "atmospheric/v"):
        assert summary[key]["rmse_model"] < 0.9 * summary[key]["rmse_persistence"], key
