"""Provenance: version, commit, config hash and settings hash; the resolved config file."""

from __future__ import annotations

import subprocess
import sys

from bfm import __version__
from bfm.config import load_config, write_resolved_config
from bfm.provenance import config_hash, provenance
from bfm.testing import demo_config
from bfm.workflow import Plan


def test_config_hash_is_canonical():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert len(config_hash({})) == 64


def test_provenance_records_the_config_and_the_settings():
    prov = provenance({"x": 1}, {"grid": 2})
    assert prov == {
        "bfm_version": __version__,
        "git_commit": prov["git_commit"],
        "config_hash": config_hash({"x": 1}),
        "settings_hash": config_hash({"grid": 2}),
    }
    assert prov["git_commit"] == "unknown" or len(prov["git_commit"].split("-")[0]) == 40
    assert provenance(None, {"grid": 2})["config_hash"] == config_hash({"grid": 2})


def test_resolved_config_file_gives_the_same_hash_by_hand(tmp_path):
    """The workflow writes results/config/<hash>.yaml; a step given that file (or the user's
    own config file) records the hash the workflow records."""
    plan = Plan(demo_config())
    path = write_resolved_config(plan.config, tmp_path)
    assert path == str(tmp_path / f"{plan.hash}.yaml")
    assert config_hash(load_config(path)) == plan.hash
    again = write_resolved_config(plan.config, tmp_path)  # idempotent: same name, same file
    assert again == path and len(list(tmp_path.iterdir())) == 1
    user = tmp_path / "user.yaml"
    user.write_text((tmp_path / f"{plan.hash}.yaml").read_text().split("\n", 1)[1])
    assert config_hash(load_config(user)) == plan.hash


def test_cli_version():
    out = subprocess.run(
        [sys.executable, "-m", "bfm.cli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.strip() == f"bfm {__version__}"
