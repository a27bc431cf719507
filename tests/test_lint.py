"""The workflow is lint-clean (snakemake --lint) and formatted (snakefmt --check)."""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.conftest import ROOT


def test_snakemake_lint_is_clean():
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_snakefmt_check_passes():
    snakefmt = shutil.which("snakefmt") or str(ROOT / ".venv/bin/snakefmt")
    out = subprocess.run(
        [snakefmt, "--check", "workflow/"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
