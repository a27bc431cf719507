"""The downloaders' HTTP layer against a local fake server: retries honouring Retry-After,
5xx bursts, resets mid-body (resumed with Range), truncated bodies, malformed JSON, and
errors that name the unit and the cause without the URL's query."""

from __future__ import annotations

import pytest
from pytest_httpserver import HTTPServer

from bfm.sources.http import Client, DownloadError, Service, retry_after
from tests.fakes import (
    Script,
    Waits,
    cut_body,
    json_response,
    malformed_json,
    ranged,
    server_error,
    too_many,
    truncated,
)

DATA = bytes(range(256)) * 400  # 100 kB


def client(retries: int = 4) -> tuple[Client, Waits]:
    waits = Waits()
    return Client(Service("fake", retries=retries, backoff=1.0, timeout=5), sleep=waits), waits


def serve(httpserver: HTTPServer, path: str, *handlers) -> Script:
    script = Script(handlers)
    httpserver.expect_request(path).respond_with_handler(script)
    return script


def test_429_is_retried_after_the_server_asks(httpserver: HTTPServer, tmp_path):
    script = serve(httpserver, "/f", too_many(7), too_many(3), ranged(DATA))
    c, waits = client()
    out = c.download(httpserver.url_for("/f"), tmp_path / "f.bin", "unit f")
    assert out.read_bytes() == DATA and script.calls == 3
    assert waits == [7.0, 3.0]
    assert not (tmp_path / "f.bin.part").exists()


def test_a_burst_of_500s_backs_off_then_fails_naming_the_unit(httpserver: HTTPServer, tmp_path):
    serve(httpserver, "/f", server_error(500), server_error(503), ranged(DATA))
    c, waits = client()
    assert c.download(httpserver.url_for("/f"), tmp_path / "f.bin", "u").read_bytes() == DATA
    assert waits == [1.0, 2.0]  # exponential backoff without Retry-After
    serve(httpserver, "/down", server_error(502))
    c, waits = client(retries=2)
    url = httpserver.url_for("/down") + "?key=SECRET"
    with pytest.raises(DownloadError, match=r"fake era5 2010-01: HTTP 502 from http://.*/down "
                       r"after 3 attempts: internal error") as err:  # fmt: skip
        c.download(url, tmp_path / "g.bin", "era5 2010-01")
    assert "SECRET" not in str(err.value)
    assert not (tmp_path / "g.bin").exists()


def test_a_reset_mid_body_resumes_with_range(httpserver: HTTPServer, tmp_path):
    script = serve(httpserver, "/f", cut_body(DATA, 30_000), cut_body(DATA, 20_000),
                   ranged(DATA))  # fmt: skip
    c, _ = client()
    out = c.download(httpserver.url_for("/f"), tmp_path / "f.bin", "u")
    assert out.read_bytes() == DATA
    starts = [int(r.headers.get("Range", "bytes=0-")[6:-1]) for r in script.requests]
    # Each retry asks for the rest from what had safely arrived (whole chunks).
    assert starts[0] == 0 < starts[1] <= 30_000 < starts[2] <= starts[1] + 20_000


def test_a_partial_file_of_an_earlier_run_is_resumed(httpserver: HTTPServer, tmp_path):
    (tmp_path / "f.bin.part").write_bytes(DATA[:12_345])
    script = serve(httpserver, "/f", ranged(DATA))
    c, _ = client()
    assert c.download(httpserver.url_for("/f"), tmp_path / "f.bin", "u").read_bytes() == DATA
    assert script.requests[0].headers["Range"] == "bytes=12345-"


def test_a_truncated_body_is_refetched_and_then_refused(httpserver: HTTPServer, tmp_path):
    serve(httpserver, "/f", truncated(DATA, 5000), ranged(DATA))
    c, _ = client()
    assert c.download(httpserver.url_for("/f"), tmp_path / "f.bin", "u").read_bytes() == DATA
    serve(httpserver, "/short", ranged(DATA[:100]))
    c, _ = client(retries=1)
    with pytest.raises(DownloadError, match=r"fake u: got 100 bytes from .*, expected 999"):
        c.download(httpserver.url_for("/short"), tmp_path / "s.bin", "u", expected_bytes=999)
    assert not (tmp_path / "s.bin").exists()


def test_json_is_retried_when_malformed_and_4xx_fails_at_once(httpserver: HTTPServer):
    serve(httpserver, "/j", malformed_json(), json_response({"ok": 1}))
    c, waits = client()
    assert c.json("GET", httpserver.url_for("/j"), "u") == {"ok": 1} and len(waits) == 1
    serve(httpserver, "/bad", json_response({"title": "Bad request", "detail": "no year"}, 400))
    with pytest.raises(DownloadError, match=r"HTTP 400 from .*/bad: Bad request; no year"):
        c.json("GET", httpserver.url_for("/bad"), "u")
    serve(httpserver, "/always", malformed_json())
    c, _ = client(retries=1)
    with pytest.raises(DownloadError, match=r"fake u: malformed JSON from .*/always"):
        c.json("GET", httpserver.url_for("/always"), "u")


def test_retry_after_reads_seconds_and_http_dates():
    import email.utils
    import time

    import requests

    r = requests.Response()
    r.headers["Retry-After"] = "12"
    assert retry_after(r) == 12.0
    r.headers["Retry-After"] = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= retry_after(r) <= 61
    r.headers["Retry-After"] = "soon"
    assert retry_after(r) is None and retry_after(None) is None


def test_a_cut_json_body_is_retried_and_headers_survive_retries(httpserver: HTTPServer,
                                                               tmp_path):  # fmt: skip
    body = b'{"ok": 1, "pad": "' + b"x" * 50_000 + b'"}'
    serve(httpserver, "/j", cut_body(body, 100), json_response({"ok": 2}))
    c, waits = client()
    assert c.json("GET", httpserver.url_for("/j"), "u") == {"ok": 2} and len(waits) == 1
    script = serve(httpserver, "/h", server_error(503), ranged(DATA))
    c.download(httpserver.url_for("/h"), tmp_path / "h.bin", "u", headers={"X-Token": "t"})
    assert [r.headers.get("X-Token") for r in script.requests] == ["t", "t"]
    serve(httpserver, "/gone", json_response({"title": "Not found"}, 404))
    with pytest.raises(DownloadError) as err:
        c.json("GET", httpserver.url_for("/gone"), "u")
    assert err.value.status == 404


def test_requests_keep_the_services_courtesy_interval(httpserver: HTTPServer):
    serve(httpserver, "/p", json_response({"ok": True}))
    waits: list[float] = []
    now = [100.0]
    c = Client(Service("polite", min_interval=1.0), sleep=waits.append)
    c.clock = lambda: now[0]
    for _ in range(3):
        c.json("GET", httpserver.url_for("/p"), "page")
        now[0] += 0.25  # each answer takes a quarter second
    assert waits == [0.75, 0.75] and c.requests == 3
