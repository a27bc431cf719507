"""The manifest of one download unit: ``<file>.manifest.json`` next to the file.

Fields: ``file`` (name), ``source``, ``request`` (what was asked for, as sent), ``url`` (where
it came from; ``sample:<source>?seed=N`` for synthetic samples), ``bytes``, ``sha256``,
``retrieved_at`` (UTC, ISO 8601), ``licence``, ``citation`` and ``bfm_version``.

Credentials never appear: a request field or URL query parameter named like a credential
(token, password, ...; ``key`` too in a URL), or a URL with a user-info part, raises
``ValueError`` before anything is written.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from bfm import __version__
from bfm.fileio import write_text_atomic
from bfm.provenance import file_sha256

SUFFIX = ".manifest.json"
FIELDS = tuple(
    "file source request url bytes sha256 retrieved_at licence citation bfm_version".split()
)
CREDENTIAL_NAMES = frozenset(
    ("apikey", "api_key", "token", "access_token", "private-token", "password", "pwd")
    + ("secret", "authorization", "auth", "user", "username", "credentials")
)
# "key" is a credential in a URL query (Xeno-canto) but a field name in GBIF predicates.
URL_CREDENTIAL_NAMES = CREDENTIAL_NAMES | {"key"}


def manifest_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


def _check_no_credentials(request: Any, url: str, where: str) -> None:
    def walk(obj: Any, trail: str) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if str(k).lower() in CREDENTIAL_NAMES:
                    raise ValueError(f"{where}: request field {trail}{k!r} looks like a credential")
                walk(v, f"{trail}{k}.")
        elif isinstance(obj, list | tuple):
            for item in obj:
                walk(item, trail)

    walk(request, "")
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ValueError(f"{where}: url carries user info (credentials): refusing to record it")
    for name, _ in parse_qsl(parts.query):
        if name.lower() in URL_CREDENTIAL_NAMES:
            raise ValueError(f"{where}: url parameter {name!r} looks like a credential")


def write_manifest(
    path: str | Path,
    *,
    source: str,
    request: dict[str, Any],
    url: str,
    licence: str,
    citation: str,
    retrieved_at: dt.datetime | None = None,
) -> Path:
    """Describe the (already written) file ``path``; returns the manifest's path."""
    path = Path(path)
    out = manifest_path(path)
    _check_no_credentials(request, url, str(out))
    when = retrieved_at or dt.datetime.now(dt.UTC)
    record = {
        "file": path.name,
        "source": source,
        "request": request,
        "url": url,
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "retrieved_at": when.astimezone(dt.UTC).isoformat(timespec="seconds"),
        "licence": licence,
        "citation": citation,
        "bfm_version": __version__,
    }
    return write_text_atomic(out, json.dumps(record, indent=2, sort_keys=False) + "\n")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of ``path`` (the data file or the manifest itself), fields checked."""
    path = Path(path)
    mpath = path if path.name.endswith(SUFFIX) else manifest_path(path)
    try:
        record = json.loads(mpath.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{mpath}: not valid JSON ({err})") from err
    missing = [f for f in FIELDS if f not in record]
    if missing:
        raise ValueError(f"{mpath}: missing field(s) {missing}")
    return record


def verify(path: str | Path) -> dict[str, Any]:
    """Check that ``path`` still has the bytes and sha256 its manifest records."""
    path = Path(path)
    record = read_manifest(path)
    size, digest = path.stat().st_size, file_sha256(path)
    if size != record["bytes"] or digest != record["sha256"]:
        raise ValueError(
            f"{path}: bytes/sha256 {size}/{digest[:12]} differ from the manifest's "
            f"{record['bytes']}/{record['sha256'][:12]}"
        )
    return record
