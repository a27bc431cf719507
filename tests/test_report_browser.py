"""The browser check of Snakemake reports (tests/browser): a tiny workflow with an SVG, a PNG
and an HTML table flagged for the report; its report (zip and self-contained HTML) passes,
and the same report with a corrupt SVG, a truncated PNG, an empty HTML table or other labels
fails, naming the result.

The demo's report is checked with the same function in tests/test_e2e.py."""

from __future__ import annotations

import base64
import os
import re
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import Chromium, assert_figures_displayed, chromium_path

pytestmark = pytest.mark.slow  # Snakemake and Chromium: ~20 s in all

SVG = """<?xml version="1.0" encoding="utf-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="120" height="80" viewBox="0 0 120 80">
<rect x="10" y="10" width="100" height="60" fill="teal"/></svg>
"""
TABLE = "<!DOCTYPE html><html><body><table><tr><th>a</th></tr><tr><td>1.5</td></tr></table>"
LABELS = [{"item": "svg figure"}, {"item": "png figure"}, {"item": "table"}]
SNAKEFILE = """
rule all:
    input:
        "out/a.svg",
        "out/b.png",
        "out/c.html",


rule svg:
    input:
        "src/a.svg",
    output:
        report("out/a.svg", caption="caption.rst", category="Figures",
               labels={"item": "svg figure"}),
    shell:
        "cp {input} {output}"


rule png:
    input:
        "src/b.png",
    output:
        report("out/b.png", caption="caption.rst", category="Figures",
               labels={"item": "png figure"}),
    shell:
        "cp {input} {output}"


rule table:
    input:
        "src/c.html",
    output:
        report("out/c.html", caption="caption.rst", category="Tables", labels={"item": "table"}),
    shell:
        "cp {input} {output}"
"""
# Run the workflow and make both reports in one process (Snakemake starts once).
RUN = """
import sys
from snakemake.cli import main
for argv in (["-c1", "-q"], ["--report", "report.zip", "-q"], ["--report", "report.html", "-q"]):
    try:
        main(argv)
    except SystemExit as err:
        if err.code:
            sys.exit(err.code)
"""


def png(width: int, height: int) -> bytes:
    """A valid RGB PNG, one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(b"\0" + b"\x20\x80\xc0" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))  # fmt: skip


@pytest.fixture(scope="module")
def chromium() -> Iterator[Chromium]:
    """One headless Chromium for the module's checks (each check opens its report anew)."""
    try:
        binary = chromium_path()
    except RuntimeError as err:
        pytest.fail(str(err))  # never skipped: CI installs it (tests/browser/up.sh)
    browser = Chromium(binary)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    """report.zip and report.html of the tiny workflow."""
    work = tmp_path_factory.mktemp("tiny")
    (work / "src").mkdir()
    (work / "src/a.svg").write_text(SVG)
    (work / "src/b.png").write_bytes(png(40, 30))
    (work / "src/c.html").write_text(TABLE)
    (work / "caption.rst").write_text("What this result shows, how and how to read it.\n")
    (work / "Snakefile").write_text(textwrap.dedent(SNAKEFILE))
    # Snakemake's SLURM executor plugin runs `scontrol show config` on import, which waits
    # 10 s when no cluster runs; this workflow runs locally, so a stand-in that fails at once.
    shim = work / "bin"
    shim.mkdir()
    (shim / "scontrol").write_text("#!/bin/sh\nexit 1\n")
    (shim / "scontrol").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run([sys.executable, "-c", RUN], cwd=work, capture_output=True, text=True,
                         timeout=300, env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return {"zip": work / "report.zip", "html": work / "report.html"}


def rewrite_zip(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    """A copy of a report zip, each member whose file name is a key of ``replace`` replaced
    by its bytes. (Chromium shows a PNG cut short after its header, as far as it goes.)"""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        names = zin.namelist()
        assert {Path(n).name for n in names} >= set(replace), names
        for n in names:
            zout.writestr(n, replace.get(Path(n).name, zin.read(n)))
    return dst


def test_a_sound_report_shows_every_figure_and_table(reports, chromium):
    shown = assert_figures_displayed(reports["zip"], LABELS, chromium)
    by_item = {v["labels"]["item"]: v for v in shown.values()}
    assert by_item["svg figure"]["kind"] == "img" and by_item["svg figure"]["size"] == [120, 80]
    assert by_item["png figure"]["size"] == [40, 30]
    table = by_item["table"]
    assert table["kind"] == "iframe" and table["frame"]["tables"] == 1
    # The self-contained report embeds the same results as data: URIs.
    shown = assert_figures_displayed(reports["html"], LABELS, chromium)
    assert {v["kind"] for v in shown.values()} == {"img", "iframe"}


def test_broken_results_fail_the_check_each_named(reports, chromium, tmp_path):
    broken = tmp_path / "report.zip"
    rewrite_zip(reports["zip"], broken, {
        "a.svg": b"<svg xmlns='http://www.w3.org/2000/svg'><rect",  # cut short: not XML
        "b.png": png(40, 30)[:20],  # cut inside the header
        "c.html": b"",
    })  # fmt: skip
    with pytest.raises(AssertionError) as err:
        assert_figures_displayed(broken, LABELS, chromium)
    message = str(err.value)
    assert re.search(r"a.svg \(image/svg\+xml\): the image does not decode", message), message
    assert re.search(r"b.png \(image/png\): the image does not decode", message), message
    assert re.search(r"c.html \(text/html\): the HTML document is empty", message), message


def test_a_broken_image_and_a_script_error_fail_the_self_contained_report(
    reports, chromium, tmp_path
):
    page = reports["html"].read_text()
    good = base64.b64encode(png(40, 30)).decode()
    assert good in page
    bad = base64.b64encode(b"<html>404 Not Found</html>").decode()  # not an image
    broken = tmp_path / "report.html"
    thrower = "<script>setTimeout(() => { throw new Error('boom'); }, 0);</script>"
    head, tail = page.replace(good, bad).rsplit("</body>", 1)  # the page's own end
    broken.write_text(head + thrower + "</body>" + tail)
    with pytest.raises(AssertionError) as err:
        assert_figures_displayed(broken, LABELS, chromium)
    assert "b.png (image/png): the image does not decode" in str(err.value)
    assert "the report's JavaScript threw: Error: boom" in str(err.value)


def test_the_results_must_be_the_expected_ones(reports, chromium):
    # No browser given: the check starts and closes its own (the shared one is untouched).
    with pytest.raises(AssertionError, match=re.escape('missing [\'{"item": "loss curve"}\']')):
        assert_figures_displayed(reports["zip"], [*LABELS[:2], {"item": "loss curve"}])
    assert chromium.proc.poll() is None
