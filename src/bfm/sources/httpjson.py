"""JSON answers fetched as resumable downloads (the World Bank, UN SDG and IUCN downloaders).

``Client.json`` reads a body in one piece, so a connection reset mid-body or a body cut
short fails it outright. :func:`fetch_json` instead streams each answer through
``Client.download`` into a scratch folder (resumed with ``Range`` after a reset, refetched
when shorter than announced, 429 and 5xx retried per ``bfm.sources.http``), then parses it;
malformed JSON is deleted and fetched again, up to the service's retries. A page already
complete in the scratch folder (an earlier, interrupted run) is reused: its file name is the
hash of the full request URL, so a different request never reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bfm.sources.http import Client, DownloadError

log = logging.getLogger(__name__)


def scratch_dir(out: str | Path) -> Path:
    """The scratch folder of the pages of raw file ``out`` (removed once ``out`` is done)."""
    out = Path(out)
    return out.with_name(f".{out.name}.pages")


def full_url(url: str, params: Mapping[str, Any]) -> str:
    """``url`` with its query; list values repeat the parameter (``areaCode=4&areaCode=8``)."""
    return f"{url}?{urlencode(params, doseq=True)}" if params else url


def fetch_json(
    client: Client, url: str, params: Mapping[str, Any], unit: str, scratch: Path
) -> Any:
    """The parsed JSON answer of GET ``url`` with ``params`` (see the module docstring)."""
    target = full_url(url, params)
    path = scratch / (hashlib.sha256(target.encode()).hexdigest()[:20] + ".json")
    s = client.service
    for attempt in range(s.retries + 1):
        if not path.exists():
            client.download(target, path, unit)
        try:
            return json.loads(path.read_bytes())
        except ValueError as err:
            path.unlink()
            if attempt == s.retries:
                raise DownloadError(
                    f"{s.name} {unit}: malformed JSON from {url} after {s.retries + 1} "
                    f"attempts ({err})"
                ) from err
            wait = min(s.max_wait, s.backoff * 2**attempt)
            log.warning("%s %s: malformed JSON; retry %d/%d in %.0f s", s.name, unit,
                        attempt + 1, s.retries, wait)  # fmt: skip
            client.sleep(wait)
    raise AssertionError("unreachable")
