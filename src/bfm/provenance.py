"""Provenance recorded in every tile, batch and checkpoint: version, commit, config hash."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from bfm import __version__

# Set by workflow/rules/common.smk (through bfm.workflow.export_config) so that every job
# records the hash of the whole resolved config it ran under.
ENV_CONFIG_HASH = "BFM_CONFIG_HASH"
ENV_RESOLVED_CONFIG = "BFM_RESOLVED_CONFIG"


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


def resolved_config() -> dict[str, Any] | None:
    """The whole resolved workflow config, when running under the workflow."""
    text = os.environ.get(ENV_RESOLVED_CONFIG)
    return json.loads(text) if text else None


def provenance(settings: Any = None) -> dict[str, str]:
    """Provenance attributes; the config hash is the workflow's, else that of ``settings``."""
    chash = os.environ.get(ENV_CONFIG_HASH) or config_hash(settings if settings is not None else {})
    return {"bfm_version": __version__, "git_commit": git_commit(), "config_hash": chash}
