"""Fault injection for the fake servers of the downloader tests (pytest-httpserver).

A fake server answers a URL with a *script*: a list of responses served in turn, the last one
repeated. Besides plain werkzeug responses a script may hold the faults every downloader must
survive:

- ``too_many(retry_after)``: 429 with a Retry-After header;
- ``server_error(status)``: a 5xx answer;
- ``cut_body(data, keep)``: a response that announces ``len(data)`` bytes and closes the
  connection after ``keep`` of them (a reset mid-body);
- ``truncated(data, keep)``: announces ``len(data)`` bytes and sends ``keep``, cleanly;
- ``malformed_json()``: a 200 whose JSON body is broken.

Range requests are honoured by ``ranged(data)`` (206 Partial Content), so resumes are real.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from werkzeug import Request, Response

Handler = Callable[[Request], Response]


class Waits(list):
    """A sleep for the HTTP client that records its waits instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def too_many(retry_after: int = 1) -> Handler:
    return lambda request: Response("slow down", 429, {"Retry-After": str(retry_after)})


def server_error(status: int = 500) -> Handler:
    return lambda request: Response("internal error", status)


def malformed_json() -> Handler:
    return lambda request: Response('{"results": [', 200, content_type="application/json")


def json_response(body: Any, status: int = 200) -> Handler:
    return lambda request: Response(json.dumps(body), status, content_type="application/json")


def _range_start(request: Request) -> int:
    header = request.headers.get("Range", "")
    if header.startswith("bytes=") and header.endswith("-"):
        return int(header[len("bytes=") : -1] or 0)
    return 0


def ranged(data: bytes) -> Handler:
    """The whole body, or from a ``Range: bytes=N-`` start with 206."""

    def handle(request: Request) -> Response:
        start = _range_start(request)
        if start:
            return Response(data[start:], 206, {"Content-Range":
                            f"bytes {start}-{len(data) - 1}/{len(data)}"})  # fmt: skip
        return Response(data, 200, {"Accept-Ranges": "bytes"})

    return handle


def cut_body(data: bytes, keep: int) -> Handler:
    """Announce the (rest of the) body, send ``keep`` bytes of it, then drop the connection."""

    def handle(request: Request) -> Response:
        start = _range_start(request)
        rest = data[start:]

        def body() -> Iterator[bytes]:
            yield rest[:keep]
            raise ConnectionResetError("fake reset mid-body")

        status = 206 if start else 200
        response = Response(body(), status, {"Content-Length": str(len(rest))})
        response.direct_passthrough = True
        return response

    return handle


def truncated(data: bytes, keep: int) -> Handler:
    """Announce ``len(data)`` bytes and send only ``keep`` (the connection then closes)."""

    def handle(request: Request) -> Response:
        response = Response(iter([data[:keep]]), 200, {"Content-Length": str(len(data))})
        response.direct_passthrough = True
        return response

    return handle


class Script:
    """Serve ``handlers`` in turn (the last one repeated); counts the requests it answered."""

    def __init__(self, handlers: Sequence[Handler]) -> None:
        self.handlers = list(handlers)
        self.calls = 0
        self.requests: list[Request] = []

    def __call__(self, request: Request) -> Response:
        handler = self.handlers[min(self.calls, len(self.handlers) - 1)]
        self.calls += 1
        self.requests.append(request)
        return handler(request)
