"""Species distribution fine-tuning: metrics worked out by hand, folds, the target-group
background, and the whole protocol on batches where presence follows a covariate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bfm.cli import main
from bfm.contracts.batch import read_batch
from bfm.contracts.grid import Grid
from bfm.contracts.layout import Layout, Normaliser
from bfm.contracts.stats import load_stats
from bfm.evaluation import sdm
from bfm.evaluation import sdm_metrics as M
from bfm.model import BFM, build_config
from bfm.testing import BASE_GROUPS, mock_meta, write_sequence, write_stats
from bfm.training import checkpoint

# --- metrics --------------------------------------------------------------------------------


def test_max_tss_by_hand():
    # thresholds 0.9: tpr 1/2 fpr 0; 0.5: 1/2, 1/3; 0.4: 1, 1/3 (best: 2/3); 0.2: 1, 2/3
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.9, 0.4, 0.5, 0.1, 0.2])
    assert M.max_tss(y, p) == pytest.approx(2 / 3)
    # inverted (presences .6, .1; absences .5, .9, .8): every threshold has tpr <= fpr, so
    # the best is a trivial one (all or nothing present): 0
    assert M.max_tss(y, 1 - p) == pytest.approx(0.0)
    assert M.max_tss(np.ones(3), np.arange(3)) is None  # one class: undefined
    assert M.max_tss(np.array([1, 0]), np.array([0.7, 0.2])) == pytest.approx(1.0)


def test_boyce_by_hand():
    # fit 0, .25, .5, .75, 1 (presences .5 and 1), window .5, res 4: windows start at 0, .125,
    # .25, .375 and (ecospat's trick) 1.5; P/E = (1/2)/(3/5), (1/2)/(2/5), (1/2)/(3/5),
    # (1/2)/(2/5), empty -> .833, 1.25, .833, 1.25: Spearman with 0..3 = 2 / sqrt(4 * 5).
    p = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    y = np.array([0, 0, 1, 0, 1])
    assert M.boyce(y, p, res=4, window=0.5) == pytest.approx(1 / np.sqrt(5))
    # every window the same ratio: no correlation to compute
    assert M.boyce(np.array([1, 0]), np.array([0.5, 0.5])) is None


def test_boyce_rises_with_a_good_model_and_falls_with_an_inverted_one():
    rng = np.random.default_rng(0)
    p = rng.random(4000)
    y = rng.random(4000) < p**3  # presences ever more frequent as p rises
    assert M.boyce(y, p) > 0.9
    assert M.boyce(y, 1 - p) < -0.9
    assert M.auc_roc(y, p) > 0.75 and M.auc_pr(y, p) > y.mean()


def test_block_folds_keep_blocks_whole_and_balance_presences():
    rng = np.random.default_rng(1)
    lat, lon = rng.uniform(40, 60, 3000), rng.uniform(0, 30, 3000)
    presence = rng.random(3000) < 0.2
    blocks = M.block_ids(lat, lon, 2.5)
    folds = M.block_folds(blocks, presence, 5, rng)
    for b in np.unique(blocks):
        assert np.unique(folds[blocks == b]).size == 1
    per_fold = np.bincount(folds[presence], minlength=5)
    assert per_fold.min() > 0.7 * per_fold.mean()
    random = M.random_folds(3000, 5, rng)
    assert np.bincount(random).tolist() == [600] * 5
    with pytest.raises(ValueError, match="block_size_deg"):
        M.block_ids(lat, lon, 0)


def test_autocorrelation_range_grows_with_the_fields_smoothness():
    from scipy.ndimage import gaussian_filter

    lat, lon = np.arange(60, 40, -0.5), np.arange(0, 30, 0.5)
    noise = np.random.default_rng(2).normal(size=(5, lat.size, lon.size))
    ranges = [M.autocorrelation_range(np.stack([gaussian_filter(f, s) for f in noise]), lat, lon)
              for s in (0.01, 2, 5)]  # fmt: skip
    assert ranges[0] < 1.0  # white noise: within a couple of cells
    assert ranges[0] < ranges[1] < ranges[2]


def test_block_size_shrinks_until_enough_blocks_hold_presences():
    lat, lon = np.repeat(np.arange(44, 54, 0.5), 20), np.tile(np.arange(0, 10, 0.5), 20)
    presence = np.ones(lat.size, bool)
    size = M.block_size_for(20.0, lat, lon, presence, 5, 0.5)
    assert np.unique(M.block_ids(lat, lon, size)).size >= 10
    assert size < 20 and size % 0.5 == 0


# --- points -------------------------------------------------------------------------------

GRID = Grid(lat_min=44.0, lat_max=50.5, lon_min=0.0, lon_max=9.5, res=0.5)  # 14 x 20
KEYS = (101, 202)


def env(k: int) -> np.ndarray:
    """The covariate that matters: a t2m anomaly field, new each time step."""
    rng = np.random.default_rng(1000 + k)
    la, lo = np.meshgrid(np.arange(GRID.n_lat), np.arange(GRID.n_lon), indexing="ij")
    return 4 * np.sin(la / 3.0 + k) + 3 * np.cos(lo / 4.0 - k) + rng.normal(0, 0.5, la.shape)


def values(var: str, k: int, lat: np.ndarray, lon: np.ndarray, ch: int) -> np.ndarray:
    shape = (lat.size, lon.size)
    rng = np.random.default_rng([k, ch, len(var)])
    if var == "t2m":
        return 280 + env(k)
    if var == "occurrence":  # species 0 where it is warm; species 1 anywhere (uninformative)
        rate = np.exp(1.2 * env(k) - 5.0) if ch == 0 else np.full(shape, 0.08)
        return rng.poisson(rate).astype(float)
    if var == "effort":  # the class recorded more in the east
        return rng.poisson(1.0 + lon[None, :] / 5.0 * np.ones(shape)).astype(float) + 1.0
    if var == "slt":
        return np.where(lat[:, None] > 49, 2.0, 5.0) * np.ones(shape)
    base = {"msl": 101000.0, "lsm": 0.8, "z": 5000.0, "t": 250.0, "q": 0.005}.get(var, 1.0)
    return base + rng.normal(0, 0.01 * max(abs(base), 1), shape)


@pytest.fixture(scope="module")
def sdm_batches(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("sdm")
    return write_sequence(d, 10, grid=GRID, species=KEYS, value=values, levels=(500, 850))


@pytest.fixture(scope="module")
def tiny_model(sdm_batches, tmp_path_factory) -> BFM:
    stats = load_stats(write_stats(sdm_batches, tmp_path_factory.mktemp("stats") / "s.json"))
    layout = Layout.from_batch(read_batch(sdm_batches[0]))
    torch.manual_seed(0)
    return BFM(build_config("tiny", layout), Normaliser.from_stats(stats, layout)).eval()


def test_background_is_target_group_and_follows_effort(sdm_batches):
    settings = sdm.Settings(replicates=5, background_per_presence=2.0)
    pts = sdm.sample_points(sdm_batches, KEYS, settings)
    occ = np.stack([read_batch(p).groups["species"]["occurrence"][1] for p in sdm_batches])
    eff = np.stack([read_batch(p).groups["species"]["effort"][1] for p in sdm_batches])
    for s in range(2):
        pres = pts.presence[s]
        assert pres.size == int((occ[:, s] > 0).sum())
        assert (occ[pts.batch[pres], s, pts.row[pres], pts.col[pres]] > 0).all()
        east = []
        for r in range(5):
            bg = pts.background[s][r]
            assert bg.size == 2 * pres.size and np.unique(bg).size == bg.size
            b, i, j = pts.batch[bg], pts.row[bg], pts.col[bg]
            assert (occ[b, s, i, j] == 0).all() and (eff[b, s, i, j] > 0).all()
            east.append(np.mean(eff[b, s, i, j]))
        # drawn in proportion to effort: the background's mean effort exceeds the candidates'
        cand = eff[:, s][(occ[:, s] == 0) & (eff[:, s] > 0)]
        assert min(east) > cand.mean()
        assert len({tuple(pts.background[s][r][:20]) for r in range(5)}) == 5  # replicates differ


def test_covariates_skip_species_and_keep_chosen_levels():
    layout = Layout(levels=(500, 700, 850), species=KEYS, groups=BASE_GROUPS)
    labels = [lab for _, _, lab in sdm.covariate_channels(layout, (850,))]
    assert "surface/t2m" in labels and "static/slt" in labels and "atmospheric/t@850" in labels
    assert not any(lab.startswith("species/") or "@500" in lab for lab in labels)


def test_the_masked_input_hides_every_species_channel(sdm_batches, tiny_model):
    batch = read_batch(sdm_batches[3])
    layout, norm = tiny_model.config.layout, tiny_model.normaliser()
    x = sdm.masked_input(batch, layout, norm)
    assert float(x.inputs["species"].abs().sum()) == 0 and bool((x.missing["species"] == 1).all())
    other = read_batch(sdm_batches[3])
    other.groups["species"]["occurrence"][:] = 99.0
    with torch.no_grad():
        a = tiny_model.cell_features(x.batched())
        b = tiny_model.cell_features(sdm.masked_input(other, layout, norm).batched())
    assert a.shape[:3] == (1, GRID.n_lat, GRID.n_lon)
    assert torch.equal(a, b)  # the occurrences asked about cannot leak into the features


# --- the protocol -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finetuned(sdm_batches, tiny_model, tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("sdm_out")
    settings = sdm.Settings(replicates=5, folds=2, head_steps=100)
    lines = sdm.finetune(tiny_model, sdm_batches, KEYS, ["Warm one", "Anywhere"], settings, out,
                         jobs=2)  # fmt: skip
    return out, lines


@pytest.mark.slow
def test_the_cross_validation_is_the_same_in_one_process_and_in_two(sdm_batches, tiny_model,
                                                                   tmp_path) -> None:  # fmt: skip
    # Two processes take a replicate's CV scheme each (four tasks for two replicates): the
    # same scores, in the same order, as one process doing them in turn.
    settings = sdm.Settings(replicates=2, folds=2, head_steps=20, methods=("bfm", "glm"))
    one, two = (sdm.finetune(tiny_model, sdm_batches, KEYS, ["Warm one", "Anywhere"], settings,
                             tmp_path / str(jobs), jobs=jobs) for jobs in (1, 2))  # fmt: skip
    assert len(one) == 2 * 2 * 2 and one == two


@pytest.mark.slow
def test_finetune_scores_every_species_method_and_scheme(finetuned):
    out, lines = finetuned
    assert {(x["species"], x["method"], x["cv"]) for x in lines} == {
        (s, m, cv) for s in ("Warm one", "Anywhere") for m in ("bfm", "glm", "maxent")
        for cv in ("spatial", "random")}  # fmt: skip
    assert [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()] == lines
    by = {(x["species"], x["method"], x["cv"]): x for x in lines}
    for m in ("glm", "maxent"):  # presence follows t2m: the covariate models find it
        assert by["Warm one", m, "random"]["auc_roc"] > 0.85
        assert by["Warm one", m, "random"]["boyce"] > 0.5
        assert by["Anywhere", m, "random"]["auc_roc"] < 0.65  # nothing to find
    warm = by["Warm one", "glm", "spatial"]
    assert warm["replicates"] == 5 and warm["folds"] == 2 and warm["auc_roc_sd"] > 0
    assert warm["n_background"] == 3 * warm["n_presence"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["block_size_deg"] == warm["block_size_deg"] > 0
    assert "surface/t2m" in summary["covariates"]


@pytest.mark.slow
def test_heads_give_suitability_maps(finetuned, sdm_batches, tiny_model):
    out, _ = finetuned
    heads = sdm.load_heads(out / "heads.pt")
    assert heads.keys == list(KEYS) and heads.names == ["Warm one", "Anywhere"]
    batch = read_batch(sdm_batches[5])
    maps = heads.suitability(tiny_model, batch)
    assert maps.shape == (2, GRID.n_lat, GRID.n_lon)
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    with pytest.raises(ValueError, match="not a heads file"):
        sdm.load_heads(out / "metrics.jsonl")


def test_lora_trains_only_the_adapters(sdm_batches, tiny_model):
    settings = sdm.Settings(replicates=1, folds=2, head_steps=20, lora=True, lora_epochs=1,
                            lora_lr=0.05)  # fmt: skip
    pts = sdm.sample_points(sdm_batches[:4], KEYS, settings)
    ex = sdm.extract(sdm_batches[:4], pts, tiny_model)
    layout, norm = tiny_model.config.layout, tiny_model.normaliser()
    inputs = [sdm.masked_input(read_batch(p), layout, norm) for p in sdm_batches[:4]]
    y = np.zeros((len(pts), 2), bool)
    m = np.zeros_like(y)
    for s in range(2):
        idx, lab = pts.dataset(s, 0)
        y[idx, s], m[idx, s] = lab, True
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    tuned, _ = sdm.fit_lora(tiny_model, inputs, pts, ex.features, y, m, settings, 0)
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())
    lora = sdm.lora_state(tuned)
    assert lora and any(float(v.abs().sum()) > 0 for k, v in lora.items() if "lora_B" in k)
    assert (
        not sdm.with_lora(tiny_model, 2).backbone.stage1[0].attn.qkv.base_layer.weight.requires_grad
    )
    z = sdm.lora_features(tuned, inputs, pts)
    assert z.shape == ex.features.shape and not np.allclose(z, ex.features)


def write_run(model: BFM, run: Path) -> Path:
    """A run directory as training leaves it, holding ``model``."""
    ckpt = run / checkpoint.CHECKPOINTS / "step_000001"
    ckpt.mkdir(parents=True)
    torch.save({"module": model.state_dict()}, ckpt / checkpoint.MODEL_STATES)
    checkpoint.write_meta(run, mock_meta(model.config))
    return run


def test_the_command_fits_a_configured_set(sdm_batches, tiny_model, tmp_path):
    run = write_run(tiny_model, tmp_path / "run")
    species = tmp_path / "list.csv"
    pd.DataFrame(
        {"scientific_name": ["Warm one", "Anywhere"], "common_name": ["w", "a"], "gbif_key": KEYS}
    ).to_csv(  # fmt: skip
        species, index=False
    )
    from bfm.testing import demo_config

    cfg = demo_config()
    cfg["species"] = str(species)
    cfg.pop("species_subset", None)
    cfg["sdm"] = {"sets": {"warm": ["Warm one"]}, "replicates": 5,
                  "folds": 2, "methods": ["glm"]}  # fmt: skip
    config = tmp_path / "config.yaml"
    import yaml

    config.write_text(yaml.safe_dump(cfg))
    base = ["finetune", "--model", str(run), "--batches", *map(str, sdm_batches[:6]),
            "--species-list", str(species), "--config", str(config)]  # fmt: skip
    assert main([*base, "--set", "warm", "--out", str(tmp_path / "warm")]) == 0
    lines = [json.loads(x) for x in (tmp_path / "warm/metrics.jsonl").read_text().splitlines()]
    assert {x["species"] for x in lines} == {"Warm one"} and {x["method"] for x in lines} == {"glm"}
    assert main([*base, "--set", "nope", "--out", str(tmp_path / "nope")]) == 1
    assert not (tmp_path / "nope").exists()
    table = pd.read_csv(species)
    with pytest.raises(ValueError, match=r"sdm.sets.bad: species \['Nowhere'\] are not modelled"):
        sdm.species_of_set(KEYS, table, ["Nowhere"], "sdm.sets.bad")


def test_a_set_naming_a_species_not_modelled_is_refused():
    from bfm.config import ConfigError, validate_config
    from bfm.testing import ROOT, demo_config

    cfg = demo_config()
    cfg["species"] = str(ROOT / "resources/species.csv")
    cfg["species_subset"] = ["Mustela lutreola", "Lynx pardinus"]
    cfg["sdm"] = {"sets": {"cats": ["Lynx pardinus"]}}
    assert validate_config(cfg)["sdm"]["sets"] == {"cats": ["Lynx pardinus"]}
    cfg["sdm"] = {"sets": {"cats": ["Lynx pardinus", "Felis catus"]}}
    with pytest.raises(ConfigError, match=r"sdm.sets.cats.*Felis catus"):
        validate_config(cfg)
    cfg["sdm"] = {"sets": {"all": None}, "replicates": 3}
    with pytest.raises(ConfigError, match="sdm.replicates"):
        validate_config(cfg)


def test_the_species_glm_learns_the_rate_from_the_covariates(sdm_batches, tmp_path):
    from bfm.evaluation import species_glm

    layout = Layout.from_batch(read_batch(sdm_batches[0]))
    glm = species_glm.fit(sdm_batches[:8], layout, max_rows=3000)
    path = species_glm.save(glm, tmp_path / "glm.joblib")
    glm = species_glm.load(path)
    batch = read_batch(sdm_batches[9])  # a pair's target the GLM never saw
    mu = glm.predict(read_batch(sdm_batches[8]))["species"]
    assert mu.shape == (layout.n_channels("species"), GRID.n_lat, GRID.n_lon)
    truth = layout.stack("species", batch.groups["species"])[1]
    occ = 0  # the first channel: the warm species' occurrence, rate exp(1.2 env - 5)
    expected = np.exp(1.2 * env(9) - 5.0)
    assert np.corrcoef(np.log(mu[occ]).ravel(), np.log(expected).ravel())[0, 1] > 0.9

    def deviance(y: np.ndarray, m: np.ndarray) -> float:
        m = np.maximum(m, 1e-6)
        return float(np.mean(2 * (np.where(y > 0, y * np.log(np.maximum(y, 1e-12) / m), 0)
                                  - (y - m))))  # fmt: skip

    constant = np.full_like(mu[occ], float(np.mean(truth[occ])))
    assert deviance(truth[occ], mu[occ]) < 0.8 * deviance(truth[occ], constant)
    with pytest.raises(ValueError, match="not a species GLM"):
        species_glm.load(tmp_path / "nothing.joblib")


def test_evaluate_scores_the_glm_beside_the_other_species_forecasts(sdm_batches, tiny_model,
                                                                    tmp_path):  # fmt: skip
    run = write_run(tiny_model, tmp_path / "run")
    glm = tmp_path / "glm.joblib"
    assert main(["species-glm", "--batches", *map(str, sdm_batches[:7]), "--max-rows", "2000",
                 "--out", str(glm)]) == 0  # fmt: skip
    out = tmp_path / "eval/scores.jsonl"
    args = ["evaluate", "--model", str(run), "--batches", *map(str, sdm_batches[6:]),
            "--bootstrap", "0", "--leads", "1", "--out", str(out)]  # fmt: skip
    assert main([*args, "--glm", str(glm)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    occ = next(x for x in lines if x["variable"] == "species/occurrence" and x["channel"] is None)
    t2m = next(x for x in lines if x["variable"] == "surface/t2m")
    assert occ["deviance_glm"] is not None and occ["auc_glm"] is not None
    assert "rmse_glm" not in t2m  # only counts have a GLM forecast
    # the warm species' rate follows the covariates: the GLM beats the training mean
    warm = next(x for x in lines if x["variable"] == "species/occurrence"
                and x["channel"] == str(KEYS[0]))  # fmt: skip
    assert warm["deviance_glm"] < warm["deviance_constant"]
    assert main([*args, "--glm", str(tmp_path / "missing.joblib")]) == 1


def test_a_species_never_recorded_is_left_out_and_said(tmp_path):
    def none_for_the_second(var, k, lat, lon, ch):
        v = values(var, k, lat, lon, ch)
        return np.zeros_like(v) if var == "occurrence" and ch == 1 else v

    paths = write_sequence(tmp_path / "b", 4, grid=GRID, species=KEYS,
                           value=none_for_the_second, levels=(500, 850))  # fmt: skip
    settings = sdm.Settings(replicates=1, folds=2, methods=("glm",))
    lines = sdm.finetune(None, paths, KEYS, ["Warm one", "Never"], settings, tmp_path / "out")
    assert {x["species"] for x in lines} == {"Warm one"}
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["species_left_out"] == ["Never"]
    with pytest.raises(ValueError, match="no species of the set has a presence and a"):
        sdm.finetune(None, paths, KEYS[1:], ["Never"], settings, tmp_path / "none")
