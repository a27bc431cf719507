"""bfm bench rules: what each rule of the workflow costs, beside what the Snellius profile asks.

Every rule that runs on a compute node writes Snakemake's benchmark of each job,
``results/benchmarks/<rule>/<wildcards>.tsv`` (where its log is, ``logs/<rule>/...``): wall
seconds ``s``, ``max_rss`` (MiB), ``cpu_time`` (s) of the job's whole process tree. Snakemake
samples the memory every 0.5 s for the first 15 s, then every 30 s: a short peak between two
samples is missed, and the CPU time stops at the last sample. The ``bfm`` command of each job
logs its own peak (VmHWM, exact) and CPU time as its last line, so the memory and the CPU time
here are the larger of the two.

``--from DIR`` summarises such a folder (after a run: ``results/benchmarks``): per rule the
jobs, the max and median wall seconds, the max memory and CPU seconds, and beside them the
profile's ``mem_mb`` and ``runtime`` of that rule at attempt 1 (``--profile``, read as
``snakemake --profile`` reads it, for the training layout of ``--configfile``) with the
headroom, profile value / measured max. A rule is flagged when its memory headroom is below
1.5 or its runtime headroom below 2.

Without ``--from``, a small study is run first, in ``--workdir`` (a temporary folder by
default): ``--configfile`` (default config/europe.yaml: its grid, levels, species, sources'
options) with every source in sample mode (as ``bfm bench dag``), the window cut to
``--months`` months from ``--start`` (the last month held out), at ``--step``, without
ablations, training ``--train-steps`` steps of ``--preset`` (default: the config's) on the
CPU (config/deepspeed/cpu.json, one rank, no loader workers), through ``snakemake --cores
--cores`` with a hard ``--timeout``; then it is summarised as above, and the costs that
scale are given per unit (a month of batches per batch, a tile per month, combine per
million records, training per step) with the study's count of units.

Examples:

    bfm bench rules --from results/benchmarks          # after a run, here or on Snellius
    bfm bench rules --preset tiny --timeout 3600       # the study, Europe, two months at 1D
    bfm bench rules --step 6h --workdir /tmp/rules     # 6h, the results kept there
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from bfm.cliutil import add_command

# Headroom below which a rule is flagged: memory peaks vary little from job to job (x1.5
# covers a denser month), wall time varies with the node's other load and the file system.
MIN_MEM_HEADROOM = 1.5
MIN_RUNTIME_HEADROOM = 2.0
# The columns of Snakemake's benchmark TSV that are read (snakemake/benchmark.py).
TSV_COLUMNS = ("s", "max_rss", "cpu_time")
_BFM_COST = re.compile(r"bfm [\w-]+: ([0-9.]+) s, ([0-9.]+) CPU s, peak memory ([0-9.]+) GiB")


@dataclass(frozen=True)
class Job:
    """One job's measured cost: a row of its benchmark file (and its log's last cost line)."""

    rule: str
    name: str  # the file's path below the rule's folder, without .tsv: its wildcards
    seconds: float
    rss_mib: float | None  # max of the benchmark's max_rss and the log's peak; None: neither
    cpu_s: float | None


@dataclass(frozen=True)
class RuleCost:
    """The measured cost of a rule's jobs beside the profile's request for one job."""

    rule: str
    jobs: int
    wall_max: float
    wall_median: float
    rss_max_mib: float | None
    cpu_max: float | None
    cpu_total: float | None
    mem_mb: float | None  # the profile's, attempt 1; None: the rule has no entry to compare
    runtime_min: float | None

    @property
    def mem_headroom(self) -> float | None:
        if self.mem_mb is None or not self.rss_max_mib:
            return None
        return self.mem_mb / self.rss_max_mib

    @property
    def runtime_headroom(self) -> float | None:
        if self.runtime_min is None or not self.wall_max:
            return None
        return self.runtime_min * 60 / self.wall_max

    @property
    def flags(self) -> list[str]:
        out = []
        if self.mem_headroom is not None and self.mem_headroom < MIN_MEM_HEADROOM:
            out.append(f"memory headroom {self.mem_headroom:.2f} < {MIN_MEM_HEADROOM}")
        if self.runtime_headroom is not None and self.runtime_headroom < MIN_RUNTIME_HEADROOM:
            out.append(f"runtime headroom {self.runtime_headroom:.2f} < {MIN_RUNTIME_HEADROOM}")
        return out

    def to_dict(self) -> dict[str, Any]:
        """The fields, the headrooms and the flags (the JSON report's entry)."""
        return {**asdict(self), "mem_headroom": self.mem_headroom,
                "runtime_headroom": self.runtime_headroom, "flags": self.flags}  # fmt: skip


def _number(value: str, path: Path, column: str) -> float | None:
    """A benchmark value: NA (not sampled) and - (None) are missing."""
    if value in ("NA", "-", ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{path}: column {column!r}: expected a number, got {value!r}") from None


def read_benchmark(path: Path) -> list[dict[str, float | None]]:
    """The rows (one per --benchmark-repeats) of a Snakemake benchmark TSV."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path}: no benchmark row (expected a header and a row of values)")
    missing = [c for c in TSV_COLUMNS if c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: not a Snakemake benchmark file, columns {missing} missing")
    return [{c: _number(r[c] or "", path, c) for c in TSV_COLUMNS} for r in rows]


def log_cost(path: Path) -> tuple[float, float, float] | None:
    """Wall s, CPU s and peak memory (MiB) from the last cost line a bfm command logged."""
    if not path.is_file():
        return None
    found = _BFM_COST.findall(path.read_text(errors="replace"))
    if not found:
        return None
    wall, cpu, gib = (float(v) for v in found[-1])
    return wall, cpu, gib * 1024


def collect(folder: Path, logs: Path | None = None) -> list[Job]:
    """Every job's cost under ``folder`` (``<rule>.tsv`` or ``<rule>/<wildcards>.tsv``); the
    log of ``folder/X.tsv`` is ``logs/X.log``, as the workflow names both."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--from: {folder} is not a folder of benchmark files")
    jobs = []
    for path in sorted(folder.rglob("*.tsv")):
        rel = path.relative_to(folder).with_suffix("")
        rule, name = rel.parts[0], "/".join(rel.parts[1:]) or rel.parts[0]
        logged = log_cost(logs / f"{rel}.log") if logs else None  # names hold dots
        for row in read_benchmark(path):
            seconds = row["s"]
            if seconds is None:
                raise ValueError(f"{path}: column 's' (wall seconds) is missing")
            rss = [v for v in (row["max_rss"], logged[2] if logged else None) if v is not None]
            # Snakemake's CPU time ends at its last sample (up to 30 s before the job's end):
            # bfm's own is then the larger, though only its process's, not its children's.
            cpu = _max([row["cpu_time"], logged[1] if logged else None])
            jobs.append(Job(rule, name, seconds, max(rss) if rss else None, cpu))
    if not jobs:
        raise ValueError(f"--from: {folder} holds no benchmark file (*.tsv)")
    return jobs


def _max(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def summarise(jobs: Sequence[Job], profile: dict[str, tuple[float, float]]) -> list[RuleCost]:
    """Per rule, its jobs' cost beside the profile's (mem_mb, runtime minutes)."""
    by_rule: dict[str, list[Job]] = {}
    for job in jobs:
        by_rule.setdefault(job.rule, []).append(job)
    out = []
    for rule, js in sorted(by_rule.items()):
        walls = [j.seconds for j in js]
        cpus = [j.cpu_s for j in js if j.cpu_s is not None]
        mem, runtime = profile.get(rule, (None, None))
        out.append(
            RuleCost(
                rule,
                len(js),
                max(walls),
                statistics.median(walls),
                _max(j.rss_mib for j in js),
                _max(cpus),
                sum(cpus) if cpus else None,
                mem,
                runtime,
            )
        )
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(value: float | None) -> str:
    """A headroom: two significant digits below 10, whole numbers above."""
    return "-" if value is None else f"{value:.2g}" if value < 10 else f"{value:.0f}"


def format_table(costs: Sequence[RuleCost]) -> str:
    """The summary as an aligned text table, flagged rules marked with !."""
    head = (
        "rule",
        "jobs",
        "wall max s",
        "median s",
        "RSS MiB",
        "CPU max s",
        "CPU sum s",
        "mem_mb",
        "runtime",
        "mem x",
        "time x",
        "",
    )
    rows = [head]
    for c in costs:
        rows.append(
            (
                c.rule,
                str(c.jobs),
                f"{c.wall_max:.1f}",
                f"{c.wall_median:.1f}",
                _fmt(c.rss_max_mib, ".0f"),
                _fmt(c.cpu_max, ".1f"),
                _fmt(c.cpu_total, ".1f"),
                _fmt(c.mem_mb, ".0f"),
                "-" if c.runtime_min is None else f"{c.runtime_min:g}m",
                _ratio(c.mem_headroom),
                _ratio(c.runtime_headroom),
                "! " + "; ".join(c.flags) if c.flags else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def profile_resources(
    profile: Path, configfiles: Sequence[str], rules: Iterable[str]
) -> dict[str, tuple[float, float]]:
    """mem_mb and runtime (minutes) of one job of each rule at attempt 1, as ``snakemake
    --profile PROFILE --configfile ...`` computes them (site values the profile requires but
    that do not change a job's size are given placeholders where unset)."""
    from snakemake.cli import parse_args  # type: ignore[import-untyped]

    argv = ["--profile", str(profile)] + (["--configfile", *configfiles] if configfiles else [])
    saved_argv, saved_env = sys.argv, dict(os.environ)
    os.environ.setdefault("BFM_SLURM_ACCOUNT", "bench")
    os.environ.setdefault("BFM_CONDA_PREFIX", tempfile.gettempdir())
    sys.argv = ["snakemake", *argv]  # the profile reads the training layout from the call
    try:
        args = parse_args(argv)[1]
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    out = {}
    for rule in rules:
        threads = args.set_threads[rule].value if rule in (args.set_threads or {}) else 1
        res = _evaluate(args.default_resources, rule, threads)
        res.update(_evaluate((args.set_resources or {}).get(rule, {}), rule, threads))
        out[rule] = (float(res["mem_mb"]), float(res["runtime"]))
    return out


def _evaluate(resources: Any, rule: str, threads: int) -> dict[str, Any]:
    return {
        name: res.evaluate(
            wildcards={}, input=[], attempt=1, threads=threads, rulename=rule, async_run=None
        ).value
        for name, res in resources.items()
    }


def study_config(
    base: Path, step: str, start: str, months: int, preset: str | None, train_steps: int
) -> dict[str, Any]:
    """``base`` with every source sampled (``bfm bench dag``'s), ``months`` months from
    ``start`` at ``step``, the last month held out, no ablations, a CPU training of
    ``train_steps`` steps on one rank without loader workers."""
    from bfm import bench_dag

    if months < 2:
        raise ValueError(f"--months {months}: need 2 or more (the last one is held out)")
    cfg = bench_dag.study_config(base, step, None)
    t0 = pd.Timestamp(start)
    end = t0 + pd.DateOffset(months=months) - pd.Timedelta(days=1)
    held_out = t0 + pd.DateOffset(months=months - 1)
    cfg["time"] = {
        "start": str(t0.date()),
        "end": str(end.date()),
        "step": step,
        "eval_start": str(held_out.date()),
    }
    if preset:
        cfg["model"]["preset"] = preset
    cfg["train"].update(
        deepspeed="config/deepspeed/cpu.json",
        steps=train_steps,
        warmup_steps=1,
        checkpoint_every=train_steps,
        nodes=1,
        gpus_per_node=1,
        grad_accum=1,
        loader_workers=0,
    )
    cfg.setdefault("evaluation", {})["ablations"] = []
    return cfg


def run_study(
    cfg: dict[str, Any], snakefile: Path, workdir: Path, cores: int, timeout: float
) -> tuple[int, float]:
    """``snakemake --cores`` of ``cfg`` in ``workdir`` (its log: snakemake.log there), killed
    with its jobs after ``timeout`` s; its exit code (-9: killed) and wall seconds."""
    from bfm import bench_dag

    config = bench_dag.write_workdir(cfg, snakefile, workdir)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        str(cores),
        "--keep-going",
        "-s",
        str(snakefile),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
    ]
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # bfm
    env.setdefault("DS_ACCELERATOR", "cpu")  # the study trains with config/deepspeed/cpu.json
    began = time.perf_counter()
    with open(workdir / "snakemake.log", "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # snakemake and every job it started
            proc.wait()
            code = -9
    return code, time.perf_counter() - began


@dataclass(frozen=True)
class Unit:
    """What a rule's cost scales with: ``name``, how many a job of the run had, how many the
    whole study has."""

    name: str
    per_job: float
    study: float


def units(workdir: Path, run_cfg: dict[str, Any], study_cfg: dict[str, Any]) -> dict[str, Unit]:
    """The units of the rules whose cost scales, counted in the run's outputs and in the
    study's plan (``study_cfg``: the full window)."""
    from bfm.workflow import Plan

    run, study = Plan(run_cfg), Plan(study_cfg)
    out: dict[str, Unit] = {}
    months = run.batch_months()
    if months:
        per_month = len(run.batch_names()) / len(months)
        out["batches"] = Unit("batch", per_month, len(study.batch_names()))
    train = run.train_periods()
    if train:
        n = len(run.batch_names("train")) / len(train)
        out["stats_partial"] = Unit("training batch", n, len(study.batch_names("train")))
    # Not climatology: most of its cost is per pass (a channel block smoothed over every day of
    # the year), whatever the window; reading the batches is the part that grows.
    out["species_glm"] = Unit(
        "training batch", len(run.batch_names("train")), len(study.batch_names("train"))
    )
    out["evaluate"] = Unit(
        "held-out batch", len(run.batch_names("eval")), len(study.batch_names("eval"))
    )
    out["train"] = Unit("step", run_cfg["train"]["steps"], study_cfg["train"]["steps"])
    out["tile"] = Unit("month", 1, sum(len(study.tile_periods(m)) for m in study.modalities))
    records = workdir / "results/raw/occurrences/records.parquet"
    if records.is_file():
        import pyarrow.parquet as pq

        n = pq.ParquetFile(records).metadata.num_rows / 1e6
        out["combine"] = Unit("million records", n, math.nan)  # the study's: its downloads
    return out


def format_units(costs: Sequence[RuleCost], found: dict[str, Unit]) -> str:
    """Per unit: the mean wall and CPU seconds of a rule's jobs over the units one had, and
    what the study's units would take at that rate (CPU hours; this machine's cores)."""
    lines = [
        "per unit (a mean job over its units, linear from one size: fixed costs count as per "
        "unit, an upper bound; the study's total at this machine's speed):"
    ]
    for c in costs:
        u = found.get(c.rule)
        if u is None or not u.per_job or c.cpu_total is None:
            continue
        wall = c.wall_median / u.per_job
        cpu = c.cpu_total / c.jobs / u.per_job
        total = (
            ""
            if math.isnan(u.study)
            else f"; study: {u.study:,.0f} = {cpu * u.study / 3600:,.1f} CPU h"
        )
        lines.append(
            f"  {c.rule}: {u.per_job:g} x {u.name} a job, {wall:.2f} s wall, "
            f"{cpu:.2f} CPU s per {u.name}{total}"
        )
    return "\n".join(lines)


def _summary(folder: Path, logs: Path | None, args: argparse.Namespace) -> list[RuleCost]:
    jobs = collect(folder, logs)
    rules = sorted({j.rule for j in jobs})
    profile = profile_resources(Path(args.profile), args.profile_configfile, rules)
    costs = summarise(jobs, profile)
    print(
        f"{folder}: {len(jobs)} jobs of {len(rules)} rules; the profile {args.profile} "
        f"(attempt 1, --configfile {' '.join(args.profile_configfile)}); headroom = profile / "
        f"measured max, flagged below x{MIN_MEM_HEADROOM} memory, x{MIN_RUNTIME_HEADROOM} "
        "runtime"
    )
    print(format_table(costs))
    flagged = [c.rule for c in costs if c.flags]
    print(f"flagged: {', '.join(flagged)}" if flagged else "flagged: none")
    return costs


def _run(args: argparse.Namespace) -> int:
    if args.source:
        folder = Path(args.source)
        logs = Path(args.logs) if args.logs else folder.resolve().parent.parent / "logs"
        costs = _summary(folder, logs if logs.is_dir() else None, args)
        report: dict[str, Any] = {"costs": [c.to_dict() for c in costs]}
    else:
        snakefile, base = Path(args.snakefile), Path(args.configfile)
        for flag, path in (("--snakefile", snakefile), ("--configfile", base)):
            if not path.is_file():
                raise FileNotFoundError(f"{flag}: {path} does not exist (run from the checkout)")
        cfg = study_config(base, args.step, args.start, args.months, args.preset, args.train_steps)
        with contextlib.ExitStack() as stack:
            workdir = (
                Path(args.workdir)
                if args.workdir
                else Path(
                    stack.enter_context(tempfile.TemporaryDirectory(prefix="bfm-bench-rules-"))
                )
            )
            code, wall = run_study(cfg, snakefile, workdir, args.cores, args.timeout)
            t = cfg["time"]
            print(
                f"the study at {t['step']}, {t['start']}..{t['end']} (held out from "
                f"{t['eval_start']}), preset {cfg['model']['preset']}, "
                f"{cfg['train']['steps']} training steps: snakemake --cores {args.cores} "
                f"exit {code} after {wall:.0f} s ({workdir / 'snakemake.log'})"
            )
            costs = _summary(workdir / "results/benchmarks", workdir / "logs", args)
            full = yaml.safe_load(base.read_text())
            full["time"]["step"] = args.step
            found = units(workdir, cfg, full)
            print(format_units(costs, found))
            report = {
                "costs": [c.to_dict() for c in costs],
                "exit": code,
                "wall": wall,
                "config": cfg,
                "units": {k: asdict(v) for k, v in found.items()},
            }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str) + "\n")
    return 0


def register(actions: argparse._SubParsersAction) -> None:
    p = add_command(
        actions, "rules", __doc__, "each rule's measured memory and runtime beside the profile's"
    )
    p.add_argument(
        "--from",
        dest="source",
        default=None,
        metavar="DIR",
        help="summarise this results/benchmarks folder (no study is run)",
    )
    p.add_argument(
        "--logs", default=None, help="the jobs' logs (default: logs/ beside results/ of --from)"
    )
    p.add_argument("--profile", default="profiles/snellius", help="default profiles/snellius")
    p.add_argument(
        "--profile-configfile",
        nargs="+",
        default=["config/europe.yaml"],
        help="the config the profile sizes training for (default config/europe.yaml)",
    )
    p.add_argument(
        "--configfile",
        default="config/europe.yaml",
        help="the study run (default config/europe.yaml)",
    )
    p.add_argument("--snakefile", default="workflow/Snakefile", help="default workflow/Snakefile")
    p.add_argument("--step", default="1D", help="the study's step: 1D (default) or 6h")
    p.add_argument("--start", default="2000-01-01", help="first day (default 2000-01-01)")
    p.add_argument("--months", type=int, default=2, help="months, the last held out (default 2)")
    p.add_argument(
        "--preset",
        default=None,
        choices=["tiny", "small", "medium"],
        help="the model (default: the config's; small needs ~15 GB on the CPU)",
    )
    p.add_argument("--train-steps", type=int, default=2, help="training steps (default 2)")
    p.add_argument("--cores", type=int, default=2, help="snakemake --cores (default 2)")
    p.add_argument("--timeout", type=float, default=3600, help="kill the run after (s; 3600)")
    p.add_argument(
        "--workdir",
        default=None,
        help="run the study in DIR and keep it (default: a temporary folder)",
    )
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.set_defaults(func=_run)
