"""Rank discovery from torchrun, SLURM, Open MPI, PMI and single-process environments."""

from __future__ import annotations

import subprocess

import pytest

from bfm.training import distributed
from bfm.training.distributed import DistEnv, discover, export


def no_hosts(nodelist: str) -> list[str]:
    raise AssertionError("scontrol must not be needed here")


def test_torchrun() -> None:
    env = {
        "RANK": "3",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gcn12",
        "MASTER_PORT": "29555",
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "1",
    }
    assert discover(env, no_hosts) == DistEnv(3, 8, 1, "gcn12", 29555, "torchrun")


def test_slurm_srun_takes_first_host_and_job_port() -> None:
    env = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gcn[3-4]",
        "SLURM_JOB_ID": "1234567",
    }
    seen = []

    def hosts(nodelist: str) -> list[str]:
        seen.append(nodelist)
        return ["gcn3", "gcn4"]

    d = discover(env, hosts)
    assert seen == ["gcn[3-4]"]
    assert d == DistEnv(5, 8, 1, "gcn3", 10000 + 1234567 % 20000, "slurm")
    # every task of the job derives the same port, without talking to the others
    assert discover({**env, "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, hosts).master_port == (
        d.master_port
    )


def test_slurm_explicit_master_wins() -> None:
    env = {
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_JOB_NODELIST": "gcn[1-2]",
        "SLURM_JOB_ID": "7",
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "31000",
    }
    d = discover(env, no_hosts)
    assert (d.master_addr, d.master_port, d.local_rank) == ("10.0.0.1", 31000, 0)


def test_slurm_hostnames_without_scontrol(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("scontrol")

    monkeypatch.setattr(subprocess, "run", missing)
    assert distributed.slurm_hostnames("tcn42") == ["tcn42"]
    with pytest.raises(ValueError, match="SLURM_JOB_NODELIST"):
        distributed.slurm_hostnames("tcn[1-4]")


def test_slurm_hostnames_with_scontrol(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="tcn1\ntcn2\n", stderr="")

    monkeypatch.setattr(subprocess, "run", fake)
    assert distributed.slurm_hostnames("tcn[1-2]") == ["tcn1", "tcn2"]
    assert calls == [["scontrol", "show", "hostnames", "tcn[1-2]"]]


def test_open_mpi() -> None:
    env = {
        "OMPI_COMM_WORLD_RANK": "1",
        "OMPI_COMM_WORLD_SIZE": "2",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    }
    assert discover(env, no_hosts) == DistEnv(1, 2, 1, "127.0.0.1", 29500, "openmpi")


def test_pmi() -> None:
    env = {"PMI_RANK": "2", "PMI_SIZE": "4", "MPI_LOCALRANKID": "0", "MASTER_ADDR": "node0"}
    assert discover(env, no_hosts) == DistEnv(2, 4, 0, "node0", 29500, "pmi")


def test_single_process_gets_a_free_port_unless_told() -> None:
    assert discover({}, no_hosts, free_port=lambda: 40001) == DistEnv(
        0, 1, 0, "127.0.0.1", 40001, "single"
    )
    assert discover({"MASTER_PORT": "29601"}, no_hosts).master_port == 29601
    assert 0 < distributed.find_free_port() < 65536


def test_bad_values_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="RANK='x'"):
        discover({"RANK": "x", "WORLD_SIZE": "2"}, no_hosts)
    with pytest.raises(ValueError, match="rank 2 is not in"):
        discover({"RANK": "2", "WORLD_SIZE": "2"}, no_hosts)
    with pytest.raises(ValueError, match="OMPI_COMM_WORLD_SIZE"):
        discover({"OMPI_COMM_WORLD_RANK": "0"}, no_hosts)


def test_export_writes_the_torch_variables() -> None:
    environ: dict[str, str] = {}
    export(DistEnv(1, 2, 1, "gcn3", 12345, "slurm"), environ)
    assert environ == {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gcn3",
        "MASTER_PORT": "12345",
    }


def test_two_mpiruns_side_by_side_get_their_own_port() -> None:
    """Every rank of one mpirun shares its PMIx namespace, two mpiruns do not: a model and
    its ablation training at once on one machine must not both take 29500."""
    env = {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"}
    a = discover({**env, "PMIX_NAMESPACE": "prterun-vm-8656@1"}, no_hosts)
    a1 = discover({**env, "OMPI_COMM_WORLD_RANK": "1", "PMIX_NAMESPACE": "prterun-vm-8656@1"},
                  no_hosts)  # fmt: skip
    b = discover({**env, "PMIX_NAMESPACE": "prterun-vm-8702@1"}, no_hosts)
    assert a.master_port == a1.master_port != b.master_port
    assert 10000 <= a.master_port < 30000
    explicit = discover({**env, "PMIX_NAMESPACE": "x", "MASTER_PORT": "4242"}, no_hosts)
    assert explicit.master_port == 4242


# --- ranks per node, GPU of a rank, the configured layout -------------------------------------
def test_ranks_per_node_from_each_launcher() -> None:
    torchrun = {"RANK": "0", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}
    assert discover(torchrun, no_hosts).local_world_size == 4
    slurm = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_NODELIST": "gcn1",
             "SLURM_JOB_ID": "1"}  # fmt: skip
    steps = {"4(x2)": 4, "2,2": 2, "4,2": None, "": None}  # "4,2": uneven nodes, no one number
    for text, expected in steps.items():
        env = {**slurm, "SLURM_STEP_TASKS_PER_NODE": text} if text else slurm
        assert distributed.slurm_tasks_per_node(env) == expected, text
    # the step's layout wins over the job's (an srun inside an sbatch of another shape)
    both = {**slurm, "SLURM_STEP_TASKS_PER_NODE": "2(x4)", "SLURM_NTASKS_PER_NODE": "4"}
    assert discover(both, lambda n: [n]).local_world_size == 2
    assert discover({**slurm, "SLURM_NTASKS_PER_NODE": "4"}, lambda n: [n]).local_world_size == 4
    ompi = {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "4",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}  # fmt: skip
    assert discover(ompi, no_hosts).local_world_size == 2
    pmi = {"PMI_RANK": "0", "PMI_SIZE": "4", "MPI_LOCALNRANKS": "4"}
    assert discover(pmi, no_hosts).local_world_size == 4
    assert discover({}, no_hosts, free_port=lambda: 1).local_world_size is None


def test_each_rank_takes_local_rank_modulo_the_visible_gpus() -> None:
    # 4 GPUs visible to every task of a node: local rank r takes cuda:r
    assert [distributed.device_index(r, 4) for r in range(4)] == [0, 1, 2, 3]
    # srun --gpu-bind=single:1: each task sees its own GPU alone, as cuda:0
    assert [distributed.device_index(r, 1) for r in range(4)] == [0, 0, 0, 0]
    # 2 GPUs visible to each pair of tasks (--gpus-per-task=... shared by 2)
    assert [distributed.device_index(r, 2) for r in range(4)] == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="no GPU visible to local rank 3"):
        distributed.device_index(3, 0)


def test_the_job_must_have_the_configured_layout() -> None:
    two = DistEnv(0, 2, 0, "127.0.0.1", 1, "torchrun", 2)
    distributed.check_layout(two, 1, 2)
    distributed.check_layout(two, None, None)  # by hand: nothing to check
    with pytest.raises(ValueError, match=r"train.nodes=1 x train.gpus_per_node=1 = 1 rank\(s\), "
                       r"but the job \(torchrun\) has 2 rank\(s\), 2 per node"):  # fmt: skip
        distributed.check_layout(two, 1, 1)
    # the same world size in another shape: 1 node of 4 is not 2 nodes of 2
    four = DistEnv(0, 4, 0, "127.0.0.1", 1, "slurm", 4)
    distributed.check_layout(four, 1, 4)
    with pytest.raises(ValueError, match="4 per node"):
        distributed.check_layout(four, 2, 2)
    # a launcher that does not say how many ranks a node has: the world size alone
    distributed.check_layout(DistEnv(0, 4, 0, "127.0.0.1", 1, "pmi"), 2, 2)
