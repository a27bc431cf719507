"""HTTP for the downloaders: retries with backoff, resumable streamed downloads, JSON.

Every call names its *unit* (what is being fetched, e.g. ``era5 surface/2010-01.nc``) so that
an error says which unit failed and why. The rules:

- **Retries**: 429 and 5xx answers, connection errors and a body cut short are retried up to
  ``Service.retries`` times with exponential backoff (``backoff * 2**attempt`` seconds, at most
  ``max_wait``); a ``Retry-After`` header (seconds or an HTTP date) is honoured instead. Other
  4xx answers fail at once, with the server's message.
- **Resume**: a download streams into ``<out>.part``; after an interruption (in this process
  or a previous run) it asks for the rest with ``Range`` and appends, or starts over when the
  server ignores ranges. A finished file must have the size the server announced; only then is
  it renamed to ``out`` (atomic), so a unit is never half there and never duplicated.
- **Progress**: one tqdm bar per download unit (to stderr: the rule's log).

Credentials are passed by the caller as headers or auth and never appear in messages.
Callers write the unit's manifest after the file (``manifest.write_manifest``).
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

log = logging.getLogger(__name__)
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
CHUNK = 1 << 14  # small: a reset loses at most one chunk of what had arrived


class DownloadError(ValueError):
    """A unit could not be fetched: names the unit and the cause.

    Attributes:
        status: the HTTP status of the last answer, or None (no answer, a cut body, ...).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Service:
    """One remote service (a host): how hard to retry and how long to wait.

    Attributes:
        name: short name, used in messages and as the Snakemake resource that limits how
            many downloads run against the host at once (``--resources net_<name>=N``).
        retries: attempts after the first one, for retryable failures.
        backoff: seconds before the first retry (doubled each time) without Retry-After.
        max_wait: the longest wait between attempts, in seconds.
        timeout: seconds to wait for a connection and for each read.
    """

    name: str
    retries: int = 6
    backoff: float = 2.0
    max_wait: float = 300.0
    timeout: float = 60.0


Sleep = Callable[[float], None]


def retry_after(response: requests.Response | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (an integer or an HTTP date), else None."""
    value = response.headers.get("Retry-After") if response is not None else None
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _message(response: requests.Response) -> str:
    """The server's own words for an error (JSON title/detail/message, or the text)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300]
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("title", "detail", "message", "error") if body.get(k)]
        return "; ".join(parts) or json.dumps(body)[:300]
    return json.dumps(body)[:300]


class Client:
    """Requests to one service with the retry rules of the module docstring."""

    def __init__(self, service: Service, session: requests.Session | None = None,
                 headers: Mapping[str, str] | None = None, auth: Any = None,
                 sleep: Sleep = time.sleep) -> None:  # fmt: skip
        self.service = service
        self.session = session or requests.Session()
        self.session.headers.update(headers or {})
        if auth is not None:
            self.session.auth = auth
        self.sleep = sleep

    def _wait(self, attempt: int, response: requests.Response | None, unit: str,
              why: str) -> None:  # fmt: skip
        s = self.service
        wait = retry_after(response)
        wait = min(s.max_wait, wait if wait is not None else s.backoff * 2**attempt)
        log.warning("%s %s: %s; retry %d/%d in %.0f s", s.name, unit, why, attempt + 1,
                    s.retries, wait)  # fmt: skip
        self.sleep(wait)

    def request(self, method: str, url: str, unit: str, **kwargs: Any) -> requests.Response:
        """One request, retried per the module rules; the (successful) response."""
        s = self.service
        kwargs.setdefault("timeout", s.timeout)
        for attempt in range(s.retries + 1):
            response = None
            try:
                response = self.session.request(method, url, **kwargs)
            except requests.RequestException as err:  # no answer, or a body cut short
                why = f"{type(err).__name__}"
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in RETRY_STATUS:
                    raise DownloadError(f"{s.name} {unit}: HTTP {response.status_code} from "
                                        f"{_safe(url)}: {_message(response)}",
                                        response.status_code)  # fmt: skip
                why = f"HTTP {response.status_code}"
            if attempt == s.retries:
                detail = f": {_message(response)}" if response is not None else ""
                raise DownloadError(
                    f"{s.name} {unit}: {why} from {_safe(url)} after "
                    f"{s.retries + 1} attempts{detail}",
                    response.status_code if response is not None else None,
                )
            self._wait(attempt, response, unit, why)
        raise AssertionError("unreachable")

    def json(self, method: str, url: str, unit: str, **kwargs: Any) -> Any:
        """The JSON body of a request; malformed JSON is retried like a cut body."""
        s = self.service
        for attempt in range(s.retries + 1):
            response = self.request(method, url, unit, **kwargs)
            try:
                return response.json()
            except ValueError as err:
                if attempt == s.retries:
                    raise DownloadError(f"{s.name} {unit}: malformed JSON from {_safe(url)} "
                                        f"({err})") from err  # fmt: skip
                self._wait(attempt, None, unit, "malformed JSON")
        raise AssertionError("unreachable")

    def download(self, url: str, out: str | Path, unit: str, *,
                 expected_bytes: int | None = None, **kwargs: Any) -> Path:  # fmt: skip
        """Stream ``url`` to ``out`` (resuming ``<out>.part``); the file's path."""
        out = Path(out)
        part = out.with_name(out.name + ".part")
        out.parent.mkdir(parents=True, exist_ok=True)
        s = self.service
        base_headers = dict(kwargs.pop("headers", {}) or {})
        for attempt in range(s.retries + 1):
            have = part.stat().st_size if part.exists() else 0
            headers = dict(base_headers)
            if have:
                headers["Range"] = f"bytes={have}-"
            response = self.request("GET", url, unit, stream=True, headers=headers, **kwargs)
            try:
                total = self._stream(response, part, have, unit)
            except (requests.RequestException, OSError) as err:
                if attempt == s.retries:
                    raise DownloadError(
                        f"{s.name} {unit}: the body from {_safe(url)} was cut "
                        f"short {s.retries + 1} times ({err})"
                    ) from err
                self._wait(attempt, None, unit, f"body cut short ({type(err).__name__})")
                continue
            size = part.stat().st_size
            want = expected_bytes if expected_bytes is not None else total
            if want is not None and size != want:
                if attempt == s.retries:
                    raise DownloadError(f"{s.name} {unit}: got {size} bytes from {_safe(url)},"
                                        f" expected {want}")  # fmt: skip
                part.unlink()
                self._wait(attempt, None, unit, f"{size} bytes instead of {want}")
                continue
            os.replace(part, out)
            return out
        raise AssertionError("unreachable")

    def _stream(self, response: requests.Response, part: Path, have: int,
                unit: str) -> int | None:  # fmt: skip
        """Write the body to ``part`` (appending after a 206); the full size, if known."""
        with response:
            resumed = have and response.status_code == 206
            length = response.headers.get("Content-Length")
            total = int(length) + (have if resumed else 0) if length is not None else None
            mode = "ab" if resumed else "wb"
            bar = tqdm(total=total, initial=have if resumed else 0, unit="B", unit_scale=True,
                       desc=f"{self.service.name} {unit}", file=sys.stderr,
                       mininterval=0.5 if sys.stderr.isatty() else 30.0)  # fmt: skip
            with open(part, mode) as f, bar:
                for chunk in response.iter_content(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
        return total


def _safe(url: str) -> str:
    """A URL without its query (which may carry keys) for messages."""
    return url.split("?", 1)[0]
