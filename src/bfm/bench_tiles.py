"""bfm bench tiles: what one month's tile costs, in CPU time and peak memory, at the study grid.

Species tile (``bfm tile species_occurrence``): for a small and a large window
(``--small-months``, ``--large-months`` months from 2000-01), a synthetic combined record
table and effort table with ``--records-per-month`` records of 21 species (points, days and a
few months: the precisions of the real downloads) are written the way rule ``combine``
writes them (``bfm.sources.occurrence_store``: stored by period, streamed a month at a
time). The tile of the same month (``--month``, the n-th month of both windows; its records
are the same in both) is then built by ``bfm tile`` in a child process, at ``--grid`` and
``--step``. Printed per window: the records in the table, the rows the month read (and in
how many of the file's row groups), the child's CPU time (user + system) and peak RSS
(``ru_maxrss``); then the ratio large / small of each. Target: the per-month cost does not
grow with the window (ratios ~1) and the peak RSS <= 2 GiB.

GBIF sample writer (``--gbif-sample-months A B``, off by default: minutes at the Europe
grid): ``gbif.sample`` of the 21 species over A and B months from 2010-01 in a child process
each: records written, CPU time and peak RSS (the writer holds one month of records).

Atmospheric tile (``bfm tile era5_atmospheric``, unless ``--no-atmospheric``): a sample
ERA5 month on the grid (13 levels, 124 six-hourly times), written a day at a time by
``benchmarks/tile_memory.py`` (reused when it exists in ``--workdir``), tiled in a child
process at ``--step``: CPU time and peak RSS. Target: <= 2 GiB.
``--no-species`` runs only the atmospheric case (and the GBIF writer if asked).

Examples:

    bfm bench tiles                                   # Europe, 6h, 12 vs 120 months
    bfm bench tiles --grid 25x41 --step 1D --no-atmospheric --records-per-month 2000
    bfm bench tiles --no-species --step 1D          # the atmospheric tile alone
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from bfm.cliutil import add_command

GIB = 1 << 30
SPECIES = 21
CLASSES = (212, 359, 216)  # Aves, Mammalia, Insecta: the classes of the study's species
BENCH_START = "2000-01-01"


@dataclass(frozen=True)
class Run:
    """One child process: its CPU seconds (user + system), wall seconds, peak RSS (GiB)."""

    cpu_s: float
    wall_s: float
    peak_gib: float


def run_child(command: list[str]) -> Run:
    """Run ``command``; its own resource use (``bfm.bench.measure_child``)."""
    from bfm.bench import measure_child

    with tempfile.TemporaryDirectory() as tmp:
        cost = measure_child(command, Path(tmp) / "child.log")
    return Run(cost["cpu"], cost["wall"], cost["rss"] / GIB)


def species_csv(path: Path) -> Path:
    """21 synthetic species with GBIF keys 1..21 in three classes."""
    rows = [
        {"gbif_key": k, "scientific_name": f"Benchia species{k}", "common_name": f"bench {k}",
         "kingdom": "Animalia", "phylum": "Chordata", "class": f"class {CLASSES[k % 3]}",
         "order": "", "family": "", "class_key": CLASSES[k % 3]}
        for k in range(1, SPECIES + 1)
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def month_records(month: pd.Timestamp, index: int, n: int, grid: Any) -> pd.DataFrame:
    """``n`` contract records starting in ``month`` (seeded by the month's index): 55 %
    points, 40 % days, 5 % the whole month."""
    from bfm.contracts import occurrence as contract

    rng = np.random.default_rng([7, index])
    seconds = rng.integers(0, month.days_in_month * 86400, n)
    point = (np.datetime64(month, "ns") + seconds.astype("timedelta64[s]")).astype("M8[ns]")
    kind = rng.choice(3, n, p=[0.55, 0.40, 0.05])
    day = point.astype("datetime64[D]").astype("M8[ns]")
    first, after = np.datetime64(month, "ns"), np.datetime64(month + pd.offsets.MonthBegin(1))
    start = np.where(kind == 0, point, np.where(kind == 1, day, first))
    end = np.where(kind == 0, point, np.where(kind == 1, day + np.timedelta64(1, "D"), after))
    lat = rng.uniform(grid.lat_min, grid.lat_max, n)
    lon = rng.uniform(grid.lon_min, grid.lon_max, n)
    table = pd.DataFrame({
        "record_id": [f"bench:{index}:{i}" for i in range(n)], "same_as": "", "source": "gbif",
        "scientific_name": "", "species_key": rng.integers(1, SPECIES + 1, n),
        "latitude": lat, "longitude": lon, "uncertainty_m": 10.0,
        "start": pd.DatetimeIndex(start), "end": pd.DatetimeIndex(end),
        "precision": np.array(["time", "day", "month"])[kind], "basis": "HUMAN_OBSERVATION",
        "status": "PRESENT", "licence": "CC0_1_0",
    })  # fmt: skip
    return contract.conform(table, f"bench month {month:%Y-%m}")


def month_effort(month: pd.Timestamp, index: int, n: int, grid: Any) -> pd.DataFrame:
    """``n`` effort rows (class, day, cell, count) in ``month``."""
    rng = np.random.default_rng([8, index])
    days = month + pd.to_timedelta(rng.integers(0, month.days_in_month, n), unit="D")
    return pd.DataFrame({
        "class_key": np.asarray(CLASSES, np.int64)[rng.integers(0, 3, n)],
        "time": pd.DatetimeIndex(days), "row": rng.integers(0, grid.n_lat, n),
        "col": rng.integers(0, grid.n_lon, n), "n": rng.integers(1, 20, n).astype(np.float64),
    })  # fmt: skip


def write_window(folder: Path, months: int, per_month: int, grid: Any) -> tuple[Path, Path]:
    """The record and effort tables of ``months`` months, written a month at a time."""
    from bfm.fileio import atomic_path
    from bfm.sources import occurrence_store
    from bfm.sources.occurrences import EFFORT_ORDER, RECORD_ORDER

    folder.mkdir(parents=True, exist_ok=True)
    firsts = pd.date_range(BENCH_START, periods=months, freq="MS")
    records, effort = folder / "records.parquet", folder / "effort.parquet"
    if not records.exists():
        chunks = (month_records(m, i, per_month, grid) for i, m in enumerate(firsts))
        with atomic_path(records) as tmp:
            occurrence_store.write_by_period(chunks, tmp, "start", "end", RECORD_ORDER)
    if not effort.exists():
        chunks = (month_effort(m, i, per_month, grid) for i, m in enumerate(firsts))
        with atomic_path(effort) as tmp:
            occurrence_store.write_by_period(chunks, tmp, "time", "time", EFFORT_ORDER)
    return records, effort


def config_file(folder: Path, months: int, grid: Any, step: str, species: Path) -> Path:
    """The demo config on ``grid`` over ``months`` months, occurrences combined from GBIF."""
    from bfm.testing import demo_config

    end = pd.Timestamp(BENCH_START) + pd.offsets.MonthBegin(months) - pd.Timedelta(days=1)
    held_out = pd.Timestamp(BENCH_START) + pd.offsets.MonthBegin(max(1, months - 1))
    cfg = demo_config(grid=grid.to_dict(), species=str(species))
    cfg["time"].update(start=BENCH_START, end=f"{end:%Y-%m-%d}", step=step,
                       eval_start=f"{held_out:%Y-%m-%d}")  # fmt: skip
    cfg["sources"] = {"gbif": {"mode": "sample"}, "occurrences": {"mode": "combine"}}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def species_case(folder: Path, months: int, args: argparse.Namespace, grid: Any,
                 species: Path) -> dict[str, Any]:  # fmt: skip
    """Write one window and tile its month ``args.month`` in a child; the figures."""
    from bfm.sources.occurrences import records_in

    records, effort = write_window(folder, months, args.records_per_month, grid)
    period = f"{pd.Timestamp(BENCH_START) + pd.offsets.MonthBegin(args.month - 1):%Y-%m}"
    t0 = pd.Timestamp(f"{period}-01")
    read = records_in(records, t0, t0 + pd.offsets.MonthBegin(1))
    cfg = config_file(folder, months, grid, args.step, species)
    tile = folder / f"species_occurrence-{period}.nc"
    run = run_child([sys.executable, "-m", "bfm.cli", "tile", "species_occurrence", "--period",
                     period, "--input", str(records), str(effort), "--config", str(cfg),
                     "--out", str(tile)])  # fmt: skip
    tile.unlink(missing_ok=True)
    tile.with_name(tile.name + ".qc.json").unlink(missing_ok=True)
    return {"months": months, "period": period, "records": months * args.records_per_month,
            "mib_on_disk": records.stat().st_size / (1 << 20), "rows_read": read.rows_read,
            "records_of_month": len(read.table), "groups_read": read.groups_read,
            "groups_total": read.groups_total, **asdict(run)}  # fmt: skip


def atmospheric_case(workdir: Path, step: str) -> dict[str, Any]:
    """``benchmarks/tile_memory.py``'s month, tiled in a child: CPU and peak RSS."""
    from bfm.testing import ROOT

    script = ROOT / "benchmarks" / "tile_memory.py"
    spec = importlib.util.spec_from_file_location("bfm_tile_memory", script)
    if spec is None or spec.loader is None:
        raise ValueError(f"{script}: not found (bfm bench tiles runs from a checkout)")
    tm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tm)
    period = "2010-01"
    raw = workdir / f"atmospheric-{period}.nc"
    if not raw.exists():
        print(f"writing the sample ERA5 month {raw} (about a minute)", flush=True)
        tm.write_month(raw, period)
    cfg = tm.config_file(workdir, period, step)
    tile = workdir / f"era5_atmospheric-{period}.nc"
    run = run_child([sys.executable, "-m", "bfm.cli", "tile", "era5_atmospheric",
                     "--period", period, "--input", str(raw), "--config", str(cfg),
                     "--out", str(tile)])  # fmt: skip
    tile.unlink(missing_ok=True)
    tile.with_name(tile.name + ".qc.json").unlink(missing_ok=True)
    return {"period": period, "step": step, **asdict(run)}


def gbif_sample_case(workdir: Path, months: int, grid: Any, species: Path) -> dict[str, Any]:
    """``gbif.sample`` over ``months`` months in a child: its CPU time and peak RSS."""
    end = pd.Timestamp("2010-01-01") + pd.offsets.MonthBegin(months) - pd.Timedelta(days=1)
    out = workdir / f"gbif-{grid.n_lat}x{grid.n_lon}-{months}.zip"
    code = ("import sys; from bfm.sources import gbif; from bfm.species_list import read_species;"
            " from bfm.contracts.grid import Grid; import json;"
            " gbif.sample(sys.argv[1], read_species(sys.argv[2]), '2010-01-01', sys.argv[3],"
            " Grid(**json.loads(sys.argv[4])), seed=1)")  # fmt: skip
    run = run_child([sys.executable, "-c", code, str(out), str(species), f"{end:%Y-%m-%d}",
                     json.dumps(grid.to_dict())])  # fmt: skip
    from bfm.sources import gbif

    records = len(gbif.open(out))
    out.unlink(missing_ok=True)
    return {"months": months, "records": records, **asdict(run)}


def parse_grid(text: str) -> Any:
    """``europe`` (the study grid) or ``HxW`` cells of 0.25 deg from 48 N, 6 E (land)."""
    from bfm.contracts.grid import Grid
    from bfm.testing import EUROPE_GRID

    if text.lower() == "europe":
        return EUROPE_GRID
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise ValueError(f"--grid: {text!r} is not 'europe' or HxW (e.g. 25x41)") from err
    res = EUROPE_GRID.res
    if h < 2 or w < 2:
        raise ValueError(f"--grid: {text!r}: at least 2 x 2 cells")
    return Grid(lat_min=48.0, lat_max=48.0 + (h - 1) * res, lon_min=6.0,
                lon_max=6.0 + (w - 1) * res, res=res)  # fmt: skip


def report(small: dict[str, Any] | None, large: dict[str, Any] | None,
           atm: dict[str, Any] | None, gbif: list[dict[str, Any]] | None = None
           ) -> str:  # fmt: skip
    """The printed figures; ``small`` and ``large`` are None with ``--no-species``."""
    lines = [] if small is None or large is None else _species_lines(small, large)
    for g in gbif or []:
        lines.append(f"gbif sample {g['months']:>3} months: {g['records']:>10,} records, CPU "
                     f"{g['cpu_s']:.1f} s, peak RSS {g['peak_gib']:.2f} GiB")  # fmt: skip
    if len(gbif or []) == 2:
        assert gbif is not None
        ratio = gbif[1]["peak_gib"] / gbif[0]["peak_gib"]
        lines.append(f"gbif sample, {gbif[1]['months']} / {gbif[0]['months']} months: peak RSS "
                     f"{ratio:.2f}x (target ~1: one month of records in memory)")  # fmt: skip
    if atm is not None:
        lines.append(f"atmospheric tile {atm['period']} (step {atm['step']}): CPU "
                     f"{atm['cpu_s']:.1f} s, wall {atm['wall_s']:.1f} s, peak RSS "
                     f"{atm['peak_gib']:.2f} GiB (target <= 2 GiB: "
                     f"{'yes' if atm['peak_gib'] <= 2 else 'NO'})")  # fmt: skip
    return "\n".join(lines)


def _species_lines(small: dict[str, Any], large: dict[str, Any]) -> list[str]:
    lines = [f"{'window':>10} {'records':>11} {'MiB':>7} {'month':>8} {'rows read':>10} "
             f"{'groups':>9} {'CPU s':>7} {'peak RSS':>9}"]  # fmt: skip
    for c in (small, large):
        lines.append(f"{c['months']:>7} mo {c['records']:>11,} {c['mib_on_disk']:>7.1f} "
                     f"{c['period']:>8} {c['rows_read']:>10,} "
                     f"{c['groups_read']:>4}/{c['groups_total']:<4} {c['cpu_s']:>7.2f} "
                     f"{c['peak_gib']:>5.2f} GiB")  # fmt: skip
    ratios = {k: large[k] / small[k] for k in ("rows_read", "cpu_s", "peak_gib")}
    bounded = "yes" if max(small["peak_gib"], large["peak_gib"]) <= 2 else "NO"
    lines.append(f"species tile, {large['months']} / {small['months']} months: rows read "
                 f"{ratios['rows_read']:.2f}x, CPU {ratios['cpu_s']:.2f}x, peak RSS "
                 f"{ratios['peak_gib']:.2f}x (target ~1: a month's cost does not grow with "
                 f"the window); peak <= 2 GiB: {bounded}")  # fmt: skip
    return lines


def _run_tiles(args: argparse.Namespace) -> int:
    if not 1 <= args.month <= min(args.small_months, args.large_months):
        raise ValueError(f"--month {args.month}: must be a month of both windows "
                         f"(1..{min(args.small_months, args.large_months)})")  # fmt: skip
    grid = parse_grid(args.grid)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bfm-bench-tiles-"))
    workdir.mkdir(parents=True, exist_ok=True)
    species = species_csv(workdir / "species.csv")
    tag = f"{grid.n_lat}x{grid.n_lon}-{args.records_per_month}"
    small, large = (None, None) if args.no_species else (
        species_case(workdir / f"species-{tag}-{m}", m, args, grid, species)
        for m in (args.small_months, args.large_months))  # fmt: skip
    gbif = [gbif_sample_case(workdir, m, grid, species) for m in args.gbif_sample_months or []]
    atm = None if args.no_atmospheric else atmospheric_case(workdir, args.step)
    print(f"grid {grid.n_lat} x {grid.n_lon}, step {args.step}, {SPECIES} species, "
          f"{args.records_per_month:,} records per month; workdir {workdir}")  # fmt: skip
    print(report(small, large, atm, gbif))
    if args.json:
        figures = {"grid": [grid.n_lat, grid.n_lon], "step": args.step,
                   "species": None if args.no_species else [small, large],
                   "gbif_sample": gbif,
                   "atmospheric": atm}  # fmt: skip
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


def register(actions: argparse._SubParsersAction) -> None:
    """Add ``tiles`` to the ``bfm bench`` subcommands."""
    t = add_command(actions, "tiles", __doc__, "CPU time and peak RSS of a species tile (small "
                    "vs large window) and of an atmospheric tile")  # fmt: skip
    t.add_argument("--grid", default="europe", help="europe (153 x 321, default) or HxW")
    t.add_argument("--step", default="6h", help="model step: 6h (default), 1D, 1MS")
    t.add_argument("--records-per-month", type=int, default=40_000,
                   help="records per month of the synthetic table (default 40000: ~10 M "
                   "over 21 years)")  # fmt: skip
    t.add_argument("--small-months", type=int, default=12, help="small window (default 12)")
    t.add_argument("--large-months", type=int, default=120, help="large window (default 120)")
    t.add_argument("--month", type=int, default=6, help="the month tiled (n-th; default 6)")
    t.add_argument("--no-atmospheric", action="store_true", help="skip the atmospheric tile")
    t.add_argument("--no-species", action="store_true",
                   help="skip the species tile (small and large window)")  # fmt: skip
    t.add_argument(
        "--gbif-sample-months",
        type=int,
        nargs=2,
        metavar=("A", "B"),
        help="also time gbif.sample over A and B months (default: not run)",
    )
    t.add_argument("--workdir", help="where the tables go (reused; default: a temporary one)")
    t.add_argument("--json", default=None, help="also write the figures to this JSON file")
    t.set_defaults(func=_run_tiles)
