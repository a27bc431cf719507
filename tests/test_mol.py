"""Map of Life: the species/info array against a fake API (known species, the empty array of
an unknown one, an answer that is not an array, injected faults, an interrupted run resumed to
the same bytes), the descriptions table and its media rows, and the deterministic sample."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from bfm.contracts import occurrence as oc
from bfm.sources import gbif, manifest, mol
from bfm.sources.http import Client, DownloadError, Service
from tests.fakes import (
    Script,
    Waits,
    cut_body,
    malformed_json,
    ranged,
    server_error,
    too_many,
    truncated,
)

SPECIES = gbif.read_species(Path(__file__).resolve().parents[1] / "tests" / "species.csv")
LYNX = SPECIES.iloc[:1]


def client(retries: int = 4) -> tuple[Client, Waits]:
    waits = Waits()
    return Client(Service("mol", retries=retries, backoff=1.0, timeout=5), sleep=waits), waits


@pytest.fixture(scope="module")
def sample_body() -> dict:
    return mol.sample_body(SPECIES, seed=3)


class FakeMol:
    """``/1.x/species/info`` over ``arrays`` (binomial -> MOL array; others get ``[]``)."""

    def __init__(self, arrays: dict[str, list], down: tuple[str, ...] = ()) -> None:
        self.arrays, self.down = arrays, set(down)
        self.asked: list[str] = []

    def __call__(self, request: Request) -> Response:
        assert request.args["lang"] == "en"
        name = request.args["scientificname"]
        self.asked.append(name)
        if name in self.down:
            return Response("unavailable", 503)
        return ranged(json.dumps(self.arrays.get(name, [])).encode())(request)

    def install(self, server: HTTPServer, *faults) -> Script:
        script = Script([*faults, self])
        server.expect_request("/1.x/species/info").respond_with_handler(script)
        return script


def by_name(body: dict) -> dict[str, list]:
    return {arr[0]["scientificname"]: arr for arr in body.values()}


def fetch(server: HTTPServer, out: Path, species=SPECIES, c: Client | None = None) -> Path:
    return mol.download(out, species, c or client()[0], server.url_for("/1.x"))


# --- download ---------------------------------------------------------------------------------
def test_download_keys_the_arrays_by_gbif_key(tmp_path, httpserver, sample_body):
    fake = FakeMol(by_name(sample_body))
    fake.install(httpserver)
    out = fetch(httpserver, tmp_path / mol.RAW_NAME)
    assert json.loads(out.read_text()) == sample_body  # native content, the study's keys
    assert list(json.loads(out.read_text())) == [str(k) for k in SPECIES["gbif_key"]]
    assert fake.asked == list(SPECIES["scientific_name"])
    assert out.read_bytes() == mol.sample(tmp_path / "s.json", SPECIES, seed=3).read_bytes()
    record = manifest.verify(out)
    assert record["request"] == mol.request_of(SPECIES, [])
    assert record["url"] == httpserver.url_for("/1.x/species/info")
    assert not mol.scratch_dir(out).exists()


def test_an_unknown_species_is_kept_as_an_empty_array(tmp_path, httpserver, sample_body,
                                                      caplog):  # fmt: skip
    arrays = by_name(sample_body)
    del arrays["Vulpes vulpes"]
    FakeMol(arrays).install(httpserver)
    with caplog.at_level(logging.WARNING, logger="bfm.sources.mol"):
        out = fetch(httpserver, tmp_path / mol.RAW_NAME)
    body = json.loads(out.read_text())
    assert body["5219243"] == [] and len(body) == 6
    assert manifest.read_manifest(out)["request"]["unknown"] == ["Vulpes vulpes"]
    assert "1 of 6 species unknown to Map of Life (kept as []): Vulpes vulpes" in caplog.text
    table, q = mol.descriptions(out, SPECIES)
    fox = table.set_index("scientific_name").loc["Vulpes vulpes"]
    assert (fox["description"], fox["common_name"], fox["redlist"]) == ("", "", "")
    silent = [k for k, a in sample_body.items() if not a[0]["info"]]  # the sample's own
    assert silent == ["2433433"] and q.dropped["no_description"] == 2
    assert q.examples["no_description"] == "2433433 Ursus arctos"  # the first


@pytest.mark.parametrize("fault", ["429", "500s", "reset", "truncated", "malformed"])
def test_download_survives_faults(tmp_path, httpserver, sample_body, fault):
    data = json.dumps(sample_body["2435240"]).encode()
    faults = {"429": [too_many(5)], "500s": [server_error(500), server_error(502)],
              "reset": [cut_body(data, len(data) // 2)], "truncated": [truncated(data, 40)],
              "malformed": [malformed_json()]}[fault]  # fmt: skip
    FakeMol(by_name(sample_body)).install(httpserver, *faults)
    c, waits = client()
    out = fetch(httpserver, tmp_path / mol.RAW_NAME, LYNX, c)
    assert json.loads(out.read_text()) == {"2435240": sample_body["2435240"]}
    assert len(waits) == len(faults) and (fault != "429" or waits == [5.0])


def test_an_answer_that_is_not_an_array_names_the_species(tmp_path, httpserver):
    error = lambda r: Response(json.dumps({"error": "bad name"}), 200)  # noqa: E731
    FakeMol({}).install(httpserver, error)
    out = tmp_path / mol.RAW_NAME
    with pytest.raises(DownloadError, match=r'mol Lynx lynx: the answer is not a JSON array: '
                       r'\{"error": "bad name"\}'):  # fmt: skip
        fetch(httpserver, out, LYNX)
    assert not out.exists() and not (mol.scratch_dir(out) / "2435240").exists()  # not reused
    fetch(httpserver, out, LYNX)  # the next run asks again
    assert json.loads(out.read_text()) == {"2435240": []}


def test_a_failing_service_names_the_species_and_the_cause(tmp_path, httpserver):
    FakeMol({}, down=("Lynx lynx",)).install(httpserver)
    with pytest.raises(DownloadError, match=r"mol Lynx lynx: HTTP 503 from "
                       r"http://.*/1.x/species/info after 2 attempts"):  # fmt: skip
        fetch(httpserver, tmp_path / mol.RAW_NAME, LYNX, client(retries=1)[0])


def test_an_interrupted_download_reruns_to_the_same_bytes(tmp_path, httpserver, sample_body):
    FakeMol(by_name(sample_body)).install(httpserver)
    clean = fetch(httpserver, tmp_path / "clean" / mol.RAW_NAME)
    httpserver.clear()
    FakeMol(by_name(sample_body), down=("Vulpes vulpes",)).install(httpserver)
    out = tmp_path / "rerun" / mol.RAW_NAME
    with pytest.raises(DownloadError, match=r"mol Vulpes vulpes: HTTP 503"):
        fetch(httpserver, out, c=client(retries=1)[0])
    assert not out.exists()
    httpserver.clear()
    fake = FakeMol(by_name(sample_body))
    fake.install(httpserver)
    fetch(httpserver, out)
    assert fake.asked == list(SPECIES["scientific_name"][3:])  # the first three kept
    assert out.read_bytes() == clean.read_bytes()
    a, b = manifest.read_manifest(clean), manifest.read_manifest(out)
    a.pop("retrieved_at"), b.pop("retrieved_at")
    assert a == b


# --- descriptions -----------------------------------------------------------------------------
def test_descriptions_prefer_english_and_the_species_own_entry(tmp_path):
    body = {
        "2435240": [
            {"scientificname": "Lynx pardinus", "commonname": "Iberian Lynx",
             "info": [{"content": "Not this one.", "source": "Wikipedia", "lang": "en"}]},
            {"scientificname": "Lynx lynx", "commonname": "Eurasian Lynx", "redlist": "LC",
             "info": [{"content": "Der Luchs.", "source": "Wikipedia", "lang": "de"},
                      {"content": "", "source": "Wikipedia", "lang": "en"},
                      {"content": "The Eurasian lynx\nis a  medium-sized\n\nwild cat.",
                       "source": "Wikipedia", "lang": "en"}]},
        ],
        "5219173": [{"scientificname": "Canis lupus", "commonname": "Gray Wolf",
                     "info": [{"content": "Le loup.", "source": "Encyclopedie", "lang": "fr"}],
                     "redlist": "LC"}],
        "2433433": [{"scientificname": "Ursus arctos", "info": []}],
        "5219243": [], "2440974": [], "2492462": [],
        "9999999": [{"scientificname": "Felis catus"}],
    }  # fmt: skip
    path = tmp_path / mol.RAW_NAME
    path.write_text(json.dumps(body))
    table, q = mol.descriptions(path, SPECIES)
    assert tuple(table.columns) == mol.COLUMNS and len(table) == 6
    assert table["species_key"].dtype == "Int64"
    assert list(table["species_key"]) == list(SPECIES["gbif_key"])
    lynx, wolf = table.iloc[0], table.iloc[1]
    assert lynx["description"] == "The Eurasian lynx is a medium-sized wild cat."
    assert (lynx["common_name"], lynx["redlist"], lynx["licence"]) == ("Eurasian Lynx", "LC",
                                                                       "CC BY-SA")  # fmt: skip
    assert (wolf["description"], wolf["description_source"], wolf["licence"]) == (
        "Le loup.",
        "Encyclopedie",
        "",
    )  # no English text: the first there is
    assert list(table["description"][2:]) == [""] * 4
    assert q.read == 7 and dict(q.dropped) == {"no_description": 4,
                                               "not_a_study_species": 1}  # fmt: skip
    assert q.examples["not_a_study_species"] == "9999999"
    media = mol.media(table)
    assert tuple(media.columns) == oc.MEDIA_COLUMNS and len(media) == 2
    assert list(media["record_id"]) == ["mol:2435240", "mol:5219173"]
    assert (media["kind"] == "text").all() and (media["uri"] == "").all()
    assert list(media["content"]) == list(table["description"][:2])
    assert list(media["attribution"]) == ["Map of Life (mol.org); text: Wikipedia",
                                          "Map of Life (mol.org); text: Encyclopedie"]  # fmt: skip


def test_bad_files_are_refused_with_the_rule(tmp_path):
    path = tmp_path / mol.RAW_NAME
    path.write_text("[1, 2")
    with pytest.raises(ValueError, match=r"descriptions.json: not valid JSON"):
        mol.descriptions(path, SPECIES)
    path.write_text(json.dumps({"2435240": {"info": []}}))
    with pytest.raises(ValueError, match=r"species 2435240: expected an array of MOL entries"):
        mol.descriptions(path, LYNX)
    path.write_text(json.dumps({"2435240": []}))
    with pytest.raises(ValueError, match=r"no entry for species \['5219173'"):
        mol.descriptions(path, SPECIES)
    with pytest.raises(FileNotFoundError, match=r"nowhere.json: no such Map of Life file"):
        mol.descriptions(tmp_path / "nowhere.json", SPECIES)


# --- sample -----------------------------------------------------------------------------------
def test_sample_is_deterministic_with_one_species_without_text(tmp_path):
    path = mol.sample(tmp_path / "a" / mol.RAW_NAME, SPECIES, seed=3)
    again = mol.sample(tmp_path / "b" / mol.RAW_NAME, SPECIES, seed=3)
    other = mol.sample(tmp_path / "c" / mol.RAW_NAME, SPECIES, seed=4)
    assert path.read_bytes() == again.read_bytes() != other.read_bytes()
    record = manifest.verify(path)
    assert record["url"] == "sample:mol?seed=3" and record["request"]["unknown"] == []
    table, q = mol.descriptions(path, SPECIES)
    assert dict(q.dropped) == {"no_description": 1}
    described = table[table["description"] != ""]
    assert len(described) == 5 and described["description"].is_unique
    assert not described["description"].str.contains("\n").any()  # the paragraphs collapsed
    for _, row in described.iterrows():
        assert row["scientific_name"] in row["description"]
        assert row["description"].count(".") >= 4  # a few sentences
    assert set(table["redlist"]) <= {"LC", "NT", "VU"} and (table["redlist"] != "").all()
    assert sorted(described["licence"]) == [""] + ["CC BY-SA"] * 4  # one is not Wikipedia
    raw = [a[0]["info"][0]["content"] for a in json.loads(path.read_text()).values()
           if a[0]["info"]]  # fmt: skip
    assert all("\n\n" in text for text in raw)  # two paragraphs, as served
    pd.testing.assert_frame_equal(table, mol.descriptions(again, SPECIES)[0])
    assert list(table["common_name"]) == [c.title() for c in SPECIES["common_name"]]
