"""The species table built from the sources' media: photos, recordings, barcodes, texts."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from bfm import sources
from bfm.config import validate_config
from bfm.contracts.occurrence import read_quarantine
from bfm.contracts.species_table import MEDIA, read_species_table
from bfm.embeddings import DIMS
from bfm.pipeline.species import build_table
from bfm.testing import ROOT, demo_config
from bfm.workflow import Plan

MEDIA_SOURCES = ("inaturalist", "xenocanto", "bold", "mol")


@pytest.fixture
def plan(tmp_path, monkeypatch) -> Plan:
    """The demo config on its media sources, their raw files sampled under tmp_path."""
    monkeypatch.chdir(tmp_path)
    config = demo_config()
    config["species"] = str(ROOT / "tests/species.csv")
    config.pop("species_subset")
    config["sources"]["gbif"]["options"] = {"media": False}  # its media: a test of their own
    plan = Plan(validate_config(config))
    for name in MEDIA_SOURCES:
        src = sources.get(name)
        names = [getattr(src, "raw_name", None), *src.media_names(plan.study)]
        for raw in dict.fromkeys(n for n in names if n):  # records first, then their media
            out = Path(src.raw_file(raw, plan.study))
            if not out.exists():
                out.parent.mkdir(parents=True, exist_ok=True)
                src.sample(raw, out, plan.study)
    return plan


def test_the_study_names_each_sources_media_files(plan):
    assert plan.species_media() == {
        "inaturalist": ["results/raw/inaturalist/photos.zip"],
        "xenocanto": ["results/raw/xenocanto/audio.zip"],
        "bold": ["results/raw/bold/records.jsonl.gz"],
        "mol": ["results/raw/mol/descriptions.json"],
    }
    # a media file is built from its source's records: the workflow knows the order
    photos = sources.get("inaturalist").raw_inputs("photos.zip", plan.study)
    assert "results/raw/inaturalist/observations.jsonl.gz" in photos


def test_every_species_gets_an_embedding_per_kind_from_its_media(plan, tmp_path):
    out = build_table(plan, tmp_path / "species.parquet")
    table = read_species_table(out)
    keys = pd.read_csv(ROOT / "tests/species.csv")["gbif_key"].tolist()
    assert table.keys.tolist() == keys
    assert table.dims == {m: DIMS[m] for m in MEDIA}
    for m in ("image", "audio", "edna"):
        assert table.present[m].all(), m
        e = table.embeddings[m]
        assert np.isfinite(e).all() and np.linalg.norm(e, axis=1).min() > 0
        # each species its own vector: no two rows the same
        assert len({tuple(np.round(r, 5)) for r in e}) == len(keys), m
    # the sample leaves one species without a description: no text vector, zeros
    assert table.present["text"].sum() == len(keys) - 1
    assert not table.embeddings["text"][~table.present["text"]].any()
    extra = pd.read_parquet(out)
    assert extra["common_name"].tolist()[0] == "Eurasian lynx"
    assert (extra["n_image"] == 5).all() and (extra["n_audio"] > 0).all()
    assert (extra["description"] != "").sum() == len(keys) - 1
    report = read_quarantine(Path(str(out) + ".quarantine.json"))
    assert report["dropped"] == {} and report["read"] == report["kept"] > 0


def test_a_corrupt_photo_is_counted_and_the_species_keeps_its_other_photos(plan, tmp_path):
    photos = Path("results/raw/inaturalist/photos.zip")
    with zipfile.ZipFile(photos) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    index = pd.read_csv(io.BytesIO(members["index.csv"]), dtype=str, keep_default_na=False)
    first = index.iloc[0]["path"]
    members[first] = b"<html>not a photo</html>"
    with zipfile.ZipFile(photos, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    out = build_table(plan, tmp_path / "species.parquet")
    report = read_quarantine(Path(str(out) + ".quarantine.json"))
    assert report["dropped"] == {"corrupt_media": 1}
    table = read_species_table(out)
    assert table.present["image"].all()
    assert (pd.read_parquet(out)["n_image"].sort_values().tolist()[0]) == 4


def test_without_media_sources_the_table_has_taxonomy_and_no_media(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = demo_config()
    config["species"] = str(ROOT / "tests/species.csv")
    config.pop("species_subset")
    config["sources"] = {"era5": config["sources"]["era5"], "gbif": config["sources"]["gbif"]}
    config["sources"]["gbif"]["options"] = {"media": False}
    plan = Plan(validate_config(config))
    assert plan.species_media() == {}
    table = read_species_table(build_table(plan, tmp_path / "species.parquet"))
    assert not any(table.present[m].any() for m in MEDIA)
    assert table.taxonomy[0].tolist()[-1] == "Lynx"


def test_gbif_multimedia_photos_and_recordings_join_the_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = demo_config(species=str(ROOT / "tests/species.csv"))
    config["sources"] = {"era5": config["sources"]["era5"], "gbif": config["sources"]["gbif"]}
    plan = Plan(validate_config(config))
    assert plan.species_media() == {"gbif": ["results/raw/gbif/media.zip"]}
    gbif = sources.get("gbif")
    out = Path("results/raw/gbif/media.zip")
    out.parent.mkdir(parents=True)
    gbif.sample("media.zip", out, plan.study)
    table = read_species_table(build_table(plan, tmp_path / "species.parquet"))
    assert table.present["image"].all() and table.present["audio"].tolist() == [
        c == "Aves" for c in pd.read_csv(ROOT / "tests/species.csv")["class"]
    ]
    report = read_quarantine(Path(str(tmp_path / "species.parquet") + ".quarantine.json"))
    assert report["dropped"] == {"corrupt_media": 1}  # the sample's one bad photo


def test_a_local_pretrained_image_encoder_replaces_the_descriptors(plan, tmp_path):
    import hashlib
    import json

    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 7, 5, stride=4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.conv(x))

    torch.manual_seed(0)
    weights = tmp_path / "encoder.pt"
    torch.jit.save(torch.jit.script(Encoder().eval()), str(weights))
    config = dict(plan.config)
    config["species_table"] = {"encoders": {"image": {"path": str(weights), "size": 32}}}
    with_encoder = Plan(validate_config(config))
    assert with_encoder.species_encoder_files() == [str(weights)]
    out = build_table(with_encoder, tmp_path / "species.parquet")
    table = read_species_table(out)
    assert table.dims["image"] == 7 and table.dims["audio"] == DIMS["audio"]
    assert table.present["image"].all()
    meta = pq.read_schema(out).metadata
    described = json.loads(meta[b"encoders"])["image"]
    assert described["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert described["dim"] == 7 and described["options"]["size"] == 32
