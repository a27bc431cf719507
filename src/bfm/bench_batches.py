"""bfm bench batches: what a month of batches costs at the study's grid, against writing the
same bytes with dd, and what the whole study would cost.

Mock tiles of every modality of the study (``--values``: random, compression's worst case,
or smooth fields) are
written for a month and the first day of the next, on ``--grid`` (default Europe at 0.25 deg,
153 x 321, 13 levels, 21 species) at ``--step``. Then, each in a child process measured on its
own (``os.wait4``: CPU time and peak resident memory):

- the month job, ``bfm batches``, as the workflow runs it (tiles opened once, each time slice
  read once): CPU seconds per batch amortised over the month (Python's start-up included),
  peak memory, MB per batch, and its last batch (the one that reads the next month's tile)
  against the median batch, from the job's log;
- ``bfm batch`` alone for a mid-month batch and for the month's last: CPU and memory of a
  batch at a month boundary against one inside it (the targeted single-batch path);
- ``bfm stats partial`` over the month's batches (the workflow's monthly partial sums):
  CPU per batch and peak memory;
- ``dd`` writing the month's bytes: the month job's wall time over dd's.

Last, the projection of the study's batches (``--years``, default 2000-2020 = 21) from the
measured costs: batches, CPU hours, wall time on one 128-core Snellius rome node, bytes.

Examples:

    bfm bench batches                       # Europe, 1D, a month (31 batches)
    bfm bench batches --step 6h --days 8     # 6h: 32 batches
    bfm bench batches --grid 41x81 --days 5  # quick
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from bfm.bench import measure_child
from bfm.cliutil import add_command

EUROPE = {"lat_min": 34.0, "lat_max": 72.0, "lon_min": -30.0, "lon_max": 50.0}
SPECIES = 21
NODE_CORES = 128  # a Snellius rome node


def write_study(
    d: Path, h: int, w: int, step: str, days: int, values: str = "random"
) -> tuple[Path, dict, str]:
    """A config of the grid, a window of ``days`` days + 1 step, mock tiles of every
    modality; the config's path, the tile paths per modality and the month."""
    from bfm.contracts.tile import write_tile
    from bfm.testing import demo_config, mock_tile, random_values, trend_values
    from bfm.workflow import Plan

    res = 0.25
    grid = {
        "lat_min": EUROPE["lat_min"],
        "lat_max": EUROPE["lat_min"] + (h - 1) * res,
        "lon_min": EUROPE["lon_min"],
        "lon_max": EUROPE["lon_min"] + (w - 1) * res,
        "res": res,
    }
    start = pd.Timestamp("2000-01-01")
    end = start + pd.Timedelta(days=days)  # the last batch ends there, a step after its t0
    cfg = demo_config(grid=grid)
    cfg["time"] = {
        "start": str(start.date()),
        "end": str(end.date()),
        "step": step,
        "eval_start": str((start + pd.Timedelta(days=days - 1)).date()),
    }
    config = d / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    plan = Plan(cfg)
    month = plan.batch_months()[0]
    tiles = plan.month_tiles(month)
    from bfm.contracts.grid import Grid

    g = Grid.from_dict(cfg["grid"])
    out: dict[str, list[str]] = {}
    for m in plan.modalities:
        out[m.name] = []
        for path in tiles[m.name]:
            period = Path(path).stem
            ds = mock_tile(
                m.name,
                g,
                period,
                start=cfg["time"]["start"],
                end=cfg["time"]["end"],
                step=step,
                levels=plan.config["levels"],
                species=range(1, SPECIES + 1),
                value=random_values(1) if values == "random" else trend_values(0.5),
            )
            ds.attrs["settings_hash"] = plan.tile_settings_hash(m)
            target = d / "results" / path
            write_tile(ds, target)
            out[m.name].append(str(target))
    return config, out, month


def batch_seconds(log: Path) -> list[float]:
    """Seconds per batch of a ``bfm batches`` log, from its timestamps."""
    stamps = [
        pd.Timestamp(m) for m in re.findall(r"^(\S+ \S+) INFO .*\] wrote", log.read_text(), re.M)
    ]
    return [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)]


def _run(args: argparse.Namespace) -> int:
    from bfm.workflow import Plan

    h, w = (int(v) for v in args.grid.lower().split("x"))
    if args.days < 4:
        raise ValueError("--days: at least 4 (the study needs 2 training and 2 held-out batches)")
    bfm = [sys.executable, "-m", "bfm.cli"]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        d = Path(tmp)
        print(f"writing mock tiles ({h} x {w}, {args.step}, {args.days} days) ...", flush=True)
        config, tiles, month = write_study(d, h, w, args.step, args.days, args.values)
        plan = Plan(yaml.safe_load(config.read_text()))
        names = plan.month_batches(month)
        tile_args = [a for m, ps in tiles.items() for a in ("--tile", f"{m}={','.join(ps)}")]
        out_dir, log = d / "batches", d / "batches.log"
        job = measure_child(
            [
                *bfm,
                "batches",
                "--period",
                month,
                *tile_args,
                "--config",
                str(config),
                "--out-dir",
                str(out_dir),
                "--all-list",
                str(d / "all.txt"),
            ],
            log,
        )
        sizes = [(out_dir / f"{t0}.h5").stat().st_size for t0 in names]
        per = batch_seconds(log)  # seconds from one batch's end to the next's
        alone = {}
        for label, t0 in (("mid-month", names[len(names) // 2]), ("month boundary", names[-1])):
            cmd = [
                *bfm,
                "batch",
                "--t0",
                t0,
                "--config",
                str(config),
                "--out",
                str(d / f"alone-{t0}.h5"),
            ]
            for m in plan.modalities:
                periods = plan.batch_periods(t0) if m.periodic else ["static"]
                mine = [p for p in tiles[m.name] if Path(p).stem in periods]
                cmd += ["--tile", f"{m.name}={','.join(mine)}"]
            alone[label] = measure_child(cmd, d / f"alone-{t0}.log")
        stats = measure_child(
            [
                *bfm,
                "stats",
                "partial",
                "--batches",
                f"@{d / 'all.txt'}",
                "--config",
                str(config),
                "--out",
                str(d / "partial.json"),
            ],
            d / "stats.log",
        )
        total = sum(sizes)
        began = time.perf_counter()
        subprocess.run(
            [
                "dd",
                "if=/dev/zero",
                f"of={d / 'dd.bin'}",
                "bs=1M",
                f"count={max(1, round(total / 2**20))}",
            ],
            check=True,
            capture_output=True,
        )
        dd = time.perf_counter() - began
    n = len(names)
    cpu_per = job["cpu"] / n
    mb = statistics.mean(sizes) / 1e6
    print(
        f"bfm batches, {month}: {n} batches in {job['wall']:.1f} s wall, "
        f"{cpu_per:.3f} CPU s per batch amortised (target <= 0.4), peak RSS "
        f"{job['rss'] / 2**30:.2f} GiB, {mb:.1f} MB per batch"
    )
    crossing = " (reads the next month's tile)" if len(plan.batch_periods(names[-1])) > 1 else ""
    if len(per) >= 2:
        print(
            f"  the month's last batch{crossing} {per[-1]:.3f} s against "
            f"the median {statistics.median(per[:-1]):.3f} s: "
            f"{per[-1] / statistics.median(per[:-1]):.2f}x"
        )
    mid, edge = alone["mid-month"], alone["month boundary"]
    print(
        f"bfm batch alone: mid-month {mid['cpu']:.2f} CPU s, {mid['rss'] / 2**20:.0f} MiB; "
        f"month boundary {edge['cpu']:.2f} CPU s ({edge['cpu'] / mid['cpu']:.2f}x), "
        f"{edge['rss'] / 2**20:.0f} MiB ({edge['rss'] / mid['rss']:.2f}x); "
        f"the month job's {cpu_per:.3f} s per batch is {mid['cpu'] / cpu_per:.1f}x less"
    )
    print(
        f"bfm stats partial over the month's batches: {stats['cpu'] / n:.3f} CPU s per batch, "
        f"peak RSS {stats['rss'] / 2**30:.2f} GiB"
    )
    print(
        f"dd of the same {total / 1e6:.0f} MB: {dd:.2f} s; the month job takes "
        f"{job['wall'] / dd:.1f}x dd's time"
    )
    per_day = {"1D": 1, "6h": 4}.get(args.step, 1)
    batches = round(args.years * 365.25 * per_day)
    cpu_h = batches * cpu_per / 3600
    print(
        f"projection, {args.years} years at {args.step}: {batches} batches, {cpu_h:.1f} CPU h, "
        f"{cpu_h / NODE_CORES * 60:.1f} min on one {NODE_CORES}-core rome node (a month per "
        f"core), {batches * mb / 1e6:.2f} TB ({args.values} values)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "grid": [h, w],
                    "step": args.step,
                    "batches": n,
                    "job": job,
                    "mb_per_batch": mb,
                    "cpu_per_batch": cpu_per,
                    "alone": alone,
                    "stats_partial": stats,
                    "dd_seconds": dd,
                    "seconds_per_batch": per,
                    "projection": {"batches": batches, "cpu_hours": cpu_h},
                },
                indent=1,
            )
        )
    return 0


def register(actions: argparse._SubParsersAction) -> None:
    p = add_command(
        actions,
        "batches",
        __doc__,
        "a month of batches: CPU per batch, MB, memory, against dd; study projection",
    )
    p.add_argument("--grid", default="153x321", help="HxW cells (default Europe: 153x321)")
    p.add_argument("--step", default="1D", choices=["1D", "6h"], help="default 1D")
    p.add_argument("--days", type=int, default=31, help="days of batches, >= 4 (default 31)")
    p.add_argument("--values", default="random", choices=["random", "smooth"],
                   help="random (compression's worst case, default) or smooth fields")  # fmt: skip
    p.add_argument("--years", type=int, default=21, help="the projection's window (default 21)")
    p.add_argument("--workdir", default=None, help="where to write (default: a temp folder)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.set_defaults(func=_run)
