"""bfm bench loader: how fast the training loader turns batch files into samples, and which
compression the batches should have.

At a grid of ``--grid`` cells (default Europe at 0.25 deg: 153 x 321) with every catalogue
group, 13 pressure levels and 21 species (the study's layout), ``--batches`` consecutive mock
batches (``bfm.testing.mock_batch``, the mock data of ``bfm bench model``'s loader: seeded
normal fields, Poisson counts; ``--values smooth`` for smooth fields) are written to a
temporary folder once per compression (``bfm.contracts.batch.Compression``). Per compression:

- write: CPU seconds per batch (``write_batch``, atomic, with checksums);
- read: CPU seconds to read and decode a whole batch (``read_batch``; median), and a training
  pair as the loader reads it (``bfm.training.fill.read_pair``: the input's groups, the
  target's dynamic groups at its second time, decoded into the sample's arrays) beside both
  files read whole, as before;
- MB per batch on disk, the compression ratio and the decoded MB per CPU second.

CPU seconds of this process (``time.process_time``), not wall time, so that other work on a
shared machine does not blur the comparison. Files are read from the page cache: the
figures are encoding and decoding costs, not disk speeds. Then, with the default compression
(``bfm.contracts.batch.COMPRESSION``), the training loader (``bfm.training.data.MicroBatches``,
one sample per micro-batch, the order of ``bfm train``) runs ``--passes`` passes over the
pairs for each of ``--workers`` (0 = in the calling process): samples per second (wall
time; the first micro-batch, which starts the workers, is not timed), per worker, the ratio to
1 worker, and the CPU seconds per sample of this process and its workers together (what a
sample costs a core, whatever else the machine runs), then the workers' (reading) and the
training process's (normalising and masking, as ``bfm train`` does on its device) apart.
With fewer cores than workers + 1 the workers share the cores: read the ratios with the CPU
count (printed) in mind. A worker makes
its shared-memory slots (``bfm.training.fill.SlotPool``, prefetch + 3) in its first samples
and reuses them after: the default 6 passes (30 samples) show mostly what training sees.

Measured at the Europe grid (benchmarks/README.md): a worker only reads (0.110 CPU s a
sample: HDF5's decoding of the 72 MB a sample reads, its Blosc/LZ4 filter and Fletcher-32
checksums, is most of it) and the training process normalises and masks the raw values on
its device (``bfm.training.fill.finish_raw``; on this CPU 0.06-0.07 s, on a GPU next to
nothing): 1 worker gives 10.1 samples/s on the 2-core machine. The figures of the worker and
of the training process are printed apart: the worker's is what a GPU node's loader costs.

Examples:

    bfm bench loader                                  # Europe grid, 6 batches, 0 1 2 workers
    bfm bench loader --grid 40x80 --batches 4 --workers 0 1
    bfm bench loader --compressions gzip blosc-zstd --values smooth --json loader.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bfm.cliutil import add_command
from bfm.fileio import write_text_atomic

SPECIES = 21  # as bfm bench model: the study's endangered European species


def parse_grid(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--grid: expected HxW (e.g. 153x321), got {text!r}") from None
    if h < 2 or w < 2:
        raise ValueError(f"--grid: needs at least 2 x 2 cells, got {text!r}")
    return h, w


def europe_grid(h: int, w: int) -> Any:
    """``h`` x ``w`` cells of 0.25 deg from 72 N, 30 W (the Europe grid at 153 x 321)."""
    from bfm.contracts.grid import Grid

    return Grid(lat_min=72.0 - 0.25 * (h - 1), lat_max=72.0, lon_min=-30.0,
                lon_max=-30.0 + 0.25 * (w - 1), res=0.25)  # fmt: skip


def mock_batches(n: int, h: int, w: int, values: str) -> list[Any]:
    """``n`` consecutive daily mock batches of the study layout (``bfm.testing.mock_batch``)."""
    import pandas as pd

    from bfm.contracts import catalogue
    from bfm.contracts.catalogue import DEFAULT_LEVELS
    from bfm.testing import mock_batch, random_values, trend_values

    value = random_values(0) if values == "random" else trend_values()
    grid, start = europe_grid(h, w), pd.Timestamp("2010-01-01")
    return [mock_batch(start + pd.Timedelta(days=k), grid, k=k, levels=DEFAULT_LEVELS,
                       species=tuple(range(1, SPECIES + 1)), value=value,
                       groups=catalogue.groups()) for k in range(n)]  # fmt: skip


def write_batches(directory: Path, batches: Sequence[Any], compression: str
                  ) -> tuple[list[Path], float]:  # fmt: skip
    """``batches`` written to ``directory`` as <t0>.h5 so compressed; paths, s per batch."""
    from bfm.contracts.batch import Compression, write_batch
    from bfm.contracts.timeaxis import format_t0
    from bfm.testing import PROVENANCE

    directory.mkdir(parents=True, exist_ok=True)
    paths, seconds = [], 0.0
    for b in batches:
        started = time.process_time()
        paths.append(write_batch(b, directory / f"{format_t0(b.times[0])}.h5", PROVENANCE,
                                 Compression(compression)))  # fmt: skip
        seconds += time.process_time() - started
    return paths, seconds / len(batches)


def time_reads(paths: Sequence[Path], repeat: int = 2) -> dict[str, float]:
    """Median seconds to read a whole batch, and a pair as the training loader reads it
    (``bfm.training.fill.read_pair``: decoded into the sample's arrays, before normalising)."""
    from bfm.contracts.batch import read_batch
    from bfm.contracts.batch_io import BatchFile
    from bfm.contracts.layout import Layout
    from bfm.training.fill import SampleArrays, read_pair

    first = read_batch(paths[0])
    layout = Layout.from_batch(first)
    out = SampleArrays.allocate(layout, first.grid, 1, shared=False)
    whole, pair, raw = [], [], 0
    for _ in range(repeat):
        for x, y in zip(paths[:-1], paths[1:], strict=True):
            t0 = time.process_time()
            b = read_batch(x)
            t1 = time.process_time()
            with BatchFile(x) as fx, BatchFile(y) as fy:
                read_pair(fx, fy, layout, first.grid, out, 0)
            t2 = time.process_time()
            whole.append(t1 - t0)
            pair.append(t2 - t1)
            raw = sum(a.nbytes for g in b.groups.values() for a in g.values())
    whole_s = statistics.median(whole)
    return {"read_batch_s": whole_s, "read_pair_s": statistics.median(pair),
            "read_pair_before_s": 2 * whole_s, "raw_bytes": raw,
            "decode_mb_per_s": raw / 1e6 / whole_s}  # fmt: skip


def compare_compressions(tmp: Path, batches: Sequence[Any], compressions: Sequence[str]
                         ) -> list[dict[str, Any]]:  # fmt: skip
    """One row per compression: write s, bytes, read s (``time_reads``); printed as it goes."""
    rows = []
    for c in compressions:
        paths, write_s = write_batches(tmp / c, batches, c)
        reads = time_reads(paths)
        size = sum(p.stat().st_size for p in paths) / len(paths)
        rows.append({"compression": c, "write_s": write_s, "bytes": int(size), **reads})
        print(
            f"  {c:11s} {size / 1e6:7.1f} MB  ratio {reads['raw_bytes'] / size:4.2f}  write "
            f"{write_s:6.3f} s  read+decode {reads['read_batch_s']:6.3f} s "
            f"({reads['decode_mb_per_s']:5.0f} MB/s)  pair {reads['read_pair_s']:6.3f} s "
            f"(both whole: {reads['read_pair_before_s']:6.3f} s)",
            flush=True,
        )
    return rows


def loader_rate(paths: Sequence[Path], workers: int, passes: int, prefetch: int,
                device: str = "cpu") -> dict[str, Any]:  # fmt: skip
    """Samples per second of ``MicroBatches`` (micro-batch 1) over ``passes`` passes; on a
    CUDA ``device`` pinned, as ``bfm train`` has them, and each one copied onto the card."""
    import torch

    from bfm.contracts.stats import load_stats
    from bfm.testing import write_stats
    from bfm.training.data import BatchPairs, MicroBatches, Order

    stats_path = paths[0].parent / "stats.json"
    if not stats_path.is_file():
        write_stats(list(paths), stats_path)
    data = BatchPairs(list(paths), load_stats(stats_path))
    order = Order(len(data), 1, seed=0)
    total = 1 + passes * len(data)
    cuda = device.startswith("cuda")
    loader = MicroBatches(data, order, 0, total, workers=workers, prefetch=prefetch,
                          pin_memory=cuda)  # fmt: skip

    def take(k: int) -> None:  # as train_step: finished (normalised, masked) on the device
        loader.sample(k, device, torch.float32)

    own, workers_cpu = _cpu_split()  # CPU: every sample, the first too (workers make them all)
    try:
        take(0)  # not timed: the workers start, the first files are opened
        started = time.perf_counter()
        for k in range(1, total):
            take(k)
        if cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
    finally:
        loader.close()  # joins the workers: their CPU time is counted once they are gone
    own_after, workers_after = _cpu_split()
    own, workers_cpu = own_after - own, workers_after - workers_cpu
    rate = (total - 1) / seconds
    return {"workers": workers, "device": device, "samples": total - 1, "seconds": seconds,
            "samples_per_s": rate, "per_worker": rate / max(workers, 1),
            "cpu_s_per_sample": (own + workers_cpu) / total,
            "worker_cpu_s_per_sample": workers_cpu / total if workers else None,
            "training_process_cpu_s_per_sample": own / total}  # fmt: skip


def _cpu_split() -> tuple[float, float]:
    """User + system CPU seconds of this process, and of its finished children (the
    workers)."""
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def print_against_gzip(rows: list[dict[str, Any]]) -> None:
    gzip = next((r for r in rows if r["compression"] == "gzip"), None)
    if gzip is None:
        return
    for r in rows:
        read = gzip["read_batch_s"] / r["read_batch_s"]
        write = gzip["write_s"] / r["write_s"]
        print(
            f"  {r['compression']:11s} / gzip: read {read:5.2f}x as fast, write {write:5.2f}x "
            f"as fast, {r['bytes'] / gzip['bytes']:4.2f}x the bytes"
        )


def print_against_one_worker(rates: list[dict[str, Any]]) -> None:
    one = next((r for r in rates if r["workers"] == 1), None)
    if one is None:
        return
    for r in rates:
        r["ratio_to_1_worker"] = r["samples_per_s"] / one["samples_per_s"]
        print(f"  {r['workers']} / 1 worker: {r['ratio_to_1_worker']:.2f}x")


def run(args: argparse.Namespace) -> int:
    from bfm.contracts.batch import COMPRESSION

    h, w = parse_grid(args.grid)
    if args.batches < 2 or args.passes < 1 or any(n < 0 for n in args.workers):
        raise ValueError("--batches must be >= 2, --passes >= 1 and --workers >= 0")
    compressions = list(dict.fromkeys([*args.compressions, str(COMPRESSION)]))
    report: dict[str, Any] = {"grid": [h, w], "batches": args.batches, "values": args.values,
                              "cpus": os.cpu_count(), "default": str(COMPRESSION)}  # fmt: skip
    print(f"bench loader: {h}x{w} cells, {args.batches} batches, {os.cpu_count()} CPUs")
    print("compression (read from the page cache):")
    with tempfile.TemporaryDirectory(prefix="bfm-bench-loader-") as name:
        tmp = Path(name)
        batches = mock_batches(args.batches, h, w, args.values)
        rows = compare_compressions(tmp, batches, compressions)
        del batches
        report["compression"] = rows
        print_against_gzip(rows)
        default = next(r for r in rows if r["compression"] == str(COMPRESSION))
        before = default["read_pair_before_s"]
        print(f"a pair ({COMPRESSION}): {default['read_pair_s']:.3f} CPU s to read what the "
              f"sample needs; both files whole {before:.3f} s "
              f"({before / default['read_pair_s']:.2f}x)")  # fmt: skip
        paths = sorted((tmp / str(COMPRESSION)).glob("*.h5"))
        print(f"loader ({COMPRESSION}, prefetch {args.prefetch}):")
        rates = []
        for n in args.workers:
            r = loader_rate(paths, n, args.passes, args.prefetch)
            rates.append(r)
            print(f"  {n} worker(s): {r['samples_per_s']:6.2f} samples/s "
                  f"({r['per_worker']:.2f} per worker), {r['cpu_s_per_sample']:.3f} CPU s per "
                  f"sample: {1 / r['cpu_s_per_sample']:.2f} samples/s per busy core",
                  flush=True)  # fmt: skip
            if n:
                one = r["worker_cpu_s_per_sample"]
                print(f"    in a worker (reading) {one:.3f} CPU s a sample: {1 / one:.2f} "
                      f"samples/s per worker on a busy core; in the training process "
                      f"(normalising, masking, on the CPU here) "
                      f"{r['training_process_cpu_s_per_sample']:.3f} s", flush=True)  # fmt: skip
        print_against_one_worker(rates)
        report["loader"] = rates
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(report, indent=1) + "\n")
    return 0


def register(actions: argparse._SubParsersAction) -> None:
    from bfm.contracts.batch import Compression

    p = add_command(
        actions,
        "loader",
        __doc__,
        "training loader samples/s for 0, 1, 2 workers; batch compressions compared",
    )
    p.add_argument("--grid", default="153x321", help="HxW cells (default Europe: 153x321)")
    p.add_argument("--batches", type=int, default=6, help="mock batches (default 6: 5 pairs)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                   help="loader worker counts to time (default: 0 1 2)")  # fmt: skip
    p.add_argument("--passes", type=int, default=6,
                   help="passes over the pairs (default 6: the workers' slots are made in the "
                   "first few samples, the rest is what training sees)")  # fmt: skip
    p.add_argument("--prefetch", type=int, default=2, help="micro-batches read ahead per worker")
    p.add_argument("--compressions", nargs="+", default=[str(c) for c in Compression],
                   choices=[str(c) for c in Compression],
                   help="compressions compared (default: all; the default one always)")  # fmt: skip
    p.add_argument(
        "--values",
        choices=("random", "smooth"),
        default="random",
        help="mock values: random (as bfm bench model; default) or smooth fields",
    )
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.set_defaults(func=run)
