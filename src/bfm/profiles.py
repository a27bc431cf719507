"""The training layout a Snakemake profile (profiles/) maps onto SLURM, read from the call's config.

``train.nodes`` and ``train.gpus_per_node`` are science (they fix the world size, hence the
global batch: config/README.md), so they live in the config; profiles/snellius turns them into
the training job's sbatch layout (``slurm_resources``). A profile is read before the workflow
and is given no config, so ``train_layout`` reads the config files of the command line itself:

- ``--configfile``/``--configfiles`` FILE..., relative to the current directory (as Snakemake
  reads them), merged as Snakemake merges them: later files win, key by key;
- without any, the Snakefile's default ``config/config.yaml`` in the working directory
  (``--directory``/``-d``, else the current directory);
- a key missing there takes the schema's default (src/bfm/config.schema.yaml).

``--config train.nodes=...`` on the command line is not seen: set the layout in a config file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bfm.config import SCHEMA_PATH

DEFAULT_CONFIG = Path("config/config.yaml")  # workflow/Snakefile's `configfile:`
_CONFIG_FLAGS = ("--configfile", "--configfiles")
_DIRECTORY_FLAGS = ("--directory", "-d")


@dataclass(frozen=True)
class TrainLayout:
    """Nodes and ranks (GPUs) per node of the training job; world size = their product."""

    nodes: int
    gpus_per_node: int

    def __post_init__(self) -> None:
        for name in ("nodes", "gpus_per_node"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"train.{name}: expected an integer >= 1, got {value!r}")

    @property
    def ranks(self) -> int:
        return self.nodes * self.gpus_per_node

    def slurm_resources(self, cpus_per_gpu: int, mem_mb_per_gpu: int) -> dict[str, Any]:
        """The executor plugin's resources for this layout: one rank per GPU.

        ``gres`` asks for GPUs per node (``--gpus`` would be a job total). More than one rank
        needs ``mpi`` (the rule's launcher: an srun step, which SLURM's ``--signal`` reaches)
        and a task layout: the plugin refuses ``tasks_per_node`` 1, so one GPU per node on
        several nodes is ``tasks`` with one task per GPU. The srun line spells the layout out
        because the plugin's job step removes it from the job's environment (a bare ``srun``
        would start one rank). One rank: ``mpi`` empty (the plugin refuses an MPI job of one
        task), so ``bfm train`` runs in the job's batch step.
        """
        res: dict[str, Any] = {
            "nodes": self.nodes,
            "gres": f"gpu:{self.gpus_per_node}",
            "mem_mb": self.gpus_per_node * mem_mb_per_gpu,
            "mpi": "",
        }
        if self.ranks == 1:
            return res
        if self.gpus_per_node > 1:
            res["tasks_per_node"] = self.gpus_per_node
        else:
            res.update(tasks=self.ranks, tasks_per_gpu=1)
        res["mpi"] = (
            f"srun --nodes={self.nodes} --ntasks-per-node={self.gpus_per_node}"
            f" --cpus-per-task={cpus_per_gpu}"
        )
        return res


def _flag_values(argv: Sequence[str], flags: Sequence[str]) -> list[str]:
    """Values given to any of ``flags`` (``--flag a b``, ``--flag=a``), in order."""
    values: list[str] = []
    taking = False
    for arg in argv:
        name, eq, value = arg.partition("=")
        if arg.startswith("-") and not _is_number(arg):
            taking = name in flags and not eq
            if name in flags and eq:
                values.append(value)
        elif taking:
            values.append(arg)
    return values


def _is_number(arg: str) -> bool:
    try:
        float(arg)
    except ValueError:
        return False
    return True


def config_files(argv: Sequence[str]) -> list[Path]:
    """The config files a ``snakemake`` call with arguments ``argv`` reads, in order."""
    files = _flag_values(argv, _CONFIG_FLAGS)
    if files:
        return [Path(f) for f in files]
    directories = _flag_values(argv, _DIRECTORY_FLAGS)
    return [Path(directories[-1] if directories else ".") / DEFAULT_CONFIG]


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _schema_default(key: str) -> Any:
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    return schema["properties"]["train"]["properties"][key]["default"]


def train_layout(argv: Sequence[str]) -> TrainLayout:
    """``train.nodes`` and ``train.gpus_per_node`` of the call ``snakemake *argv``."""
    config: dict[str, Any] = {}
    for path in config_files(argv):
        if not path.is_file():
            raise ValueError(f"{path}: config file not found (train.nodes, train.gpus_per_node)")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        config = _merge(config, loaded)
    train = config.get("train") or {}
    return TrainLayout(
        nodes=train.get("nodes", _schema_default("nodes")),
        gpus_per_node=train.get("gpus_per_node", _schema_default("gpus_per_node")),
    )
