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


def _tool(name: str) -> str:
    return shutil.which(name) or str(ROOT / ".venv/bin" / name)


def test_ruff_lint_and_format_are_clean():
    paths = ["src", "tests", "benchmarks"]
    lint = subprocess.run(
        [_tool("ruff"), "check", *paths], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [_tool("ruff"), "format", "--check", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_is_clean():
    out = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr
