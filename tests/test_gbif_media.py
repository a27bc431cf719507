"""GBIF media (``media.zip``): a deterministic sample that embeds per species (one corrupt
image counted), the media of a DwC-A fetched from a fake media server with faults (429 +
Retry-After, 5xx, a reset mid-body, 404/410, oversized files, an HTML page), an interrupted
run rerun to the same zip, the full download against a fake GBIF download API (credentials
nowhere), and the errors of ``open_media``."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from bfm.contracts.grid import Grid
from bfm.contracts.occurrence import MEDIA_COLUMNS, read_quarantine
from bfm.embeddings import embed_media, image_embedding
from bfm.sources import gbif_api, manifest
from bfm.sources import gbif_media as gm
from bfm.sources import gbif_media_formats as fmt
from bfm.sources.gbif_dwca import MULTIMEDIA_COLUMNS
from bfm.sources.http import Client, DownloadError, Service
from bfm.sources.xenocanto_formats import tone_wav
from tests.fakes import Script, Waits, cut_body, ranged, server_error, too_many

SPECIES = pd.DataFrame({
    "gbif_key": [2435240, 5219173, 2433433, 2492462],
    "scientific_name": ["Lynx lynx", "Canis lupus", "Ursus arctos", "Erithacus rubecula"],
    "common_name": ["Eurasian lynx", "Grey wolf", "Brown bear", "European robin"],
    "class": ["Mammalia", "Mammalia", "Mammalia", "Aves"],
})  # fmt: skip
LYNX, WOLF, BEAR, ROBIN = SPECIES["gbif_key"].tolist()
PASSWORD = "pa55-W0rd-never-shown"
ENV = {"GBIF_USER": "alice", "GBIF_PWD": PASSWORD, "GBIF_EMAIL": "alice@example.org"}
DEMO = Grid(44.0, 56.0, 0.0, 20.0, 0.5)


def client(retries: int = 4) -> tuple[Client, Waits]:
    waits = Waits()
    return Client(Service("gbif", retries=retries, backoff=1.0, timeout=5), sleep=waits), waits


def _same_manifest(a: Path, b: Path) -> None:
    ma, mb = manifest.read_manifest(a), manifest.read_manifest(b)
    for m in (ma, mb):
        m.pop("retrieved_at"), m.pop("file")
    assert ma == mb


# --- the sample -----------------------------------------------------------------------------
def test_the_sample_is_deterministic_and_has_the_layout(tmp_path):
    a = gm.sample_media(tmp_path / "a" / gm.MEDIA_NAME, SPECIES, seed=5)
    b = gm.sample_media(tmp_path / "b" / gm.MEDIA_NAME, SPECIES, seed=5)
    other = gm.sample_media(tmp_path / "c" / gm.MEDIA_NAME, SPECIES, seed=6)
    assert a.read_bytes() == b.read_bytes() != other.read_bytes()
    with zipfile.ZipFile(a) as zf:
        names = zf.namelist()
        index = pd.read_csv(zf.open("multimedia.txt"), sep="\t", dtype=str,
                            keep_default_na=False)  # fmt: skip
    assert names[0] == "multimedia.txt"
    assert list(index.columns) == [*MULTIMEDIA_COLUMNS, "speciesKey", "member"]
    assert names[1:] == list(index["member"])
    assert all(re.fullmatch(r"(images/\d+_\d\.png|audio/\d+_1\.wav)", n) for n in names[1:])
    media, read = gm.open_media(a)
    assert list(media.columns) == list(MEDIA_COLUMNS)
    per = media.groupby(["species_key", "kind"]).size().to_dict()
    assert per == {(LYNX, "image"): 4, (WOLF, "image"): 3, (BEAR, "image"): 3,
                   (ROBIN, "image"): 3, (ROBIN, "audio"): 3}  # fmt: skip
    assert media["record_id"].str.fullmatch(r"gbif:48050\d{5}").all()
    assert set(media["licence"]) <= set(fmt.SAMPLE_LICENCES) and len(set(media["licence"])) > 1
    assert media["attribution"].str.startswith("sample observer").all()
    assert read(media["uri"][0])[:8] == b"\x89PNG\r\n\x1a\n"
    record = manifest.verify(a)
    assert record["request"]["counts"] == {"image": 13, "audio": 3}
    assert record["url"] == "sample:gbif-media?seed=5"
    assert read_quarantine(tmp_path / "a" / "media.zip.quarantine.json")["kept"] == 16
    # no class column: every other species gets recordings
    bare = gm.sample_media(tmp_path / "d" / gm.MEDIA_NAME, SPECIES.drop(columns="class"), 5, 1)
    audio = gm.open_media(bare)[0].query("kind == 'audio'")
    assert list(audio["species_key"]) == [LYNX, BEAR]


def test_the_sample_embeds_per_species_and_its_corrupt_image_is_counted(tmp_path):
    path = gm.sample_media(tmp_path / gm.MEDIA_NAME, SPECIES, seed=0, per_species=2)
    media, read = gm.open_media(path)
    found = embed_media(media, read, SPECIES["gbif_key"].tolist())
    assert found.present["image"].all() and list(found.counts["image"]) == [2, 2, 2, 2]
    assert list(found.present["audio"]) == [False, False, False, True]
    assert dict(found.failures) == {"corrupt_media": 1}
    images = media[media["kind"] == "image"].iloc[[0, 1, 3, 4, 5, 6, 7, 8]]  # not the corrupt
    vectors = np.stack([image_embedding(read(u)) for u in images["uri"]])
    keys = images["species_key"].to_numpy()
    dist = np.linalg.norm(vectors[:, None] - vectors[None], axis=-1)
    same = keys[:, None] == keys[None]
    assert dist[~same].min() > 2 * dist[same].max()  # the species' own colour and texture


# --- the media of a DwC-A -------------------------------------------------------------------
PNG = [fmt.sample_png(i, 0, 0) for i in range(4)]
WAV = [tone_wav(2000.0 + 500 * i, i, seconds=0.1) for i in range(2)]
MAX = 20_000
assert max(len(b) for b in PNG + WAV) < MAX


def streamed(request: Request) -> Response:  # no Content-Length: the cap counts while streaming
    response = Response((bytes(3000) for _ in range(10)), 200)
    response.direct_passthrough = True
    return response


def served() -> dict[str, list]:
    """What the fake media server answers per file, in turn (the last one repeated)."""
    return {
        "a-slow.png": [too_many(7), ranged(PNG[0])],
        "b-404.jpg": [lambda r: Response("not found", 404)],
        "c-big.jpg": [ranged(b"\xff\xd8\xff" + bytes(MAX))],
        "d-reset.png": [cut_body(PNG[1], 500), ranged(PNG[1])],
        "e-extra.png": [ranged(PNG[0])],
        "f-500.png": [server_error(500), ranged(PNG[2])],
        "g-html.jpg": [lambda r: Response("<html>moved</html>", 200, content_type="text/html")],
        "h-stream.jpg": [streamed],
        "i-gone.wav": [lambda r: Response("gone", 410)],
        "j.wav": [ranged(WAV[0])], "k.wav": [ranged(WAV[1])], "l.png": [ranged(PNG[3])],
        "z.png": [ranged(PNG[3])],
    }  # fmt: skip


class FakeMedia:
    """The publishers' media servers: ``/m/<name>`` answered by its script of :func:`served`."""

    def __init__(self, httpserver: HTTPServer, **override: list) -> None:
        self.scripts = {name: Script(h) for name, h in {**served(), **override}.items()}
        self.requests: list[Request] = []
        httpserver.expect_request(re.compile(r"^/m/.*")).respond_with_handler(self)

    def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        return self.scripts[request.path.removeprefix("/m/")](request)

    def paths(self) -> list[str]:
        return [r.path.removeprefix("/m/") for r in self.requests]


OCCURRENCES = ("gbifID\tspeciesKey\tspecies\tscientificName\tlicense\n"
               f"101\t{LYNX}\tLynx lynx\tLynx lynx (Linnaeus, 1758)\tCC_BY_4_0\n"
               f"102\t{LYNX}\tLynx lynx\tLynx lynx\tCC0_1_0\n"
               f"103\t{WOLF}\tCanis lupus\tCanis lupus\tCC_BY_NC_4_0\n"
               "104\t\tErithacus rubecula\tErithacus rubecula\tCC_BY_4_0\n"
               "105\t2435022\tFelis silvestris\tFelis silvestris\tCC0_1_0\n")  # fmt: skip


def multimedia(url: str) -> str:
    """multimedia.txt of the DwC-A, not in gbifID order (the download sorts)."""
    rows = [("102", "StillImage", "e-extra.png"), ("102", "StillImage", "d-reset.png"),
            ("102", "StillImage", "c-big.jpg"), ("101", "StillImage", "b-404.jpg"),
            ("101", "StillImage", "a-slow.png"), ("101", "StillImage", "b-404.jpg"),
            ("103", "StillImage", "f-500.png"), ("103", "StillImage", "g-html.jpg"),
            ("103", "StillImage", "h-stream.jpg"), ("103", "Sound", "i-gone.wav"),
            ("103", "MovingImage", "v.mp4"), ("103", "StillImage", ""),
            ("104", "http://purl.org/dc/dcmitype/Sound", "k.wav"), ("104", "Sound", "j.wav"),
            ("104", "StillImage", "l.png"), ("104", "StillImage", "ftp:x"),
            ("105", "StillImage", "z.png")]  # fmt: skip
    lines = ["\t".join(MULTIMEDIA_COLUMNS)]
    for gid, kind, name in rows:
        ident = "" if not name else name if ":" in name else f"{url}/{name}"
        licence = "" if gid == "102" else "http://creativecommons.org/licenses/by/4.0/"
        values = {"gbifID": gid, "type": kind, "identifier": ident, "creator": f"Ana {gid}",
                  "rightsHolder": "Museum" if gid == "103" else "", "license": licence}  # fmt: skip
        lines.append("\t".join(values.get(c, "") for c in MULTIMEDIA_COLUMNS))
    return "\n".join(lines) + "\n"


def dwca_bytes(url: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in {"occurrence.txt": OCCURRENCES, "multimedia.txt": multimedia(url),
                           "meta.xml": "<archive/>"}.items():  # fmt: skip
            zf.writestr(zipfile.ZipInfo(name, (2026, 5, 1, 0, 0, 0)), text)
    return buf.getvalue()


def write_dwca(path: Path, httpserver: HTTPServer) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dwca_bytes(httpserver.url_for("/m")))
    return path


STORED = ["images/101_1.png", "images/102_1.png", "images/103_1.png", "images/104_1.png",
          "audio/104_1.wav", "audio/104_2.wav"]  # fmt: skip
DROPPED = {"corrupt_media": 2, "duplicate": 1, "media_unavailable": 3, "not_a_study_species": 1,
           "too_large_media": 2}  # fmt: skip


def check_media_zip(out: Path) -> None:
    """The zip of the DwC-A above: what was stored, counted and recorded."""
    media, read = gm.open_media(out)
    assert list(media["uri"]) == STORED
    assert list(media["record_id"]) == ["gbif:101", "gbif:102", "gbif:103", "gbif:104",
                                        "gbif:104", "gbif:104"]  # fmt: skip
    assert list(media["species_key"]) == [LYNX, LYNX, WOLF, ROBIN, ROBIN, ROBIN]
    assert [read(u) for u in media["uri"]] == [PNG[0], PNG[1], PNG[2], PNG[3], WAV[0], WAV[1]]
    assert media["licence"][1] == "CC0_1_0"  # the record's: the medium has none
    assert media["attribution"][2] == "Ana 103; rights holder: Museum"
    report = read_quarantine(out.with_name("media.zip.quarantine.json"))
    assert report["dropped"] == DROPPED and report["kept"] == 6 and report["read"] == 16
    assert report["beyond_per_species"] == 1  # e-extra.png: lynx had its two images
    assert report["examples"]["too_large_media"].startswith("gbif:102 http")
    request = manifest.verify(out)["request"]
    assert request["counts"] == {"image": 4, "audio": 2} and request["dropped"] == DROPPED
    assert (request["per_species"], request["max_bytes"]) == (2, MAX)
    assert not out.with_name(".media.zip.files").exists()


def test_download_media_survives_faults_and_counts_what_it_drops(tmp_path, httpserver):
    fake = FakeMedia(httpserver)
    dwca = write_dwca(tmp_path / "occurrences_dwca.zip", httpserver)
    c, waits = client()
    out = gm.download_media(tmp_path / gm.MEDIA_NAME, dwca, SPECIES, c, per_species=2,
                            max_bytes=MAX)  # fmt: skip
    check_media_zip(out)
    assert waits == [7.0, 1.0, 1.0]  # Retry-After of the 429, then backoff (reset, 500)
    paths = fake.paths()
    assert paths.count("a-slow.png") == 2 and paths.count("b-404.jpg") == 1
    assert "e-extra.png" not in paths and "z.png" not in paths  # enough, and no study species
    assert manifest.read_manifest(out)["url"] == httpserver.url_for("/").rstrip("/")


def test_any_other_failure_stops_with_the_url(tmp_path, httpserver):
    FakeMedia(httpserver, **{"a-slow.png": [lambda r: Response("who are you", 401)]})
    dwca = write_dwca(tmp_path / "d.zip", httpserver)
    url = httpserver.url_for("/m/a-slow.png")
    with pytest.raises(DownloadError, match=rf"gbif image of gbif:101: HTTP 401 from {url}: who"):
        gm.download_media(tmp_path / "media.zip", dwca, SPECIES, client()[0], per_species=2)
    httpserver.clear()
    FakeMedia(httpserver, **{"a-slow.png": [server_error(503)]})
    with pytest.raises(DownloadError, match=rf"HTTP 503 from {url} after 2 attempts"):
        gm.download_media(tmp_path / "media.zip", dwca, SPECIES, client(retries=1)[0])
    assert not (tmp_path / "media.zip").exists()
    with pytest.raises(ValueError, match=r"per_species \(0\) and max_bytes"):
        gm.download_media(tmp_path / "media.zip", dwca, SPECIES, per_species=0)


def test_an_interrupted_run_reruns_to_the_same_zip(tmp_path, httpserver):
    dwca = write_dwca(tmp_path / "occurrences_dwca.zip", httpserver)
    FakeMedia(httpserver)
    kw = {"per_species": 2, "max_bytes": MAX}
    clean = gm.download_media(tmp_path / "clean" / "media.zip", dwca, SPECIES, client()[0], **kw)
    httpserver.clear()
    broken = FakeMedia(httpserver, **{"f-500.png": [server_error(500)]})
    out = tmp_path / "run" / "media.zip"
    with pytest.raises(DownloadError, match=r"f-500.png after 2 attempts"):
        gm.download_media(out, dwca, SPECIES, client(retries=1)[0], **kw)
    assert not out.exists() and len(list((tmp_path / "run" / ".media.zip.files").iterdir())) == 4
    first = set(broken.paths()) - {"f-500.png"}
    assert first == {"a-slow.png", "b-404.jpg", "c-big.jpg", "d-reset.png"}
    httpserver.clear()
    fake = FakeMedia(httpserver)
    gm.download_media(out, dwca, SPECIES, client()[0], **kw)
    assert not first & set(fake.paths())  # none fetched twice, refusals included
    assert out.read_bytes() == clean.read_bytes()
    _same_manifest(clean, out)
    report = out.with_name("media.zip.quarantine.json").read_text()
    assert report.replace(str(out), str(clean)) == clean.with_name(
        "media.zip.quarantine.json").read_text()  # fmt: skip


def test_a_dwca_without_media_gives_an_empty_zip(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"none.zip: no such GBIF download"):
        gm.download_media(tmp_path / "media.zip", tmp_path / "none.zip", SPECIES)
    dwca = zip_of(tmp_path / "d.zip", {"occurrence.txt": OCCURRENCES})
    out = gm.download_media(tmp_path / "media.zip", dwca, SPECIES, client()[0])
    media, _ = gm.open_media(out)
    assert len(media) == 0 and list(media.columns) == list(MEDIA_COLUMNS)
    record = manifest.verify(out)
    assert record["request"]["counts"] == {"image": 0, "audio": 0}
    assert record["url"] == "file:d.zip"


# --- the full download ----------------------------------------------------------------------
KEY = "0001005-200812085136737"
DOI = "10.15468/dl.abcd12"


class FakeDownloads:
    """GBIF's download API: the POST (Basic auth, 201 with the key), a status walking
    PREPARING -> SUCCEEDED, and the zip behind a redirect to storage."""

    def __init__(self, httpserver: HTTPServer, data: bytes) -> None:
        self.server, self.data, self.polls, self.bodies = httpserver, data, 0, []
        self.posts = Script([self.accept])
        v1 = "/v1/occurrence/download"
        httpserver.expect_request(f"{v1}/request", method="POST").respond_with_handler(self.posts)
        httpserver.expect_request(f"{v1}/{KEY}").respond_with_handler(self.status)
        httpserver.expect_request(f"{v1}/request/{KEY}.zip").respond_with_handler(
            lambda r: Response("", 302, {"Location": httpserver.url_for(f"/storage/{KEY}.zip")})
        )
        httpserver.expect_request(f"/storage/{KEY}.zip").respond_with_handler(ranged(data))

    def accept(self, request: Request) -> Response:
        auth = base64.b64decode(request.headers["Authorization"][6:]).decode()
        if auth != f"alice:{PASSWORD}":
            return Response('{"message": "Unauthorized"}', 401, content_type="application/json")
        self.bodies.append(request.get_json())
        return Response(KEY, 201, content_type="text/plain")

    def status(self, request: Request) -> Response:
        state = ("PREPARING", "SUCCEEDED")[min(self.polls, 1)]
        self.polls += 1
        body = {"key": KEY, "doi": DOI, "status": state, "size": len(self.data),
                "license": "http://creativecommons.org/licenses/by-nc/4.0/legalcode",
                "created": "2026-05-01T10:00:00.000+00:00", "totalRecords": 5,
                "request": {"predicate": self.bodies[0]["predicate"] if self.bodies else {},
                            "format": "DWCA", "type": "OCCURRENCE"}}  # fmt: skip
        if state == "SUCCEEDED":
            body["downloadLink"] = self.server.url_for(f"/v1/occurrence/download/request/{KEY}.zip")
        return Response(json.dumps(body), 200, content_type="application/json")


def test_download_requests_the_dwca_then_fetches_its_media(tmp_path, httpserver, monkeypatch,
                                                           caplog, capsys):  # fmt: skip
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG)
    api = FakeDownloads(httpserver, dwca_bytes(httpserver.url_for("/m")))
    media = FakeMedia(httpserver)
    c, waits = client()
    out = gm.download(tmp_path / "gbif" / gm.MEDIA_NAME, SPECIES, 2000, 2020, DEMO, c,
                      httpserver.url_for("/v1"), poll=30.0, per_species=2,
                      max_bytes=MAX)  # fmt: skip
    check_media_zip(out)
    assert api.posts.calls == 1 and waits == [30.0, 7.0, 1.0, 1.0]  # a poll, then the media
    sent = api.bodies[0]
    assert sent["format"] == "DWCA"
    expected = gbif_api.download_predicate(SPECIES["gbif_key"], 2000, 2020, DEMO)
    expected["predicates"].append(gm.MEDIA_PREDICATE)  # only records with media
    assert sent["predicate"] == expected
    dwca = tmp_path / "gbif" / gm.DWCA_NAME
    kept = manifest.verify(dwca)["request"]
    assert (kept["download_key"], kept["doi"], kept["format"]) == (KEY, DOI, "DWCA")
    record = manifest.read_manifest(out)
    assert (record["request"]["doi"], record["request"]["download_key"]) == (DOI, KEY)
    assert record["citation"].startswith(f"GBIF.org (2026-05-01) GBIF Occurrence Download "
                                         f"https://doi.org/{DOI}; each medium")  # fmt: skip
    assert not any("Authorization" in r.headers for r in media.requests)
    seen = [caplog.text, *capsys.readouterr()]
    seen += [p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file()]
    assert len(seen) > 6 and not any(PASSWORD in text for text in seen)
    with zipfile.ZipFile(out) as zf:
        assert not any(PASSWORD.encode() in zf.read(n) for n in zf.namelist())
    gm.download(out, SPECIES, 2000, 2020, DEMO, c, httpserver.url_for("/v1"), per_species=2,
                max_bytes=MAX)  # fmt: skip
    assert api.posts.calls == 1  # the DwC-A kept: not requested again


# --- open -----------------------------------------------------------------------------------
def zip_of(path: Path, files: dict[str, str | bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, body in files.items():
            zf.writestr(name, body)
    return path


def index(**change: str) -> str:
    row = {**dict.fromkeys(fmt.INDEX_COLUMNS, ""), "gbifID": "7", "type": "StillImage",
           "speciesKey": str(LYNX), "member": "images/7_1.png", **change}  # fmt: skip
    columns = [c for c in fmt.INDEX_COLUMNS if c in row and row[c] != "-"]
    return "\t".join(columns) + "\n" + "\t".join(row[c] for c in columns) + "\n"


@pytest.mark.parametrize(("files", "error"), [
    ({"images/7_1.png": PNG[0]}, r"bad.zip: no multimedia.txt in the media zip"),
    ({"multimedia.txt": index(member="-")},
     r"bad.zip:multimedia.txt: missing column\(s\) \['member'\]"),
    ({"multimedia.txt": index()},
     r"bad.zip:multimedia.txt: column 'member' names 'images/7_1.png' \(row 2\), which is not"),
    ({"multimedia.txt": index(speciesKey="lynx"), "images/7_1.png": PNG[0]},
     r"multimedia.txt: column 'speciesKey' must hold a positive integer, got 'lynx' \(row 2\)"),
    ({"multimedia.txt": index(type="MovingImage"), "images/7_1.png": PNG[0]},
     r"multimedia.txt: column 'type' is 'MovingImage' \(row 2\), not one of \['StillImage'"),
])  # fmt: skip
def test_open_media_names_the_file_and_the_column(tmp_path, files, error):
    with pytest.raises(ValueError, match=error):
        gm.open_media(zip_of(tmp_path / "bad.zip", files))


def test_open_media_of_a_missing_or_foreign_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing.zip: no such GBIF media zip"):
        gm.open_media(tmp_path / "nothing.zip")
    (tmp_path / "text.zip").write_text("not a zip")
    with pytest.raises(ValueError, match=r"text.zip: not a zip archive"):
        gm.open_media(tmp_path / "text.zip")
    good = zip_of(tmp_path / "ok.zip", {"multimedia.txt": index(), "images/7_1.png": PNG[0]})
    media, read = gm.open_media(good)
    assert list(media["record_id"]) == ["gbif:7"] and read(media["uri"][0]) == PNG[0]
