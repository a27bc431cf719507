"""The species list: the study's 21 species, the subset, and the keys (matched or sample)."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from bfm import species_list as sl
from bfm.config import validate_config
from bfm.sources.base import Study
from bfm.sources.http import Client, Service
from bfm.testing import ROOT, demo_config

STUDY = ROOT / "resources" / "species.csv"
IUCN = {"EX", "EW", "CR", "EN", "VU", "NT", "LC", "DD"}


def test_the_study_list_holds_21_species_with_the_source_of_each_fact():
    table = pd.read_csv(STUDY, dtype=str, keep_default_na=False)
    assert len(table) == 21 and table["scientific_name"].is_unique
    assert (table["common_name"] != "").all() and (table["category_source"] != "").all()
    assert set(table["red_list_category"]) <= IUCN - {"EX", "EW", "LC", "DD"}  # threatened/NT
    assert (table[list(sl.HIGHER)] != "").all().all()
    # Keys are never typed in by hand: they come from the GBIF match (or are sample keys).
    assert (table["gbif_key"] == "").all() and (table["class_key"] == "").all()
    assert not sl.is_complete(STUDY) and sl.is_complete(ROOT / "tests" / "species.csv")
    assert (ROOT / "resources" / "README.md").read_text().count("species.csv") >= 1


def test_a_sample_study_gets_keys_outside_gbifs_range_from_the_names(tmp_path):
    subset = ["Aythya ferina", "Mustela lutreola", "Streptopelia turtur"]
    out = sl.resolve(STUDY, tmp_path / "list.csv", subset, mode="sample")
    table = sl.read_species(out)
    assert list(table["scientific_name"]) == ["Mustela lutreola", "Streptopelia turtur",
                                              "Aythya ferina"]  # the list's order  # fmt: skip
    assert (table["gbif_key"] >= sl.SAMPLE_KEY_BASE).all() and set(table["key_source"]) == {
        "sample"
    }
    assert table["gbif_key"].tolist() == [sl.sample_key(n) for n in table["scientific_name"]]
    birds = table[table["class"] == "Aves"]["class_key"]
    assert birds.nunique() == 1 and int(birds.iloc[0]) == sl.sample_key("Aves")
    assert table.loc[0, "red_list_category"] == "CR" and table.loc[0, "genus"] == "Mustela"
    again = sl.resolve(STUDY, tmp_path / "again.csv", subset, mode="sample")
    assert again.read_bytes() == out.read_bytes()


def test_a_subset_name_not_in_the_list_and_a_bad_mode_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"species_subset: \['Lynx lynx'\] are not in"):
        sl.resolve(STUDY, tmp_path / "l.csv", ["Lynx lynx"], mode="sample")
    with pytest.raises(ValueError, match=r"species_keys: 'guess' is not one of"):
        sl.resolve(STUDY, tmp_path / "l.csv", mode="guess")
    no_class = tmp_path / "no_class.csv"
    no_class.write_text("scientific_name,common_name\nLynx lynx,Eurasian lynx\n")
    with pytest.raises(ValueError, match=r"row 2: class is empty"):
        sl.resolve(no_class, tmp_path / "l.csv", mode="sample")
    assert not (tmp_path / "l.csv").exists()


def answer(name: str, key: int, cls: str, class_key: int, family: str) -> dict:
    return {"usageKey": key, "scientificName": f"{name} (Author, 1800)", "canonicalName": name,
            "rank": "SPECIES", "status": "ACCEPTED", "confidence": 99, "matchType": "EXACT",
            "synonym": False, "kingdom": "Animalia", "phylum": "Chordata", "class": cls,
            "order": "Order", "family": family, "genus": name.split()[0], "species": name,
            "kingdomKey": 1, "phylumKey": 44, "classKey": class_key, "orderKey": 7,
            "familyKey": 9, "genusKey": 10, "speciesKey": key}  # fmt: skip


ANSWERS = {
    "Mustela lutreola": answer("Mustela lutreola", 111, "Mammalia", 359, "Mustelidae"),
    "Vipera ursinii": answer("Vipera ursinii", 222, "Squamata", 11592253, "Viperidae"),
}


def test_a_study_that_downloads_matches_the_names_against_the_gbif_backbone(
    tmp_path, httpserver: HTTPServer, caplog
):
    asked: list[str] = []

    def handler(request: Request) -> Response:
        asked.append(request.args["name"])
        return Response(json.dumps(ANSWERS[request.args["name"]]), 200,
                        content_type="application/json")  # fmt: skip

    httpserver.expect_request("/v1/species/match").respond_with_handler(handler)
    client = Client(Service("gbif_test"), sleep=lambda s: None)
    subset = ["Mustela lutreola", "Vipera ursinii"]
    kw = {"client": client, "base_url": httpserver.url_for("/v1")}
    with caplog.at_level(logging.WARNING):
        out = sl.resolve(STUDY, tmp_path / "list.csv", subset, mode="match", **kw)
    table = sl.read_species(out).set_index("scientific_name")
    assert table["gbif_key"].to_dict() == {"Mustela lutreola": 111, "Vipera ursinii": 222}
    assert table["class_key"].astype(int).to_dict() == {"Mustela lutreola": 359,
                                                        "Vipera ursinii": 11592253}  # fmt: skip
    # The backbone's ranks replace the list's, and a rank that differs is logged.
    assert table.loc["Vipera ursinii", "class"] == "Squamata"
    assert "class 'Reptilia' of the list replaced by the backbone's 'Squamata'" in caplog.text
    assert set(table["key_source"]) == {"gbif match"}
    cache = json.loads((tmp_path / sl.MATCH_CACHE).read_text())
    assert set(cache["names"]) == set(subset) and sorted(asked) == sorted(subset)
    sl.resolve(STUDY, tmp_path / "again.csv", subset, mode="match", **kw)
    assert len(asked) == 2  # the cache answers a second resolve


def test_the_demo_reads_the_resolved_list_and_a_complete_list_is_read_as_it_is():
    demo = Study.from_config(validate_config(demo_config()))
    assert demo.resolves_species and demo.species == sl.resolved_path()
    assert demo.species_keys == "sample" and len(demo.species_subset) == 6
    own = Study.from_config(validate_config(demo_config(species=str(ROOT / "tests/species.csv"))))
    assert not own.resolves_species and own.species.endswith("tests/species.csv")
    downloads = demo_config()
    downloads["sources"]["gbif"] = {"mode": "download"}
    assert Study.from_config(validate_config(downloads)).species_keys == "match"
    assert sl.default_key_mode({"a": {"mode": "file"}, "b": {"mode": "sample"}}) == "match"
