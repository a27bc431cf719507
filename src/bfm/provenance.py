"""Provenance recorded in every tile, batch, statistics file and checkpoint.

- ``bfm_version`` and ``git_commit``: the code;
- ``config_hash``: the sha256 of the whole resolved config the step ran under (the workflow
  writes it to ``results/config/<config_hash>.yaml`` and passes that file with ``--config``,
  so a step run by hand with the same file records the same hash); without a config, the
  hash of the step's own settings;
- ``settings_hash``: the sha256 of the config keys the output depends on (``bfm.workflow``);
  consumers compare it with what the current config implies for their inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from bfm import __version__


def config_hash(config: Any) -> str:
    """sha256 of the canonical JSON of a config (sorted keys, no whitespace)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the source tree bfm runs from, or "unknown" outside a git checkout."""
    env = os.environ.get("BFM_GIT_COMMIT")
    if env:
        return env
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    commit = out.stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=here,
        capture_output=True,
        text=True,
        timeout=10,
    )
    return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def provenance(config: Mapping[str, Any] | None, settings: Any) -> dict[str, str]:
    """Provenance attributes of an output depending on ``settings``, made under ``config``."""
    chash = config_hash(config if config is not None else settings)
    return {
        "bfm_version": __version__,
        "git_commit": git_commit(),
        "config_hash": chash,
        "settings_hash": config_hash(settings),
    }
