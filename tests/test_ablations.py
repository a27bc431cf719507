"""Ablations (evaluation.ablations): the config's variants, a model without some batch groups
trained and scored on batches that keep them, and the DAG that trains and scores each."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bfm.ablations import FULL_MODEL, check_drop, droppable
from bfm.cli import main
from bfm.config import ConfigError, validate_config
from bfm.contracts.batch import read_batch
from bfm.contracts.layout import Layout
from bfm.contracts.species_table import write_species_table
from bfm.contracts.stats import load_stats
from bfm.testing import (
    BASE_GROUPS,
    SPECIES,
    demo_config,
    mock_species_table,
    write_sequence,
    write_stats,
)
from bfm.training import checkpoint
from bfm.training.data import BatchPairs
from bfm.workflow import Plan
from tests.conftest import demo_workdir, snakemake_cmd
from tests.test_train import env

GROUPS = (*BASE_GROUPS, "vegetation", "redlist")  # two covariate groups besides ERA5's


def with_ablations(*variants: dict) -> dict:
    cfg = demo_config()
    cfg["evaluation"]["ablations"] = list(variants)
    return cfg


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ([{"name": "x", "drop_groups": ["vegetatoin"]}],
         "key 'evaluation.ablations.0.drop_groups': 'vegetatoin' is not a batch group "
         "(droppable: vegetation, land, agriculture, forest, redlist, lpi)"),
        ([{"name": "x", "drop_groups": ["lpi"]}, {"name": "y", "drop_groups": ["surface"]}],
         "key 'evaluation.ablations.1.drop_groups': 'surface' is an ERA5 group"),
        ([{"name": "x", "drop_groups": ["static"]}], "'static' is an ERA5 group"),
        ([{"name": "x", "drop_groups": ["species"]}],
         "'species' is the species group (the target of the species scores) and cannot be "
         "dropped"),
        ([{"name": "mvit", "backbone": "mvit"}, {"name": "mvit", "drop_groups": ["lpi"]}],
         "key 'evaluation.ablations.1.name' is 'mvit', which an earlier variant has"),
        ([{"name": "same", "backbone": "swin3d"}],
         "key 'evaluation.ablations.0' (variant 'same') changes nothing from the full model"),
        ([{"name": "a/b", "backbone": "mvit"}],
         "key 'evaluation.ablations.0.name' breaks the schema rule 'pattern'"),
        ([{"name": "x", "species_table": True}],
         "key 'evaluation.ablations.0.species_table' breaks the schema rule 'const'"),
        ([{"name": "x", "drop_groups": []}],
         "key 'evaluation.ablations.0.drop_groups' breaks the schema rule 'minItems'"),
        ([{"name": "x", "backbone": "vit"}],
         "key 'evaluation.ablations.0.backbone' breaks the schema rule 'enum'"),
    ],
)  # fmt: skip
def test_a_variant_that_is_no_ablation_is_refused_naming_the_key(variants, message):
    with pytest.raises(ConfigError) as err:
        validate_config(with_ablations(*variants), "study.yaml")
    assert str(err.value).startswith("study.yaml: "), err.value
    assert message in str(err.value)


def test_a_variant_that_is_the_full_model_in_a_study_is_left_out():
    """A copy of the demo config without some sources: what a variant drops of them is not
    there to drop; one left the same as the full model is not trained twice."""
    cfg = with_ablations({"name": "no_ind", "drop_groups": ["redlist", "lpi"]},
                         {"name": "no_lpi_ndvi", "drop_groups": ["lpi", "vegetation"]},
                         {"name": "bare", "species_table": False})  # fmt: skip
    del cfg["sources"]["lpi"], cfg["sources"]["redlist"]
    plan = Plan(cfg)
    assert [v.name for v in plan.ablations] == ["no_lpi_ndvi", "bare"]
    assert plan.variant("demo-no_lpi_ndvi").drop_groups == ("vegetation",)
    assert plan.ablations_left_out == ("no_ind",)
    assert list(plan.ablation_runs()) == [FULL_MODEL, "no_lpi_ndvi", "bare"]
    # Without species there is no table to go without.
    cfg["sources"] = {"era5": cfg["sources"]["era5"], "ndvi": cfg["sources"]["ndvi"]}
    plan = Plan(cfg)
    assert [v.name for v in plan.ablations] == ["no_lpi_ndvi"]
    assert plan.ablations_left_out == ("no_ind", "bare")


def test_the_plan_maps_each_run_to_its_variant():
    plan = Plan(with_ablations(
        {"name": "mvit", "backbone": "mvit"},
        {"name": "no_cov", "drop_groups": ["lpi", "vegetation"]},  # any order: catalogue's out
        {"name": "bare", "species_table": False}))  # fmt: skip
    assert plan.ablation_runs() == {FULL_MODEL: "demo", "mvit": "demo-mvit",
                                    "no_cov": "demo-no_cov", "bare": "demo-bare"}  # fmt: skip
    assert list(plan.ablation_runs()) == [FULL_MODEL, "mvit", "no_cov", "bare"]
    assert plan.variant("demo-no_cov").drop_groups == ("vegetation", "lpi")
    assert plan.variant("demo-mvit").backbone == "mvit"
    assert plan.variant("demo-bare").species_table is False
    for run in ("demo", "by-hand"):  # the config's run, or any other: the full model
        base = plan.variant(run)
        assert (base.backbone, base.species_table, base.drop_groups) == ("swin3d", True, ())
    assert Plan(demo_config(evaluation={})).ablation_runs() == {}


def test_only_covariates_are_droppable():
    assert droppable(Plan(demo_config()).groups) == (
        "vegetation", "land", "agriculture", "forest", "redlist", "lpi")  # fmt: skip
    assert check_drop(["lpi", "land"], "w") == ("land", "lpi")  # catalogue order


@pytest.fixture(scope="module")
def full_batches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | list[Path]]:
    root = tmp_path_factory.mktemp("ablation")
    paths = write_sequence(root / "batches", 5, groups=GROUPS)
    return {"root": root, "paths": paths, "stats": write_stats(paths, root / "stats.json")}


def test_a_layout_without_a_group_reads_batches_that_keep_it(full_batches):
    batch = read_batch(full_batches["paths"][0])
    layout = Layout.from_batch(batch, drop=["vegetation"])
    assert layout.groups == ("surface", "static", "atmospheric", "species", "redlist")
    layout.check(batch)  # the batch holds vegetation too: no error
    with pytest.raises(ValueError, match=r"cannot drop group\(s\) \['lpi'\]: the batch has"):
        Layout.from_batch(batch, drop=["lpi"])
    data = BatchPairs(full_batches["paths"], load_stats(full_batches["stats"]),
                      drop_groups=["vegetation"])  # fmt: skip
    sample = data[0]
    assert set(sample.input.inputs) == set(layout.groups)
    assert set(sample.target) == {"surface", "atmospheric", "species", "redlist"}


def test_the_cli_refuses_to_drop_the_weather(full_batches, tmp_path: Path, caplog):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 1}))
    args = ["train", "--batches", *map(str, full_batches["paths"]), "--stats",
            str(full_batches["stats"]), "--deepspeed", str(ds), "--no-species-table",
            "--drop-group", "atmospheric", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 1
    assert "--drop-group: 'atmospheric' is an ERA5 group" in caplog.text
    assert not (tmp_path / "run" / "meta.json").exists()


@pytest.mark.slow
def test_a_model_without_a_group_trains_and_is_scored_on_full_batches(full_batches, tmp_path):
    root = full_batches["root"]
    ds = root / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 1,
                              "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 1},
                              "steps_per_print": 10**6}))  # fmt: skip
    table = write_species_table(mock_species_table(SPECIES), root / "species.parquet")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "bfm.cli", "train", "--batches", *map(str, full_batches["paths"]),
           "--stats", str(full_batches["stats"]), "--deepspeed", str(ds), "--steps", "2",
           "--warmup-steps", "1", "--species-table", str(table), "--drop-group", "vegetation",
           "--out", str(run)]  # fmt: skip
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads((run / "meta.json").read_text())
    assert meta["model"]["drop_groups"] == ["vegetation"]
    assert meta["config"]["drop_groups"] == ["vegetation"]  # a run by hand: its settings
    model, _ = checkpoint.load_model(run)
    assert "vegetation" not in model.config.layout.groups
    assert "redlist" in model.config.layout.groups
    assert "vegetation" in read_batch(full_batches["paths"][0]).groups  # the batches keep it
    # The climatology of the full batches (every group), as the workflow builds it.
    clim = tmp_path / "climatology.h5"
    assert main(["climatology", "--batches", *map(str, full_batches["paths"]), "--out",
                 str(clim)]) == 0  # fmt: skip
    out = tmp_path / "eval" / "scores.jsonl"
    args = ["evaluate", "--model", str(run), "--batches", *map(str, full_batches["paths"]),
            "--climatology", str(clim), "--leads", "2", "--bootstrap", "0",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert {r["climatology_kind"] for r in lines} == {"day-of-year"}
    groups = {r["variable"].split("/")[0] for r in lines}
    assert groups == {"surface", "atmospheric", "species", "redlist"}
    by_lead = [json.loads(x) for x in out.with_name("scores_by_lead.jsonl").open()]
    assert {r["lead"] for r in by_lead} == {1, 2}  # the rollout fed the model its forecast


@pytest.mark.slow
def test_the_ablations_target_trains_and_scores_each_variant(tmp_path: Path):
    workdir = demo_workdir(tmp_path)
    cmd = [*snakemake_cmd(workdir), "-n", "-p", "ablations"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    shells = re.findall(r"^Shell command:\s*(.*)$", out.stdout, re.M)
    plan = Plan(yaml.safe_load((workdir / "config/config.yaml").read_text()))
    runs = list(plan.ablation_runs().values())
    assert runs == ["demo", "demo-no_species_table", "demo-no_land_use", "demo-no_indicators",
                    "demo-mvit"]  # fmt: skip
    train = {re.search(r"--out results/models/(\S+)", s)[1]: s for s in shells
             if s.startswith("bfm train")}  # fmt: skip
    evaluate = {re.search(r"--out results/eval/(\S+)/scores", s)[1]: s for s in shells
                if s.startswith("bfm evaluate")}  # fmt: skip
    assert sorted(train) == sorted(evaluate) == sorted(runs)
    assert "--backbone mvit" in train["demo-mvit"]
    assert all("--backbone swin3d" in train[r] for r in runs if r != "demo-mvit")
    assert all(s.count("--backbone") == 1 for s in train.values())
    assert "--drop-group redlist --drop-group lpi " in train["demo-no_indicators"]
    assert ("--drop-group vegetation --drop-group land --drop-group agriculture "
            "--drop-group forest ") in train["demo-no_land_use"]  # fmt: skip
    assert "--no-species-table" in train["demo-no_species_table"]
    assert "--species-table" not in train["demo-no_species_table"]
    others = [s for r, s in train.items() if r != "demo-no_species_table"]
    assert all("--species-table results/species/species.parquet" in s for s in others)
    assert all("--drop-group" not in train[r] for r in ("demo", "demo-mvit"))
    # The same data, seed, steps and learning rate as the full model.
    same = re.compile(r"--steps 400 --lr 0.002 --warmup-steps 5 --checkpoint-every 200 --seed 0")
    assert all(same.search(s) for s in train.values())
    assert len({re.sub(r"--batches (.*?) --stats.*", r"\1", s) for s in train.values()}) == 1
