"""bfm bench model: what one training step of the model costs, and whether the data loader
keeps up with it.

For each preset and backbone, on the full study layout (every catalogue group, 13 pressure
levels, 21 species, a species table with 64-wide embeddings per medium) and a grid of
``--grid`` cells (default Europe at 0.25 deg: 153 x 321), a fresh model takes ``--steps``
timed forward + backward + AdamW steps after one warm-up step, on random inputs with 10 %
of the values marked missing. Reported per case: parameters, seconds per step (median),
samples per second, peak memory and, from ``torch.utils.flop_counter`` over one step, the
model FLOPs per step and the achieved TFLOP/s; with a known peak (``--peak-tflops``, or the
bf16 dense peak of an H100/H200/A100 found by name) the model FLOPs utilisation (MFU).

Peak memory: on a GPU ``torch.cuda.max_memory_allocated``; on the CPU the peak resident
memory of a child process that runs only that case (``ru_maxrss``), the case's own share
being the peak minus the child's resident memory before the model was built.

Then the loader: ``--loader-batches`` mock batches of every group at the grid are written to
a temporary folder (HDF5, as ``bfm batch`` writes them) with their statistics, and the
training loader (``bfm.training.data.MicroBatches``, as ``bfm train`` runs it: ``--workers``
worker processes; on CUDA pinned and copied onto the card) reads them for two passes:
samples per second beside the fastest case's consumption.

Examples:

    bfm bench model                                    # small and medium, both backbones, CPU
    bfm bench model --presets tiny --grid 25x41 --steps 3
    bfm bench model --device cuda --bf16 --compile --presets medium --batch-size 4
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import multiprocessing
import os
import re
import resource
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bfm.cliutil import add_command

log = logging.getLogger(__name__)

SPECIES = 21  # the study's endangered European species
TABLE_DIMS = (64, 64, 64, 64)  # image, audio, eDNA, text embedding widths of the bench table
# bf16 dense tensor-core peaks (TFLOP/s), by a name fragment of torch.cuda.get_device_name().
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0}


OVERVIEW = """bfm bench: the pipeline's performance figures, each as ratios measured in the same run
(against dd, against a shorter window, against one worker), so that anyone can rerun them.

    bfm bench dag       snakemake -n of the 2000-2020 study at 1D and 6h; growth with the window
    bfm bench tiles     species and atmospheric tiles: CPU, peak memory, rows read per month
    bfm bench batches   a month of batches: CPU per batch, MB, memory, against dd; projection
    bfm bench loader    the training loader: samples/s for 0, 1, 2 workers; compressions
    bfm bench model     a training step: seconds, memory, FLOPs (MFU on a GPU)
    bfm bench rules     each rule's measured memory and runtime beside the Snellius profile's

bfm bench BENCH --help explains each one."""


@dataclass(frozen=True)
class Case:
    preset: str
    backbone: str
    h: int
    w: int
    steps: int
    device: str
    bf16: bool
    compile: bool
    batch_size: int
    threads: int | None
    checkpointing: bool = False


def study_layout() -> Any:
    """Every catalogue group, the default pressure levels, ``SPECIES`` species."""
    from bfm.contracts import catalogue
    from bfm.contracts.catalogue import DEFAULT_LEVELS
    from bfm.contracts.layout import Layout

    return Layout(DEFAULT_LEVELS, tuple(range(1, SPECIES + 1)), catalogue.groups())


def measure_child(cmd: list[str], log: Path) -> dict[str, float]:
    """Wall seconds, CPU seconds and peak resident memory (bytes) of ``cmd``, a child of its
    own (``os.wait4``: not mixed with other children), its output in ``log``. For a bfm
    command the memory is the one it logs at its end (VmHWM: a forked child's ru_maxrss would
    count this process's pages too); for another command its ru_maxrss."""
    began = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    text = log.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise ValueError(f"{' '.join(cmd[:4])} ... failed:\n{text[-2000:]}")
    peak = re.findall(r"peak memory ([0-9.]+) GiB", text)
    rss = float(peak[-1]) * 2**30 if peak else float(usage.ru_maxrss * 1024)
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss": rss}


def _peak_rss() -> int:
    """Peak resident memory of this process, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def run_case(case: Case) -> dict[str, Any]:
    """Time ``case`` in this process; the figures as a dict."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bfm.model import BFM, build_config, count_parameters
    from bfm.model.backbone import set_activation_checkpointing
    from bfm.model.loss import masked_loss
    from bfm.testing import mock_model_input, mock_species_table

    if case.threads:
        torch.set_num_threads(case.threads)
    device = torch.device(case.device)
    layout = study_layout()
    table = mock_species_table(layout.species, dims=TABLE_DIMS)
    base_rss = _current_rss()
    torch.manual_seed(0)
    cfg = build_config(case.preset, layout, backbone=case.backbone, species_dims=TABLE_DIMS)
    model = BFM(cfg, None, table).to(device)
    set_activation_checkpointing(model, case.checkpointing)
    step_model = torch.compile(model) if case.compile else model
    x = mock_model_input(layout, case.batch_size, case.h, case.w, lat_max=72.0, lon_min=-30.0,
                         res=0.25).to(device, torch.float32)  # fmt: skip
    targets = {g: torch.zeros_like(x.inputs[g][:, 1]) for g in layout.dynamic}
    masks = {g: torch.ones_like(t, dtype=torch.bool) for g, t in targets.items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cuda = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=case.bf16):
            out = step_model(x)
            loss = masked_loss(out, targets, masks, layout, x.lat)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(case.steps + 1):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(device)
        if i:  # the first step warms up (allocations, compilation)
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if cuda else _peak_rss()
    counter = FlopCounterMode(display=False)
    with counter:  # one more step, uncompiled, to count the model FLOPs
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=case.bf16):
            out = model(x)
            loss = masked_loss(out, targets, masks, layout, x.lat)
        loss.backward()
    opt.zero_grad(set_to_none=True)
    seconds = statistics.median(times)
    flops = int(counter.get_total_flops())
    return {
        **asdict(case),
        "parameters": count_parameters(model),
        "seconds_per_step": seconds,
        "samples_per_s": case.batch_size / seconds,
        "peak_memory_bytes": int(peak),
        "case_memory_bytes": int(peak) if cuda else int(peak - base_rss),
        "flops_per_step": flops,
        "tflops_per_s": flops / seconds / 1e12,
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
    }


def _child(case: Case, queue: Any) -> None:
    try:
        queue.put(run_case(case))
    except BaseException as err:  # reported by the parent, which names the case
        queue.put({"error": f"{type(err).__name__}: {err}"})


def run_isolated(case: Case) -> dict[str, Any]:
    """``run_case`` in a fresh child process, so its peak memory is the case's alone."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(case, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        raise RuntimeError(f"bench {case.preset}/{case.backbone}: {result['error']}")
    return dict(result)


def loader_throughput(h: int, w: int, n_batches: int, workers: int, threads: int | None,
                      device: str = "cpu") -> dict[str, Any]:  # fmt: skip
    """Samples per second of the training loader (``bfm.bench_loader.loader_rate``: the
    ``MicroBatches`` of ``bfm train``, pinned and copied to ``device`` on CUDA) over two
    passes of ``n_batches`` mock study batches."""
    import torch

    from bfm.bench_loader import loader_rate
    from bfm.contracts import catalogue
    from bfm.contracts.catalogue import DEFAULT_LEVELS
    from bfm.contracts.grid import Grid
    from bfm.testing import random_values, write_sequence, write_stats

    if threads:
        torch.set_num_threads(threads)
    grid = Grid(lat_min=72.0 - 0.25 * (h - 1), lat_max=72.0, lon_min=-30.0,
                lon_max=-30.0 + 0.25 * (w - 1), res=0.25)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bfm-bench-") as tmp:
        started = time.perf_counter()
        paths = write_sequence(Path(tmp), n_batches, grid=grid, levels=DEFAULT_LEVELS,
                               species=tuple(range(1, SPECIES + 1)), value=random_values(0),
                               groups=catalogue.groups())  # fmt: skip
        write_stats(paths, Path(tmp) / "stats.json")
        written = time.perf_counter() - started
        rate = loader_rate(list(paths), workers, passes=2, prefetch=2, device=device)
        size = sum(p.stat().st_size for p in paths) / len(paths)
    return {
        "workers": workers,
        "device": device,
        "samples": rate["samples"],
        "samples_per_s": rate["samples_per_s"],
        "cpu_s_per_sample": rate["cpu_s_per_sample"],
        "batch_file_bytes": int(size),
        "write_seconds_per_batch": written / n_batches,
    }


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _run_model(args: argparse.Namespace) -> int:
    try:
        h, w = (int(v) for v in args.grid.lower().split("x"))
    except ValueError:
        raise ValueError(f"--grid: expected HxW (e.g. 153x321), got {args.grid!r}") from None
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible to PyTorch")
    results = []
    checkpointing = {"off": [False], "on": [True], "both": [False, True]}
    cases = itertools.product(args.presets, args.backbones,
                              checkpointing[args.activation_checkpointing])  # fmt: skip
    for preset, backbone, recompute in cases:
        case = Case(preset, backbone, h, w, args.steps, args.device, args.bf16,
                    args.compile, args.batch_size, args.threads, recompute)  # fmt: skip
        log.info("bench %s/%s at %dx%d on %s ...", preset, backbone, h, w, args.device)
        r = run_case(case) if args.device.startswith("cuda") else run_isolated(case)
        peak = args.peak_tflops or next(
            (v for k, v in PEAK_TFLOPS.items() if k in r["device_name"]), None
        )
        r["mfu"] = r["tflops_per_s"] / peak if peak else None
        results.append(r)
        mfu = f"  MFU {100 * r['mfu']:.1f} %" if r["mfu"] is not None else ""
        print(
            f"{preset:7s} {backbone:7s}{' ckpt' if recompute else ''} "
            f"{r['parameters'] / 1e6:6.2f}M  {h}x{w} "
            f"b{args.batch_size} {r['device_name']}: {r['seconds_per_step']:.3f} s/step, "
            f"{r['samples_per_s']:.2f} samples/s, peak {_gib(r['peak_memory_bytes'])} "
            f"(model {_gib(r['case_memory_bytes'])}), "
            f"{r['flops_per_step'] / 1e9:.1f} GFLOP/step, {r['tflops_per_s']:.3f} TFLOP/s"
            f"{mfu}",
            flush=True,
        )
    if args.activation_checkpointing == "both":
        print_checkpointing(results)
    report: dict[str, Any] = {"model": results}
    if args.loader_batches:
        loader = loader_throughput(
            h, w, args.loader_batches, args.workers, args.threads, args.device
        )
        need = max(r["samples_per_s"] for r in results) if results else 0.0
        loader["model_samples_per_s"] = need
        report["loader"] = loader
        verdict = "keeps up" if loader["samples_per_s"] >= need else "is the bottleneck"
        print(
            f"loader  {args.workers} workers: {loader['samples_per_s']:.2f} samples/s "
            f"({loader['batch_file_bytes'] / 2**20:.0f} MiB per batch file) beside the "
            f"fastest case's {need:.2f} samples/s: the loader {verdict}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def print_checkpointing(results: list[dict[str, Any]]) -> None:
    """Per preset and backbone: the model's memory and step time with activation
    checkpointing against without (``--activation-checkpointing both``)."""
    cases = {(r["preset"], r["backbone"], r["checkpointing"]): r for r in results}
    for (preset, backbone, on), r in cases.items():
        off = cases.get((preset, backbone, False))
        if not on or off is None:
            continue
        memory = r["case_memory_bytes"] / max(off["case_memory_bytes"], 1)
        step = r["seconds_per_step"] / off["seconds_per_step"]
        print(f"activation checkpointing, {preset} {backbone}: model memory "
              f"{_gib(off['case_memory_bytes'])} -> {_gib(r['case_memory_bytes'])} "
              f"({memory:.2f}x), step time {step:.2f}x", flush=True)  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "bench", OVERVIEW, "benchmarks: dag, tiles, batches, loader, model, rules")
    actions = p.add_subparsers(title="benchmarks", metavar="BENCH", required=True)
    m = add_command(
        actions,
        "model",
        __doc__,
        "forward+backward time, peak memory, FLOPs of the presets; loader samples/s",
    )
    m.add_argument(
        "--presets",
        nargs="+",
        default=["small", "medium"],
        choices=["tiny", "small", "medium"],
        help="default: small medium",
    )
    m.add_argument(
        "--backbones",
        nargs="+",
        default=["swin3d", "mvit"],
        choices=["swin3d", "mvit"],
        help="default: both",
    )
    m.add_argument("--grid", default="153x321", help="HxW cells (default Europe: 153x321)")
    m.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up")
    m.add_argument("--batch-size", type=int, default=1, help="samples per step (default 1)")
    m.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    m.add_argument("--bf16", action="store_true", help="bf16 autocast (as training on GPUs)")
    m.add_argument("--compile", action="store_true", help="torch.compile the model")
    m.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    m.add_argument(
        "--activation-checkpointing",
        choices=["off", "on", "both"],
        default="off",
        help="recompute the backbone's activations (train.activation_checkpointing); both: "
        "each case with and without, and the ratios of memory and step time (default off)",
    )
    m.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's peak TFLOP/s for the MFU (default: known GPUs by name)",
    )
    m.add_argument(
        "--loader-batches",
        type=int,
        default=4,
        help="mock batches for the loader benchmark (0: skip it; default 4)",
    )
    m.add_argument("--workers", type=int, default=2, help="loader worker processes (default 2)")
    m.add_argument("--json", default=None, help="also write the figures to this JSON file")
    m.set_defaults(func=_run_model)  # fmt: skip
    # The other benchmarks, each in a module of its own (one figure set each).
    from bfm import bench_batches, bench_dag, bench_loader, bench_rules, bench_tiles

    for module in (bench_dag, bench_tiles, bench_batches, bench_loader, bench_rules):
        module.register(actions)
