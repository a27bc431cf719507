"""``bfm stats``: normalisation statistics over the training batches.

``bfm stats partial`` writes the partial sums of some batches (optionally split over MPI
ranks with ``--mpi``, run under mpirun/srun); ``bfm stats merge`` combines partials into
``stats.json``. Every time slice of every training batch counts once per batch it appears in:
the statistics describe what the model sees.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from bfm.batch import read_batch
from bfm.provenance import provenance
from bfm.stats import Moments, batch_moments, merge_all, save_stats

log = logging.getLogger(__name__)


def partial(batches: Sequence[str], use_mpi: bool = False) -> dict[str, Moments]:
    """Moments over the batches; with ``use_mpi`` each rank reads a share, rank 0 merges."""
    rank, size, comm = 0, 1, None
    if use_mpi:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        rank, size = comm.Get_rank(), comm.Get_size()
    mine = list(batches)[rank::size]
    parts = (batch_moments(read_batch(p)) for p in tqdm(mine, desc="stats", disable=rank != 0))
    total = merge_all(parts)
    if comm is not None:
        gathered = comm.gather(total, root=0)
        total = merge_all(gathered) if rank == 0 else {}
    return total


def _write_partial(variables: dict[str, Moments], batches: Sequence[str], out: str) -> None:
    save_stats(
        variables, out, {"batches": [Path(b).name for b in batches], "provenance": provenance()}
    )


def _run_partial(args: argparse.Namespace) -> int:
    variables = partial(args.batches, args.mpi)
    if variables or not args.mpi:
        _write_partial(variables, args.batches, args.out)
    return 0


def _run_merge(args: argparse.Namespace) -> int:
    parts, names = [], []
    for path in args.partials:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read partial statistics ({err})") from err
        parts.append({k: Moments.from_dict(v) for k, v in doc["variables"].items()})
        names += doc.get("batches", [])
    _write_partial(merge_all(parts), sorted(names), args.out)
    log.info("merged %d partials over %d batches into %s", len(parts), len(names), args.out)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stats",
        help="normalisation statistics over training batches",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    steps = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    pp = steps.add_parser("partial", help="partial sums over some batches")
    pp.add_argument("--batches", nargs="+", required=True, help="batch files (.h5)")
    pp.add_argument("--out", required=True, help="partial statistics JSON")
    pp.add_argument(
        "--mpi",
        action="store_true",
        help="split the batches over MPI ranks (run under mpirun or srun)",
    )
    pp.set_defaults(func=_run_partial)
    pm = steps.add_parser("merge", help="merge partial sums into stats.json")
    pm.add_argument("--partials", nargs="+", required=True, help="partial statistics JSONs")
    pm.add_argument("--out", required=True, help="merged statistics JSON")
    pm.set_defaults(func=_run_merge)
