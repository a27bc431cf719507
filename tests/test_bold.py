"""BOLD v5: the three-step flow against a fake portal API (preprocessor, query, documents as
JSON Lines), species BOLD does not know, injected faults at every step, an interrupted run
resumed to the same bytes, an expired query id, the records and barcode media of the
occurrence contract, and the deterministic sample."""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import logging
import re
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from bfm.contracts import occurrence as oc
from bfm.contracts.grid import Grid
from bfm.sources import bold, gbif, http, manifest
from bfm.sources.http import Client, DownloadError, Service
from tests.fakes import (
    Handler,
    Script,
    Waits,
    cut_body,
    malformed_json,
    ranged,
    server_error,
    too_many,
    truncated,
)

DEMO = Grid(44.0, 56.0, 0.0, 20.0, 0.5)
SPECIES = gbif.read_species(Path(__file__).resolve().parents[1] / "tests" / "species.csv")
LYNX = SPECIES.iloc[:1]


def client(retries: int = 4) -> tuple[Client, Waits]:
    waits = Waits()
    return Client(Service("bold", retries=retries, backoff=1.0, timeout=5), sleep=waits), waits


@pytest.fixture(scope="module")
def sample_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bold") / bold.RAW_NAME
    return bold.sample(out, SPECIES, "2010-01-01", "2011-12-31", DEMO, seed=4)


@pytest.fixture(scope="module")
def by_species(sample_file) -> dict[str, list[str]]:
    lines: dict[str, list[str]] = {}
    for line in bold.read_lines(sample_file):
        lines.setdefault(json.loads(line)["species"], []).append(line)
    return lines


class FakeBold:
    """The portal API over ``bodies`` (species -> JSON lines); query ids are base64 tokens
    (with ``/``, ``+``, ``=``: sent URL-encoded) valid for one ``generation`` of the server."""

    def __init__(self, bodies: dict[str, list[str]], unknown: tuple[str, ...] = ()) -> None:
        self.bodies, self.unknown = bodies, set(unknown)
        self.generation, self.cut = 0, set[str]()
        self.seen: list[tuple[str, str, str]] = []  # (endpoint, species, Range header)

    def token(self, name: str) -> str:
        return base64.b64encode(f"{self.generation}?{name}??>full".encode()).decode()

    def terms(self, request: Request) -> Response:
        query = request.args["query"]
        name = query.removeprefix("tax:")
        self.seen.append(("terms", name, request.headers.get("Range", "")))
        if name in self.unknown or name not in self.bodies:
            body = {"successful_terms": [], "failed_terms": [{"submitted": query}]}
        else:
            body = {"successful_terms": [{"submitted": query, "matched": f"tax:species:{name}"}],
                    "failed_terms": []}  # fmt: skip
        return ranged(json.dumps(body).encode())(request)

    def query(self, request: Request) -> Response:
        assert request.args["extent"] == "full"
        name = request.args["query"].removeprefix("tax:species:")
        self.seen.append(("query", name, request.headers.get("Range", "")))
        body = {"query_id": self.token(name), "extent_limit": 1000000}
        return ranged(json.dumps(body).encode())(request)

    def documents(self, request: Request) -> Response:
        token = re.fullmatch(r"/api/documents/(.+)/download", request.path).group(1)
        assert request.args["format"] == "json"
        assert request.environ["RAW_URI"].startswith(f"/api/documents/{quote(token, safe='')}/")
        names = [n for n in self.bodies if self.token(n) == token]
        if not names:
            return Response(json.dumps({"detail": "unknown query id"}), 404)
        self.seen.append(("documents", names[0], request.headers.get("Range", "")))
        data = self.body(names[0])
        return (cut_body(data, 900) if names[0] in self.cut else ranged(data))(request)

    def body(self, name: str) -> bytes:
        return "".join(line + "\n" for line in reversed(self.bodies[name])).encode()

    def install(self, server: HTTPServer, faults: dict[str, list[Handler]] | None = None) -> None:
        faults = faults or {}
        uris = {"terms": "/api/query/preprocessor", "query": "/api/query",
                "documents": re.compile(r"^/api/documents/.+/download$")}  # fmt: skip
        for endpoint, uri in uris.items():
            script = Script([*faults.get(endpoint, []), getattr(self, endpoint)])
            server.expect_request(uri).respond_with_handler(script)

    def asked(self, endpoint: str, name: str) -> list[str]:
        return [r for e, n, r in self.seen if (e, n) == (endpoint, name)]


def fetch(server: HTTPServer, out: Path, species=SPECIES, c: Client | None = None) -> Path:
    return bold.download(out, species, c or client()[0], server.url_for("/api"))


def same_manifest(a: Path, b: Path) -> None:
    ma, mb = manifest.read_manifest(a), manifest.read_manifest(b)
    ma.pop("retrieved_at"), mb.pop("retrieved_at")
    assert ma == mb


# --- download ---------------------------------------------------------------------------------
def test_download_asks_three_steps_and_writes_the_lines_sorted(tmp_path, httpserver, by_species,
                                                               sample_file):  # fmt: skip
    fake = FakeBold(by_species)
    fake.install(httpserver)
    out = fetch(httpserver, tmp_path / bold.RAW_NAME)
    assert out.read_bytes() == sample_file.read_bytes()  # the lines as served, sorted
    lines = bold.read_lines(out)
    ids = [json.loads(s)["processid"] for s in lines]
    assert ids == sorted(ids) and len(ids) == sum(map(len, by_species.values()))
    for name in by_species:
        assert [len(fake.asked(e, name)) for e in ("terms", "query", "documents")] == [1, 1, 1]
    record = manifest.verify(out)
    assert record["request"] == manifest.read_manifest(sample_file)["request"]
    assert record["request"]["species"][0] == {"gbif_key": 2435240, "query": "tax:Lynx lynx",
                                               "matched": "tax:species:Lynx lynx",
                                               "records": len(by_species["Lynx lynx"])}  # fmt: skip
    assert record["url"] == httpserver.url_for("/api/documents")
    assert fake.token("Lynx lynx") not in json.dumps(record)  # ids expire: not recorded
    assert not bold.scratch_dir(out).exists()
    with gzip.open(out) as f:
        assert f.read().endswith(b"\n")


def test_a_species_bold_does_not_know_is_reported_and_skipped(tmp_path, httpserver, by_species,
                                                               caplog):  # fmt: skip
    fake = FakeBold(by_species, unknown=("Ursus arctos",))
    fake.install(httpserver)
    with caplog.at_level(logging.WARNING, logger="bfm.sources.bold"):
        out = fetch(httpserver, tmp_path / bold.RAW_NAME)
    request = manifest.read_manifest(out)["request"]
    assert request["not_found"] == ["Ursus arctos"] and len(request["species"]) == 5
    assert "1 of 6 species not found: Ursus arctos" in caplog.text
    assert fake.asked("terms", "Ursus arctos") and not fake.asked("query", "Ursus arctos")
    names = {json.loads(s)["species"] for s in bold.read_lines(out)}
    assert names == set(by_species) - {"Ursus arctos"}
    assert request["records"] == sum(len(v) for k, v in by_species.items() if k != "Ursus arctos")


def _answers(fake: FakeBold, name: str) -> dict[str, bytes]:
    terms = {"successful_terms": [{"submitted": f"tax:{name}", "matched": f"tax:species:{name}"}],
             "failed_terms": []}  # fmt: skip
    return {"terms": json.dumps(terms).encode(),
            "query": json.dumps({"query_id": fake.token(name), "extent_limit": 1000000}).encode(),
            "documents": fake.body(name)}  # fmt: skip


@pytest.mark.parametrize("endpoint", ["terms", "query", "documents"])
@pytest.mark.parametrize("fault", ["429", "500s", "reset", "truncated", "malformed"])
def test_every_step_survives_faults(tmp_path, httpserver, by_species, endpoint, fault,
                                    monkeypatch):  # fmt: skip
    monkeypatch.setattr(http, "CHUNK", 64)  # small reads: a reset keeps what had arrived
    fake = FakeBold({"Lynx lynx": by_species["Lynx lynx"]})
    data = _answers(fake, "Lynx lynx")[endpoint]
    broken = Response(b'{"processid":"X1"}\n{"processid": "X2", "nuc\n', 200)
    faults = {"429": [too_many(7)], "500s": [server_error(500), server_error(503)],
              "reset": [cut_body(data, len(data) // 2)], "truncated": [truncated(data, 50)],
              "malformed": [lambda r: broken] if endpoint == "documents" else [malformed_json()],
              }[fault]  # fmt: skip
    fake.install(httpserver, {endpoint: faults})
    c, waits = client()
    out = fetch(httpserver, tmp_path / bold.RAW_NAME, LYNX, c)
    assert bold.read_lines(out) == sorted(by_species["Lynx lynx"])
    assert len(waits) == len(faults) and (fault != "429" or waits == [7.0])
    if fault == "reset" and endpoint == "documents":
        (resumed,) = fake.asked("documents", "Lynx lynx")
        assert 0 < int(resumed[6:-1]) <= len(data) // 2  # resumed, not restarted


def test_a_body_with_bad_lines_twice_is_kept_as_served_and_counted(tmp_path, httpserver):
    good = json.dumps({"processid": "A1-10", "species": "Lynx lynx", "nuc": "ACGT"})
    fake = FakeBold({"Lynx lynx": [good, '{"processid": "A2-10", "nu']})
    fake.install(httpserver)
    out = fetch(httpserver, tmp_path / bold.RAW_NAME, LYNX)
    assert len(fake.asked("documents", "Lynx lynx")) == 2  # fetched once more, then kept
    assert bold.read_lines(out) == [good, '{"processid": "A2-10", "nu']
    table, media, q = bold.records(out, SPECIES)
    assert list(table["record_id"]) == ["bold:A1-10"] and list(media["content"]) == ["ACGT"]
    assert q.dropped["unreadable_line"] == 1 and q.read == 2


def test_a_failing_step_names_the_species_and_the_cause(tmp_path, httpserver, by_species):
    FakeBold(by_species).install(httpserver, {"query": [server_error(502)] * 3})
    with pytest.raises(DownloadError, match=r"bold Lynx lynx query: HTTP 502 from "
                       r"http://.*/api/query after 3 attempts"):  # fmt: skip
        fetch(httpserver, tmp_path / bold.RAW_NAME, LYNX, client(retries=2)[0])
    assert not (tmp_path / bold.RAW_NAME).exists()
    httpserver.clear()
    no_id = lambda r: Response(json.dumps({"detail": "bad query"}), 200)  # noqa: E731
    FakeBold(by_species).install(httpserver, {"query": [no_id]})
    with pytest.raises(DownloadError, match=r"bold Lynx lynx query: no query_id in the answer"):
        fetch(httpserver, tmp_path / bold.RAW_NAME, LYNX)
    assert not (bold.scratch_dir(tmp_path / bold.RAW_NAME) / "2435240" / "query").exists()


def test_an_interrupted_download_resumes_to_the_same_bytes(tmp_path, httpserver, by_species,
                                                           monkeypatch):  # fmt: skip
    monkeypatch.setattr(http, "CHUNK", 64)
    FakeBold(by_species).install(httpserver)
    clean = fetch(httpserver, tmp_path / "clean" / bold.RAW_NAME)
    httpserver.clear()
    fake = FakeBold(by_species)
    fake.cut = {"Canis lupus"}  # the second species' body is cut, every time
    fake.install(httpserver)
    out = tmp_path / "rerun" / bold.RAW_NAME
    with pytest.raises(DownloadError, match=r"bold Canis lupus documents: the body .* was cut"):
        fetch(httpserver, out, c=client(retries=1)[0])
    scratch = bold.scratch_dir(out)
    assert not out.exists() and (scratch / "2435240" / "documents.jsonl").exists()
    have = (scratch / "5219173" / "documents.jsonl.part").stat().st_size
    assert 900 < have <= 1800  # two cuts of 900 bytes, less a read cut short
    httpserver.clear()
    fake.cut = set()
    fake.seen.clear()
    fake.install(httpserver)
    fetch(httpserver, out)
    assert not [s for s in fake.seen if s[1] == "Lynx lynx"]  # nothing asked again
    assert [s[0] for s in fake.seen if s[1] == "Canis lupus"] == ["documents"]
    assert fake.asked("documents", "Canis lupus") == [f"bytes={have}-"]  # the same query id
    assert out.read_bytes() == clean.read_bytes()
    same_manifest(clean, out)


def test_an_expired_query_id_is_asked_for_again(tmp_path, httpserver, by_species):
    FakeBold(by_species).install(httpserver)
    clean = fetch(httpserver, tmp_path / "clean" / bold.RAW_NAME)
    httpserver.clear()
    fake = FakeBold(by_species)
    fake.cut = {"Canis lupus"}
    fake.install(httpserver)
    out = tmp_path / "rerun" / bold.RAW_NAME
    with pytest.raises(DownloadError):
        fetch(httpserver, out, c=client(retries=1)[0])
    fake.generation, fake.cut = 1, set()  # a day later: the old ids are unknown (404)
    fake.seen.clear()
    fetch(httpserver, out)
    assert [s[0] for s in fake.seen if s[1] == "Canis lupus"] == ["query", "documents"]
    assert fake.asked("documents", "Canis lupus") == [""]  # the partial body was dropped
    assert out.read_bytes() == clean.read_bytes()
    same_manifest(clean, out)


# --- records ----------------------------------------------------------------------------------
def _line(pid: str, **fields) -> str:
    base = {
        "processid": pid,
        "inst": "Senckenberg",
        "species": "Lynx lynx",
        "coord": [50.1, 8.6],
        "coord_accuracy": 30,
        "collection_date_start": "2012-05-03",
        "collection_date_end": "2012-05-03",
        "marker_code": "COI-5P",
        "nuc": "ACGT",
    }
    return json.dumps({**base, **fields})  # fmt: skip


def test_records_follow_the_contract(tmp_path):
    lines = [
        _line("A1-12"),
        _line(
            "A2-12",
            coord=None,
            coord_accuracy="ca. 5 km",
            collection_date_end="2012-05-10",
            nuc="ac-gt--nnry",
            license="CC-BY 4.0",
            inst="",
        ),
        "this is not json",
        '["A3-12"]',
        _line("A1-12", nuc="TTTT"),  # a repeated processid
        _line("A4-12", nuc="ACGTX7", collection_date_start="2012-05", collection_date_end=None),
        _line("A5-12", species="Felis silvestris", coord="[48.5,9.25]", nuc=None),
        _line("A6-12", collection_date_start="2012-02-30", collection_date_end=None),
        json.dumps({"species": "Lynx lynx"}),  # no processid
    ]
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(lines) + "\n\n")
    table, media, q = bold.records(path, SPECIES)
    assert tuple(table.columns) == oc.COLUMNS and tuple(media.columns) == oc.MEDIA_COLUMNS
    pd.testing.assert_frame_equal(table, oc.conform(table, "again"))
    assert list(table["record_id"]) == ["bold:A1-12", "bold:A2-12", "bold:A4-12",
                                        "bold:A5-12", "bold:A6-12"]  # fmt: skip
    assert (table["source"] == "bold").all() and (table["same_as"] == "").all()
    assert (table["basis"] == "MATERIAL_SAMPLE").all() and (table["status"] == "PRESENT").all()
    assert list(table["species_key"].astype("float")[:4].fillna(-1)) == [2435240.0] * 3 + [-1]
    first, second = table.iloc[0], table.iloc[1]
    assert (first["latitude"], first["longitude"], first["uncertainty_m"]) == (50.1, 8.6, 30.0)
    assert (first["start"], first["end"], first["precision"]) == (
        pd.Timestamp("2012-05-03"),
        pd.Timestamp("2012-05-04"),
        "day",
    )
    assert np.isnan(second["latitude"]) and np.isnan(second["uncertainty_m"])
    assert (second["start"], second["end"], second["precision"]) == (
        pd.Timestamp("2012-05-03"),
        pd.Timestamp("2012-05-11"),
        "interval",
    )
    assert second["licence"] == "CC-BY 4.0"
    assert list(table["precision"][2:]) == ["month", "day", "unusable"]
    assert (table.iloc[3]["latitude"], table.iloc[3]["longitude"]) == (48.5, 9.25)  # TSV style
    assert list(media["record_id"]) == ["bold:A1-12", "bold:A2-12", "bold:A6-12"]
    assert (
        list(media["content"]) == ["ACGT", "ACGTNNRY", "ACGT"] and (media["kind"] == "edna").all()
    )
    assert list(media["attribution"][:2]) == ["A1-12 (Senckenberg)", "A2-12"]
    assert (media["uri"] == "").all() and media["species_key"].tolist() == [2435240] * 3
    assert q.read == 9 and dict(q.dropped) == {"unreadable_line": 3,
                                               "duplicate": 1, "corrupt_media": 1}  # fmt: skip
    assert q.examples["corrupt_media"] == "bold:A4-12"


def test_an_empty_file_has_no_records_and_a_missing_one_is_named(tmp_path):
    (tmp_path / "empty.jsonl.gz").write_bytes(gzip.compress(b""))
    table, media, q = bold.records(tmp_path / "empty.jsonl.gz", SPECIES)
    assert (len(table), len(media), q.read) == (0, 0, 0)
    assert table.dtypes.to_dict() == oc.empty().dtypes.to_dict()
    with pytest.raises(FileNotFoundError, match=r"nowhere.jsonl.gz: no such BOLD records file"):
        bold.records("nowhere.jsonl.gz", SPECIES)


# --- sample -----------------------------------------------------------------------------------
def test_sample_is_deterministic_and_exercises_the_cleaning(tmp_path, sample_file):
    again = bold.sample(tmp_path / "a" / bold.RAW_NAME, SPECIES, "2010-01-01", "2011-12-31",
                        DEMO, seed=4)  # fmt: skip
    other = bold.sample(tmp_path / "b" / bold.RAW_NAME, SPECIES, "2010-01-01", "2011-12-31",
                        DEMO, seed=5)  # fmt: skip
    assert again.read_bytes() == sample_file.read_bytes() != other.read_bytes()
    record = manifest.verify(sample_file)
    assert record["url"] == "sample:bold?seed=4" and record["request"]["not_found"] == []
    table, media, q = bold.records(sample_file, SPECIES)
    assert set(table["species_key"]) == set(SPECIES["gbif_key"])
    assert q.dropped == Counter({"corrupt_media": 1})
    has = table["latitude"].notna().to_numpy()
    assert 1 <= (~has).sum() <= 0.15 * len(table)
    assert DEMO.contains(table["latitude"][has].to_numpy(), table["longitude"][has]).all()
    assert (table["precision"] == "unusable").sum() == 1
    usable = table["precision"] != "unusable"
    assert (table["start"][usable] >= pd.Timestamp("2010-01-01")).all()
    assert (table["end"][usable] <= pd.Timestamp("2012-01-01")).all()
    assert {"day", "interval"} <= set(table["precision"])
    lengths = media["content"].str.len()
    assert lengths.between(640, 658).all() and len(media) == len(table) - 1
    assert media["content"].str.fullmatch("[ACGTN]+").all()
    cleaned = oc.clean(table, oc.Quarantine("x"))
    assert len(cleaned) == len(table) - (~has).sum() - (table["precision"] == "unusable").sum()


def _profile(seq: str, k: int = 3) -> np.ndarray:
    index = {"".join(p): i for i, p in enumerate(itertools.product("ACGT", repeat=k))}
    counts = np.zeros(4**k)
    for i in range(len(seq) - k + 1):
        counts[index[seq[i : i + k]]] += 1
    return counts / counts.sum()


def test_sample_species_have_their_own_k_mer_profiles(sample_file):
    _, media, _ = bold.records(sample_file, SPECIES)
    profiles = np.stack([_profile(s) for s in media["content"]])
    keys = media["species_key"].to_numpy(np.int64)
    centroids = {k: profiles[keys == k].mean(axis=0) for k in np.unique(keys)}
    order = list(centroids)
    nearest = [order[np.argmin([np.abs(p - centroids[k]).sum() for k in order])]
               for p in profiles]  # fmt: skip
    assert (np.array(nearest) == keys).all()
    gaps = [np.abs(centroids[a] - centroids[b]).sum() for a in order for b in order if a < b]
    assert min(gaps) > 0.2  # L1 distance between species' 3-mer profiles


def test_sample_refuses_an_empty_window(tmp_path):
    with pytest.raises(ValueError, match=r"bold: --end 2010-01-01 is before --start 2010-02-01"):
        bold.sample(tmp_path / "x.gz", SPECIES, "2010-02-01", "2010-01-01", DEMO)
