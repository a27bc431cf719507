"""Rank discovery for torchrun, SLURM (srun), Open MPI / PMI, or a single process.

``discover(env)`` is a pure function of an environment mapping (plus two injectable helpers
for the SLURM host list and a free port) and tries, in order:

1. torchrun (and ``deepspeed``/``torch.distributed`` launchers): RANK, WORLD_SIZE, LOCAL_RANK,
   MASTER_ADDR, MASTER_PORT;
2. SLURM ``srun``: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR is the first host of
   SLURM_JOB_NODELIST (``scontrol show hostnames``; the nodelist itself when it names one
   host) and MASTER_PORT is derived from SLURM_JOB_ID, so every task agrees without talking;
3. Open MPI (OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK) or PMI (PMI_RANK/PMI_SIZE, MPICH/Intel MPI);
   the master is 127.0.0.1 and the port derived from the job's PMIx namespace (29500 without
   one) unless MASTER_ADDR/MASTER_PORT say otherwise (multi-node MPI runs must set
   MASTER_ADDR);
4. a single process: rank 0 of 1 on 127.0.0.1 and a free port.

An explicit MASTER_ADDR / MASTER_PORT in the environment always wins. ``init_distributed``
exports the result as RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT and initialises
DeepSpeed's process group (gloo on CPU, nccl on CUDA).

Each rank trains on GPU ``local_rank % torch.cuda.device_count()`` (``device_index``): with
``srun --gpu-bind=single:1`` (or any binding that leaves a task one GPU) every task sees its
own GPU as cuda:0, without binding the tasks of a node share all of them. ``check_layout``
refuses a job whose ranks are not the config's ``train.nodes`` x ``train.gpus_per_node``
(the world size fixes the global batch); the ranks per node are read where the launcher says
(LOCAL_WORLD_SIZE, SLURM_NTASKS_PER_NODE / SLURM_TASKS_PER_NODE, OMPI_COMM_WORLD_LOCAL_SIZE,
MPI_LOCALNRANKS).
"""

from __future__ import annotations

import os
import socket
import subprocess
import zlib
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass

import torch

DEFAULT_PORT = 29500
SLURM_PORT_BASE, SLURM_PORT_SPAN = 10000, 20000  # below Linux's ephemeral range (32768+)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # torchrun | slurm | openmpi | pmi | single
    local_world_size: int | None = None  # ranks on this node, where the launcher says

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"distributed ({self.launcher}): rank {self.rank} is not in "
                f"[0, world_size={self.world_size})"
            )

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    if name not in env:
        if default is None:
            raise ValueError(f"distributed: environment variable {name} is not set")
        return default
    try:
        return int(env[name])
    except ValueError as err:
        raise ValueError(f"distributed: {name}={env[name]!r} is not an integer") from err


def _optional_int(env: Mapping[str, str], name: str) -> int | None:
    return _int(env, name) if env.get(name) else None


def slurm_tasks_per_node(env: Mapping[str, str]) -> int | None:
    """Tasks on each node of this SLURM step when every node has the same number, from
    SLURM_STEP_TASKS_PER_NODE (srun sets it for its tasks), else SLURM_NTASKS_PER_NODE, else
    SLURM_TASKS_PER_NODE (``4(x2)`` -> 4; ``4,2`` -> None, uneven; None when unset)."""
    text = env.get("SLURM_STEP_TASKS_PER_NODE", "")
    if not text and env.get("SLURM_NTASKS_PER_NODE"):
        return _int(env, "SLURM_NTASKS_PER_NODE")
    text = text or env.get("SLURM_TASKS_PER_NODE", "")
    counts = {part.split("(")[0] for part in text.split(",") if part}
    if len(counts) != 1:
        return None
    (count,) = counts
    return int(count) if count.isdigit() else None


def slurm_hostnames(nodelist: str) -> list[str]:
    """Expand a SLURM nodelist (``gcn[1-3]``) with scontrol; a single host needs no scontrol."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30
        )
        hosts = out.stdout.split() if out.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired):
        hosts = []
    if hosts:
        return hosts
    if any(c in nodelist for c in "[],") or not nodelist:
        raise ValueError(
            f"distributed: cannot expand SLURM_JOB_NODELIST={nodelist!r} without "
            "scontrol; set MASTER_ADDR"
        )
    return [nodelist]


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _localhost() -> str:
    return "127.0.0.1"


def _default_port() -> int:
    return DEFAULT_PORT


def _master(
    env: Mapping[str, str],
    addr: Callable[[], str] = _localhost,
    port: Callable[[], int] = _default_port,
) -> tuple[str, int]:
    """MASTER_ADDR / MASTER_PORT from ``env``, else from the launcher's defaults."""
    return (
        env.get("MASTER_ADDR") or addr(),
        _int(env, "MASTER_PORT") if env.get("MASTER_PORT") else port(),
    )


def _job_port(env: Mapping[str, str]) -> int:
    """The port of an mpirun job: from the job's PMIx namespace, which every rank of one
    mpirun shares and two mpiruns on one machine do not (two training jobs side by side, say
    a model and its ablation, would otherwise both take 29500); DEFAULT_PORT without one."""
    namespace = env.get("PMIX_NAMESPACE") or env.get("OMPI_MCA_ess_base_jobid")
    if not namespace:
        return DEFAULT_PORT
    return SLURM_PORT_BASE + zlib.crc32(namespace.encode()) % SLURM_PORT_SPAN


def _slurm(env: Mapping[str, str], hostnames: Callable[[str], list[str]]) -> DistEnv:
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
    job = _int(env, "SLURM_JOB_ID", 0)
    addr, port = _master(
        env, lambda: hostnames(nodelist)[0], lambda: SLURM_PORT_BASE + job % SLURM_PORT_SPAN
    )
    return DistEnv(
        _int(env, "SLURM_PROCID"),
        _int(env, "SLURM_NTASKS"),
        _int(env, "SLURM_LOCALID", 0),
        addr,
        port,
        "slurm",
        slurm_tasks_per_node(env),
    )


def discover(
    env: Mapping[str, str],
    hostnames: Callable[[str], list[str]] = slurm_hostnames,
    free_port: Callable[[], int] = find_free_port,
) -> DistEnv:
    """Rank, world size, local rank and master of this process, from ``env`` alone."""
    if "RANK" in env and "WORLD_SIZE" in env:
        addr, port = _master(env)
        return DistEnv(
            _int(env, "RANK"),
            _int(env, "WORLD_SIZE"),
            _int(env, "LOCAL_RANK", 0),
            addr,
            port,
            "torchrun",
            _optional_int(env, "LOCAL_WORLD_SIZE"),
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return _slurm(env, hostnames)
    if "OMPI_COMM_WORLD_RANK" in env:
        addr, port = _master(env, port=lambda: _job_port(env))
        return DistEnv(
            _int(env, "OMPI_COMM_WORLD_RANK"),
            _int(env, "OMPI_COMM_WORLD_SIZE"),
            _int(env, "OMPI_COMM_WORLD_LOCAL_RANK", 0),
            addr,
            port,
            "openmpi",
            _optional_int(env, "OMPI_COMM_WORLD_LOCAL_SIZE"),
        )
    if "PMI_RANK" in env:
        addr, port = _master(env)
        local_rank = _int(env, "MPI_LOCALRANKID", _int(env, "PMI_LOCAL_RANK", 0))
        return DistEnv(_int(env, "PMI_RANK"), _int(env, "PMI_SIZE"), local_rank, addr, port, "pmi",
                       _optional_int(env, "MPI_LOCALNRANKS"))  # fmt: skip
    addr, port = _master(env, port=free_port)
    return DistEnv(0, 1, 0, addr, port, "single")


def export(d: DistEnv, environ: MutableMapping[str, str] = os.environ) -> None:
    """Write the torch.distributed variables that DeepSpeed and torch read."""
    environ.update(
        {
            "RANK": str(d.rank),
            "WORLD_SIZE": str(d.world_size),
            "LOCAL_RANK": str(d.local_rank),
            "MASTER_ADDR": d.master_addr,
            "MASTER_PORT": str(d.master_port),
        }
    )


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def device_index(local_rank: int, visible: int) -> int:
    """The GPU of a rank among the ``visible`` ones: ``local_rank % visible`` (one GPU bound
    to each task: 0; all of the node's GPUs visible: the local rank)."""
    if visible < 1:
        raise ValueError(f"distributed: no GPU visible to local rank {local_rank}")
    return local_rank % visible


def device(d: DistEnv) -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(f"cuda:{device_index(d.local_rank, torch.cuda.device_count())}")


def check_layout(d: DistEnv, nodes: int | None, per_node: int | None) -> None:
    """ValueError unless the job has ``nodes`` x ``per_node`` ranks (and ``per_node`` on each
    node, where the launcher says); nothing to check when either is None (a run by hand)."""
    if nodes is None or per_node is None:
        return
    where = f"the job ({d.launcher}) has {d.world_size} rank(s)"
    if d.local_world_size is not None:
        where += f", {d.local_world_size} per node"
    wrong = d.world_size != nodes * per_node or d.local_world_size not in (None, per_node)
    if wrong:
        raise ValueError(
            f"train.nodes={nodes} x train.gpus_per_node={per_node} = {nodes * per_node} "
            f"rank(s), but {where}: the world size fixes the global batch, so start the job "
            "with the config's layout or change train.nodes / train.gpus_per_node "
            "(--nodes / --gpus-per-node)"
        )


def skip_cpu_shm_op() -> None:
    """On CPU, let DeepSpeed's communication use plain gloo instead of its shared-memory
    all-reduce op, which it would JIT-compile with g++ on first use (about 2 minutes on a new
    machine, before the first step). The op only speeds up all-reduces between CPU ranks of
    one node; training on GPUs (nccl) never uses it."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed(d: DistEnv) -> None:
    """Export ``d`` and start DeepSpeed's process group (DS_ACCELERATOR must be set before)."""
    import deepspeed  # late: importing it picks the accelerator from DS_ACCELERATOR

    export(d)
    if torch.cuda.is_available():
        torch.cuda.set_device(device(d))
    else:
        skip_cpu_shm_op()
    deepspeed.init_distributed(dist_backend=backend(), auto_mpi_discovery=False, verbose=False)
