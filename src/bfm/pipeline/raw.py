"""bfm sample SOURCE NAME / bfm download SOURCE NAME: write one raw file of a source.

NAME is the file's name relative to the source's raw folder, as the source names it (e.g.
era5 surface/2010-01.nc, atmospheric/2010-01.nc, static/static.nc; gbif occurrences.zip);
the workflow writes it to results/raw/SOURCE/NAME. sample writes deterministic synthetic data
in the source's native format; download fetches it from the real service. Both write
<file>.manifest.json beside it (request, url, bytes, sha256, licence, citation). What to
write (grid, window, levels, species, seed) comes from --config.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from bfm import sources
from bfm.cliutil import add_command, add_config_argument
from bfm.workflow import Plan, load_plan

log = logging.getLogger(__name__)


def write_raw(mode: str, source: str, name: str, out: str | Path, plan: Plan) -> Path:
    """Write raw file ``name`` of ``source`` with ``mode`` (sample or download) to ``out``."""
    src = sources.get(source)
    if source not in plan.config["sources"]:
        raise ValueError(f"{source}: not a source of this study (config key 'sources')")
    began = time.perf_counter()
    write = {"sample": src.sample, "download": src.download, "combine": src.combine}[mode]
    path = write(name, Path(out), plan.study)
    log.info("%s %s %s -> %s in %.1f s", mode, source, name, path, time.perf_counter() - began)
    return path


def _run(args: argparse.Namespace) -> int:
    plan = load_plan(args.config)
    assert plan is not None  # --config is required
    write_raw(args.mode, args.source, args.name, args.out, plan)
    return 0


def _register(sub: argparse._SubParsersAction, mode: str, help_text: str) -> None:
    p = add_command(sub, mode, __doc__, help_text)
    p.add_argument("source", metavar="SOURCE", help=f"one of: {', '.join(sources.names())}")
    p.add_argument("name", metavar="NAME", help="raw file name, relative to the source's folder")
    add_config_argument(p)
    p.add_argument("--out", required=True, help="file to write")
    p.set_defaults(func=_run, mode=mode)


def register_sample(sub: argparse._SubParsersAction) -> None:
    _register(sub, "sample", "write a synthetic raw file in a source's native format")


def register_download(sub: argparse._SubParsersAction) -> None:
    _register(sub, "download", "download a raw file from a source's service")


def register_combine(sub: argparse._SubParsersAction) -> None:
    _register(sub, "combine", "write a raw file from other sources' raw files (occurrences)")
