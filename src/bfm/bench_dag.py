"""bfm bench dag: how long Snakemake takes to plan the study, and how that grows with the
window.

The study's config (``--configfile``, default config/europe.yaml) is run as a dry run
(``snakemake -n``) for the full window and for the first ``--fraction`` of its years, every
source in sample mode (so that no user file or credential is needed: the DAG's shape is the
same), at the step of ``--step`` (default: both 1D and 6h). Printed per case: the jobs per
rule kind, the wall time of the dry run and of the workflow's plan alone (``bfm.workflow.Plan``:
every rule's inputs, no Snakemake), and the ratio of the short window's time to the full
window's (linear planning: about the ratio of the years; quadratic: its square).

Each dry run works in a fresh folder under ``--workdir`` (a temporary one by default) with
the checkout's workflow (``--snakefile``), so nothing of yours is touched.

Examples:

    bfm bench dag                                   # Europe 2000-2020, 1D and 6h, and 2000-2009
    bfm bench dag --step 6h --fraction 0.5
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from bfm.cliutil import add_command


def study_config(path: Path, step: str, years: int | None) -> dict[str, Any]:
    """The config of ``path`` at ``step``, every source sampled, the window cut to its first
    ``years`` (the held-out share kept: the last years of the window)."""
    cfg = yaml.safe_load(path.read_text())
    for name, source in cfg["sources"].items():
        if source.get("mode") in ("download", "file"):
            cfg["sources"][name] = {"mode": "sample"}
    t = cfg["time"]
    t["step"] = step
    start, end = pd.Timestamp(t["start"]), pd.Timestamp(t["end"])
    total = end.year - start.year + 1
    if years is not None and years < total:
        held_out = end.year - pd.Timestamp(t["eval_start"]).year + 1
        t["end"] = f"{start.year + years - 1}-12-31"
        t["eval_start"] = f"{start.year + years - max(1, round(held_out * years / total))}-01-01"
    return cfg


def plan_seconds(cfg: dict[str, Any]) -> float:
    """Wall time of the plan's per-rule inputs over every job kind of the DAG."""
    from bfm.workflow import Plan

    began = time.perf_counter()
    plan = Plan(cfg)
    for period in plan.batch_months():
        plan.month_tiles(period)
        plan.batch_list(period, "train")
    for split in ("train", "eval"):
        plan.batch_lists(split)
    for m in plan.modalities:
        for period in plan.tile_periods(m):
            plan.tile_inputs(m, period)
    plan.batch_settings_hash  # noqa: B018 (the cost of the settings, once)
    return time.perf_counter() - began


def write_workdir(cfg: dict[str, Any], snakefile: Path, workdir: Path) -> Path:
    """``workdir`` with ``cfg`` as config.yaml (its path returned) and links to the checkout's
    resources/ and config/ (the config's relative paths: species list, DeepSpeed JSON)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    root = snakefile.resolve().parent.parent
    for name in ("resources", "config"):
        link = workdir / name
        if not link.exists():
            link.symlink_to(root / name)
    return config


def dry_run(cfg: dict[str, Any], snakefile: Path, workdir: Path) -> dict[str, Any]:
    """Jobs per rule and seconds of ``snakemake -n`` for ``cfg`` in ``workdir``."""
    config = write_workdir(cfg, snakefile, workdir)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "--quiet",
        "rules",
        "-s",
        str(snakefile),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
    ]
    began = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if out.returncode != 0:
        raise ValueError(f"snakemake -n failed for {config}:\n{out.stderr[-2000:]}")
    jobs = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", out.stdout, re.M)}
    return {"seconds": seconds, "jobs": jobs}


def _run(args: argparse.Namespace) -> int:
    snakefile = Path(args.snakefile)
    if not snakefile.is_file():
        raise FileNotFoundError(f"--snakefile: {snakefile} does not exist (run from the checkout)")
    base = Path(args.configfile)
    if not base.is_file():
        raise FileNotFoundError(f"--configfile: {base} does not exist")
    full_years = yaml.safe_load(base.read_text())["time"]
    total = pd.Timestamp(full_years["end"]).year - pd.Timestamp(full_years["start"]).year + 1
    short = min(total, max(2, round(total * args.fraction)))  # one year: kept whole
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for step in args.step:
            case: dict[str, Any] = {"step": step}
            for label, years in (("short", short), ("full", None)):
                cfg = study_config(base, step, years)
                res = dry_run(cfg, snakefile, Path(tmp) / f"{step}-{label}")
                res["plan_seconds"] = plan_seconds(cfg)
                res["window"] = f"{cfg['time']['start']}..{cfg['time']['end']}"
                case[label] = res
            case["ratio"] = case["short"]["seconds"] / case["full"]["seconds"]
            rows.append(case)
            full = case["full"]
            print(
                f"step {step}: {full['window']}: {full['jobs'].get('total', 0)} jobs, "
                f"snakemake -n {full['seconds']:.1f} s (plan alone {full['plan_seconds']:.2f} s)"
            )
            kinds = {k: v for k, v in full["jobs"].items() if k != "total"}
            print("  jobs: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
            s = case["short"]
            print(
                f"  {s['window']}: {s['jobs'].get('total', 0)} jobs, {s['seconds']:.1f} s; "
                f"time ratio short/full {case['ratio']:.2f} for a window ratio "
                f"{short / total:.2f} (linear: about the same)"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def register(actions: argparse._SubParsersAction) -> None:
    p = add_command(
        actions, "dag", __doc__, "snakemake -n of the study: seconds, jobs, growth with the window"
    )
    p.add_argument(
        "--configfile", default="config/europe.yaml", help="the study (default config/europe.yaml)"
    )
    p.add_argument("--snakefile", default="workflow/Snakefile", help="default workflow/Snakefile")
    p.add_argument("--step", nargs="+", default=["1D", "6h"], help="default: 1D 6h")
    p.add_argument(
        "--fraction",
        type=float,
        default=0.5,
        help="the short window's share of the years (default 0.5)",
    )
    p.add_argument("--workdir", default=None, help="where the dry runs work (default: a temp)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.set_defaults(func=_run)
