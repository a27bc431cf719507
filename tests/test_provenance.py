"""Provenance: version, commit and config hash."""

from __future__ import annotations

import subprocess
import sys

from bfm import __version__
from bfm.provenance import ENV_CONFIG_HASH, config_hash, provenance


def test_config_hash_is_canonical():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert len(config_hash({})) == 64


def test_workflow_hash_wins_over_settings(monkeypatch):
    monkeypatch.delenv(ENV_CONFIG_HASH, raising=False)
    assert provenance({"x": 1})["config_hash"] == config_hash({"x": 1})
    monkeypatch.setenv(ENV_CONFIG_HASH, "abc")
    prov = provenance({"x": 1})
    assert prov == {
        "bfm_version": __version__,
        "git_commit": prov["git_commit"],
        "config_hash": "abc",
    }
    assert prov["git_commit"] == "unknown" or len(prov["git_commit"].split("-")[0]) == 40


def test_cli_version():
    out = subprocess.run(
        [sys.executable, "-m", "bfm.cli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.strip() == f"bfm {__version__}"
