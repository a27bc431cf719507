"""bfm stats: normalisation statistics over the training batches.

bfm stats partial writes the partial sums of some batches (optionally split over MPI ranks
with --mpi, run under mpirun/srun); bfm stats merge combines partials into stats.json. Every
time slice of every training batch counts once per batch it appears in: the statistics
describe what the model sees. With --config, batches built under other settings than the
config implies (their settings_hash) are refused.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from bfm.cliutil import add_command, add_config_argument
from bfm.contracts.batch import read_batch
from bfm.contracts.stats import Moments, batch_moments, merge_all, save_stats
from bfm.provenance import provenance
from bfm.workflow import Plan, load_plan

log = logging.getLogger(__name__)


def check_settings(attrs: dict[str, str], where: str, plan: Plan | None, seen: set[str]) -> None:
    """Refuse a batch whose settings_hash differs from the plan's (or from the others')."""
    got = attrs.get("settings_hash", "")
    expected = plan.batch_settings_hash if plan is not None else next(iter(seen), got)
    if got != expected:
        raise ValueError(
            f"{where}: built under other settings (settings_hash {got[:12]}, "
            f"expected {expected[:12]}); rerun the workflow, which rebuilds it"
        )
    seen.add(got)


def partial(
    batches: Sequence[str], use_mpi: bool = False, plan: Plan | None = None
) -> dict[str, Moments]:
    """Moments over the batches; with ``use_mpi`` each rank reads a share, rank 0 merges."""
    rank, size, comm = 0, 1, None
    if use_mpi:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        rank, size = comm.Get_rank(), comm.Get_size()
    mine = list(batches)[rank::size]
    seen: set[str] = set()

    def moments(path: str) -> dict[str, Moments]:
        batch = read_batch(path)
        check_settings(batch.attrs, path, plan, seen)
        return batch_moments(batch)

    total = merge_all(moments(p) for p in tqdm(mine, desc="stats", disable=rank != 0))
    if comm is not None:
        gathered = comm.gather(total, root=0)
        total = merge_all(gathered or []) if rank == 0 else {}
    return total


def _settings(plan: Plan | None, batches: Sequence[str]) -> dict:
    return (
        plan.stats_settings()
        if plan is not None
        else {"batches": sorted(Path(b).name for b in batches)}
    )


def _write(
    variables: dict[str, Moments], batches: Sequence[str], out: str, plan: Plan | None
) -> None:
    prov = provenance(plan.config if plan else None, _settings(plan, batches))
    save_stats(variables, out, {"batches": [Path(b).name for b in batches], "provenance": prov})


def _run_partial(args: argparse.Namespace) -> int:
    plan = load_plan(args.config)
    variables = partial(args.batches, args.mpi, plan)
    if variables or not args.mpi:
        _write(variables, args.batches, args.out, plan)
    return 0


def _run_merge(args: argparse.Namespace) -> int:
    plan = load_plan(args.config)
    parts, names = [], []
    for path in args.partials:
        try:
            doc = json.loads(Path(path).read_text())
            parts.append({k: Moments.from_dict(v) for k, v in doc["variables"].items()})
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: cannot read partial statistics ({err})") from err
        names += doc.get("batches", [])
    _write(merge_all(parts), sorted(names), args.out, plan)
    log.info("merged %d partials over %d batches into %s", len(parts), len(names), args.out)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "stats", __doc__, "normalisation statistics over training batches")
    steps = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    pp = steps.add_parser("partial", help="partial sums over some batches")
    pp.add_argument("--batches", nargs="+", required=True, help="batch files (.h5)")
    pp.add_argument("--out", required=True, help="partial statistics JSON")
    add_config_argument(pp, required=False)
    pp.add_argument(
        "--mpi",
        action="store_true",
        help="split the batches over MPI ranks (run under mpirun or srun)",
    )
    pp.set_defaults(func=_run_partial)
    pm = steps.add_parser("merge", help="merge partial sums into stats.json")
    pm.add_argument("--partials", nargs="+", required=True, help="partial statistics JSONs")
    pm.add_argument("--out", required=True, help="merged statistics JSON")
    add_config_argument(pm, required=False)
    pm.set_defaults(func=_run_merge)
